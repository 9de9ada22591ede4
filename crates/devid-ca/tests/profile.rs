//! The profiles, checked by openssl: a root, an issuing CA and a leaf built and signed by
//! this crate verify with `openssl verify -x509_strict -purpose sslclient`, and the leaf
//! carries exactly the extensions of the profile.

use devid_ca::profile::{CaSubject, IssuerInfo, LeafProfile, PublicUrls};
use devid_core::{CaId, DeviceId, OsEntropy, Serial, UnixTime};
use devid_kms::{KmsError, SignatureAlgorithm, Signer};
use devid_testkit::pki;
use devid_testkit::signer::{BadSigner, MemSigner};

fn now() -> UnixTime {
    UnixTime(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("time").as_secs() as i64
    )
}

struct Hierarchy {
    root_der: Vec<u8>,
    issuing_der: Vec<u8>,
    issuing: MemSigner,
}

fn hierarchy() -> Hierarchy {
    let (root, issuing) = (MemSigner::new(), MemSigner::new());
    let alg = SignatureAlgorithm::EcdsaP256Sha256;
    let subject = |cn: &str| CaSubject { common_name: cn.into(), organization: "devid test".into() };
    let root_tbs = devid_ca::profile::root_tbs(
        alg,
        &subject("Test Root"),
        &Serial::random(&OsEntropy),
        root.public_key_spki_der(),
        now(),
        86400 * 3650,
    )
    .expect("root tbs");
    let root_der = devid_ca::sign::sign_tbs(&root, &root_tbs).expect("sign root");
    let root_info = IssuerInfo::from_cert_der(&root_der).expect("root info");
    let issuing_tbs = devid_ca::profile::issuing_tbs(
        &root_info,
        alg,
        &subject("Test Issuing"),
        &Serial::random(&OsEntropy),
        issuing.public_key_spki_der(),
        now(),
        86400 * 365,
    )
    .expect("issuing tbs");
    let issuing_der = devid_ca::sign::sign_tbs(&root, &issuing_tbs).expect("sign issuing");
    Hierarchy { root_der, issuing_der, issuing }
}

fn profile(validity_secs: i64) -> LeafProfile {
    let base = url::Url::parse("https://ca.example.net/").expect("url");
    LeafProfile {
        validity_secs,
        backdate_secs: 60,
        device_uri_prefix: devid_ca::profile::DEFAULT_DEVICE_URI_PREFIX.into(),
        urls: PublicUrls::for_issuer(&base, &CaId::new("issuing-1").expect("id")),
        crl_shards: 1,
    }
}

#[test]
fn leaf_chain_verifies_with_openssl_and_has_every_extension() {
    let h = hierarchy();
    let info = IssuerInfo::from_cert_der(&h.issuing_der).expect("issuing info");
    // A greedy CSR: the leaf must not carry its CA:TRUE or its DNS names.
    let (_key, csr_pem) = pki::csr_greedy("ignored-cn");
    let csr = devid_ca::csr::parse_and_verify(csr_pem.as_bytes()).expect("csr");
    let device = DeviceId::new("sensor-42").expect("id");
    let serial = Serial::random(&OsEntropy);
    let t = now();
    let (tbs, validity) = devid_ca::profile::leaf_tbs(
        &info,
        SignatureAlgorithm::EcdsaP256Sha256,
        &profile(86400),
        &serial,
        &device,
        &csr.spki_der,
        t,
    )
    .expect("leaf tbs");
    assert_eq!(validity.not_after, t.plus(86400));
    assert_eq!(validity.not_before, t.plus(-60));
    let leaf_der = devid_ca::sign::sign_tbs(&h.issuing, &tbs).expect("sign leaf");
    // The recorded TBS is byte-identical inside the certificate.
    assert!(leaf_der.windows(tbs.len()).any(|w| w == tbs.as_slice()));

    let dir = tempfile::tempdir().expect("tmp");
    let pem = |d: &[u8]| devid_ca::to_pem("CERTIFICATE", d);
    let (ok, out) = pki::openssl_verify(dir.path(), &pem(&h.root_der), &pem(&h.issuing_der), &pem(&leaf_der));
    assert!(ok, "openssl verify failed: {out}");

    let text = pki::openssl_text(dir.path(), &pem(&leaf_der));
    for needle in [
        "Subject: CN = sensor-42",
        "X509v3 Basic Constraints: critical\n                CA:FALSE",
        "X509v3 Key Usage: critical\n                Digital Signature",
        "X509v3 Extended Key Usage: \n                TLS Web Client Authentication",
        "X509v3 Subject Alternative Name: \n                URI:urn:devid:device:sensor-42",
        "X509v3 Subject Key Identifier",
        "X509v3 Authority Key Identifier",
        "OCSP - URI:https://ca.example.net/ocsp",
        "CA Issuers - URI:https://ca.example.net/v1/ca/issuing-1.cer",
        "X509v3 CRL Distribution Points",
        "URI:https://ca.example.net/crl/issuing-1.crl",
        "Signature Algorithm: ecdsa-with-SHA256",
        &format!("Serial Number:\n            {}", colon_hex(serial.as_bytes())),
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    for absent in ["evil.example.com", "CA:TRUE", "ignored-cn", "DNS:"] {
        assert!(!text.contains(absent), "leaf must not carry {absent:?}:\n{text}");
    }
}

fn colon_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(":")
}

