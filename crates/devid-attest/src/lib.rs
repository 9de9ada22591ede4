//! Device attestation for devid: one attestor per evidence format, each in its own module
//! with its own tests. The wire protocol is in `PROTOCOL.md` next to this crate's manifest.
//!
//! - [`x509`]: an IEEE 802.1AR-style IDevID: a factory certificate chain and a signature
//!   with the factory key over the [`binding`].
//! - [`tpm`]: TPM 2.0: EK certificate, credential activation (TPM2_MakeCredential done
//!   here, on the server) and TPM2_Certify of the CSR's key by the AK.
//! - [`symmetric`]: a key derived from a group master key (HMAC-SHA256), proving
//!   possession with an HMAC over the [`binding`].
//!
//! Attestors are pure: no I/O, time passed in, randomness passed in. Policy (which group,
//! which anchors, whether the device must be registered) is the authority's.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod binding;
mod error;
pub mod symmetric;
pub mod tpm;
pub mod x509;

pub use binding::{BINDING_LABEL, binding, binding_from_csr_hash};
pub use error::{AttestError, Failure};

/// What an attestor established about a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attested {
    /// The device id taken from the evidence (subject serialNumber, SAN, EK hash, or the id
    /// the device claimed and proved with its derived key).
    pub device_id: String,
    /// A summary of the evidence for the audit log (issuer, serial, subject, EK hash…);
    /// never a secret.
    pub summary: serde_json::Value,
}
