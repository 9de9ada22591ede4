//! OCSP, checked by openssl as the independent client: openssl builds the requests
//! (`openssl ocsp -reqout`), this crate parses them and signs the answers with a delegated
//! responder, and openssl verifies the answers against the root (`openssl ocsp -respin`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use der::{Decode, Encode};
use devid_ca::ocsp::{
    ErrorStatus, HashAlgorithm, IssuerHashes, OcspError, ParsedRequest, Responder, SingleStatus, Status,
};
use devid_ca::profile::{CaSubject, IssuerInfo, LeafProfile, PublicUrls};
use devid_core::{CaId, DeviceId, OsEntropy, RevocationReason, Serial, UnixTime};
use devid_kms::{KmsError, SignatureAlgorithm, Signer};
use devid_testkit::pki;
use devid_testkit::signer::{BadSigner, MemSigner};

fn now() -> UnixTime {
    UnixTime(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("time").as_secs() as i64
    )
}

const ALG: SignatureAlgorithm = SignatureAlgorithm::EcdsaP256Sha256;

/// A root, an issuing CA, a delegated responder and three leaves, all written as PEM into
/// a temporary directory: root.pem, issuing.pem, responder.pem, leaf1.pem … leaf3.pem.
struct Pki {
    dir: tempfile::TempDir,
    root_der: Vec<u8>,
    issuing_der: Vec<u8>,
    responder_der: Vec<u8>,
    responder_signer: Arc<MemSigner>,
    issuing_signer: Arc<MemSigner>,
    leaves: Vec<(Serial, Vec<u8>)>,
}

fn pem(der: &[u8]) -> String {
    devid_ca::to_pem("CERTIFICATE", der)
}

fn pki() -> Pki {
    let (root, issuing) = (MemSigner::new(), MemSigner::new());
    let subject = |cn: &str| CaSubject { common_name: cn.into(), organization: "devid test".into() };
    let t = now();
    let root_tbs = devid_ca::profile::root_tbs(
        ALG,
        &subject("Test Root"),
        &Serial::random(&OsEntropy),
        &root.spki,
        t,
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
        t,
        86400 * 365,
    )
    .expect("issuing tbs");
    let issuing_der = devid_ca::sign::sign_tbs(&root, &issuing_tbs).expect("sign issuing");
    let info = IssuerInfo::from_cert_der(&issuing_der).expect("issuing info");

    let responder_signer = Arc::new(MemSigner::new());
    let responder_tbs = devid_ca::profile::ocsp_responder_tbs(
        &info,
        ALG,
        &Serial::random(&OsEntropy),
        &responder_signer.spki,
        "devid OCSP responder",
        t,
        86400 * 7,
    )
    .expect("responder tbs");
    let responder_der = devid_ca::sign::sign_tbs(&issuing, &responder_tbs).expect("sign responder");

    let profile = LeafProfile {
        validity_secs: 86400,
        backdate_secs: 60,
        device_uri_prefix: devid_ca::profile::DEFAULT_DEVICE_URI_PREFIX.into(),
        urls: PublicUrls::for_issuer(
            &url::Url::parse("https://ca.example.net/").expect("url"),
            &CaId::new("issuing-1").expect("id"),
        ),
        crl_shards: 1,
    };
    let leaves: Vec<(Serial, Vec<u8>)> = (1..=3)
        .map(|i| {
            let (_key, csr_pem) = pki::csr_p256(&format!("sensor-{i}"));
            let csr = devid_ca::csr::parse_and_verify(csr_pem.as_bytes()).expect("csr");
            let serial = Serial::random(&OsEntropy);
            let (tbs, _) = devid_ca::profile::leaf_tbs(
                &info,
                ALG,
                &profile,
                &serial,
                &DeviceId::new(format!("sensor-{i}")).expect("id"),
                &csr.spki_der,
                t,
            )
            .expect("leaf tbs");
            (serial, devid_ca::sign::sign_tbs(&issuing, &tbs).expect("sign leaf"))
        })
        .collect();

    let dir = tempfile::tempdir().expect("tmp");
    let write = |name: &str, der: &[u8]| std::fs::write(dir.path().join(name), pem(der)).expect("write");
    write("root.pem", &root_der);
    write("issuing.pem", &issuing_der);
    write("responder.pem", &responder_der);
    for (i, (_, der)) in leaves.iter().enumerate() {
        write(&format!("leaf{}.pem", i + 1), der);
    }
    Pki {
        dir,
        root_der,
        issuing_der,
        responder_der,
        responder_signer,
        issuing_signer: Arc::new(issuing),
        leaves,
    }
}

