//! CRLs, checked by openssl and by the x509-cert parser: an empty CRL, entries with reason
//! codes, revocation checking of leaves with `openssl verify -crl_check`, the sharded
//! (issuingDistributionPoint) variant, a large CRL, and the shard function.

use der::{Decode, Encode};
use devid_ca::crl::{CrlBuilder, CrlEntry, CrlParams, IssuingDistributionPoint, shard_of};
use devid_ca::profile::{CaSubject, IssuerInfo, LeafProfile, PublicUrls};
use devid_core::{CaId, DeviceId, OsEntropy, RevocationReason, Serial, UnixTime};
use devid_kms::{KmsError, SignatureAlgorithm};
use devid_testkit::pki;
use devid_testkit::signer::{BadSigner, MemSigner};
use x509_cert::crl::CertificateList;
use x509_cert::ext::pkix::crl::{CrlNumber, CrlReason};
use x509_cert::time::Time;

const ALG: SignatureAlgorithm = SignatureAlgorithm::EcdsaP256Sha256;

fn now() -> UnixTime {
    UnixTime(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("time").as_secs() as i64
    )
}

struct Hierarchy {
    issuing: MemSigner,
    info: IssuerInfo,
    dir: tempfile::TempDir,
}

impl Hierarchy {
    fn new() -> Hierarchy {
        let (root, issuing) = (MemSigner::new(), MemSigner::new());
        let subject = |cn: &str| CaSubject { common_name: cn.into(), organization: "devid test".into() };
        let root_tbs = devid_ca::profile::root_tbs(
            ALG,
            &subject("Test Root"),
            &Serial::random(&OsEntropy),
            &root.spki,
            now(),
            86400 * 3650,
        )
        .expect("root tbs");
        let root_der = devid_ca::sign::sign_tbs(&root, &root_tbs).expect("sign root");
        let root_info = IssuerInfo::from_cert_der(&root_der).expect("root info");
        let issuing_tbs = devid_ca::profile::issuing_tbs(
            &root_info,
            ALG,
            &subject("Test Issuing"),
            &Serial::random(&OsEntropy),
            &issuing.spki,
            now(),
            86400 * 365,
        )
        .expect("issuing tbs");
        let issuing_der = devid_ca::sign::sign_tbs(&root, &issuing_tbs).expect("sign issuing");
        let info = IssuerInfo::from_cert_der(&issuing_der).expect("issuing info");
        let dir = tempfile::tempdir().expect("tmp");
        let pem = |d: &[u8]| devid_ca::to_pem("CERTIFICATE", d);
        std::fs::write(dir.path().join("issuing.pem"), pem(&issuing_der)).expect("write");
        std::fs::write(dir.path().join("chain.pem"), pem(&root_der) + &pem(&issuing_der)).expect("write");
        Hierarchy { issuing, info, dir }
    }

    /// A device leaf with `serial`, its cRLDistributionPoints URI set to `crl_url`;
    /// written to `<name>.pem`.
    fn leaf(&self, name: &str, serial: &Serial, crl_url: &str) {
        let (_key, csr_pem) = pki::csr_p256(name);
        let csr = devid_ca::csr::parse_and_verify(csr_pem.as_bytes()).expect("csr");
        let base = url::Url::parse("https://ca.example.net/").expect("url");
        let mut urls = PublicUrls::for_issuer(&base, &CaId::new("issuing-1").expect("id"));
        urls.crl = crl_url.into();
        let profile = LeafProfile {
            validity_secs: 86400,
            backdate_secs: 60,
            device_uri_prefix: devid_ca::profile::DEFAULT_DEVICE_URI_PREFIX.into(),
            urls,
            crl_shards: 1,
        };
        let (tbs, _) = devid_ca::profile::leaf_tbs(
            &self.info,
            ALG,
            &profile,
            serial,
            &DeviceId::new(name).expect("id"),
            &csr.spki_der,
            now(),
        )
        .expect("leaf tbs");
        let der = devid_ca::sign::sign_tbs(&self.issuing, &tbs).expect("sign leaf");
        std::fs::write(self.dir.path().join(format!("{name}.pem")), devid_ca::to_pem("CERTIFICATE", &der))
            .expect("write leaf");
    }

