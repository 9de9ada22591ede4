//! The value every method proves possession over (PROTOCOL.md, "Binding").

use sha2::{Digest, Sha256};

/// The domain-separation label of the binding (followed by one zero byte).
pub const BINDING_LABEL: &[u8] = b"devid-attest-v1";

/// `SHA-256("devid-attest-v1" || 0x00 || nonce || SHA-256(csr_der))`: binds the server's
/// single-use nonce to the CSR (and so to the key being certified).
pub fn binding(nonce: &[u8], csr_der: &[u8]) -> [u8; 32] {
    binding_from_csr_hash(nonce, &Sha256::digest(csr_der).into())
}

/// [`binding`] from the CSR's SHA-256 (which the server has already computed).
pub fn binding_from_csr_hash(nonce: &[u8], csr_hash: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(BINDING_LABEL);
    h.update([0u8]);
    h.update(nonce);
    h.update(csr_hash);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_depends_on_nonce_and_csr() {
        let a = binding(&[1; 32], b"csr-a");
        assert_ne!(a, binding(&[2; 32], b"csr-a"));
        assert_ne!(a, binding(&[1; 32], b"csr-b"));
        assert_eq!(a, binding(&[1; 32], b"csr-a"));
    }
}
