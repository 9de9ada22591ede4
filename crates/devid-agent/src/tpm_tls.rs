//! Mutual TLS with a device key that never leaves the TPM (feature `tpm`): renewal over
//! the mutual-TLS listener (PROTOCOL.md §3) for a device enrolled with `--method tpm`.
//!
//! rustls asks a [`rustls::client::ResolvesClientCert`] for the client certificate and its
//! [`rustls::sign::SigningKey`]; here the key is a [`TpmKey`] and every signature is made
//! by the TPM: the handshake transcript that TLS signs is hashed with SHA-256 in the agent
//! and the digest signed with TPM2_Sign (TPM 2.0 Part 3 §20.2). TLS 1.3 signs the
//! CertificateVerify content (RFC 8446 §4.4.3: 64 spaces, the context string
//! "TLS 1.3, client CertificateVerify", 0x00, the transcript hash), TLS 1.2 the handshake
//! messages so far (RFC 5246 §7.4.8); rustls builds that message, this module only signs
//! it. The only scheme is `ecdsa_secp256r1_sha256` (RFC 8446 §4.2.3), the one a devid TPM
//! key (ECC NIST P-256, ECDSA-SHA256) can make; the signature is the DER ECDSA-Sig-Value
//! that both TLS versions carry.
//!
//! A [`TpmAgent`] holds one TPM connection and is not `Sync`: it sits behind a mutex, and
//! the key is reloaded under the storage primary for each signature (one per handshake),
//! so it works on a TPM without a resource manager. The signature is made on the thread
//! that drives the handshake (TPM2_Sign takes milliseconds; the agent makes one
//! connection at a time).

use std::sync::{Arc, Mutex};

use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, SubjectPublicKeyInfoDer};
use rustls::sign::{CertifiedKey, Signer, SigningKey};

use crate::error::AgentError;
use crate::tpm::{TpmAgent, TpmKey};

/// The one TLS signature scheme of a TPM device key (RFC 8446 §4.2.3).
pub const SCHEME: SignatureScheme = SignatureScheme::ECDSA_NISTP256_SHA256;

/// The TPM connection and the key it signs with.
struct Shared {
    agent: Mutex<TpmAgent>,
    key: TpmKey,
}

/// A rustls signing key whose private half stays in the TPM.
#[derive(Clone)]
pub struct TpmSigningKey {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for TpmSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpmSigningKey").field("scheme", &SCHEME).finish_non_exhaustive()
    }
}

impl TpmSigningKey {
    /// Signs with `key` through `agent` (which owns the TPM connection from now on).
    pub fn new(agent: TpmAgent, key: TpmKey) -> Self {
        TpmSigningKey { shared: Arc::new(Shared { agent: Mutex::new(agent), key }) }
    }

    /// The key's DER SubjectPublicKeyInfo.
    pub fn spki_der(&self) -> &[u8] {
        &self.shared.key.spki_der
    }

    /// SHA-256 of `message`, signed by the TPM (TPM2_Sign, TPM 2.0 Part 3 §20.2); the DER
    /// ECDSA-Sig-Value (RFC 3279 §2.2.3).
    pub fn sign_sha256(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, message);
        let mut digest = [0u8; 32];
        digest.copy_from_slice(d.as_ref());
        let mut agent = self.shared.agent.lock().map_err(|_| {
            rustls::Error::General("the TPM connection is unusable (a signer panicked)".into())
        })?;
        agent
            .sign(&self.shared.key, &digest)
            .map_err(|e| rustls::Error::General(format!("signing in the TPM: {e}")))
    }
}

impl SigningKey for TpmSigningKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        if offered.contains(&SCHEME) { Some(Box::new(TpmSigner { key: self.clone() })) } else { None }
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(SubjectPublicKeyInfoDer::from(self.spki_der()))
    }

    fn algorithm(&self) -> rustls::SignatureAlgorithm {
        rustls::SignatureAlgorithm::ECDSA
    }
}

/// One signature with the TPM key: for TLS 1.3 over the CertificateVerify content (RFC 8446
/// §4.4.3), for TLS 1.2 over the handshake messages (RFC 5246 §7.4.8).
#[derive(Debug)]
struct TpmSigner {
    key: TpmSigningKey,
}

impl Signer for TpmSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        self.key.sign_sha256(message)
    }

    fn scheme(&self) -> SignatureScheme {
        SCHEME
    }
}

/// Presents the device certificate (and its intermediates) with the TPM key whenever the
/// server asks for a client certificate and accepts `ecdsa_secp256r1_sha256`.
#[derive(Debug)]
pub struct TpmClientCert {
    certified: Arc<CertifiedKey>,
}

impl TpmClientCert {
    /// `chain` is DER, device certificate first; its public key must be the TPM key's.
    pub fn new(chain: Vec<Vec<u8>>, key: TpmSigningKey) -> Result<Self, AgentError> {
        let leaf = chain.first().ok_or_else(|| AgentError::crypto("no device certificate to present"))?;
        if crate::files::cert_spki_der(leaf)? != key.spki_der() {
            return Err(AgentError::crypto(
                "the device certificate (cert.pem) is not for the TPM key (key.tpm)",
            ));
        }
        let chain = chain.into_iter().map(CertificateDer::from).collect();
        Ok(TpmClientCert { certified: Arc::new(CertifiedKey::new(chain, Arc::new(key))) })
    }
}

impl ResolvesClientCert for TpmClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        if sigschemes.contains(&SCHEME) { Some(Arc::clone(&self.certified)) } else { None }
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A rustls client configuration trusting exactly `roots` and presenting `chain` (device
/// certificate first) with the TPM key.
pub fn tls_config(
    roots: &[Vec<u8>],
    chain: Vec<Vec<u8>>,
    key: TpmSigningKey,
) -> Result<rustls::ClientConfig, AgentError> {
    let resolver = TpmClientCert::new(chain, key)?;
    Ok(crate::client::tls_builder(roots)?.with_client_cert_resolver(Arc::new(resolver)))
}

/// An HTTP client for the mutual-TLS renewal listener presenting `chain` with the TPM key.
pub fn mtls_client(
    roots: &[Vec<u8>],
    chain: Vec<Vec<u8>>,
    key: TpmSigningKey,
) -> Result<reqwest::Client, AgentError> {
    crate::client::client_with_tls(tls_config(roots, chain, key)?)
}
