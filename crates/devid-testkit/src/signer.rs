//! An in-memory signer, for testing certificate, CRL and OCSP building without a key store.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
use devid_core::KeyRef;
use devid_kms::{KmsError, SignatureAlgorithm, Signer};

/// A fresh P-256 key held in memory (aws-lc-rs), behind the `Signer` trait.
pub struct MemSigner {
    key: EcdsaKeyPair,
    /// The public key, DER SubjectPublicKeyInfo.
    pub spki: Vec<u8>,
    key_ref: KeyRef,
}

impl MemSigner {
    /// A new random key.
    pub fn new() -> MemSigner {
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &SystemRandom::new())
            .expect("keygen");
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).expect("load");
        // SubjectPublicKeyInfo for id-ecPublicKey / prime256v1, then the 65-byte point.
        let mut spki = hex::decode("3059301306072a8648ce3d020106082a8648ce3d030107034200").expect("hex");
        spki.extend_from_slice(key.public_key().as_ref());
        MemSigner { key, spki, key_ref: KeyRef::soft("mem").expect("ref") }
    }
}

impl Default for MemSigner {
    fn default() -> Self {
        MemSigner::new()
    }
}

impl Signer for MemSigner {
    fn key_ref(&self) -> &KeyRef {
        &self.key_ref
    }
    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::EcdsaP256Sha256
    }
    fn public_key_spki_der(&self) -> &[u8] {
        &self.spki
    }
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, KmsError> {
        Ok(self.key.sign(&SystemRandom::new(), msg).expect("sign").as_ref().to_vec())
    }
}

/// A signer whose signatures are corrupted (last byte flipped), as a faulty HSM's might be:
/// whatever is built with it must be refused, never handed out. It says it may block, as
/// a key outside the process does.
pub struct BadSigner(pub std::sync::Arc<dyn Signer>);

impl Signer for BadSigner {
    fn key_ref(&self) -> &KeyRef {
        self.0.key_ref()
    }
    fn algorithm(&self) -> SignatureAlgorithm {
        self.0.algorithm()
    }
    fn public_key_spki_der(&self) -> &[u8] {
        self.0.public_key_spki_der()
    }
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, KmsError> {
        let mut s = self.0.sign(msg)?;
        if let Some(last) = s.last_mut() {
            *last ^= 1;
        }
        Ok(s)
    }
    fn may_block(&self) -> bool {
        true
    }
}
