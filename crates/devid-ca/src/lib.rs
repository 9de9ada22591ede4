//! Certificate building and signing for devid. Pure: no SQL, no HTTP, no clocks or random
//! sources of its own (times and serials come in as arguments).
//!
//! - [`csr`]: parse a PKCS#10 CSR (RFC 2986) and verify its self-signature;
//! - [`profile`]: the certificate profiles (root, issuing CA, device leaf) and the
//!   TBSCertificate builder — a certificate is built from the profile only, never from
//!   extensions the CSR asks for;
//! - [`crl`]: certificate revocation lists (RFC 5280 §5), encoded as a stream;
//! - [`ocsp`]: OCSP requests and pre-signable responses (RFC 6960, RFC 5019), and the
//!   delegated OCSP responder certificate profile;
//! - [`sign`]: sign a TBSCertificate through a [`devid_kms::Signer`], check the signature,
//!   and assemble the certificate. The bytes signed are the bytes recorded.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod crl;
pub mod csr;
mod error;
pub mod ocsp;
pub mod profile;
pub mod sign;

pub use error::CaError;

/// DER → PEM with the given label (`CERTIFICATE`, …), 64-column lines, trailing newline.
pub fn to_pem(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// SHA-256 fingerprint of a DER blob as colon-separated uppercase hex, as
/// `openssl x509 -fingerprint -sha256` prints it.
pub fn fingerprint_sha256(der: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    d.as_ref().iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

/// The serial number of a DER certificate (RFC 5280 §4.1.2.2).
pub fn certificate_serial(der: &[u8]) -> Result<devid_core::Serial, CaError> {
    serial_of(&parse_certificate(der)?)
}

/// A certificate's serial number and its subject public key (DER SubjectPublicKeyInfo,
/// RFC 5280 §4.1.2.7), from one parse.
pub fn certificate_serial_and_key(der: &[u8]) -> Result<(devid_core::Serial, Vec<u8>), CaError> {
    let cert = parse_certificate(der)?;
    let spki = x509_cert::der::Encode::to_der(&cert.tbs_certificate.subject_public_key_info)
        .map_err(|e| CaError::InvalidCertificate(format!("subject public key: {e}")))?;
    Ok((serial_of(&cert)?, spki))
}

fn parse_certificate(der: &[u8]) -> Result<x509_cert::Certificate, CaError> {
    use x509_cert::der::Decode;
    x509_cert::Certificate::from_der(der)
        .map_err(|e| CaError::InvalidCertificate(format!("not a certificate: {e}")))
}

fn serial_of(cert: &x509_cert::Certificate) -> Result<devid_core::Serial, CaError> {
    devid_core::Serial::from_bytes(cert.tbs_certificate.serial_number.as_bytes())
        .map_err(|e| CaError::InvalidCertificate(format!("serial: {e}")))
}
