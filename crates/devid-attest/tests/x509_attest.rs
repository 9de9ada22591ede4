//! X.509 IDevID attestation against real chains made with rcgen: root → intermediate →
//! device, signatures over the binding made with aws-lc-rs.
#![allow(clippy::unwrap_used)]

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair};
use devid_attest::x509::{IdSource, X509Policy, check_anchor, verify};
use devid_attest::{Failure, binding};
use devid_core::UnixTime;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, ExtendedKeyUsagePurpose,
    IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason, RevokedCertParams, SanType,
    SerialNumber, SignatureAlgorithm, date_time_ymd,
};

/// 2026-06-01T00:00:00Z: inside every default validity window below.
const NOW: UnixTime = UnixTime(1_780_272_000);
const DEVICE_SERIAL: [u8; 4] = [0x0d, 0xe7, 0x1c, 0xe5];

struct Pki {
    root_der: Vec<u8>,
    inter_der: Vec<u8>,
    inter: Issuer<'static, KeyPair>,
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::OrganizationName, "Acme Devices");
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p.not_before = date_time_ymd(2020, 1, 1);
    p.not_after = date_time_ymd(2045, 1, 1);
    p.key_identifier_method = KeyIdMethod::Sha256;
    p
}

fn pki(name: &str) -> Pki {
    let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let root_params = ca_params(&format!("{name} Root CA"));
    let root_der = root_params.self_signed(&root_key).unwrap().der().to_vec();
    let root = Issuer::new(root_params, root_key);
    let inter_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut inter_params = ca_params(&format!("{name} Device CA"));
    inter_params.use_authority_key_identifier_extension = true;
    let inter_der = inter_params.signed_by(&inter_key, &root).unwrap().der().to_vec();
    Pki { root_der, inter_der, inter: Issuer::new(inter_params, inter_key) }
}

/// The default device certificate: subject serialNumber and CN, no EKU, 2024–2034.
fn device_params() -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::OrganizationName, "Acme Devices");
    p.distinguished_name.push(DnType::CommonName, "sensor-cn-0001");
    p.distinguished_name.push(DnType::CustomDnType(vec![2, 5, 4, 5]), "SN-0001");
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.not_before = date_time_ymd(2024, 1, 1);
    p.not_after = date_time_ymd(2034, 1, 1);
    p.serial_number = Some(SerialNumber::from_slice(&DEVICE_SERIAL));
    p.use_authority_key_identifier_extension = true;
    p
}

fn device(pki: &Pki, alg: &'static SignatureAlgorithm, params: CertificateParams) -> (KeyPair, Vec<u8>) {
    let key = KeyPair::generate_for(alg).unwrap();
    let der = params.signed_by(&key, &pki.inter).unwrap().der().to_vec();
    (key, der)
}

/// Sign the binding with the device key as the protocol says for its type.
fn sign(key: &KeyPair, msg: &[u8]) -> Vec<u8> {
    let pkcs8 = key.serialize_der();
    let rng = SystemRandom::new();
    let alg = key.algorithm();
    if alg == &rcgen::PKCS_ECDSA_P256_SHA256 {
        let kp = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &pkcs8).unwrap();
        kp.sign(&rng, msg).unwrap().as_ref().to_vec()
    } else if alg == &rcgen::PKCS_ECDSA_P384_SHA384 {
        let kp = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P384_SHA384_ASN1_SIGNING, &pkcs8).unwrap();
        kp.sign(&rng, msg).unwrap().as_ref().to_vec()
    } else if alg == &rcgen::PKCS_RSA_SHA256 {
        let kp = RsaKeyPair::from_pkcs8(&pkcs8).unwrap();
        let mut sig = vec![0; kp.public_modulus_len()];
        kp.sign(&signature::RSA_PKCS1_SHA256, &rng, msg, &mut sig).unwrap();
        sig
    } else if alg == &rcgen::PKCS_ED25519 {
        let kp = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8).unwrap();
        assert_eq!(kp.public_key().as_ref().len(), 32);
        kp.sign(msg).as_ref().to_vec()
    } else {
        panic!("no signer for {alg:?}")
    }
}

fn policy(pki: &Pki, id_source: IdSource) -> X509Policy {
    X509Policy { anchors: vec![pki.root_der.clone()], crls: vec![], id_source }
}

fn the_binding() -> [u8; 32] {
    binding(&[9; 32], b"a CSR")
}