impl Pki {
    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn responder(&self) -> Responder {
        Responder::new(&self.responder_der, self.responder_signer.clone()).expect("responder")
    }

    /// `openssl ocsp -issuer issuing.pem <args> -reqout req.der`; returns the request.
    fn openssl_request(&self, args: &[&str]) -> Vec<u8> {
        let mut all = vec!["ocsp", "-issuer", "issuing.pem"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-reqout", "req.der"]);
        let (ok, out) = pki::openssl(self.path(), &all);
        assert!(ok, "openssl ocsp -reqout failed: {out}");
        std::fs::read(self.path().join("req.der")).expect("read req")
    }

    /// What the server will do: parse, match the issuer, look each serial up in
    /// `revoked` (anything not revoked among the issued leaves is good, the rest unknown),
    /// sign, echo the nonce.
    fn answer(&self, req: &ParsedRequest, revoked: &HashMap<Serial, Status>) -> Vec<u8> {
        let hashes = IssuerHashes::from_cert_der(&self.issuing_der).expect("hashes");
        let t = now();
        let statuses: Vec<SingleStatus<'_>> = req
            .cert_ids
            .iter()
            .map(|id| {
                assert!(hashes.matches(id), "CertID does not name the issuing CA");
                let status = match &id.serial {
                    Some(s) if revoked.contains_key(s) => revoked[s],
                    Some(s) if self.leaves.iter().any(|(l, _)| l == s) => Status::Good,
                    _ => Status::Unknown,
                };
                SingleStatus { cert_id_der: &id.der, status, this_update: t, next_update: t.plus(3600) }
            })
            .collect();
        self.responder().sign_response(t, &statuses, req.nonce.as_deref()).expect("sign response")
    }

    /// `openssl ocsp -respin resp.der -CAfile root.pem -verify_other issuing.pem <args>`:
    /// the delegated responder's chain is built from the response's certs (the responder)
    /// plus -verify_other (the issuing CA) up to the trusted root.
    fn openssl_verify(&self, resp: &[u8], args: &[&str]) -> (bool, String) {
        std::fs::write(self.path().join("resp.der"), resp).expect("write resp");
        let mut all =
            vec!["ocsp", "-respin", "resp.der", "-CAfile", "root.pem", "-verify_other", "issuing.pem"];
        all.extend_from_slice(args);
        pki::openssl(self.path(), &all)
    }
}

/// Checks openssl's verdict: "Response verify OK" and, for each `(file, status)`, the
/// status line.
fn assert_verified(out: &str, lines: &[&str]) {
    assert!(out.contains("Response verify OK"), "openssl did not verify:\n{out}");
    for l in lines {
        assert!(out.contains(l), "missing {l:?} in:\n{out}");
    }
}

fn decode_basic(resp: &[u8]) -> x509_ocsp::BasicOcspResponse {
    let r = x509_ocsp::OcspResponse::from_der(resp).expect("OCSPResponse");
    assert_eq!(r.response_status, x509_ocsp::OcspResponseStatus::Successful);
    let bytes = r.response_bytes.expect("responseBytes");
    assert_eq!(bytes.response_type, const_oid::db::rfc6960::ID_PKIX_OCSP_BASIC);
    x509_ocsp::BasicOcspResponse::from_der(bytes.response.as_bytes()).expect("BasicOCSPResponse")
}

#[test]
fn good_with_sha1_certid_and_no_nonce() {
    let p = pki();
    let req = devid_ca::ocsp::parse_request(&p.openssl_request(&["-cert", "leaf1.pem", "-no_nonce"]))
        .expect("parse");
    assert_eq!(req.cert_ids.len(), 1);
    assert_eq!(req.cert_ids[0].hash, HashAlgorithm::Sha1);
    assert_eq!(req.cert_ids[0].serial.as_ref(), Some(&p.leaves[0].0));
    assert_eq!(req.nonce, None);
    assert!(!req.signed);
    let resp = p.answer(&req, &HashMap::new());
    let (ok, out) = p.openssl_verify(&resp, &["-issuer", "issuing.pem", "-cert", "leaf1.pem", "-no_nonce"]);
    assert!(ok, "{out}");
    assert_verified(&out, &["leaf1.pem: good"]);

    // The response as built: byKey responder id, the responder certificate, the CertID
    // echoed byte for byte, nextUpdate set, no nonce.
    let basic = decode_basic(&resp);
    let rd = &basic.tbs_response_data;
    let x509_ocsp::ResponderId::ByKey(kh) = &rd.responder_id else { panic!("responder id by name") };
    assert_eq!(kh.as_bytes(), p.responder().key_hash());
    let responder = x509_cert::Certificate::from_der(&p.responder_der).expect("cert");
    assert_eq!(basic.certs, Some(vec![responder]));
    assert_eq!(rd.responses[0].cert_id.to_der().expect("der"), req.cert_ids[0].der);
    assert!(rd.responses[0].next_update.is_some());
    assert!(rd.response_extensions.is_none());
    assert_eq!(basic.signature_algorithm.oid, const_oid::db::rfc5912::ECDSA_WITH_SHA_256);
}

#[test]
fn a_response_that_does_not_chain_to_the_trusted_root_is_refused_by_openssl() {
    let p = pki();
    let other = pki();
    std::fs::copy(other.path().join("root.pem"), p.path().join("other-root.pem")).expect("copy");
    let req =
        devid_ca::ocsp::parse_request(&p.openssl_request(&["-cert", "leaf1.pem", "-no_nonce"])).expect("p");
    let resp = p.answer(&req, &HashMap::new());
    std::fs::write(p.path().join("resp.der"), &resp).expect("w");
    let (_, out) = pki::openssl(
        p.path(),
        &[
            "ocsp",
            "-respin",
            "resp.der",
            "-CAfile",
            "other-root.pem",
            "-verify_other",
            "issuing.pem",
            "-issuer",
            "issuing.pem",
            "-cert",
            "leaf1.pem",
            "-no_nonce",
        ],
    );
    assert!(out.contains("Response Verify Failure"), "{out}");
}

#[test]
fn revoked_with_key_compromise() {
    let p = pki();
    let req =
        devid_ca::ocsp::parse_request(&p.openssl_request(&["-cert", "leaf2.pem", "-no_nonce"])).expect("p");
    // 2023-11-14T22:13:20Z
    let revoked = HashMap::from([(
        p.leaves[1].0.clone(),
        Status::Revoked { at: UnixTime(1_700_000_000), reason: Some(RevocationReason::KeyCompromise) },
    )]);
    let resp = p.answer(&req, &revoked);
    let (ok, out) = p.openssl_verify(&resp, &["-issuer", "issuing.pem", "-cert", "leaf2.pem", "-no_nonce"]);
    assert!(ok, "{out}");
    assert_verified(
        &out,
        &["leaf2.pem: revoked", "Reason: keyCompromise", "Revocation Time: Nov 14 22:13:20 2023 GMT"],
    );
}

#[test]
fn revoked_unspecified_leaves_the_reason_out() {
    let p = pki();
    let req =
        devid_ca::ocsp::parse_request(&p.openssl_request(&["-cert", "leaf2.pem", "-no_nonce"])).expect("p");
    let revoked = HashMap::from([(
        p.leaves[1].0.clone(),
        Status::Revoked { at: UnixTime(1_700_000_000), reason: Some(RevocationReason::Unspecified) },
    )]);
    let resp = p.answer(&req, &revoked);
    let (ok, out) = p.openssl_verify(&resp, &["-issuer", "issuing.pem", "-cert", "leaf2.pem", "-no_nonce"]);
    assert!(ok, "{out}");
    assert_verified(&out, &["leaf2.pem: revoked", "Revocation Time: Nov 14 22:13:20 2023 GMT"]);
    assert!(!out.contains("Reason:"), "{out}");
    let basic = decode_basic(&resp);
    let x509_ocsp::CertStatus::Revoked(info) = basic.tbs_response_data.responses[0].cert_status else {
        panic!("not revoked")
    };
    assert_eq!(info.revocation_reason, None);
}

#[test]
fn unknown_serial() {
    let mut p = pki();
    let req =
        devid_ca::ocsp::parse_request(&p.openssl_request(&["-cert", "leaf3.pem", "-no_nonce"])).expect("p");
    // The "store" does not know leaf 3.
    p.leaves.truncate(2);
    let resp = p.answer(&req, &HashMap::new());
    let (ok, out) = p.openssl_verify(&resp, &["-issuer", "issuing.pem", "-cert", "leaf3.pem", "-no_nonce"]);
    assert!(ok, "{out}");
    assert_verified(&out, &["leaf3.pem: unknown"]);
}

#[test]
fn sha256_certid_is_matched_and_echoed() {
    let p = pki();
    // The digest option names the CertID hash of the -cert options after it.
    let req =
        devid_ca::ocsp::parse_request(&p.openssl_request(&["-sha256", "-cert", "leaf1.pem", "-no_nonce"]))
            .expect("parse");
    assert_eq!(req.cert_ids[0].hash, HashAlgorithm::Sha256);
    let resp = p.answer(&req, &HashMap::new());
    let (ok, out) =
        p.openssl_verify(&resp, &["-issuer", "issuing.pem", "-sha256", "-cert", "leaf1.pem", "-no_nonce"]);
    assert!(ok, "{out}");
    assert_verified(&out, &["leaf1.pem: good"]);
    // openssl finds a status only for a CertID with its own hash: asked with SHA-1, the
    // SHA-256 answer has no status for leaf1.
    let (_, out) = p.openssl_verify(&resp, &["-issuer", "issuing.pem", "-cert", "leaf1.pem", "-no_nonce"]);
    assert!(out.contains("No Status found"), "{out}");
}

#[test]
fn two_certificates_in_one_request() {
    let p = pki();
    let req = devid_ca::ocsp::parse_request(&p.openssl_request(&[
        "-cert",
        "leaf1.pem",
        "-cert",
        "leaf2.pem",
        "-no_nonce",
    ]))
    .expect("parse");
    assert_eq!(req.cert_ids.len(), 2);
    let revoked = HashMap::from([(
        p.leaves[1].0.clone(),
        Status::Revoked { at: UnixTime(1_700_000_000), reason: Some(RevocationReason::Superseded) },
    )]);
    let resp = p.answer(&req, &revoked);
    let (ok, out) = p.openssl_verify(
        &resp,
        &["-issuer", "issuing.pem", "-cert", "leaf1.pem", "-cert", "leaf2.pem", "-no_nonce"],
    );
    assert!(ok, "{out}");
    assert_verified(&out, &["leaf1.pem: good", "leaf2.pem: revoked", "Reason: superseded"]);
}

#[test]
fn nonce_is_echoed_and_checked_by_openssl() {
    let p = pki();
    // openssl adds a nonce by default.
    let req_der = p.openssl_request(&["-cert", "leaf1.pem"]);
    let req = devid_ca::ocsp::parse_request(&req_der).expect("parse");
    let nonce = req.nonce.clone().expect("nonce");
    assert_eq!(nonce.len(), 16, "openssl's default nonce is 16 octets");
    let resp = p.answer(&req, &HashMap::new());
    let basic = decode_basic(&resp);
    assert_eq!(basic.nonce().expect("nonce echoed").0.as_bytes(), nonce.as_slice());

    // Replaying the saved request (-reqin, no -cert) makes openssl compare the nonces.
    let (ok, out) = p.openssl_verify(&resp, &["-reqin", "req.der", "-resp_text"]);
    assert!(ok, "{out}");
    assert_verified(&out, &["OCSP Nonce", "Cert Status: good"]);
    assert!(!out.contains("Nonce Verify error") && !out.contains("WARNING: no nonce"), "{out}");

    // A response with another nonce is refused; one without a nonce is warned about.
    let t = now();
    let st = [SingleStatus {
        cert_id_der: &req.cert_ids[0].der,
        status: Status::Good,
        this_update: t,
        next_update: t.plus(3600),
    }];
    let wrong = p.responder().sign_response(t, &st, Some(&[0x42; 16])).expect("sign");
    let (ok, out) = p.openssl_verify(&wrong, &["-reqin", "req.der"]);
    assert!(!ok && out.contains("Nonce Verify error"), "{out}");
    let none = p.responder().sign_response(t, &st, None).expect("sign");
    let (_, out) = p.openssl_verify(&none, &["-reqin", "req.der"]);
    assert!(out.contains("WARNING: no nonce in response"), "{out}");
}

#[test]
fn pre_signed_response_from_issuer_hashes_verifies_without_a_request() {
    let p = pki();
    let hashes = IssuerHashes::from_cert_der(&p.issuing_der).expect("hashes");
    let t = now();
    for (alg, flag) in [(HashAlgorithm::Sha1, "-sha1"), (HashAlgorithm::Sha256, "-sha256")] {
        let id = hashes.cert_id_der(alg, &p.leaves[0].0).expect("cert id");
        let st = [SingleStatus {
            cert_id_der: &id,
            status: Status::Good,
            this_update: t,
            next_update: t.plus(3600),
        }];
        let resp =
            devid_ca::ocsp::build_response(&p.responder_der, p.responder_signer.as_ref(), t, &st, None)
                .expect("build");
        let (ok, out) =
            p.openssl_verify(&resp, &["-issuer", "issuing.pem", flag, "-cert", "leaf1.pem", "-no_nonce"]);
        assert!(ok, "{out}");
        assert_verified(&out, &["leaf1.pem: good"]);
        // The free function and the prepared responder build the same structure.
        let again = p.responder().sign_response(t, &st, None).expect("sign");
        let (a, b) = (decode_basic(&resp), decode_basic(&again));
        assert_eq!(a.tbs_response_data, b.tbs_response_data);
    }
}

#[test]
fn issuer_hashes_match_openssl_certids() {
    let p = pki();
    let hashes = IssuerHashes::from_cert_der(&p.issuing_der).expect("hashes");
    let info = IssuerInfo::from_cert_der(&p.issuing_der).expect("info");
    assert_eq!(IssuerHashes::from_issuer_info(&info).expect("from info"), hashes);
    let root_hashes = IssuerHashes::from_cert_der(&p.root_der).expect("root hashes");
    for (alg, flag) in [(HashAlgorithm::Sha1, "-sha1"), (HashAlgorithm::Sha256, "-sha256")] {
        let req =
            devid_ca::ocsp::parse_request(&p.openssl_request(&[flag, "-cert", "leaf1.pem", "-no_nonce"]))
                .expect("p");
        let id = &req.cert_ids[0];
        assert_eq!(id.hash, alg);
        assert!(hashes.matches(id), "{alg:?}");
        assert!(!root_hashes.matches(id), "{alg:?}");
        // openssl encodes the CertID exactly as IssuerHashes::cert_id_der does.
        assert_eq!(hashes.cert_id_der(alg, &p.leaves[0].0).expect("id"), id.der, "{alg:?}");
    }
    // The other algorithm's hashes never match.
    let req =
        devid_ca::ocsp::parse_request(&p.openssl_request(&["-cert", "leaf1.pem", "-no_nonce"])).expect("p");
    let mut swapped = req.cert_ids[0].clone();
    swapped.hash = HashAlgorithm::Sha256;
    assert!(!hashes.matches(&swapped));
}

#[test]
fn certid_without_hash_parameters_is_echoed_as_received() {
    let p = pki();
    let hashes = IssuerHashes::from_cert_der(&p.issuing_der).expect("hashes");
    let mut id =
        x509_ocsp::CertId::from_der(&hashes.cert_id_der(HashAlgorithm::Sha1, &p.leaves[0].0).expect("id"))
            .expect("decode");
    id.hash_algorithm.parameters = None;
    let id_der = id.to_der().expect("der");
    let req = x509_ocsp::OcspRequest {
        tbs_request: x509_ocsp::TbsRequest {
            version: x509_ocsp::Version::V1,
            requestor_name: None,
            request_list: vec![x509_ocsp::Request { req_cert: id, single_request_extensions: None }],
            request_extensions: None,
        },
        optional_signature: None,
    };
    let parsed = devid_ca::ocsp::parse_request(&req.to_der().expect("der")).expect("parse");
    assert_eq!(parsed.cert_ids[0].der, id_der);
    assert!(hashes.matches(&parsed.cert_ids[0]));
    let resp = p.answer(&parsed, &HashMap::new());
    assert!(resp.windows(id_der.len()).any(|w| w == id_der.as_slice()));
    // openssl compares CertIDs by OID, hashes and serial, not parameters.
    let (ok, out) = p.openssl_verify(&resp, &["-issuer", "issuing.pem", "-cert", "leaf1.pem", "-no_nonce"]);
    assert!(ok, "{out}");
    assert_verified(&out, &["leaf1.pem: good"]);
}

#[test]
fn signed_requests_are_accepted_and_the_signature_ignored() {
    let p = pki();
    // A requestor with a self-signed certificate, unknown to the CA: the signature is
    // not checked.
    let (ok, out) = pki::openssl(
        p.path(),
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "signer-key.pem",
            "-out",
            "signer.pem",
            "-subj",
            "/CN=requestor",
            "-days",
            "1",
        ],
    );
    assert!(ok, "{out}");
    let req = p.openssl_request(&[
        "-cert",
        "leaf1.pem",
        "-no_nonce",
        "-signer",
        "signer.pem",
        "-signkey",
        "signer-key.pem",
    ]);
    let parsed = devid_ca::ocsp::parse_request(&req).expect("parse");
    assert!(parsed.signed);
    assert_eq!(parsed.cert_ids.len(), 1);
}

