//! TPM 2.0 attestation (to be written).
