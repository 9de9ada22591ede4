use devid_ca::CaError;
use devid_core::ErrorKind;
use devid_kms::KmsError;
use devid_store::StoreError;

/// The one error type of the authority. [`AuthorityError::code`] is a stable, public
/// identifier (the API turns it into a problem `type`); [`AuthorityError::public_detail`]
/// is safe to show to the caller. Everything else is for the log.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    /// The CSR is malformed, its signature does not verify, or its key is not allowed.
    #[error("{0}")]
    BadCsr(CaError),
    /// No device holds this enrollment token.
    #[error("unknown enrollment token")]
    TokenUnknown,
    /// The enrollment token was already redeemed (for another CSR).
    #[error("enrollment token already used")]
    TokenUsed,
    /// The device is quarantined.
    #[error("device is quarantined")]
    DeviceQuarantined,
    /// The enrollment nonce is unknown, expired, or was issued for another group or method.
    #[error("enrollment nonce unknown or expired; ask for a new challenge")]
    NonceInvalid,
    /// The enrollment nonce was already redeemed.
    #[error("enrollment nonce already used; ask for a new challenge")]
    NonceUsed,
    /// The attestation evidence was refused; the public detail is the coarse reason.
    #[error("attestation refused: {}", .0.failure.as_str())]
    Attestation(devid_attest::AttestError),
    /// The group does not allow this attestation method (or the device's own method differs).
    #[error("method '{0}' is not allowed here")]
    MethodNotAllowed(String),
    /// The group requires registration and the device is not registered (in it).
    #[error("device '{0}' is not registered for enrollment in this group")]
    DeviceNotRegistered(String),
    /// Renewal refused by policy (too early, past the grace period, revoked, not ours).
    #[error("renewal refused: {0}")]
    RenewalRefused(String),
    /// A route that needs a client certificate (mutual TLS) was called without one.
    #[error("this route needs mutual TLS with a device certificate (the renewal listener)")]
    ClientCertificateRequired,
    /// A device with this id exists.
    #[error("device '{0}' already exists")]
    DeviceExists(String),
    /// No CA has been set up.
    #[error("no CA exists yet: run `devid ca init`")]
    NoCa,
    /// A CA exists and `--force` was not given.
    #[error("a CA already exists; pass --force to replace it")]
    CaExists,
    /// Something named does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// Invalid input other than a CSR.
    #[error("{0}")]
    Invalid(String),
    /// The request conflicts with what exists (a group of that name, a group in use).
    #[error("{0}")]
    Conflict(String),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The key manager failed.
    #[error("key manager: {0}")]
    Kms(#[from] KmsError),
    /// Certificate building or signing failed for a reason that is not the caller's.
    #[error("CA: {0}")]
    Ca(CaError),
    /// The caller is not authenticated: no token, or a token that does not verify.
    #[error("{0}")]
    Unauthenticated(String),
    /// Authenticated, but the role does not allow this.
    #[error("{0}")]
    Forbidden(String),
    /// The client id or secret is wrong, or the credential is revoked (RFC 6749 §5.2
    /// `invalid_client`; deliberately vague).
    #[error("client authentication failed")]
    InvalidClient,
    /// Too many attempts; retry after this many seconds.
    #[error("too many attempts; retry in {retry_after_secs} s")]
    RateLimited {
        /// Seconds.
        retry_after_secs: u64,
    },
    /// A background task failed (a bug).
    #[error("internal: {0}")]
    Internal(String),
}

impl From<CaError> for AuthorityError {
    fn from(e: CaError) -> Self {
        match e.kind() {
            ErrorKind::InvalidInput => AuthorityError::BadCsr(e),
            _ => AuthorityError::Ca(e),
        }
    }
}

impl AuthorityError {
    /// The coarse kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            AuthorityError::BadCsr(_) | AuthorityError::Invalid(_) => ErrorKind::InvalidInput,
            AuthorityError::TokenUnknown
            | AuthorityError::Unauthenticated(_)
            | AuthorityError::InvalidClient => ErrorKind::Unauthorized,
            AuthorityError::Forbidden(_) => ErrorKind::Forbidden,
            AuthorityError::RateLimited { .. } => ErrorKind::RateLimited,
            AuthorityError::TokenUsed
            | AuthorityError::DeviceExists(_)
            | AuthorityError::CaExists
            | AuthorityError::Conflict(_) => ErrorKind::Conflict,
            AuthorityError::DeviceQuarantined
            | AuthorityError::MethodNotAllowed(_)
            | AuthorityError::DeviceNotRegistered(_)
            | AuthorityError::RenewalRefused(_)
            | AuthorityError::ClientCertificateRequired => ErrorKind::Forbidden,
            AuthorityError::NonceInvalid | AuthorityError::Attestation(_) => ErrorKind::Unauthorized,
            AuthorityError::NonceUsed => ErrorKind::Conflict,
            AuthorityError::NoCa => ErrorKind::Unavailable,
            AuthorityError::NotFound(_) => ErrorKind::NotFound,
            AuthorityError::Store(e) => e.kind(),
            AuthorityError::Kms(e) => e.kind(),
            AuthorityError::Ca(e) => e.kind(),
            AuthorityError::Internal(_) => ErrorKind::Internal,
        }
    }

    /// A stable identifier for the problem `type`.
    pub fn code(&self) -> &'static str {
        match self {
            AuthorityError::BadCsr(_) => "bad-csr",
            AuthorityError::TokenUnknown => "token-invalid",
            AuthorityError::Unauthenticated(_) => "unauthenticated",
            AuthorityError::Forbidden(_) => "forbidden",
            AuthorityError::InvalidClient => "invalid-client",
            AuthorityError::RateLimited { .. } => "rate-limited",
            AuthorityError::TokenUsed => "token-used",
            AuthorityError::DeviceQuarantined => "device-quarantined",
            AuthorityError::NonceInvalid => "nonce-invalid",
            AuthorityError::NonceUsed => "nonce-used",
            AuthorityError::Attestation(_) => "attestation-failed",
            AuthorityError::MethodNotAllowed(_) => "method-not-allowed",
            AuthorityError::DeviceNotRegistered(_) => "device-not-registered",
            AuthorityError::RenewalRefused(_) => "renewal-refused",
            AuthorityError::ClientCertificateRequired => "client-certificate-required",
            AuthorityError::DeviceExists(_) => "device-exists",
            AuthorityError::NoCa => "no-ca",
            AuthorityError::CaExists => "ca-exists",
            AuthorityError::NotFound(_) => "not-found",
            AuthorityError::Invalid(_) => "invalid-request",
            AuthorityError::Conflict(_) => "conflict",
            AuthorityError::Store(_)
            | AuthorityError::Kms(_)
            | AuthorityError::Ca(_)
            | AuthorityError::Internal(_) => match self.kind() {
                ErrorKind::Unavailable => "unavailable",
                ErrorKind::Conflict => "conflict",
                ErrorKind::NotFound => "not-found",
                _ => "internal",
            },
        }
    }

    /// What the caller may be told. Internal detail (store, KMS, encoding) is never included.
    pub fn public_detail(&self) -> String {
        match self {
            AuthorityError::Store(_)
            | AuthorityError::Kms(_)
            | AuthorityError::Ca(_)
            | AuthorityError::Internal(_) => match self.kind() {
                ErrorKind::Unavailable => "a backing service is unavailable; retry later".to_string(),
                _ => "internal error; see the server log".to_string(),
            },
            other => other.to_string(),
        }
    }
}
