use devid_core::ErrorKind;
use devid_kms::KmsError;

/// The one error type of the CA crate.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The CSR could not be parsed or its signature does not verify.
    #[error("invalid CSR: {0}")]
    InvalidCsr(String),
    /// The CSR's key type or size is not allowed by policy.
    #[error("unsupported key: {0}")]
    UnsupportedKey(String),
    /// A certificate or CA record given to the CA is malformed.
    #[error("invalid certificate: {0}")]
    InvalidCertificate(String),
    /// The key manager failed.
    #[error(transparent)]
    Kms(#[from] KmsError),
    /// DER encoding failed (a bug or an out-of-range value).
    #[error("encoding failed: {0}")]
    Encoding(String),
}

impl CaError {
    /// The coarse kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            CaError::InvalidCsr(_) | CaError::UnsupportedKey(_) => ErrorKind::InvalidInput,
            CaError::InvalidCertificate(_) | CaError::Encoding(_) => ErrorKind::Internal,
            CaError::Kms(e) => e.kind(),
        }
    }
}

impl From<der::Error> for CaError {
    fn from(e: der::Error) -> Self {
        CaError::Encoding(e.to_string())
    }
}
