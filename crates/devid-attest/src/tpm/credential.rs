//! TPM2_MakeCredential, done in software on the server.
//!
//! TPM 2.0 Part 1 §24 ("Credential Protection"), Part 3 §12.6 (TPM2_MakeCredential), the
//! secret sharing of Part 1 Annex B.10.3 (RSA, OAEP) and Annex C.6.4 (ECC, one-pass ECDH),
//! and the key derivation functions of Part 1 §11.4.10 (KDFa, KDFe).

use super::wire::{self, KeyDetail, Public};
use crate::{AttestError, Failure};
use aes::cipher::{AsyncStreamCipher, KeyIvInit};
use devid_core::Entropy;
use hmac::{Hmac, Mac};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use rsa::rand_core::{CryptoRng, Error as RandError, RngCore};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

type HmacSha256 = Hmac<Sha256>;

/// The digest size of SHA-256, the only nameAlg accepted for the EK.
const SHA256_LEN: usize = 32;

/// `"IDENTITY"` with its terminating NUL: the label of the seed (Part 1 §24.4).
const LABEL_IDENTITY: &str = "IDENTITY\0";
/// `"STORAGE"` with its NUL: the label of the symmetric key (Part 1 §24.4).
const LABEL_STORAGE: &[u8] = b"STORAGE\0";
/// `"INTEGRITY"` with its NUL: the label of the HMAC key (Part 1 §24.5).
const LABEL_INTEGRITY: &[u8] = b"INTEGRITY\0";

/// The output of TPM2_MakeCredential (Part 3 §12.6.2, Table 83).
pub struct MadeCredential {
    /// TPM2B_ID_OBJECT: `size || TPM2B_DIGEST(integrityHMAC) || encIdentity`.
    pub credential_blob: Vec<u8>,
    /// TPM2B_ENCRYPTED_SECRET: the seed, OAEP-encrypted (RSA) or the marshalled ephemeral
    /// TPMS_ECC_POINT (ECC).
    pub encrypted_secret: Vec<u8>,
}

/// Adapts the injected [`Entropy`] to the `rand_core` traits the RSA and P-256 crates use.
struct EntropyRng<'a>(&'a dyn Entropy);

impl RngCore for EntropyRng<'_> {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.0.fill(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.0.fill(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.0.fill(dest);
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), RandError> {
        self.0.fill(dest);
        Ok(())
    }
}

impl CryptoRng for EntropyRng<'_> {}

/// KDFa with SHA-256 (Part 1 §11.4.10.2, SP 800-108 counter mode with HMAC):
/// `K(i) = HMAC(key, [i]32 || label || contextU || contextV || [bits]32)`. `label` must
/// already end with its NUL octet.
pub fn kdfa_sha256(key: &[u8], label: &[u8], context_u: &[u8], context_v: &[u8], bits: u32) -> Vec<u8> {
    let len = (bits as usize).div_ceil(8);
    let mut out = Vec::with_capacity(len + SHA256_LEN);
    let mut counter: u32 = 1;
    while out.len() < len {
        // HMAC accepts keys of any length; new_from_slice cannot fail for HMAC.
        let Ok(mut mac) = HmacSha256::new_from_slice(key) else { break };
        mac.update(&counter.to_be_bytes());
        mac.update(label);
        mac.update(context_u);
        mac.update(context_v);
        mac.update(&bits.to_be_bytes());
        out.extend_from_slice(&mac.finalize().into_bytes());
        counter = counter.wrapping_add(1);
    }
    out.truncate(len);
    out
}

/// KDFe with SHA-256 (Part 1 §11.4.10.3, SP 800-56A concatenation KDF):
/// `K(i) = H([i]32 || Z || use || partyUInfo || partyVInfo)`. `label` ends with its NUL.
pub fn kdfe_sha256(z: &[u8], label: &[u8], party_u: &[u8], party_v: &[u8], bits: u32) -> Vec<u8> {
    let len = (bits as usize).div_ceil(8);
    let mut out = Vec::with_capacity(len + SHA256_LEN);
    let mut counter: u32 = 1;
    while out.len() < len {
        let mut h = Sha256::new();
        h.update(counter.to_be_bytes());
        h.update(z);
        h.update(label);
        h.update(party_u);
        h.update(party_v);
        out.extend_from_slice(&h.finalize());
        counter = counter.wrapping_add(1);
    }
    out.truncate(len);
    out
}

