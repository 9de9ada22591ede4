//! The renewal listener: HTTPS with mutual TLS (rustls; TLS 1.2 and 1.3 only). A client
//! must present a certificate that chains to one of our issuing CAs; an expired one is
//! accepted at the TLS layer, and the renewal use case decides (revoked, quarantined, too
//! early, past the grace period), so that the device gets a clear answer. Each request
//! carries the client certificate as a [`PeerCertificate`] extension.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::DistinguishedName;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tower::ServiceExt;

use crate::enroll::PeerCertificate;

/// A TLS-layer failure, for the server log.
#[derive(Debug, thiserror::Error)]
#[error("TLS: {0}")]
pub struct TlsError(pub String);

/// The server certificate in use; replaced (e.g. daily) without a restart.
#[derive(Debug)]
pub struct ServerCert(RwLock<Arc<CertifiedKey>>);

impl ServerCert {
    /// A resolver holding `chain` (DER, leaf first) and the PKCS#8 private key.
    pub fn new(chain: Vec<Vec<u8>>, pkcs8: &[u8]) -> Result<ServerCert, TlsError> {
        Ok(ServerCert(RwLock::new(Arc::new(certified(chain, pkcs8)?))))
    }

    /// Use this certificate and key for new handshakes.
    pub fn replace(&self, chain: Vec<Vec<u8>>, pkcs8: &[u8]) -> Result<(), TlsError> {
        let ck = Arc::new(certified(chain, pkcs8)?);
        match self.0.write() {
            Ok(mut slot) => *slot = ck,
            Err(poisoned) => *poisoned.into_inner() = ck,
        }
        Ok(())
    }
}

fn certified(chain: Vec<Vec<u8>>, pkcs8: &[u8]) -> Result<CertifiedKey, TlsError> {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.to_vec()));
    let signing =
        provider().key_provider.load_private_key(key).map_err(|e| TlsError(format!("server key: {e}")))?;
    Ok(CertifiedKey::new(chain.into_iter().map(CertificateDer::from).collect(), signing))
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(match self.0.read() {
            Ok(k) => k.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        })
    }
}

/// aws-lc-rs, with TLS 1.3's AES-128-GCM/SHA-256 suite preferred (the server's order
/// decides, see [`server_config`]). The default order puts AES-256-GCM/SHA-384 first, whose
/// handshake hashes with SHA-384: CPUs with SHA extensions have them for SHA-256 only, and
/// SHA-512 was 4 % of the server's CPU per renewal. AES-128 with SHA-256 matches the 128-bit
/// strength of the P-256 keys on both sides.
fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.cipher_suites.sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(p)
}

/// Verifies device certificates against our issuing CAs (RFC 5280 §6 path validation by
/// rustls-webpki, EKU clientAuth), accepting an expired certificate: it is validated as of
/// one second before expiry, and the renewal policy then decides (within `grace_secs`, or
/// a clear `renewal-refused` instead of a failed handshake).
#[derive(Debug)]
struct DeviceVerifier {
    anchors: Vec<rustls::pki_types::TrustAnchor<'static>>,
    subjects: Vec<DistinguishedName>,
    grace_secs: u64,
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for DeviceVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.subjects
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let bad = |why: &str| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(Arc::new(
                TlsError(why.to_string()),
            ))))
        };
        let not_after = not_after(end_entity).ok_or_else(|| bad("client certificate does not parse"))?;
        let now_secs = now.as_secs();
        let at = if now_secs > not_after {
            if now_secs > not_after.saturating_add(self.grace_secs) {
                tracing::debug!(
                    "client certificate expired past the renewal grace period: the policy refuses it"
                );
            }
            UnixTime::since_unix_epoch(Duration::from_secs(not_after.saturating_sub(1)))
        } else {
            now
        };
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| bad("client certificate does not parse"))?;
        cert.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &self.anchors,
            intermediates,
            at,
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| bad(&format!("client certificate: {e}")))?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// notAfter of a DER certificate, in Unix seconds.
fn not_after(der: &[u8]) -> Option<u64> {
    use x509_cert::der::Decode;
    let c = x509_cert::Certificate::from_der(der).ok()?;
    Some(c.tbs_certificate.validity.not_after.to_unix_duration().as_secs())
}

