//! Test helpers for devid (a dev-dependency only): a fresh database per test on PostgreSQL
//! or SQLite ([`db`]), the SoftHSM2 token prepared by `tests/run.sh` ([`hsm`]), a software
//! TPM with EK certificates ([`swtpm`]), and device-side PKI material: keys, CSRs and
//! `openssl` checks ([`pki`]).
//!
//! Nothing here skips: a missing PostgreSQL, SoftHSM2, swtpm or openssl fails the test with
//! the command that fixes it.
#![forbid(unsafe_code)]
#![allow(missing_docs)]
#![allow(clippy::unwrap_used)]

pub mod db;
pub mod hsm;
pub mod pki;
pub mod signer;
pub mod swtpm;
