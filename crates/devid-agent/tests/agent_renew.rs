//! `renew` over mutual TLS against a small in-process TLS server (rustls, client
//! certificates required) that plays the renewal listener of PROTOCOL.md §3: it checks
//! the client certificate, reads the CSR and issues a certificate for the CSR's key.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use der::{Decode, Encode};
use devid_agent::enroll::{RenewPlan, renew};
use devid_agent::files::Layout;
use devid_agent::keys::{DeviceKey, certificate_pem, pem_certificates};
use devid_agent::{AgentError, ErrorKind};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, date_time_ymd,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A P-256 public key from a CSR, for rcgen to certify.
struct CsrKey(Vec<u8>);
impl rcgen::PublicKeyData for CsrKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

struct Ca {
    root_der: Vec<u8>,
    issuing_der: Vec<u8>,
    issuing: Issuer<'static, KeyPair>,
}

fn ca() -> Ca {
    let ca_params = |cn: &str| {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p
    };
    let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let root_params = ca_params("Test Root");
    let root_der = root_params.self_signed(&root_key).unwrap().der().to_vec();
    let root = Issuer::new(root_params, root_key);
    let issuing_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let issuing_params = ca_params("Test Issuing");
    let issuing_der = issuing_params.signed_by(&issuing_key, &root).unwrap().der().to_vec();
    Ca { root_der, issuing_der, issuing: Issuer::new(issuing_params, issuing_key) }
}

/// A device certificate for `key`, valid 2020–2040, serial `n`.
fn device_cert(ca: &Ca, key: &impl rcgen::PublicKeyData, n: u64) -> Vec<u8> {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, "sensor-0001");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.not_before = date_time_ymd(2020, 1, 1);
    p.not_after = date_time_ymd(2040, 1, 1);
    p.serial_number = Some(rcgen::SerialNumber::from(n));
    p.signed_by(key, &ca.issuing).unwrap().der().to_vec()
}

/// What the test server saw.
#[derive(Default)]
struct Seen {
    client_chain_len: usize,
    client_cn: String,
    path: String,
}

/// How the test server answers: `None` issues a certificate; `Some((status, headers,
/// body))` answers that.
type Answer = Option<(u16, String, String)>;

/// Serve one mutual-TLS connection on 127.0.0.1; returns the base URL.
async fn serve_once(ca: Arc<Ca>, answer: Answer, seen: Arc<Mutex<Seen>>) -> String {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(ca.root_der.clone())).unwrap();
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .unwrap();
    let server_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut sp = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    sp.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_der = sp.signed_by(&server_key, &ca.issuing).unwrap().der().to_vec();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from(server_der), CertificateDer::from(ca.issuing_der.clone())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        {
            let (_, conn) = tls.get_ref();
            let chain = conn.peer_certificates().unwrap();
            let leaf = x509_cert::Certificate::from_der(chain[0].as_ref()).unwrap();
            let mut s = seen.lock().unwrap();
            s.client_chain_len = chain.len();
            s.client_cn = leaf.tbs_certificate.subject.to_string();
        }
        // Read one HTTP/1.1 request: headers, then Content-Length bytes.
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let (head_end, content_length) = loop {
            let n = tls.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed early");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                seen.lock().unwrap().path = head.lines().next().unwrap_or_default().to_string();
                break (i + 4, len);
            }
        };
        while buf.len() < head_end + content_length {
            let n = tls.read(&mut chunk).await.unwrap();
            buf.extend_from_slice(&chunk[..n]);
        }
        let body: serde_json::Value =
            serde_json::from_slice(&buf[head_end..head_end + content_length]).unwrap();
        let (status, headers, text) = match answer {
            Some(a) => a,
            None => {
                let csr_pem = pem::parse(body["csr"].as_str().unwrap()).unwrap();
                let req = x509_cert::request::CertReq::from_der(csr_pem.contents()).unwrap();
                let point = req.info.public_key.subject_public_key.raw_bytes().to_vec();
                let cert = device_cert(&ca, &CsrKey(point), 2);
                let resp = serde_json::json!({
                    "certificate": certificate_pem(&cert),
                    "chain": certificate_pem(&ca.issuing_der) + &certificate_pem(&ca.root_der),
                    "serial": "02",
                    "not_after": "2040-01-01T00:00:00Z",
                });
                (200, "content-type: application/json\r\n".to_string(), resp.to_string())
            }
        };
        let reply = format!(
            "HTTP/1.1 {status} X\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{text}",
            text.len()
        );
        tls.write_all(reply.as_bytes()).await.unwrap();
        tls.shutdown().await.ok();
    });
    format!("https://127.0.0.1:{}", addr.port())
}