#[test]
fn garbage_is_malformed_and_error_responses_parse_in_openssl() {
    let p = pki();
    for garbage in [&b""[..], b"GET / HTTP/1.1", &[0x30, 0x03, 0x02, 0x01, 0x01], &[0x30, 0x80, 0x00, 0x00]] {
        let e = devid_ca::ocsp::parse_request(garbage).expect_err("garbage");
        assert_eq!(e.status(), ErrorStatus::MalformedRequest, "{e}");
    }
    // A truncated real request is garbage too.
    let req = p.openssl_request(&["-cert", "leaf1.pem"]);
    let e = devid_ca::ocsp::parse_request(&req[..req.len() - 1]).expect_err("truncated");
    assert!(matches!(e, OcspError::Malformed(_)), "{e}");

    for (status, text) in [
        (ErrorStatus::MalformedRequest, "Responder Error: malformedrequest (1)"),
        (ErrorStatus::InternalError, "Responder Error: internalerror (2)"),
        (ErrorStatus::TryLater, "Responder Error: trylater (3)"),
        (ErrorStatus::Unauthorized, "Responder Error: unauthorized (6)"),
    ] {
        std::fs::write(p.path().join("err.der"), devid_ca::ocsp::error_response(status)).expect("w");
        let (_, out) = pki::openssl(p.path(), &["ocsp", "-respin", "err.der", "-resp_text"]);
        assert!(out.contains(text), "{status:?}: {out}");
    }
}