#[test]
fn leaf_never_outlives_its_issuer_and_expired_issuer_is_refused() {
    let h = hierarchy();
    let info = IssuerInfo::from_cert_der(&h.issuing_der).expect("info");
    let (_k, csr_pem) = pki::csr_p256("x");
    let csr = devid_ca::csr::parse_and_verify(csr_pem.as_bytes()).expect("csr");
    let device = DeviceId::new("d1").expect("id");
    let (_, v) = devid_ca::profile::leaf_tbs(
        &info,
        SignatureAlgorithm::EcdsaP256Sha256,
        &profile(86400 * 3650),
        &Serial::random(&OsEntropy),
        &device,
        &csr.spki_der,
        now(),
    )
    .expect("tbs");
    assert_eq!(v.not_after, info.not_after);
    let err = devid_ca::profile::leaf_tbs(
        &info,
        SignatureAlgorithm::EcdsaP256Sha256,
        &profile(3600),
        &Serial::random(&OsEntropy),
        &device,
        &csr.spki_der,
        info.not_after.plus(1),
    )
    .expect_err("issuer expired");
    assert!(err.to_string().contains("expired"));
}

#[test]
fn a_bad_signature_from_the_kms_never_becomes_a_certificate() {
    let h = hierarchy();
    let info = IssuerInfo::from_cert_der(&h.issuing_der).expect("info");
    let (_k, csr_pem) = pki::csr_p256("x");
    let csr = devid_ca::csr::parse_and_verify(csr_pem.as_bytes()).expect("csr");
    let (tbs, _) = devid_ca::profile::leaf_tbs(
        &info,
        SignatureAlgorithm::EcdsaP256Sha256,
        &profile(3600),
        &Serial::random(&OsEntropy),
        &DeviceId::new("d2").expect("id"),
        &csr.spki_der,
        now(),
    )
    .expect("tbs");
    let bad = BadSigner(std::sync::Arc::new(h.issuing));
    let err = devid_ca::sign::sign_tbs(&bad, &tbs).expect_err("bad signature");
    assert!(matches!(err, devid_ca::CaError::Kms(KmsError::BadSignature)));
}

#[test]
fn ca_certificates_verify_strictly() {
    let h = hierarchy();
    let dir = tempfile::tempdir().expect("tmp");
    let pem = |d: &[u8]| devid_ca::to_pem("CERTIFICATE", d);
    std::fs::write(dir.path().join("root.pem"), pem(&h.root_der)).expect("w");
    std::fs::write(dir.path().join("issuing.pem"), pem(&h.issuing_der)).expect("w");
    let (ok, out) =
        pki::openssl(dir.path(), &["verify", "-x509_strict", "-CAfile", "root.pem", "issuing.pem"]);
    assert!(ok, "{out}");
    let text = pki::openssl_text(dir.path(), &pem(&h.issuing_der));
    assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
    assert!(text.contains("Certificate Sign, CRL Sign"), "{text}");
}

#[test]
fn the_ocsp_url_may_have_a_base_of_its_own() {
    let base = url::Url::parse("https://ca.example.net/pki/").expect("url");
    let id = CaId::new("issuing-1").expect("id");
    let urls = PublicUrls::for_issuer(&base, &id);
    assert_eq!(urls.ocsp, "https://ca.example.net/pki/ocsp");
    assert_eq!(urls.clone().with_ocsp_base(None), urls);
    let ocsp = url::Url::parse("http://ocsp.example.net:8081").expect("url");
    let moved = urls.clone().with_ocsp_base(Some(&ocsp));
    assert_eq!(moved.ocsp, "http://ocsp.example.net:8081/ocsp");
    assert_eq!((moved.ca_issuers, moved.crl), (urls.ca_issuers, urls.crl), "only the OCSP URL moves");
}