/// An identity directory as enrollment leaves it.
fn identity(ca: &Ca) -> (tempfile::TempDir, Layout) {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::new(dir.path().join("id"));
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = device_cert(ca, &key, 1);
    let chain = certificate_pem(&ca.issuing_der) + &certificate_pem(&ca.root_der);
    devid_agent::files::write_atomic(&layout.dir, "key.pem", key.serialize_pem().as_bytes(), 0o600).unwrap();
    devid_agent::files::write_atomic(&layout.dir, "cert.pem", certificate_pem(&cert).as_bytes(), 0o644)
        .unwrap();
    devid_agent::files::write_atomic(&layout.dir, "chain.pem", chain.as_bytes(), 0o644).unwrap();
    (dir, layout)
}

fn cert_spki(layout: &Layout) -> Vec<u8> {
    let der = pem_certificates(&std::fs::read_to_string(layout.cert()).unwrap()).unwrap().remove(0);
    let cert = x509_cert::Certificate::from_der(&der).unwrap();
    cert.tbs_certificate.subject_public_key_info.to_der().unwrap()
}

fn key_spki(layout: &Layout) -> Vec<u8> {
    DeviceKey::from_pkcs8_pem(&std::fs::read_to_string(layout.key()).unwrap()).unwrap().spki_der()
}

#[tokio::test]
async fn renews_with_the_same_key_over_mutual_tls() {
    let ca = Arc::new(ca());
    let (_d, layout) = identity(&ca);
    let key_before = std::fs::read(layout.key()).unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let url = serve_once(ca.clone(), None, seen.clone()).await;
    // Trust comes from the root at the end of chain.pem.
    let out = renew(&RenewPlan { server: url, ca: None, rekey: false }, &layout).await.unwrap();
    assert_eq!(out.serial, "02");
    assert_eq!(out.device_id.as_deref(), Some("sensor-0001"));
    let s = seen.lock().unwrap();
    assert_eq!(s.path, "post /v1/renew http/1.1");
    assert_eq!(s.client_chain_len, 2, "the certificate and the issuing CA are presented");
    assert_eq!(s.client_cn, "CN=sensor-0001");
    assert_eq!(std::fs::read(layout.key()).unwrap(), key_before, "the same key");
    assert_eq!(cert_spki(&layout), key_spki(&layout));
    let serial = x509_cert::Certificate::from_der(
        &pem_certificates(&std::fs::read_to_string(layout.cert()).unwrap()).unwrap()[0],
    )
    .unwrap()
    .tbs_certificate
    .serial_number;
    assert_eq!(serial.as_bytes(), [2]);
}

#[tokio::test]
async fn rekey_writes_the_new_key_with_the_new_certificate() {
    let ca = Arc::new(ca());
    let (_d, layout) = identity(&ca);
    let spki_before = key_spki(&layout);
    let url = serve_once(ca.clone(), None, Arc::default()).await;
    let ca_file = layout.dir.join("trust.pem");
    std::fs::write(&ca_file, certificate_pem(&ca.root_der)).unwrap();
    renew(&RenewPlan { server: url, ca: Some(ca_file), rekey: true }, &layout).await.unwrap();
    assert_ne!(key_spki(&layout), spki_before);
    assert_eq!(cert_spki(&layout), key_spki(&layout));
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(layout.key()).unwrap().mode() & 0o777, 0o600);
}

#[tokio::test]
async fn refusals_keep_the_files_and_carry_the_problem_and_retry_after() {
    let ca = Arc::new(ca());
    let (_d, layout) = identity(&ca);
    let before = std::fs::read(layout.cert()).unwrap();

    let problem = r#"{"type":"urn:devid:problem:device-revoked","title":"Forbidden","status":403,"detail":"the device is revoked"}"#;
    let answer = Some((403, "content-type: application/problem+json\r\n".to_string(), problem.to_string()));
    let url = serve_once(ca.clone(), answer, Arc::default()).await;
    let e: AgentError = renew(&RenewPlan { server: url, ca: None, rekey: true }, &layout).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Refused);
    assert_eq!(e.to_string(), "renewal failed: 403 Forbidden [device-revoked]: the device is revoked");

    let answer = Some((503, "retry-after: 120\r\n".to_string(), String::new()));
    let url = serve_once(ca.clone(), answer, Arc::default()).await;
    let e = renew(&RenewPlan { server: url, ca: None, rekey: false }, &layout).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable);
    assert_eq!(e.retry_after, Some(std::time::Duration::from_secs(120)));
    assert_eq!(std::fs::read(layout.cert()).unwrap(), before);
}

#[tokio::test]
async fn a_server_outside_the_trusted_root_is_refused() {
    let ca1 = Arc::new(ca());
    let ca2 = Arc::new(ca());
    let (_d, layout) = identity(&ca1);
    // The listener's certificate is from another CA than the device's chain.
    let url = serve_once(ca2, None, Arc::default()).await;
    let e = renew(&RenewPlan { server: url, ca: None, rekey: false }, &layout).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
}