#[test]
fn a_certificate_of_another_issuer_does_not_match() {
    let p = pki();
    // Ask about the issuing CA, whose issuer is the root: not this responder's business.
    let (ok, out) = pki::openssl(
        p.path(),
        &["ocsp", "-issuer", "root.pem", "-cert", "issuing.pem", "-no_nonce", "-reqout", "req-root.der"],
    );
    assert!(ok, "{out}");
    let req =
        devid_ca::ocsp::parse_request(&std::fs::read(p.path().join("req-root.der")).expect("r")).expect("p");
    let hashes = IssuerHashes::from_cert_der(&p.issuing_der).expect("hashes");
    assert!(!hashes.matches(&req.cert_ids[0]));
}

#[test]
fn responder_certificate_profile() {
    let p = pki();
    let (ok, out) = pki::openssl(
        p.path(),
        &[
            "verify",
            "-x509_strict",
            "-purpose",
            "ocsphelper",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "issuing.pem",
            "responder.pem",
        ],
    );
    assert!(ok && out.contains("responder.pem: OK"), "{out}");
    let text = pki::openssl_text(p.path(), &pem(&p.responder_der));
    for needle in [
        "Subject: O = devid test, CN = devid OCSP responder",
        "Issuer: O = devid test, CN = Test Issuing",
        "X509v3 Basic Constraints: critical\n                CA:FALSE",
        "X509v3 Key Usage: critical\n                Digital Signature",
        "X509v3 Extended Key Usage: \n                OCSP Signing",
        "OCSP No Check: \n",
        "X509v3 Subject Key Identifier",
        "X509v3 Authority Key Identifier",
        "Signature Algorithm: ecdsa-with-SHA256",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    // The nocheck extension's value is exactly NULL.
    let cert = x509_cert::Certificate::from_der(&p.responder_der).expect("cert");
    let nocheck = cert
        .tbs_certificate
        .extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id == const_oid::db::rfc6960::ID_PKIX_OCSP_NOCHECK)
        .expect("nocheck");
    assert_eq!(nocheck.extn_value.as_bytes(), &[0x05, 0x00]);
    assert!(!nocheck.critical);
    // Never outlives the issuer; an expired issuer is refused.
    let info = IssuerInfo::from_cert_der(&p.issuing_der).expect("info");
    let spki = p.responder_signer.spki.clone();
    let tbs = devid_ca::profile::ocsp_responder_tbs(
        &info,
        ALG,
        &Serial::random(&OsEntropy),
        &spki,
        "r",
        now(),
        86400 * 3650,
    )
    .expect("tbs");
    let tbs = x509_cert::certificate::TbsCertificate::from_der(&tbs).expect("tbs");
    assert_eq!(tbs.validity.not_after.to_unix_duration().as_secs() as i64, info.not_after.0);
    let err = devid_ca::profile::ocsp_responder_tbs(
        &info,
        ALG,
        &Serial::random(&OsEntropy),
        &spki,
        "r",
        info.not_after.plus(1),
        3600,
    )
    .expect_err("expired issuer");
    assert!(err.to_string().contains("expired"), "{err}");
}

