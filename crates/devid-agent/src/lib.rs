//! The devid device agent: a library and the `devid-agent` CLI that a device runs.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

#[cfg(feature = "tpm")]
pub mod tpm;
