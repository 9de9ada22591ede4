//! OCSP (RFC 6960). (being written)
