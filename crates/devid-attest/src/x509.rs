//! X.509 IDevID attestation (to be written).