/// Left-pads a big-endian integer to `n` bytes (leading zeros may have been trimmed).
pub fn pad_to(bytes: &[u8], n: usize) -> Option<Vec<u8>> {
    let trimmed: &[u8] = {
        let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
        &bytes[first..]
    };
    if trimmed.len() > n {
        return None;
    }
    let mut v = vec![0u8; n - trimmed.len()];
    v.extend_from_slice(trimmed);
    Some(v)
}

/// The seed and its TPM2B_ENCRYPTED_SECRET for the EK (Part 1 §24.4 and Annexes B.10.3 /
/// C.6.4). The EK has already been checked to be RSA-2048 or ECC P-256 with nameAlg SHA-256.
fn make_seed(ek: &Public, rng: &dyn Entropy) -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), AttestError> {
    let mut rng = EntropyRng(rng);
    match &ek.detail {
        KeyDetail::Rsa { exponent, modulus, .. } => {
            // Annex B.10.3: a random seed of the size of the nameAlg digest, encrypted with
            // RSAES-OAEP using the nameAlg and the label "IDENTITY\0".
            let mut seed = Zeroizing::new(vec![0u8; SHA256_LEN]);
            rng.fill_bytes(&mut seed);
            let key = rsa::RsaPublicKey::new(
                rsa::BigUint::from_bytes_be(modulus),
                rsa::BigUint::from(u64::from(*exponent)),
            )
            .map_err(|e| AttestError::new(Failure::Malformed, format!("EK RSA key: {e}")))?;
            let padding = rsa::Oaep::new_with_label::<Sha256, _>(LABEL_IDENTITY);
            let enc = key
                .encrypt(&mut rng, padding, &seed)
                .map_err(|e| AttestError::new(Failure::Malformed, format!("OAEP with the EK: {e}")))?;
            let mut out = Vec::with_capacity(enc.len() + 2);
            wire::put_tpm2b(&mut out, &enc)?;
            Ok((seed, out))
        }
        KeyDetail::Ecc { x, y, .. } => {
            // Annex C.6.4: an ephemeral key on the EK's curve; Z is the x coordinate of the
            // shared point; seed = KDFe(nameAlg, Z, "IDENTITY\0", ephemeral.x, EK.x, bits).
            let (px, py) = (
                pad_to(x, 32).ok_or_else(|| AttestError::new(Failure::Malformed, "EK x too long"))?,
                pad_to(y, 32).ok_or_else(|| AttestError::new(Failure::Malformed, "EK y too long"))?,
            );
            let ek_key = p256::PublicKey::from_sec1_bytes(&[&[0x04u8][..], &px, &py].concat())
                .map_err(|_| AttestError::new(Failure::Malformed, "EK point is not on P-256"))?;
            let eph = p256::NonZeroScalar::random(&mut rng);
            let eph_point = (p256::ProjectivePoint::GENERATOR * *eph).to_affine().to_encoded_point(false);
            let shared = (ek_key.to_projective() * *eph).to_affine().to_encoded_point(false);
            let (Some(ex), Some(ey), Some(z)) = (eph_point.x(), eph_point.y(), shared.x()) else {
                return Err(AttestError::new(Failure::Malformed, "point at infinity"));
            };
            let z = Zeroizing::new(z.to_vec());
            let seed =
                Zeroizing::new(kdfe_sha256(&z, LABEL_IDENTITY.as_bytes(), ex, x, (SHA256_LEN * 8) as u32));
            // TPMS_ECC_POINT inside TPM2B_ENCRYPTED_SECRET.
            let mut point = Vec::with_capacity(68);
            wire::put_tpm2b(&mut point, ex)?;
            wire::put_tpm2b(&mut point, ey)?;
            let mut out = Vec::with_capacity(point.len() + 2);
            wire::put_tpm2b(&mut out, &point)?;
            Ok((seed, out))
        }
    }
}

