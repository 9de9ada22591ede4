use devid_core::ErrorKind;

/// The one error type of the KMS crate. Messages name the key reference and never carry
/// key material, passphrases or PINs.
#[derive(Debug, thiserror::Error)]
pub enum KmsError {
    /// No key under that reference.
    #[error("no key '{key}'")]
    NotFound {
        /// The reference.
        key: String,
    },
    /// A key already exists under that reference.
    #[error("a key '{key}' already exists")]
    Exists {
        /// The reference.
        key: String,
    },
    /// The reference's scheme has no configured backend.
    #[error("no key manager is configured for '{key}'")]
    NotConfigured {
        /// The reference.
        key: String,
    },
    /// A software key could not be decrypted: wrong passphrase or key-encryption key, or
    /// the file was altered.
    #[error(
        "cannot decrypt key '{key}': wrong passphrase or key-encryption key, or the key file was altered"
    )]
    Decrypt {
        /// The reference.
        key: String,
    },
    /// A signature returned by the backend did not verify with the key's public key.
    #[error("the key manager returned a signature that does not verify")]
    BadSignature,
    /// Anything else from the backend (I/O, PKCS#11, malformed key file).
    #[error("{detail}")]
    Backend {
        /// The coarse kind.
        kind: ErrorKind,
        /// Detail for the operator's log.
        detail: String,
    },
}

impl KmsError {
    /// The coarse kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            KmsError::NotFound { .. } => ErrorKind::NotFound,
            KmsError::Exists { .. } => ErrorKind::Conflict,
            KmsError::NotConfigured { .. } => ErrorKind::InvalidInput,
            KmsError::Decrypt { .. } => ErrorKind::Unauthorized,
            KmsError::BadSignature => ErrorKind::Internal,
            KmsError::Backend { kind, .. } => *kind,
        }
    }
}