/// Verify a freshly made device certificate with its own correct signature.
fn check(
    pki: &Pki,
    policy: &X509Policy,
    params: CertificateParams,
    now: UnixTime,
) -> Result<String, Failure> {
    let (key, der) = device(pki, &rcgen::PKCS_ECDSA_P256_SHA256, params);
    let b = the_binding();
    verify(policy, &[der, pki.inter_der.clone()], &sign(&key, &b), &b, now)
        .map(|a| a.device_id)
        .map_err(|e| e.failure)
}

#[test]
fn good_chain_for_each_key_type() {
    let pki = pki("Acme");
    let policy = policy(&pki, IdSource::SubjectSerialNumber);
    for alg in [
        &rcgen::PKCS_ECDSA_P256_SHA256,
        &rcgen::PKCS_ECDSA_P384_SHA384,
        &rcgen::PKCS_RSA_SHA256,
        &rcgen::PKCS_ED25519,
    ] {
        let (key, der) = device(&pki, alg, device_params());
        let b = the_binding();
        let a = verify(&policy, &[der.clone(), pki.inter_der.clone()], &sign(&key, &b), &b, NOW)
            .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(a.device_id, "SN-0001");
        let s = &a.summary;
        assert_eq!(s["method"], "x509");
        assert_eq!(s["serial"], hex::encode(DEVICE_SERIAL));
        assert!(s["subject"].as_str().unwrap().contains("SN-0001"), "{s}");
        assert!(s["issuer"].as_str().unwrap().contains("Acme Device CA"), "{s}");
        let fp = s["fingerprint_sha256"].as_str().unwrap();
        assert_eq!(fp.len(), 32 * 3 - 1, "{fp}");
    }
}

#[test]
fn id_sources() {
    let pki = pki("Acme");
    let mut p = device_params();
    p.subject_alt_names = vec![
        SanType::URI("urn:acme:device:uri-0001".try_into().unwrap()),
        SanType::URI("https://acme.example/other".try_into().unwrap()),
        SanType::DnsName("dns-0001.devices.acme.example".try_into().unwrap()),
    ];
    let cn = check(&pki, &policy(&pki, IdSource::SubjectCommonName), p.clone(), NOW);
    assert_eq!(cn, Ok("sensor-cn-0001".to_string()));
    let uri = IdSource::SanUri { prefix: "urn:acme:device:".into() };
    assert_eq!(check(&pki, &policy(&pki, uri), p.clone(), NOW), Ok("uri-0001".to_string()));
    let dns = check(&pki, &policy(&pki, IdSource::SanDns), p.clone(), NOW);
    assert_eq!(dns, Ok("dns-0001.devices.acme.example".to_string()));

    // The id is missing for the source.
    let other_prefix = IdSource::SanUri { prefix: "urn:other:".into() };
    assert_eq!(check(&pki, &policy(&pki, other_prefix), p, NOW), Err(Failure::NoDeviceId));
    assert_eq!(check(&pki, &policy(&pki, IdSource::SanDns), device_params(), NOW), Err(Failure::NoDeviceId));
    let mut no_serial = device_params();
    no_serial.distinguished_name.remove(DnType::CustomDnType(vec![2, 5, 4, 5]));
    let policy_serial = policy(&pki, IdSource::SubjectSerialNumber);
    assert_eq!(check(&pki, &policy_serial, no_serial, NOW), Err(Failure::NoDeviceId));
    // Present but not a valid device id.
    let mut bad = device_params();
    bad.distinguished_name.remove(DnType::CustomDnType(vec![2, 5, 4, 5]));
    bad.distinguished_name.push(DnType::CustomDnType(vec![2, 5, 4, 5]), "SN 0001/x");
    assert_eq!(check(&pki, &policy_serial, bad, NOW), Err(Failure::NoDeviceId));
}

#[test]
fn untrusted_root() {
    let acme = pki("Acme");
    let other = pki("Other");
    let p = policy(&other, IdSource::SubjectSerialNumber);
    assert_eq!(check(&acme, &p, device_params(), NOW), Err(Failure::UntrustedChain));
    // The intermediate left out: the device certificate's issuer is unknown.
    let (key, der) = device(&acme, &rcgen::PKCS_ECDSA_P256_SHA256, device_params());
    let b = the_binding();
    let e =
        verify(&policy(&acme, IdSource::SubjectSerialNumber), &[der], &sign(&key, &b), &b, NOW).unwrap_err();
    assert_eq!(e.failure, Failure::UntrustedChain);
    // No anchor at all.
    let none = X509Policy { anchors: vec![], crls: vec![], id_source: IdSource::SubjectSerialNumber };
    assert_eq!(check(&acme, &none, device_params(), NOW), Err(Failure::UntrustedChain));
}

