//! Signing a TBSCertificate (RFC 5280 §4.1.1):
//!
//! ```text
//! Certificate  ::=  SEQUENCE  {
//!      tbsCertificate       TBSCertificate,
//!      signatureAlgorithm   AlgorithmIdentifier,
//!      signatureValue       BIT STRING  }
//! ```
//!
//! "Sign only what you checked": the bytes passed in are the bytes signed and the bytes
//! that end up in the certificate; the signature is verified with the issuer's public key
//! before the certificate is returned, so a faulty HSM cannot produce a bad certificate.

use der::{Decode, Encode};
use devid_kms::Signer;
use x509_cert::Certificate;
use x509_cert::certificate::TbsCertificate;

use crate::CaError;
use crate::profile::{SignatureBits, algorithm_identifier};

/// Sign `tbs_der` with `signer` and return the DER certificate.
pub fn sign_tbs(signer: &dyn Signer, tbs_der: &[u8]) -> Result<Vec<u8>, CaError> {
    let tbs = TbsCertificate::from_der(tbs_der)
        .map_err(|e| CaError::InvalidCertificate(format!("TBSCertificate: {e}")))?;
    let alg = algorithm_identifier(signer.algorithm());
    if tbs.signature != alg {
        return Err(CaError::InvalidCertificate(
            "the TBSCertificate names a different signature algorithm than the signer's".into(),
        ));
    }
    let sig = signer.sign(tbs_der)?;
    devid_kms::verify_p256_sha256(signer.public_key_spki_der(), tbs_der, &sig)?;
    let cert = Certificate {
        tbs_certificate: tbs,
        signature_algorithm: alg,
        signature: SignatureBits::from_bytes(&sig)?,
    };
    let der = cert.to_der()?;
    // DER is canonical, so re-encoding the decoded TBS gives the same bytes; check anyway,
    // because a certificate whose TBS differs from the recorded one must never leave.
    if !der.windows(tbs_der.len()).any(|w| w == tbs_der) {
        return Err(CaError::Encoding("re-encoded TBSCertificate differs from the signed one".into()));
    }
    Ok(der)
}