#[test]
fn responder_refuses_a_wrong_key_a_non_responder_certificate_and_a_bad_signature() {
    let p = pki();
    // Certificate and signer of different keys.
    let other: Arc<dyn Signer> = Arc::new(MemSigner::new());
    let e = Responder::new(&p.responder_der, other).expect_err("wrong key");
    assert!(e.to_string().contains("signer's key"), "{e}");
    // A device leaf (no id-kp-OCSPSigning, not a CA) cannot sign responses, even with
    // the right key.
    let info = IssuerInfo::from_cert_der(&p.issuing_der).expect("info");
    let profile = LeafProfile {
        validity_secs: 3600,
        backdate_secs: 0,
        device_uri_prefix: "urn:x:".into(),
        urls: PublicUrls::for_issuer(
            &url::Url::parse("https://ca.example.net/").expect("url"),
            &CaId::new("issuing-1").expect("id"),
        ),
        crl_shards: 1,
    };
    let (leaf_tbs, _) = devid_ca::profile::leaf_tbs(
        &info,
        ALG,
        &profile,
        &Serial::random(&OsEntropy),
        &DeviceId::new("not-a-responder").expect("id"),
        &p.responder_signer.spki,
        now(),
    )
    .expect("tbs");
    // Signed by the responder key itself: the signature does not matter here.
    let leaf = devid_ca::sign::sign_tbs(p.responder_signer.as_ref(), &leaf_tbs).expect("sign");
    let e = Responder::new(&leaf, p.responder_signer.clone()).expect_err("leaf");
    assert!(e.to_string().contains("neither a CA nor"), "{e}");
    // The issuing CA itself may answer for its certificates (RFC 6960 §4.2.2.2).
    let ca = Responder::new(&p.issuing_der, p.issuing_signer.clone()).expect("CA as responder");
    let hashes = IssuerHashes::from_cert_der(&p.issuing_der).expect("hashes");
    let id = hashes.cert_id_der(HashAlgorithm::Sha1, &p.leaves[0].0).expect("id");
    let t = now();
    let st =
        [SingleStatus { cert_id_der: &id, status: Status::Good, this_update: t, next_update: t.plus(60) }];
    let resp = ca.sign_response(t, &st, None).expect("sign");
    let (ok, out) = p.openssl_verify(&resp, &["-issuer", "issuing.pem", "-cert", "leaf1.pem", "-no_nonce"]);
    assert!(ok, "{out}");
    assert_verified(&out, &["leaf1.pem: good"]);
    // A KMS outside the process (an HSM) returning a bad signature never yields a response.
    let bad = Responder::new(&p.responder_der, Arc::new(BadSigner(p.responder_signer.clone()))).expect("new");
    let hashes = IssuerHashes::from_cert_der(&p.issuing_der).expect("hashes");
    let id = hashes.cert_id_der(HashAlgorithm::Sha1, &p.leaves[0].0).expect("id");
    let t = now();
    let st =
        [SingleStatus { cert_id_der: &id, status: Status::Good, this_update: t, next_update: t.plus(60) }];
    let e = bad.sign_response(t, &st, None).expect_err("bad signature");
    assert!(matches!(e, devid_ca::CaError::Kms(KmsError::BadSignature)), "{e}");
    // Nothing to sign, a garbage CertID, nextUpdate before thisUpdate.
    let r = p.responder();
    assert!(r.sign_response(t, &[], None).is_err());
    let garbage = [SingleStatus { cert_id_der: b"\x30\x00", ..st[0] }];
    assert!(r.sign_response(t, &garbage, None).is_err());
    let backwards = [SingleStatus { next_update: t.plus(-1), ..st[0] }];
    assert!(r.sign_response(t, &backwards, None).is_err());
}