    fn openssl(&self, args: &[&str]) -> (bool, String) {
        pki::openssl(self.dir.path(), args)
    }

    /// Write the CRL as `crl.der` and `crl.pem`; return `openssl crl -text`.
    fn crl_text(&self, der: &[u8]) -> String {
        std::fs::write(self.dir.path().join("crl.der"), der).expect("write");
        std::fs::write(self.dir.path().join("crl.pem"), devid_ca::to_pem("X509 CRL", der)).expect("write");
        let (ok, text) = self.openssl(&["crl", "-inform", "DER", "-in", "crl.der", "-noout", "-text"]);
        assert!(ok, "openssl crl failed: {text}");
        text
    }

    /// `openssl crl -verify` against the issuing CA certificate.
    fn crl_verifies(&self) -> String {
        let (ok, out) = self.openssl(&[
            "crl",
            "-inform",
            "DER",
            "-in",
            "crl.der",
            "-noout",
            "-verify",
            "-CAfile",
            "issuing.pem",
        ]);
        assert!(ok && out.contains("verify OK"), "openssl crl -verify: {out}");
        out
    }
}

fn params(crl_number: u64) -> CrlParams {
    let t = now();
    CrlParams { crl_number, this_update: t.plus(-60), next_update: t.plus(86400), idp: None }
}

fn serial_hex_upper(s: &Serial) -> String {
    s.to_hex().to_uppercase()
}

/// A random serial as `Serial::random` makes it: 20 octets, top bit clear.
fn random_serial() -> Serial {
    Serial::random(&OsEntropy)
}

#[test]
fn empty_crl_has_no_revoked_list_and_verifies() {
    let h = Hierarchy::new();
    let b = CrlBuilder::new(&h.info, ALG, params(42)).expect("builder");
    assert!(b.is_empty());
    let der = b.finish(&h.issuing).expect("finish");
    let text = h.crl_text(&der);
    for needle in [
        "Version 2 (0x1)",
        "Signature Algorithm: ecdsa-with-SHA256",
        "Issuer: O = devid test, CN = Test Issuing",
        "X509v3 Authority Key Identifier",
        &h.info.ski.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":"),
        "X509v3 CRL Number: \n                42",
        "No Revoked Certificates.",
        "Next Update:",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    assert!(!text.contains("Issuing Distribution Point"), "{text}");
    h.crl_verifies();

    // RFC 5280 §5.1.2.6: the list is absent, not an empty SEQUENCE.
    let crl = CertificateList::from_der(&der).expect("parse");
    assert_eq!(crl.tbs_cert_list.revoked_certificates, None);
    assert_eq!(crl.tbs_cert_list.issuer, h.info.name);
    assert_eq!(crl.tbs_cert_list.version, x509_cert::Version::V2);
    // Canonical: re-encoding the parsed CRL gives the same bytes.
    assert_eq!(crl.to_der().expect("der"), der);
}

