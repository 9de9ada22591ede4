//! The one error type of the agent, with a coarse kind that decides the exit code and
//! whether the `run` loop retries.

use std::fmt;
use std::time::Duration;

/// An RFC 9457 problem document as the server sends it (`application/problem+json`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Problem {
    /// The problem type URI, e.g. `urn:devid:problem:token-used` (RFC 9457 §3.1.1).
    #[serde(rename = "type", default)]
    pub kind: String,
    /// A short summary of the problem type (RFC 9457 §3.1.3).
    #[serde(default)]
    pub title: String,
    /// The HTTP status code (RFC 9457 §3.1.2).
    #[serde(default)]
    pub status: u16,
    /// An explanation of this occurrence (RFC 9457 §3.1.4).
    #[serde(default)]
    pub detail: String,
}

impl Problem {
    /// The stable code: the last `:`-separated part of the type URI (`token-used`).
    pub fn code(&self) -> &str {
        self.kind.rsplit(':').next().unwrap_or(&self.kind)
    }
}

/// What went wrong, coarsely.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Bad command-line flags or a missing input.
    Usage,
    /// A local file could not be read or written.
    Io,
    /// A key, certificate or CSR could not be parsed or made.
    Crypto,
    /// The server could not be reached, or answered 429 or 5xx: worth retrying.
    Unavailable,
    /// The server refused the request (4xx other than 429): retrying the same request
    /// will not help.
    Refused,
    /// The server answered something that is not the protocol.
    Protocol,
    /// The TPM failed.
    Tpm,
}

impl ErrorKind {
    /// The process exit code for this kind (documented in `devid-agent --help`).
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::Usage => 2,
            ErrorKind::Refused => 3,
            ErrorKind::Unavailable => 4,
            ErrorKind::Io | ErrorKind::Crypto | ErrorKind::Protocol | ErrorKind::Tpm => 1,
        }
    }
}

/// An agent error. Its text never contains a key, a token or another secret.
#[derive(Debug, Clone)]
pub struct AgentError {
    /// The coarse kind.
    pub kind: ErrorKind,
    /// What failed, for a person.
    pub message: String,
    /// The HTTP status, when the server answered.
    pub status: Option<u16>,
    /// The server's problem document, when it sent one.
    pub problem: Option<Box<Problem>>,
    /// How long the server asked us to wait (`Retry-After`, RFC 9110 §10.2.3).
    pub retry_after: Option<Duration>,
}

impl AgentError {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        AgentError { kind, message: message.into(), status: None, problem: None, retry_after: None }
    }

    /// A usage error.
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Usage, message)
    }

    /// A local I/O error on `path`.
    pub fn io(what: impl fmt::Display, e: std::io::Error) -> Self {
        Self::new(ErrorKind::Io, format!("{what}: {e}"))
    }

    /// A key, certificate or CSR problem.
    pub fn crypto(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Crypto, message)
    }

    /// Whether the `run` loop should try again later.
    pub fn is_retryable(&self) -> bool {
        self.kind == ErrorKind::Unavailable
    }
}

impl fmt::Display for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(p) = &self.problem {
            let status = self.status.unwrap_or(p.status);
            write!(f, ": {status} {}", p.title)?;
            if !p.kind.is_empty() {
                write!(f, " [{}]", p.code())?;
            }
            if !p.detail.is_empty() {
                write!(f, ": {}", p.detail)?;
            }
        } else if let Some(s) = self.status {
            write!(f, ": HTTP {s}")?;
        }
        Ok(())
    }
}

impl std::error::Error for AgentError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_are_shown_with_title_code_and_detail() {
        let p: Problem = serde_json::from_str(
            r#"{"type":"urn:devid:problem:token-used","title":"Conflict","status":409,"detail":"the token was already used"}"#,
        )
        .expect("parses");
        assert_eq!(p.code(), "token-used");
        let mut e = AgentError::new(ErrorKind::Refused, "enrollment refused");
        e.status = Some(409);
        e.problem = Some(Box::new(p));
        assert_eq!(
            e.to_string(),
            "enrollment refused: 409 Conflict [token-used]: the token was already used"
        );
        assert_eq!(e.kind.exit_code(), 3);
        assert!(!e.is_retryable());
        assert!(AgentError::new(ErrorKind::Unavailable, "x").is_retryable());
    }
}
