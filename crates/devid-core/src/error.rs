/// The coarse kind of every error in devid. Each crate has its own error type that
/// exposes one of these; only the HTTP layer maps kinds to status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The caller sent something malformed or outside policy (HTTP 400/422).
    InvalidInput,
    /// The caller could not be authenticated or its credential was refused (HTTP 401).
    Unauthorized,
    /// Authenticated but not allowed (HTTP 403).
    Forbidden,
    /// The named thing does not exist (HTTP 404).
    NotFound,
    /// The request conflicts with the current state, e.g. a reused one-time token (HTTP 409).
    Conflict,
    /// Too many requests (HTTP 429).
    RateLimited,
    /// A dependency (database, HSM) is not reachable right now (HTTP 503).
    Unavailable,
    /// A bug or an unexpected state; details are logged, never returned (HTTP 500).
    Internal,
}
