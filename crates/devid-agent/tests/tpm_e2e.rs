//! End to end against a real software TPM (swtpm + libtpms): the agent's TPM side and
//! `devid_attest::tpm` (the server side) agree on every byte, for RSA-2048 and ECC P-256
//! endorsement keys.
//!
//! The software TPM is `devid_testkit::swtpm::Swtpm` (shared with devid-attest and the
//! end-to-end tests of the devid binary). Needs the Debian packages swtpm, swtpm-tools,
//! gnutls-bin and tpm2-tools (and libtss2-dev to build): the tests fail, naming them, when
//! they are missing.
#![cfg(feature = "tpm")]

use devid_agent::tpm::{EkKind, TpmAgent, TpmError, TpmIdentity, TpmKey};
use devid_attest::Failure;
use devid_attest::tpm::{self as server, TpmPolicy};
use devid_core::{Clock, OsEntropy, SystemClock};
use devid_testkit::swtpm::Swtpm;

fn device_id_of(ek_cert: &[u8]) -> String {
    use aws_lc_rs::digest::{SHA256, digest};
    use der::{Decode, Encode};
    let cert = x509_cert::Certificate::from_der(ek_cert).expect("EK cert");
    let spki = cert.tbs_certificate.subject_public_key_info.to_der().expect("SPKI");
    format!("tpm-{}", hex::encode(&digest(&SHA256, &spki).as_ref()[..16]))
}

fn csr_spki(csr: &[u8]) -> Vec<u8> {
    use der::{Decode, Encode};
    let req = x509_cert::request::CertReq::from_der(csr).expect("CSR parses");
    req.info.public_key.to_der().expect("SPKI")
}

/// The CSR is self-signed by the TPM key (RFC 2986 §3): verify it.
fn verify_csr(csr: &[u8]) {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};
    use der::{Decode, Encode};
    let req = x509_cert::request::CertReq::from_der(csr).expect("CSR parses");
    let tbs = req.info.to_der().expect("info");
    let point = req.info.public_key.subject_public_key.raw_bytes();
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, point)
        .verify(&tbs, req.signature.raw_bytes())
        .expect("the CSR signature verifies with its key");
}

struct Flow {
    identity: TpmIdentity,
    pending: server::PendingTpm,
    challenge: server::CredentialChallenge,
    key: TpmKey,
    csr: Vec<u8>,
    nonce: [u8; 32],
}

fn begin(agent: &mut TpmAgent, tpm: &Swtpm, kind: EkKind) -> Flow {
    let identity = agent.identity(kind).expect("identity");
    let policy = TpmPolicy { ek_anchors: vec![tpm.vendor_ca_der()] };
    let (pending, challenge) = server::start(
        &policy,
        &identity.ek_cert,
        &identity.ek_public,
        &identity.ak_public,
        &OsEntropy,
        SystemClock.now(),
    )
    .expect("server start");
    let key = agent.create_device_key().expect("device key");
    let csr = agent.sign_csr(&key, "device-1").expect("CSR");
    verify_csr(&csr);
    Flow { identity, pending, challenge, key, csr, nonce: [0x5a; 32] }
}

fn finish(
    agent: &mut TpmAgent,
    f: &Flow,
    secret: &[u8],
    binding: &[u8; 32],
) -> Result<devid_attest::Attested, devid_attest::AttestError> {
    let (info, sig) = agent.certify(&f.key, binding).expect("certify");
    let real_binding = devid_attest::binding(&f.nonce, &f.csr);
    server::finish(&f.pending, secret, &f.key.public, &info, &sig, &real_binding, &csr_spki(&f.csr))
}

fn end_to_end(kind: EkKind) {
    let tpm = Swtpm::start();
    let mut agent = TpmAgent::open(&tpm.tcti()).expect("open");
    let f = begin(&mut agent, &tpm, kind);
    assert_eq!(f.pending.device_id, device_id_of(&f.identity.ek_cert));
    // The pending state survives a JSON round trip (the server stores it).
    let f = Flow {
        pending: serde_json::from_str(&serde_json::to_string(&f.pending).expect("json")).expect("json"),
        ..f
    };
    let secret =
        agent.activate(&f.challenge.credential_blob, &f.challenge.encrypted_secret).expect("activate");
    assert_eq!(secret.len(), 32);
    let binding = devid_attest::binding(&f.nonce, &f.csr);
    let attested = finish(&mut agent, &f, &secret, &binding).expect("server finish");
    assert_eq!(attested.device_id, device_id_of(&f.identity.ek_cert));
    assert!(attested.device_id.starts_with("tpm-") && attested.device_id.len() == 36);
    assert_eq!(attested.summary["method"], "tpm");

    // The device key reloads in a new session from its public and private areas, and
    // signs (for mutual TLS later).
    drop(agent);
    let mut agent = TpmAgent::open(&tpm.tcti()).expect("reopen");
    let digest = [0x42u8; 32];
    let sig = agent.sign(&f.key, &digest).expect("sign");
    let point = &f.key.spki_der[26..];
    // ECDSA over a prehashed digest: verify with the "digest" variant of aws-lc-rs.
    aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1, point)
        .verify_digest(
            &aws_lc_rs::digest::Digest::import_less_safe(&digest, &aws_lc_rs::digest::SHA256)
                .expect("digest"),
            &sig,
        )
        .expect("TPM signature verifies");
    // Without identity() in this session there is no AK.
    assert!(matches!(
        agent.activate(&f.challenge.credential_blob, &f.challenge.encrypted_secret),
        Err(TpmError::NoIdentity)
    ));
}