#[test]
fn expired_and_not_yet_valid() {
    let pki = pki("Acme");
    let policy = policy(&pki, IdSource::SubjectSerialNumber);
    let mut expired = device_params();
    expired.not_before = date_time_ymd(2020, 1, 1);
    expired.not_after = date_time_ymd(2025, 1, 1);
    assert_eq!(check(&pki, &policy, expired, NOW), Err(Failure::Expired));
    let mut future = device_params();
    future.not_before = date_time_ymd(2027, 1, 1);
    assert_eq!(check(&pki, &policy, future.clone(), NOW), Err(Failure::Expired));
    // The same certificate is good once its time has come.
    assert_eq!(check(&pki, &policy, future, UnixTime(1_830_000_000)), Ok("SN-0001".to_string()));
}

#[test]
fn revoked_by_manufacturer_crl() {
    let pki = pki("Acme");
    let crl = |serials: Vec<SerialNumber>| {
        let params = CertificateRevocationListParams {
            this_update: date_time_ymd(2026, 5, 1),
            next_update: date_time_ymd(2026, 5, 8),
            crl_number: SerialNumber::from(7u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .into_iter()
                .map(|serial_number| RevokedCertParams {
                    serial_number,
                    revocation_time: date_time_ymd(2026, 4, 1),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params.signed_by(&pki.inter).unwrap().der().to_vec()
    };
    let mut p = policy(&pki, IdSource::SubjectSerialNumber);
    // A CRL that lists someone else: accepted (and its nextUpdate, already past, is not
    // enforced).
    p.crls = vec![crl(vec![SerialNumber::from(99u64)])];
    assert_eq!(check(&pki, &p, device_params(), NOW), Ok("SN-0001".to_string()));
    // A CRL that lists this device.
    p.crls = vec![crl(vec![SerialNumber::from_slice(&DEVICE_SERIAL)])];
    assert_eq!(check(&pki, &p, device_params(), NOW), Err(Failure::Revoked));
    // A CRL that does not parse: fail closed.
    p.crls = vec![b"not a CRL".to_vec()];
    assert_eq!(check(&pki, &p, device_params(), NOW), Err(Failure::UntrustedChain));
}

#[test]
fn signature_by_another_key_or_over_another_binding() {
    let pki = pki("Acme");
    let policy = policy(&pki, IdSource::SubjectSerialNumber);
    let (key, der) = device(&pki, &rcgen::PKCS_ECDSA_P256_SHA256, device_params());
    let chain = [der, pki.inter_der.clone()];
    let b = the_binding();
    let other = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let e = verify(&policy, &chain, &sign(&other, &b), &b, NOW).unwrap_err();
    assert_eq!(e.failure, Failure::BadProof);
    let other_binding = binding(&[10; 32], b"a CSR");
    let e = verify(&policy, &chain, &sign(&key, &other_binding), &b, NOW).unwrap_err();
    assert_eq!(e.failure, Failure::BadProof);
    let e = verify(&policy, &chain, b"", &b, NOW).unwrap_err();
    assert_eq!(e.failure, Failure::BadProof);
    // And the right one passes.
    assert!(verify(&policy, &chain, &sign(&key, &b), &b, NOW).is_ok());
}

#[test]
fn server_auth_only_eku_is_refused() {
    let pki = pki("Acme");
    let policy = policy(&pki, IdSource::SubjectSerialNumber);
    let mut p = device_params();
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    assert_eq!(check(&pki, &policy, p, NOW), Err(Failure::BadAttributes));
    // clientAuth, alone or with serverAuth, is accepted.
    let mut p = device_params();
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    assert_eq!(check(&pki, &policy, p, NOW), Ok("SN-0001".to_string()));
}

#[test]
fn ca_certificate_as_the_device_is_refused() {
    let pki = pki("Acme");
    let policy = policy(&pki, IdSource::SubjectSerialNumber);
    let mut p = device_params();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    assert_eq!(check(&pki, &policy, p, NOW), Err(Failure::BadAttributes));
    // The intermediate itself presented as the device.
    let e = verify(&policy, std::slice::from_ref(&pki.inter_der), b"sig", &the_binding(), NOW).unwrap_err();
    assert_eq!(e.failure, Failure::BadAttributes);
}

#[test]
fn garbage_in_the_chain_is_malformed() {
    let pki = pki("Acme");
    let policy = policy(&pki, IdSource::SubjectSerialNumber);
    let (key, der) = device(&pki, &rcgen::PKCS_ECDSA_P256_SHA256, device_params());
    let b = the_binding();
    let e = verify(&policy, &[der.clone(), b"junk".to_vec()], &sign(&key, &b), &b, NOW).unwrap_err();
    assert_eq!(e.failure, Failure::Malformed);
    let mut truncated = der.clone();
    truncated.truncate(der.len() - 10);
    let e = verify(&policy, &[truncated], &sign(&key, &b), &b, NOW).unwrap_err();
    assert_eq!(e.failure, Failure::Malformed);
    let long = vec![der; 9];
    assert_eq!(verify(&policy, &long, b"", &b, NOW).unwrap_err().failure, Failure::Malformed);
}

#[test]
fn anchors_are_checked() {
    let pki = pki("Acme");
    let info = check_anchor(&pki.root_der).unwrap();
    assert!(info.subject.contains("Acme Root CA"), "{info:?}");
    assert_eq!(info.fingerprint_sha256.len(), 95);
    assert!(check_anchor(&pki.inter_der).is_ok());
    let (_, leaf) = device(&pki, &rcgen::PKCS_ECDSA_P256_SHA256, device_params());
    assert_eq!(check_anchor(&leaf).unwrap_err().failure, Failure::BadAttributes);
    assert_eq!(check_anchor(b"\x30\x03\x02\x01\x00").unwrap_err().failure, Failure::Malformed);
}

/// A chain signed with ECDSA P-256 and SHA-512 (ecdsa-with-SHA512, RFC 5758 §3.2) is
/// accepted, and its signature checked: the pair is one that only aws-lc-rs verifies (ring
/// has no P-256/SHA-512), so this fails if the chain algorithms lose it. rcgen cannot sign
/// with that pair: its device certificate gets the algorithm identifiers changed and is
/// signed again, with p256 over the SHA-512 digest.
#[test]
fn p256_with_sha512_chains_are_verified() {
    use der::{Decode, Encode};
    use p256::ecdsa::signature::hazmat::PrehashSigner;
    use p256::pkcs8::DecodePrivateKey;
    use sha2::Digest;

    let pki = pki("Sha512");
    let (key, der) = device(&pki, &rcgen::PKCS_ECDSA_P256_SHA256, device_params());
    let mut cert = x509_cert::Certificate::from_der(&der).unwrap();
    let alg =
        spki::AlgorithmIdentifierOwned { oid: const_oid::db::rfc5912::ECDSA_WITH_SHA_512, parameters: None };
    cert.tbs_certificate.signature = alg.clone();
    cert.signature_algorithm = alg;
    let tbs = cert.tbs_certificate.to_der().unwrap();
    let issuer = p256::ecdsa::SigningKey::from_pkcs8_der(&pki.inter.key().serialize_der()).unwrap();
    let sig: p256::ecdsa::Signature = issuer.sign_prehash(&sha2::Sha512::digest(&tbs)).unwrap();
    let resign = |sig: &[u8]| {
        let mut c = cert.clone();
        c.signature = der::asn1::BitString::from_bytes(sig).unwrap();
        c.to_der().unwrap()
    };
    let good = resign(sig.to_der().as_bytes());
    let b = the_binding();
    let proof = sign(&key, &b);
    let policy = policy(&pki, IdSource::SubjectSerialNumber);
    let ok = verify(&policy, &[good, pki.inter_der.clone()], &proof, &b, NOW).map_err(|e| e.failure);
    assert_eq!(ok.map(|a| a.device_id), Ok("SN-0001".to_string()));

    // The SHA-512 signature is checked: another one of the intermediate's, over other bytes,
    // is refused.
    let other: p256::ecdsa::Signature = issuer.sign_prehash(&sha2::Sha512::digest(b"other")).unwrap();
    let bad = resign(other.to_der().as_bytes());
    let refused = verify(&policy, &[bad, pki.inter_der.clone()], &proof, &b, NOW).map_err(|e| e.failure);
    assert_eq!(refused.map(|a| a.device_id), Err(Failure::UntrustedChain));
}
