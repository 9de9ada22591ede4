//! TPM 2.0 device side (to be written).