/// The server configuration of the renewal listener: `server` certificates, clients
/// verified against `issuing_cas` (DER) with `grace_secs` after expiry.
pub fn server_config(
    server: Arc<ServerCert>,
    issuing_cas: &[Vec<u8>],
    grace_secs: u64,
) -> Result<rustls::ServerConfig, TlsError> {
    let mut anchors = Vec::new();
    let mut subjects = Vec::new();
    for der in issuing_cas {
        let cert = CertificateDer::from(der.clone());
        let anchor = webpki::anchor_from_trusted_cert(&cert)
            .map_err(|e| TlsError(format!("issuing CA: {e}")))?
            .to_owned();
        // The CertificateRequest's certificate_authorities are DER Names, SEQUENCE
        // included (RFC 8446 §4.2.4); webpki's subject is the SEQUENCE's contents.
        subjects.push(DistinguishedName::in_sequence(anchor.subject.as_ref()));
        anchors.push(anchor);
    }
    let provider = provider();
    let verifier = Arc::new(DeviceVerifier { anchors, subjects, grace_secs, provider: provider.clone() });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(server);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ignore_client_order = true;
    // No session resumption: every renewal is a full handshake that verifies the device's
    // certificate and its proof of the key (RFC 8446 §4.4.2-4.4.3). rustls would otherwise
    // send two NewSessionTicket messages after each handshake (RFC 8446 §4.6.1) and keep
    // each session, client certificate included, in a 256-entry memory cache. A device
    // renews once per certificate lifetime, long after such an entry is gone, so the
    // tickets were work and bytes that no device could use.
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(config)
}

/// Serve `router` over mutual TLS on `listener` until `shutdown` completes; then stop
/// accepting and let in-flight requests finish (up to 30 s).
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: rustls::ServerConfig,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "TLS listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::info!(%remote, error = %e, "TLS handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::info!(%remote, "TLS handshake timed out");
                    return;
                }
            };
            let peer = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| PeerCertificate(Arc::new(c.as_ref().to_vec())));
            let service = router.map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                if let Some(p) = &peer {
                    req.extensions_mut().insert(p.clone());
                }
                req.extensions_mut().insert(ConnectInfo::<SocketAddr>(remote));
                req
            });
            let service = hyper_util::service::TowerToHyperService::new(service);
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%remote, error = %e, "TLS connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(30), graceful.shutdown()).await.is_err() {
        tracing::warn!("TLS listener: connections still open after 30 s; closing them");
    }
}

