//! Derived symmetric key attestation (to be written).