#[test]
fn entries_carry_serials_and_reason_codes_but_no_unspecified() {
    let h = Hierarchy::new();
    let t = now();
    let cases: Vec<(Serial, Option<RevocationReason>, &str)> = vec![
        (random_serial(), Some(RevocationReason::KeyCompromise), "Key Compromise"),
        (random_serial(), Some(RevocationReason::Superseded), "Superseded"),
        (random_serial(), Some(RevocationReason::CessationOfOperation), "Cessation Of Operation"),
        (random_serial(), Some(RevocationReason::AffiliationChanged), "Affiliation Changed"),
        (random_serial(), Some(RevocationReason::PrivilegeWithdrawn), "Privilege Withdrawn"),
        (random_serial(), Some(RevocationReason::Unspecified), ""),
        (random_serial(), None, ""),
    ];
    let mut b = CrlBuilder::new(&h.info, ALG, params(7)).expect("builder");
    for (i, (serial, reason, _)) in cases.iter().enumerate() {
        b.push(&CrlEntry { serial, revoked_at: t.plus(-(i as i64) * 3600), reason: *reason }).expect("push");
    }
    assert_eq!(b.len(), cases.len());
    let der = b.finish(&h.issuing).expect("finish");
    let text = h.crl_text(&der);
    h.crl_verifies();
    assert!(text.contains("Revoked Certificates:"), "{text}");
    assert!(text.contains("X509v3 CRL Number: \n                7"), "{text}");

    // openssl lists entries in order; split its listing into one block per entry.
    let blocks: Vec<&str> = text.split("Serial Number: ").skip(1).collect();
    assert_eq!(blocks.len(), cases.len(), "{text}");
    for ((serial, reason, label), block) in cases.iter().zip(&blocks) {
        assert!(block.starts_with(&serial_hex_upper(serial)), "expected {serial} first in {block:?}");
        assert!(block.contains("Revocation Date:"), "{block}");
        match reason {
            Some(r) if *r != RevocationReason::Unspecified => {
                assert!(block.contains("X509v3 CRL Reason Code: \n"), "{block}");
                assert!(block.contains(label), "missing {label:?} in {block}");
            }
            _ => {
                assert!(!block.contains("CRL entry extensions"), "unspecified must carry no reason: {block}");
                assert!(!block.contains("Reason Code"), "{block}");
            }
        }
    }

    // The same through the x509-cert parser: reason codes, and entry order.
    let crl = CertificateList::from_der(&der).expect("parse");
    let revoked = crl.tbs_cert_list.revoked_certificates.expect("revoked list");
    assert_eq!(revoked.len(), cases.len());
    for ((serial, reason, _), entry) in cases.iter().zip(&revoked) {
        assert_eq!(entry.serial_number.as_bytes(), serial.as_bytes());
        let exts = entry.crl_entry_extensions.as_deref().unwrap_or_default();
        match reason {
            Some(r) if *r != RevocationReason::Unspecified => {
                assert_eq!(exts.len(), 1);
                assert!(!exts[0].critical);
                let code = CrlReason::from_der(exts[0].extn_value.as_bytes()).expect("reason");
                assert_eq!(code as u8, r.code());
            }
            _ => assert!(entry.crl_entry_extensions.is_none()),
        }
    }
}

#[test]
fn openssl_crl_check_rejects_the_revoked_leaf_and_accepts_the_good_one() {
    let h = Hierarchy::new();
    let (revoked, good) = (random_serial(), random_serial());
    // The leaves' CRL DP URL does not matter with -CRLfile and a CRL without an IDP.
    h.leaf("revoked", &revoked, "https://ca.example.net/crl/issuing-1.crl");
    h.leaf("good", &good, "https://ca.example.net/crl/issuing-1.crl");
    let mut b = CrlBuilder::new(&h.info, ALG, params(1)).expect("builder");
    for i in 0..10 {
        let s = random_serial();
        b.push(&CrlEntry { serial: &s, revoked_at: now().plus(-i), reason: None }).expect("push");
    }
    b.push(&CrlEntry {
        serial: &revoked,
        revoked_at: now().plus(-30),
        reason: Some(RevocationReason::KeyCompromise),
    })
    .expect("push");
    let der = b.finish(&h.issuing).expect("finish");
    h.crl_text(&der);

    let verify = |leaf: &str| {
        h.openssl(&["verify", "-crl_check", "-CAfile", "chain.pem", "-CRLfile", "crl.pem", leaf])
    };
    let (ok, out) = verify("revoked.pem");
    assert!(!ok, "a revoked leaf must not verify: {out}");
    assert!(out.contains("certificate revoked"), "{out}");
    let (ok, out) = verify("good.pem");
    assert!(ok && out.contains("good.pem: OK"), "{out}");
    // And without -crl_check both verify: the failure above is the CRL's doing.
    let (ok, out) = h.openssl(&["verify", "-CAfile", "chain.pem", "revoked.pem"]);
    assert!(ok, "{out}");
}