#[test]
fn rsa2048_ek_end_to_end() {
    end_to_end(EkKind::Rsa2048);
}

#[test]
fn ecc_p256_ek_end_to_end() {
    end_to_end(EkKind::EccP256);
}

#[test]
fn refusals_against_a_real_tpm() {
    let tpm = Swtpm::start();
    let mut agent = TpmAgent::open(&tpm.tcti()).expect("open");
    for kind in [EkKind::Rsa2048, EkKind::EccP256] {
        let f = begin(&mut agent, &tpm, kind);

        // A tampered credential: the TPM's integrity check refuses it, or (were it to
        // decrypt) the secret would be wrong.
        let mut blob = f.challenge.credential_blob.clone();
        let last = blob.len() - 1;
        blob[last] ^= 1;
        match agent.activate(&blob, &f.challenge.encrypted_secret) {
            Err(TpmError::Command { op: "TPM2_ActivateCredential", .. }) => {}
            Err(e) => panic!("{kind:?}: unexpected error {e}"),
            Ok(wrong) => {
                let e = finish(&mut agent, &f, &wrong, &devid_attest::binding(&f.nonce, &f.csr)).unwrap_err();
                assert_eq!(e.failure, Failure::BadProof);
            }
        }
        let mut seed = f.challenge.encrypted_secret.clone();
        seed[10] ^= 1;
        assert!(agent.activate(&f.challenge.credential_blob, &seed).is_err(), "{kind:?}: tampered seed");

        let secret =
            agent.activate(&f.challenge.credential_blob, &f.challenge.encrypted_secret).expect("activate");
        // A wrong secret.
        let mut wrong = secret.clone();
        wrong[0] ^= 1;
        let e = finish(&mut agent, &f, &wrong, &devid_attest::binding(&f.nonce, &f.csr)).unwrap_err();
        assert_eq!(e.failure, Failure::BadProof, "{kind:?}");
        // TPM2_Certify over another binding (another nonce).
        let e = finish(&mut agent, &f, &secret, &devid_attest::binding(&[1; 32], &f.csr)).unwrap_err();
        assert_eq!(e.failure, Failure::BindingMismatch, "{kind:?}");
        // And the right one still passes.
        finish(&mut agent, &f, &secret, &devid_attest::binding(&f.nonce, &f.csr)).expect("finish");

        // An "AK" that is not restricted: a device key (a real TPM key, fixedTPM, signing,
        // not restricted) presented as the AK.
        let e = server::start(
            &TpmPolicy { ek_anchors: vec![tpm.vendor_ca_der()] },
            &f.identity.ek_cert,
            &f.identity.ek_public,
            &f.key.public,
            &OsEntropy,
            SystemClock.now(),
        )
        .unwrap_err();
        assert_eq!(e.failure, Failure::BadAttributes, "{kind:?}: {e}");

        // An EK certificate from a vendor the group does not trust.
        let other = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "swtpm-localca");
        let other_ca = params.self_signed(&other).expect("CA").der().to_vec();
        let e = server::start(
            &TpmPolicy { ek_anchors: vec![other_ca] },
            &f.identity.ek_cert,
            &f.identity.ek_public,
            &f.identity.ak_public,
            &OsEntropy,
            SystemClock.now(),
        )
        .unwrap_err();
        assert_eq!(e.failure, Failure::UntrustedChain, "{kind:?}: {e}");
    }
}

// --- mutual TLS with the TPM key (devid_agent::tpm_tls) -----------------------------------

/// The public half of a TPM key, for rcgen to certify.
struct TpmPublic(Vec<u8>);

