//! Certificate revocation lists (RFC 5280 §5). (being written)