#[test]
fn sharded_crl_has_a_critical_idp_that_openssl_matches_to_the_leaf() {
    let h = Hierarchy::new();
    let shards = 16;
    let revoked = random_serial();
    let shard = shard_of(&revoked, shards);
    let uri = format!("https://ca.example.net/crl/issuing-1/{shard}.crl");
    h.leaf("revoked", &revoked, &uri);
    let mut p = params(3);
    p.idp = Some(IssuingDistributionPoint { uri: uri.clone() });
    let mut b = CrlBuilder::new(&h.info, ALG, p).expect("builder");
    b.push(&CrlEntry { serial: &revoked, revoked_at: now().plus(-30), reason: None }).expect("push");
    let der = b.finish(&h.issuing).expect("finish");
    let text = h.crl_text(&der);
    for needle in [
        "X509v3 Issuing Distribution Point: critical",
        "Full Name:",
        &format!("URI:{uri}"),
        "Only User Certificates",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    assert!(!text.contains("Only CA Certificates"), "{text}");
    h.crl_verifies();
    // The IDP names the leaf's CRL DP, so openssl accepts the shard as in scope.
    let (ok, out) =
        h.openssl(&["verify", "-crl_check", "-CAfile", "chain.pem", "-CRLfile", "crl.pem", "revoked.pem"]);
    assert!(!ok && out.contains("certificate revoked"), "{out}");

    // The extension carries the RFC 5280 OID 2.5.29.28 (not x509-cert 0.2.5's mislabel).
    let crl = CertificateList::from_der(&der).expect("parse");
    let exts = crl.tbs_cert_list.crl_extensions.expect("extensions");
    let idp = exts
        .iter()
        .find(|e| e.extn_id == const_oid::db::rfc5280::ID_CE_ISSUING_DISTRIBUTION_POINT)
        .expect("IDP extension");
    assert!(idp.critical);
    let parsed = x509_cert::ext::pkix::crl::IssuingDistributionPoint::from_der(idp.extn_value.as_bytes())
        .expect("idp");
    assert!(parsed.only_contains_user_certs);
}

#[test]
fn large_crl_parses_back_with_every_entry() {
    let h = Hierarchy::new();
    const N: usize = 100_000;
    let serials: Vec<Serial> = (0..N)
        .map(|i| {
            // Mix 20-octet random serials with short ones and ones needing a 0x00 pad.
            match i % 3 {
                0 => random_serial(),
                1 => Serial::from_bytes(&(i as u64 + 1).to_be_bytes()).expect("serial"),
                _ => Serial::from_bytes(&[0x80, (i >> 16) as u8, (i >> 8) as u8, i as u8]).expect("serial"),
            }
        })
        .collect();
    let reasons = [
        None,
        Some(RevocationReason::KeyCompromise),
        Some(RevocationReason::Unspecified),
        Some(RevocationReason::Superseded),
    ];
    let t = now();
    let started = std::time::Instant::now();
    let mut b = CrlBuilder::new(&h.info, ALG, params(u64::MAX)).expect("builder");
    for (i, serial) in serials.iter().enumerate() {
        b.push(&CrlEntry { serial, revoked_at: t.plus(-(i as i64)), reason: reasons[i % 4] }).expect("push");
    }
    let der = b.finish(&h.issuing).expect("finish");
    eprintln!("{N} entries: {} bytes in {:?}", der.len(), started.elapsed());

    let crl = CertificateList::from_der(&der).expect("parse");
    // The TBSCertList in the output is what was signed: canonical re-encoding, and the
    // signature verifies over exactly those bytes.
    let tbs = crl.tbs_cert_list.to_der().expect("tbs der");
    let off = der.len()
        - tbs.len()
        - crl.signature_algorithm.to_der().expect("alg").len()
        - crl.signature.to_der().expect("sig").len();
    assert_eq!(&der[off..off + tbs.len()], tbs.as_slice());
    devid_kms::verify_p256_sha256(&h.info.spki_der, &tbs, crl.signature.raw_bytes()).expect("signature");

    let revoked = crl.tbs_cert_list.revoked_certificates.as_ref().expect("entries");
    assert_eq!(revoked.len(), N);
    for (i, (entry, serial)) in revoked.iter().zip(&serials).enumerate() {
        // x509-cert keeps the 0x00 pad octet of a serial whose top bit is set.
        let got = entry.serial_number.as_bytes();
        let got = if got.len() > 1 && got[0] == 0 { &got[1..] } else { got };
        assert_eq!(got, serial.as_bytes(), "entry {i}");
        let has_reason = matches!(reasons[i % 4], Some(r) if r != RevocationReason::Unspecified);
        assert_eq!(entry.crl_entry_extensions.is_some(), has_reason, "entry {i}");
    }
    let number = crl
        .tbs_cert_list
        .crl_extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id == const_oid::db::rfc5280::ID_CE_CRL_NUMBER)
        .expect("cRLNumber");
    assert!(!number.critical);
    let number = CrlNumber::from_der(number.extn_value.as_bytes()).expect("number");
    assert_eq!(number.0.as_bytes(), &[0xff; 8]);
    // openssl reads it too.
    h.crl_text(&der);
    h.crl_verifies();
}