/// A fresh P-256 key for the server certificate, kept in memory only: (PKCS#8, DER
/// SubjectPublicKeyInfo).
pub fn generate_server_key() -> Result<(zeroize::Zeroizing<Vec<u8>>, Vec<u8>), TlsError> {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .map_err(|_| TlsError("P-256 key generation failed".into()))?;
    let pkcs8 = zeroize::Zeroizing::new(pkcs8.as_ref().to_vec());
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &pkcs8)
        .map_err(|_| TlsError("the generated key does not parse".into()))?;
    // SubjectPublicKeyInfo of an uncompressed P-256 point (RFC 5480 §2): the fixed
    // AlgorithmIdentifier (id-ecPublicKey, prime256v1) and the point as a BIT STRING.
    const PREFIX: [u8; 26] = [
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86,
        0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    let point = pair.public_key().as_ref();
    if point.len() != 65 {
        return Err(TlsError("unexpected P-256 public key length".into()));
    }
    Ok((pkcs8, [PREFIX.as_slice(), point].concat()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

    /// An issuing CA, a server certificate for `localhost` and a device certificate
    /// (clientAuth) it signed: (CA DER, server chain and PKCS#8, device DER and PKCS#8).
    #[allow(clippy::type_complexity)]
    fn pki() -> (Vec<u8>, (Vec<Vec<u8>>, Vec<u8>), (Vec<u8>, Vec<u8>)) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, "test issuing CA");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        let ca = p.self_signed(&key).unwrap().der().to_vec();
        let issuer = rcgen::Issuer::new(p, key);
        let leaf = |names: Vec<String>, eku: rcgen::ExtendedKeyUsagePurpose| {
            let mut p = rcgen::CertificateParams::new(names).unwrap();
            p.extended_key_usages = vec![eku];
            let k = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            (p.signed_by(&k, &issuer).unwrap().der().to_vec(), k.serialize_der())
        };
        let (server, server_key) = leaf(vec!["localhost".into()], rcgen::ExtendedKeyUsagePurpose::ServerAuth);
        let device = leaf(vec![], rcgen::ExtendedKeyUsagePurpose::ClientAuth);
        (ca.clone(), (vec![server, ca], server_key), device)
    }

    /// Move every TLS record `from` has to send into `to`, and let `to` process them.
    fn pump<A, B>(from: &mut rustls::ConnectionCommon<A>, to: &mut rustls::ConnectionCommon<B>) {
        let mut wire = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut wire).unwrap();
        }
        let mut r = wire.as_slice();
        while !r.is_empty() {
            to.read_tls(&mut r).unwrap();
        }
        to.process_new_packets().unwrap();
    }

    /// Run a handshake in memory, then one application record from the server (after
    /// which any NewSessionTicket has reached the client).
    fn connect(client: &mut rustls::ClientConnection, server: &mut rustls::ServerConnection) {
        for _ in 0..16 {
            if !client.is_handshaking() && !server.is_handshaking() {
                break;
            }
            pump(client, server);
            pump(server, client);
        }
        assert!(!client.is_handshaking() && !server.is_handshaking(), "the handshake did not finish");
        std::io::Write::write_all(&mut server.writer(), b"hello").unwrap();
        pump(server, client);
        let mut got = [0u8; 5];
        std::io::Read::read_exact(&mut client.reader(), &mut got).unwrap();
        assert_eq!(&got, b"hello");
    }

    /// RFC 8446 §4.6.1: the renewal listener sends no NewSessionTicket, so a device that
    /// keeps sessions still makes a full handshake (with its certificate) the next time.
    /// The same client against rustls's defaults gets two tickets and resumes, so the
    /// test sees resumption when it is on.
    #[test]
    fn the_renewal_listener_offers_no_resumption() {
        let (ca, (server_chain, server_key), (device, device_key)) = pki();
        let resolver = Arc::new(ServerCert::new(server_chain, &server_key).unwrap());
        let ours = Arc::new(server_config(resolver, std::slice::from_ref(&ca), 0).unwrap());
        let mut defaults = (*ours).clone();
        defaults.send_tls13_tickets = 2;
        defaults.session_storage = rustls::server::ServerSessionMemoryCache::new(256);
        let defaults = Arc::new(defaults);

        for (server_config, tickets, second) in
            [(ours, 0, rustls::HandshakeKind::Full), (defaults, 2, rustls::HandshakeKind::Resumed)]
        {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(CertificateDer::from(ca.clone())).unwrap();
            // One client configuration for both connections: its session store (rustls's
            // default, in memory) keeps what the first one received.
            let client_config = Arc::new(
                rustls::ClientConfig::builder_with_provider(provider())
                    .with_protocol_versions(&[&rustls::version::TLS13])
                    .unwrap()
                    .with_root_certificates(roots)
                    .with_client_auth_cert(
                        vec![CertificateDer::from(device.clone())],
                        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(device_key.clone())),
                    )
                    .unwrap(),
            );
            let mut kinds = Vec::new();
            for _ in 0..2 {
                let name = ServerName::try_from("localhost").unwrap();
                let mut client = rustls::ClientConnection::new(client_config.clone(), name).unwrap();
                let mut server = rustls::ServerConnection::new(server_config.clone()).unwrap();
                connect(&mut client, &mut server);
                assert_eq!(client.tls13_tickets_received(), tickets);
                assert!(server.peer_certificates().is_some_and(|c| c.len() == 1), "the device's certificate");
                kinds.push(client.handshake_kind());
            }
            assert_eq!(kinds, [Some(rustls::HandshakeKind::Full), Some(second)]);
        }
    }
}
