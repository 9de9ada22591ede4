//! Derived symmetric key attestation (PROTOCOL.md, "Enroll", method `symmetric`).
//!
//! A group has a master key; each device's key is derived from it and its id, and the
//! device proves possession of its key with an HMAC over the [`binding`]:
//!
//! ```text
//! device key = HMAC-SHA256(master key, device id as UTF-8)
//! proof      = HMAC-SHA256(device key, binding)
//! ```
//!
//! HMAC is RFC 2104 with SHA-256 (FIPS 180-4), as in RFC 4231; the implementation is
//! aws-lc-rs, whose verification compares in constant time. A device record may instead
//! carry its own key ([`verify_device`]), e.g. one provisioned at the factory.
//!
//! [`binding`]: crate::binding

use aws_lc_rs::hmac;

use crate::{AttestError, Attested, Failure};

/// The shortest master or device key accepted, in bytes (128 bits). RFC 2104 §3: keys
/// shorter than the hash output "are strongly discouraged as it would decrease the
/// security strength of the function".
pub const MIN_KEY_LEN: usize = 16;

/// The device key: `HMAC-SHA256(master, device_id)` (RFC 2104 §2).
pub fn derive_device_key(master: &[u8], device_id: &str) -> [u8; 32] {
    hmac_sha256(master, device_id.as_bytes())
}

/// The proof a device sends: `HMAC-SHA256(device_key, binding)` (RFC 2104 §2).
pub fn proof(device_key: &[u8], binding: &[u8; 32]) -> [u8; 32] {
    hmac_sha256(device_key, binding)
}

/// Verify a proof made with the key derived from the group's master key. The comparison
/// is constant-time.
pub fn verify_group(
    master: &[u8],
    device_id: &str,
    binding: &[u8; 32],
    proof: &[u8],
) -> Result<Attested, AttestError> {
    check_key(master, "group master key")?;
    let id = valid_id(device_id)?;
    let mut device_key = derive_device_key(master, id.as_str());
    let checked = check_proof(&device_key, binding, proof);
    zeroize::Zeroize::zeroize(&mut device_key);
    checked?;
    Ok(attested(id, "group"))
}

/// Verify a proof made with a device's own key (a device record that carries its key).
/// The comparison is constant-time.
pub fn verify_device(
    device_key: &[u8],
    device_id: &str,
    binding: &[u8; 32],
    proof: &[u8],
) -> Result<Attested, AttestError> {
    check_key(device_key, "device key")?;
    let id = valid_id(device_id)?;
    check_proof(device_key, binding, proof)?;
    Ok(attested(id, "device"))
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let tag = hmac::sign(&key, msg);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

fn check_key(key: &[u8], what: &str) -> Result<(), AttestError> {
    if key.len() < MIN_KEY_LEN {
        return Err(AttestError::new(
            Failure::Malformed,
            format!("{what} is {} bytes; at least {MIN_KEY_LEN}", key.len()),
        ));
    }
    Ok(())
}

fn valid_id(device_id: &str) -> Result<devid_core::DeviceId, AttestError> {
    devid_core::DeviceId::new(device_id)
        .map_err(|e| AttestError::new(Failure::NoDeviceId, format!("claimed device id: {e}")))
}

fn check_proof(device_key: &[u8], binding: &[u8; 32], proof: &[u8]) -> Result<(), AttestError> {
    if proof.len() != 32 {
        return Err(AttestError::new(
            Failure::Malformed,
            format!("proof is {} bytes; expected 32", proof.len()),
        ));
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, device_key);
    // aws-lc-rs compares the tags in constant time.
    hmac::verify(&key, binding, proof)
        .map_err(|_| AttestError::new(Failure::BadProof, "HMAC over the binding does not verify"))
}

fn attested(id: devid_core::DeviceId, key: &str) -> Attested {
    Attested {
        device_id: id.as_str().to_string(),
        summary: serde_json::json!({ "method": "symmetric", "key": key }),
    }
}