#[test]
fn shard_of_is_stable_and_even() {
    // Stable: a pure function of the serial's value.
    let s = Serial::from_hex("3a00000000000000000000000000000000000123").expect("serial");
    assert_eq!(shard_of(&s, 16), 0x3);
    assert_eq!(shard_of(&s, 10), (0x123 % 10) as u16);
    assert_eq!(shard_of(&s, 16), shard_of(&s.clone(), 16));
    assert_eq!(shard_of(&s, 0), 0);
    assert_eq!(shard_of(&s, 1), 0);

    for shards in [16u16, 10, 7] {
        let n = 10_000;
        let mut counts = vec![0usize; shards as usize];
        for _ in 0..n {
            let shard = shard_of(&random_serial(), shards);
            assert!(shard < shards);
            counts[shard as usize] += 1;
        }
        let mean = n as f64 / shards as f64;
        for (i, c) in counts.iter().enumerate() {
            let dev = (*c as f64 - mean).abs() / mean;
            assert!(dev <= 0.30, "shard {i} of {shards} has {c} serials (mean {mean}): {counts:?}");
        }
    }
}

#[test]
fn times_follow_the_utctime_generalizedtime_rule() {
    let h = Hierarchy::new();
    // 2049-12-31T23:59:59Z is UTCTime, 2050-01-01T00:00:00Z is GeneralizedTime.
    let (last_utc, first_gen) = (UnixTime(2_524_607_999), UnixTime(2_524_608_000));
    let p = CrlParams { crl_number: 0, this_update: last_utc, next_update: first_gen, idp: None };
    let mut b = CrlBuilder::new(&h.info, ALG, p).expect("builder");
    let (a, c) = (random_serial(), random_serial());
    b.push(&CrlEntry { serial: &a, revoked_at: last_utc, reason: None }).expect("push");
    b.push(&CrlEntry { serial: &c, revoked_at: first_gen, reason: None }).expect("push");
    let der = b.finish(&h.issuing).expect("finish");
    let crl = CertificateList::from_der(&der).expect("parse");
    let tbs = crl.tbs_cert_list;
    assert!(matches!(tbs.this_update, Time::UtcTime(_)));
    assert!(matches!(tbs.next_update, Some(Time::GeneralTime(_))));
    let revoked = tbs.revoked_certificates.expect("entries");
    assert!(matches!(revoked[0].revocation_date, Time::UtcTime(_)));
    assert!(matches!(revoked[1].revocation_date, Time::GeneralTime(_)));
    assert_eq!(revoked[1].revocation_date.to_unix_duration().as_secs(), first_gen.0 as u64);
}

#[test]
fn bad_inputs_and_bad_signers_never_yield_a_crl() {
    let mut h = Hierarchy::new();
    // nextUpdate must be after thisUpdate.
    let mut p = params(1);
    p.next_update = p.this_update;
    assert!(CrlBuilder::new(&h.info, ALG, p).is_err());

    // A signer returning a bad signature.
    let b = CrlBuilder::new(&h.info, ALG, params(1)).expect("builder");
    let issuing = std::sync::Arc::new(std::mem::take(&mut h.issuing));
    let err = b.finish(&BadSigner(issuing.clone())).expect_err("bad signature");
    assert!(matches!(err, devid_ca::CaError::Kms(KmsError::BadSignature)), "{err}");

    // A signer holding another key than the issuer's.
    let b = CrlBuilder::new(&h.info, ALG, params(1)).expect("builder");
    let err = b.finish(&MemSigner::new()).expect_err("wrong key");
    assert!(err.to_string().contains("not the CRL issuer's key"), "{err}");
}