impl rcgen::PublicKeyData for TpmPublic {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

/// A CA; a server certificate for 127.0.0.1; a client certificate for the TPM key.
struct TlsPki {
    ca_der: Vec<u8>,
    server_der: Vec<u8>,
    server_key: Vec<u8>,
    client_der: Vec<u8>,
}

fn tls_pki(key: &TpmKey) -> TlsPki {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "test CA");
    let ca_der = ca.self_signed(&ca_key).expect("CA").der().to_vec();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let server_key = rcgen::KeyPair::generate().expect("key");
    let server = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("params");
    let server_der = server.signed_by(&server_key, &issuer).expect("server").der().to_vec();
    let mut client = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    client.distinguished_name.push(rcgen::DnType::CommonName, "device-1");
    client.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let client_der =
        client.signed_by(&TpmPublic(key.spki_der[26..].to_vec()), &issuer).expect("client").der().to_vec();
    TlsPki { ca_der, server_der, server_key: server_key.serialize_der(), client_der }
}

/// One connection to a server that requires a client certificate from the CA, speaking
/// only `version`; returns the client certificate the server saw.
async fn handshake(
    pki: &TlsPki,
    version: &'static rustls::SupportedProtocolVersion,
    client_cfg: rustls::ClientConfig,
) -> Result<Vec<u8>, String> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(pki.ca_der.clone())).expect("root");
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        provider.clone(),
    )
    .build()
    .expect("verifier");
    let server_cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from(pki.server_der.clone())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.server_key.clone())),
        )
        .expect("server config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server_cfg));
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let seen = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec());
        let mut buf = [0u8; 5];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        tls.write_all(b"pong").await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())?;
        seen.ok_or_else(|| "no client certificate".to_string())
    });
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client_cfg));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let client = async {
        let mut tls = connector
            .connect(ServerName::try_from("127.0.0.1").expect("name"), tcp)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"ping!").await.map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        tls.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
        if buf != b"pong" {
            return Err(format!("unexpected answer {buf:?}"));
        }
        Ok::<_, String>(())
    };
    let client_result = client.await;
    let server_result = server.await.map_err(|e| e.to_string())?;
    client_result?;
    server_result
}

/// The client authenticates with the TPM key (CertificateVerify signed by TPM2_Sign), over
/// TLS 1.3 and TLS 1.2, to a rustls server that verifies the client certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_the_tpm_key() {
    use devid_agent::tpm_tls::{TpmClientCert, TpmSigningKey, tls_config};
    let tpm = Swtpm::start();
    let mut agent = TpmAgent::open(&tpm.tcti()).expect("open");
    let key = agent.create_device_key().expect("device key");
    drop(agent);
    // The key as read back from key.tpm.
    let text = devid_agent::tpm_enroll::key_file(&key, Some(&tpm.tcti()));
    let (key, tcti) = devid_agent::tpm_enroll::parse_key_file(&text).expect("key.tpm");
    assert_eq!(tcti, Some(tpm.tcti()));
    let pki = tls_pki(&key);

    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let signing = TpmSigningKey::new(TpmAgent::open(&tpm.tcti()).expect("open"), key.clone());
        let cfg = tls_config(std::slice::from_ref(&pki.ca_der), vec![pki.client_der.clone()], signing)
            .expect("config");
        let seen = handshake(&pki, version, cfg).await.unwrap_or_else(|e| panic!("{version:?}: {e}"));
        assert_eq!(seen, pki.client_der, "{version:?}");
    }

    // The signer's output is a DER ECDSA-SHA256 signature over the message by the key.
    let signing = TpmSigningKey::new(TpmAgent::open(&tpm.tcti()).expect("open"), key.clone());
    let sig = signing.sign_sha256(b"a handshake transcript").expect("sign");
    aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1,
        &key.spki_der[26..],
    )
    .verify(b"a handshake transcript", &sig)
    .expect("verifies");
    let scheme = rustls::sign::SigningKey::choose_scheme(&signing, &[rustls::SignatureScheme::ED25519]);
    assert!(scheme.is_none(), "only ecdsa_secp256r1_sha256");

    // A certificate for another key is refused before any connection.
    let other = rcgen::KeyPair::generate().expect("key");
    let other_cert = rcgen::CertificateParams::new(vec!["x".to_string()])
        .expect("params")
        .self_signed(&other)
        .expect("cert")
        .der()
        .to_vec();
    let e = TpmClientCert::new(vec![other_cert], signing.clone()).unwrap_err();
    assert!(e.to_string().contains("not for the TPM key"), "{e}");
    assert!(TpmClientCert::new(Vec::new(), signing).is_err());
}