/// TPM2_MakeCredential (Part 3 §12.6; Part 1 §24.4–24.5) for the object named `name`,
/// protected by the EK `ek`, carrying `secret` (at most 64 bytes).
///
/// - symKey = KDFa(nameAlg, seed, "STORAGE", name, ∅, symmetric.keyBits)
/// - encIdentity = AES-CFB(symKey, IV = 0, TPM2B_DIGEST(secret))
/// - HMACkey = KDFa(nameAlg, seed, "INTEGRITY", ∅, ∅, digest bits)
/// - outerHMAC = HMAC(HMACkey, encIdentity || name)
pub fn make_credential(
    ek: &Public,
    name: &[u8],
    secret: &[u8],
    rng: &dyn Entropy,
) -> Result<MadeCredential, AttestError> {
    if ek.name_alg != wire::ALG_SHA256 {
        return Err(AttestError::new(Failure::UnsupportedAlgorithm, "EK nameAlg is not SHA-256"));
    }
    if ek.symmetric.algorithm != wire::ALG_AES || ek.symmetric.mode != wire::ALG_CFB {
        return Err(AttestError::new(Failure::UnsupportedAlgorithm, "EK symmetric is not AES-CFB"));
    }
    if secret.len() > 64 {
        return Err(AttestError::new(Failure::Malformed, "credential secret too long"));
    }
    let (seed, encrypted_secret) = make_seed(ek, rng)?;

    let mut enc_identity = Zeroizing::new(Vec::with_capacity(secret.len() + 2));
    wire::put_tpm2b(&mut enc_identity, secret)?;
    let iv = [0u8; 16];
    match ek.symmetric.key_bits {
        128 => {
            let key = Zeroizing::new(kdfa_sha256(&seed, LABEL_STORAGE, name, &[], 128));
            cfb_mode::Encryptor::<aes::Aes128>::new_from_slices(&key, &iv)
                .map_err(|_| AttestError::new(Failure::Malformed, "AES-128 key size"))?
                .encrypt(&mut enc_identity);
        }
        256 => {
            let key = Zeroizing::new(kdfa_sha256(&seed, LABEL_STORAGE, name, &[], 256));
            cfb_mode::Encryptor::<aes::Aes256>::new_from_slices(&key, &iv)
                .map_err(|_| AttestError::new(Failure::Malformed, "AES-256 key size"))?
                .encrypt(&mut enc_identity);
        }
        bits => {
            return Err(AttestError::new(
                Failure::UnsupportedAlgorithm,
                format!("EK AES key of {bits} bits"),
            ));
        }
    }

    let hmac_key = Zeroizing::new(kdfa_sha256(&seed, LABEL_INTEGRITY, &[], &[], (SHA256_LEN * 8) as u32));
    let mut mac = HmacSha256::new_from_slice(&hmac_key)
        .map_err(|_| AttestError::new(Failure::Malformed, "HMAC key"))?;
    mac.update(&enc_identity);
    mac.update(name);
    let outer_hmac = mac.finalize().into_bytes();

    // TPM2B_ID_OBJECT (Part 2 §12.4.3): the TPMS_ID_OBJECT is integrityHMAC (a TPM2B_DIGEST)
    // followed by encIdentity (not size-prefixed: it runs to the end of the structure).
    let mut id_object = Vec::with_capacity(2 + outer_hmac.len() + enc_identity.len());
    wire::put_tpm2b(&mut id_object, &outer_hmac)?;
    id_object.extend_from_slice(&enc_identity);
    let mut credential_blob = Vec::with_capacity(id_object.len() + 2);
    wire::put_tpm2b(&mut credential_blob, &id_object)?;
    Ok(MadeCredential { credential_blob, encrypted_secret })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kdfa_is_counter_mode_hmac() {
        // One block: HMAC(key, 00000001 || label || u || v || 00000100).
        let out = kdfa_sha256(b"k", b"L\0", b"u", b"v", 256);
        let mut mac = HmacSha256::new_from_slice(b"k").unwrap();
        mac.update(&[0, 0, 0, 1, b'L', 0, b'u', b'v', 0, 0, 1, 0]);
        assert_eq!(out, mac.finalize().into_bytes().to_vec());
        // Two blocks, truncated.
        let long = kdfa_sha256(b"k", b"L\0", b"u", b"v", 320);
        assert_eq!(long.len(), 40);
        assert_eq!(kdfa_sha256(b"k", b"L\0", b"u", b"v", 128).len(), 16);
    }

    #[test]
    fn kdfe_is_concatenation_kdf() {
        let out = kdfe_sha256(b"z", b"U\0", b"p", b"q", 256);
        let h = Sha256::digest([0, 0, 0, 1, b'z', b'U', 0, b'p', b'q']);
        assert_eq!(out, h.to_vec());
    }

    #[test]
    fn pad_to_handles_leading_zeros() {
        assert_eq!(pad_to(&[0, 0, 1], 2), Some(vec![0, 1]));
        assert_eq!(pad_to(&[1, 2, 3], 2), None);
        assert_eq!(pad_to(&[], 2), Some(vec![0, 0]));
    }
}
