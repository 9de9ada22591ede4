//! The devid device agent: a library and the `devid-agent` CLI that a device runs.
//!
//! - [`enroll`]: enrollment (PROTOCOL.md §1–2: token, X.509 IDevID, derived symmetric key,
//!   TPM 2.0) and renewal over mutual TLS (§3), from evidence to files on disk.
//! - [`keys`]: the P-256 device key and its CSR, the factory key, symmetric key material.
//! - [`files`]: the output directory, written atomically (key 0600, directory 0700).
//! - [`schedule`]: when to renew, backoff, `Retry-After` (pure functions).
//! - [`run`]: the long-running loop; [`cli`]: the command line.
//! - [`simulate`]: `devid-agent simulate`, a fleet of simulated devices (sizing, load).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod cli;
pub mod client;
pub mod enroll;
pub mod error;
pub mod files;
pub mod keys;
pub mod protocol;
pub mod run;
pub mod schedule;
pub mod simulate;
#[cfg(feature = "tpm")]
pub mod tpm;
#[cfg(feature = "tpm")]
pub mod tpm_enroll;
#[cfg(feature = "tpm")]
pub mod tpm_tls;

pub use error::{AgentError, ErrorKind};
