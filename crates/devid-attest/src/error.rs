//! The one error type of this crate.

/// Why evidence was refused. The reason is coarse and stable: it names a metric label
/// (`devid_attestation_failures_total{reason}`) and the problem code the API returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Failure {
    /// The evidence is not well formed (bad DER, bad TPM structure, wrong length).
    Malformed,
    /// The certificate chain does not lead to a trust anchor of the group.
    UntrustedChain,
    /// A certificate of the chain is expired or not yet valid.
    Expired,
    /// A certificate of the chain is revoked (manufacturer CRL).
    Revoked,
    /// A signature, HMAC or activated secret does not verify.
    BadProof,
    /// The evidence does not bind this nonce and this CSR.
    BindingMismatch,
    /// The key or object does not have the attributes policy needs (TPM: fixedTPM,
    /// restricted…; X.509: key usage).
    BadAttributes,
    /// No device id can be taken from the evidence as the group's policy says.
    NoDeviceId,
    /// An algorithm this server does not accept.
    UnsupportedAlgorithm,
}

impl Failure {
    /// A stable, lowercase, hyphenated name (metric label, problem code suffix).
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Malformed => "malformed",
            Failure::UntrustedChain => "untrusted-chain",
            Failure::Expired => "expired",
            Failure::Revoked => "revoked",
            Failure::BadProof => "bad-proof",
            Failure::BindingMismatch => "binding-mismatch",
            Failure::BadAttributes => "bad-attributes",
            Failure::NoDeviceId => "no-device-id",
            Failure::UnsupportedAlgorithm => "unsupported-algorithm",
        }
    }
}

/// Evidence refused: the coarse [`Failure`] and a detail for the log (never returned to
/// the client, never containing a secret).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {detail}", failure.as_str())]
pub struct AttestError {
    /// The coarse reason.
    pub failure: Failure,
    /// Detail for the server log.
    pub detail: String,
}

impl AttestError {
    /// A refusal.
    pub fn new(failure: Failure, detail: impl Into<String>) -> Self {
        AttestError { failure, detail: detail.into() }
    }
}
