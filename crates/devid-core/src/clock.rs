use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, UTC. The store keeps every time in this form so that the
/// PostgreSQL and SQLite schemas share one SQL text and one index shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct UnixTime(pub i64);

impl UnixTime {
    /// This time plus `secs` seconds (saturating).
    pub fn plus(self, secs: i64) -> UnixTime {
        UnixTime(self.0.saturating_add(secs))
    }

    /// RFC 3339 text in UTC, e.g. `2026-11-21T23:51:00Z`.
    pub fn to_rfc3339(self) -> String {
        time::OffsetDateTime::from_unix_timestamp(self.0)
            .ok()
            .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
            .unwrap_or_else(|| self.0.to_string())
    }

    /// Parse RFC 3339 text (any offset); `None` when it is not RFC 3339.
    pub fn parse_rfc3339(text: &str) -> Option<UnixTime> {
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            .ok()
            .map(|t| UnixTime(t.unix_timestamp()))
    }

    /// This time as a [`SystemTime`]; times before 1970 clamp to the epoch.
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + std::time::Duration::from_secs(self.0.max(0) as u64)
    }
}

/// A certificate's validity window, both ends inclusive (RFC 5280 §4.1.2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// notBefore.
    pub not_before: UnixTime,
    /// notAfter.
    pub not_after: UnixTime,
}

/// The source of the current time. Injected so tests can fix or move time.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> UnixTime;
    /// Now in milliseconds, for clocks finer than a second (rate limits); `None` means
    /// "use [`Clock::now`]".
    fn now_ms(&self) -> Option<i64> {
        None
    }
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixTime {
        let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        UnixTime(secs)
    }

    fn now_ms(&self) -> Option<i64> {
        SystemTime::now().duration_since(UNIX_EPOCH).ok().map(|d| d.as_millis() as i64)
    }
}

/// A clock that says what it is told; for tests.
#[derive(Debug, Default)]
pub struct FixedClock(AtomicI64);

impl FixedClock {
    /// A clock fixed at `t`.
    pub fn new(t: UnixTime) -> Self {
        FixedClock(AtomicI64::new(t.0))
    }
    /// Move the clock to `t`.
    pub fn set(&self, t: UnixTime) {
        self.0.store(t.0, Ordering::SeqCst);
    }
    /// Move the clock forward by `secs`.
    pub fn advance(&self, secs: i64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

impl Clock for FixedClock {
    fn now(&self) -> UnixTime {
        UnixTime(self.0.load(Ordering::SeqCst))
    }
}

/// The source of randomness (serials, tokens, salts). Injected so tests can be
/// deterministic; production uses [`OsEntropy`].
pub trait Entropy: Send + Sync + 'static {
    /// Fill `buf` with cryptographically secure random bytes.
    fn fill(&self, buf: &mut [u8]);
}

/// The operating system's CSPRNG (`getrandom(2)`).
#[derive(Debug, Default, Clone, Copy)]
pub struct OsEntropy;

impl Entropy for OsEntropy {
    fn fill(&self, buf: &mut [u8]) {
        // getrandom only fails when the kernel has no entropy source at all; a CA must
        // not continue with predictable serials or tokens, so this is a hard stop.
        if let Err(e) = getrandom::fill(buf) {
            panic!("the operating system's random number generator failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_is_utc() {
        assert_eq!(UnixTime(0).to_rfc3339(), "1970-01-01T00:00:00Z");
        assert_eq!(UnixTime(1_795_305_600).to_rfc3339(), "2026-11-22T00:00:00Z");
    }

    #[test]
    fn fixed_clock_moves() {
        let c = FixedClock::new(UnixTime(10));
        c.advance(5);
        assert_eq!(c.now(), UnixTime(15));
        c.set(UnixTime(1));
        assert_eq!(c.now(), UnixTime(1));
    }

    #[test]
    fn os_entropy_differs() {
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        OsEntropy.fill(&mut a);
        OsEntropy.fill(&mut b);
        assert_ne!(a, b);
    }
}
