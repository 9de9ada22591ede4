//! Key management for devid.
//!
//! A [`KeyManager`] creates and looks up keys by [`KeyRef`] and hands out a [`Signer`];
//! private keys never leave it. Two implementations:
//! - [`soft::SoftKeyStore`]: P-256 keys encrypted at rest (AES-256-GCM under a
//!   key-encryption key from a passphrase via Argon2id, or from a key file / variable);
//! - [`pkcs11::Pkcs11KeyManager`]: key pairs on a PKCS#11 token (tested with SoftHSM2).
//!
//! [`Kms`] routes a reference to the manager for its scheme.
//!
//! Signers are synchronous and may block (an HSM round trip): async callers run them on a
//! blocking thread.
#![deny(missing_docs)]
// `unsafe_code` is forbidden workspace-wide; this crate has none of its own (cryptoki
// carries the FFI).

use std::sync::Arc;

use devid_core::{ErrorKind, KeyRef};

mod error;
pub mod pkcs11;
pub mod soft;

pub use error::KmsError;

/// The key types devid creates. CA, OCSP-signing and token-signing keys are all P-256
/// today; the enum leaves room for P-384 and Ed25519 without changing the traits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// ECDSA over NIST P-256 (secp256r1), signing with SHA-256.
    EcdsaP256,
}

/// The signature algorithm a [`Signer`] produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureAlgorithm {
    /// ecdsa-with-SHA256 (RFC 5758 §3.2, OID 1.2.840.10045.4.3.2): the signature is the DER
    /// `Ecdsa-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }` (RFC 3279
    /// §2.2.3) over SHA-256 of the message.
    EcdsaP256Sha256,
}

/// Something that signs with a private key it does not reveal.
pub trait Signer: Send + Sync {
    /// The reference this signer was made for.
    fn key_ref(&self) -> &KeyRef;
    /// The signature algorithm of [`Signer::sign`].
    fn algorithm(&self) -> SignatureAlgorithm;
    /// The public key as a DER `SubjectPublicKeyInfo` (RFC 5280 §4.1.2.7).
    fn public_key_spki_der(&self) -> &[u8];
    /// Sign `msg` (the whole message, e.g. a TBSCertificate; the signer hashes it) and
    /// return the DER signature value. May block.
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, KmsError>;
    /// Whether [`Signer::sign`] may block the calling thread (a device or network round
    /// trip, as with an HSM), so that async callers must move it off their executor. An
    /// in-process key answers `false`: a P-256 signature takes tens of microseconds, less
    /// than handing it to another thread.
    fn may_block(&self) -> bool {
        true
    }
}

/// Creates keys and hands out signers, by reference.
pub trait KeyManager: Send + Sync {
    /// Generate a new key under `key`. Fails with [`ErrorKind::Conflict`] if one exists,
    /// unless `replace` is set (then the old key is destroyed).
    fn create_key(&self, key: &KeyRef, alg: KeyAlgorithm, replace: bool)
    -> Result<Arc<dyn Signer>, KmsError>;
    /// A signer for an existing key; [`ErrorKind::NotFound`] if there is none.
    fn signer(&self, key: &KeyRef) -> Result<Arc<dyn Signer>, KmsError>;
    /// Whether a key exists under `key`.
    fn exists(&self, key: &KeyRef) -> Result<bool, KmsError>;
    /// Encrypt a secret (a group master key, a device key) so that it can be kept in the
    /// database: AES-256-GCM under a key only the key manager holds, with `context` (e.g.
    /// `group:line-7`) bound as associated data, so a sealed value moved to another row
    /// does not open. Managers without a sealing key say [`KmsError::NotConfigured`].
    fn seal(&self, context: &str, plaintext: &[u8]) -> Result<Vec<u8>, KmsError> {
        let _ = plaintext;
        Err(KmsError::NotConfigured { key: format!("sealing key (for {context})") })
    }
    /// Decrypt what [`KeyManager::seal`] made for the same `context`.
    fn unseal(&self, context: &str, sealed: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>, KmsError> {
        let _ = sealed;
        Err(KmsError::NotConfigured { key: format!("sealing key (for {context})") })
    }
}

/// Routes each [`KeyRef`] to the manager of its scheme. A scheme without a configured
/// manager is a configuration error, reported with the reference.
#[derive(Default, Clone)]
pub struct Kms {
    soft: Option<Arc<soft::SoftKeyStore>>,
    pkcs11: Option<Arc<pkcs11::Pkcs11KeyManager>>,
}

impl Kms {
    /// A router with no backends.
    pub fn new() -> Self {
        Self::default()
    }
    /// Add the software key store (handles `soft:` references).
    pub fn with_soft(mut self, store: soft::SoftKeyStore) -> Self {
        self.soft = Some(Arc::new(store));
        self
    }
    /// Add a PKCS#11 module (handles `pkcs11:` references).
    pub fn with_pkcs11(mut self, m: pkcs11::Pkcs11KeyManager) -> Self {
        self.pkcs11 = Some(Arc::new(m));
        self
    }

    fn route(&self, key: &KeyRef) -> Result<&dyn KeyManager, KmsError> {
        let m: Option<&dyn KeyManager> = match key {
            KeyRef::Soft { .. } => self.soft.as_deref().map(|m| m as &dyn KeyManager),
            KeyRef::Pkcs11 { .. } => self.pkcs11.as_deref().map(|m| m as &dyn KeyManager),
        };
        m.ok_or_else(|| KmsError::NotConfigured { key: key.to_string() })
    }
}

impl KeyManager for Kms {
    fn create_key(
        &self,
        key: &KeyRef,
        alg: KeyAlgorithm,
        replace: bool,
    ) -> Result<Arc<dyn Signer>, KmsError> {
        self.route(key)?.create_key(key, alg, replace)
    }
    fn signer(&self, key: &KeyRef) -> Result<Arc<dyn Signer>, KmsError> {
        self.route(key)?.signer(key)
    }
    fn exists(&self, key: &KeyRef) -> Result<bool, KmsError> {
        self.route(key)?.exists(key)
    }
    /// Sealing uses the software key store's key-encryption key (every node has one).
    fn seal(&self, context: &str, plaintext: &[u8]) -> Result<Vec<u8>, KmsError> {
        match &self.soft {
            Some(s) => s.seal(context, plaintext),
            None => Err(KmsError::NotConfigured { key: format!("sealing key (for {context})") }),
        }
    }
    fn unseal(&self, context: &str, sealed: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>, KmsError> {
        match &self.soft {
            Some(s) => s.unseal(context, sealed),
            None => Err(KmsError::NotConfigured { key: format!("sealing key (for {context})") }),
        }
    }
}

/// Verify a DER ECDSA P-256/SHA-256 signature against a DER SubjectPublicKeyInfo. Used to
/// check every signature a KMS returns before it is handed out.
pub fn verify_p256_sha256(spki_der: &[u8], msg: &[u8], sig_der: &[u8]) -> Result<(), KmsError> {
    use spki::der::Decode;
    let spki = spki::SubjectPublicKeyInfoRef::from_der(spki_der)
        .map_err(|e| KmsError::Backend { kind: ErrorKind::Internal, detail: format!("bad SPKI: {e}") })?;
    let point = spki.subject_public_key.raw_bytes();
    aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1, point)
        .verify(msg, sig_der)
        .map_err(|_| KmsError::BadSignature)
}
