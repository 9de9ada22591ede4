//! When to renew and how long to wait after a failure: pure functions of the certificate's
//! validity, the time and an injected random source, so that they can be tested exactly.

use std::time::Duration;

use devid_core::{Entropy, UnixTime};

/// The first retry waits about this long; each failure doubles it.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Retries never wait longer than this (before a server's `Retry-After`).
pub const BACKOFF_CAP: Duration = Duration::from_secs(300);
/// A server's `Retry-After` is honoured up to this long.
pub const RETRY_AFTER_CAP: Duration = Duration::from_secs(3600);

/// A uniform random fraction in `[0, 1)` from 53 random bits.
pub fn unit(rng: &dyn Entropy) -> f64 {
    let mut b = [0u8; 8];
    rng.fill(&mut b);
    (u64::from_be_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// When to renew a certificate valid from `not_before` to `not_after`: at two thirds of
/// its lifetime, moved by a uniform jitter of ±5% of the lifetime so that a fleet enrolled
/// at once does not renew at once. Never before `not_before`, never after `not_after`.
pub fn renew_at(not_before: UnixTime, not_after: UnixTime, rng: &dyn Entropy) -> UnixTime {
    let lifetime = (not_after.0 - not_before.0).max(0);
    let base = not_before.0 + lifetime * 2 / 3;
    let spread = lifetime as f64 * 0.05;
    let jitter = ((unit(rng) * 2.0 - 1.0) * spread).round() as i64;
    UnixTime((base + jitter).clamp(not_before.0, not_after.0.max(not_before.0)))
}

/// The wait before retry number `attempt` (0 for the first retry): exponential backoff from
/// [`BACKOFF_BASE`], doubling, capped at [`BACKOFF_CAP`], with "equal jitter" (a uniform
/// wait between half the step and the full step), so that retries spread out but never
/// exceed the cap.
pub fn backoff(attempt: u32, rng: &dyn Entropy) -> Duration {
    let step =
        BACKOFF_BASE.saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX)).min(BACKOFF_CAP);
    let half = step / 2;
    half + half.mul_f64(unit(rng))
}

/// The wait before the next try: the server's `Retry-After` when it sent one (capped at
/// [`RETRY_AFTER_CAP`]), else [`backoff`].
pub fn retry_delay(attempt: u32, retry_after: Option<Duration>, rng: &dyn Entropy) -> Duration {
    match retry_after {
        Some(d) => d.min(RETRY_AFTER_CAP),
        None => backoff(attempt, rng),
    }
}

/// Parse a `Retry-After` value (RFC 9110 §10.2.3): either delay-seconds (a non-negative
/// decimal integer) or an HTTP-date (RFC 9110 §5.6.7: IMF-fixdate, and the obsolete
/// RFC 850 and asctime forms, which recipients must accept). A date in the past gives
/// zero. `None` when the value is neither.
pub fn parse_retry_after(value: &str, now: UnixTime) -> Option<Duration> {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return Some(v.parse::<u64>().map(Duration::from_secs).unwrap_or(Duration::MAX));
    }
    let at = parse_http_date(v)?;
    Some(Duration::from_secs((at - now.0).max(0) as u64))
}

/// Parse an HTTP-date (RFC 9110 §5.6.7) to Unix seconds.
pub fn parse_http_date(v: &str) -> Option<i64> {
    use time::macros::format_description;
    // IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT
    let imf = format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    // rfc850-date: Sunday, 06-Nov-94 08:49:37 GMT (two-digit year: RFC 9110 §5.6.7 says
    // to read it as the most recent year with those digits that is not more than 50
    // years in the future; the 1970–2069 window is that rule for the next decades).
    let rfc850 = format_description!(
        "[weekday], [day]-[month repr:short]-[year repr:last_two] [hour]:[minute]:[second] GMT"
    );
    // asctime-date: Sun Nov  6 08:49:37 1994
    let asctime = format_description!(
        "[weekday repr:short] [month repr:short] [day padding:space] [hour]:[minute]:[second] [year]"
    );
    if let Ok(dt) = time::PrimitiveDateTime::parse(v, imf) {
        return Some(dt.assume_utc().unix_timestamp());
    }
    if let Some(ts) = parse_rfc850(v, rfc850) {
        return Some(ts);
    }
    time::PrimitiveDateTime::parse(v, asctime).ok().map(|dt| dt.assume_utc().unix_timestamp())
}

fn parse_rfc850(v: &str, fmt: &[time::format_description::BorrowedFormatItem<'_>]) -> Option<i64> {
    let mut parsed = time::parsing::Parsed::new();
    let rest = parsed.parse_items(v.as_bytes(), fmt).ok()?;
    if !rest.is_empty() {
        return None;
    }
    let yy = parsed.year_last_two()? as i32;
    let year = if yy < 70 { 2000 + yy } else { 1900 + yy };
    let month = parsed.month()?;
    let date = time::Date::from_calendar_date(year, month, parsed.day()?.get()).ok()?;
    let t = time::Time::from_hms(parsed.hour_24()?, parsed.minute()?, parsed.second()?).ok()?;
    Some(time::PrimitiveDateTime::new(date, t).assume_utc().unix_timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Always fills with the same byte: 0x00 gives unit() = 0, 0xff gives nearly 1.
    struct Fixed(u8);
    impl Entropy for Fixed {
        fn fill(&self, buf: &mut [u8]) {
            buf.fill(self.0);
        }
    }
    /// unit() = 0.5 exactly.
    struct Half;
    impl Entropy for Half {
        fn fill(&self, buf: &mut [u8]) {
            buf.fill(0);
            buf[0] = 0x80;
        }
    }

    #[test]
    fn renewal_at_two_thirds_with_five_percent_jitter() {
        let nb = UnixTime(1_000_000);
        let na = UnixTime(1_000_000 + 86_400); // 24 h
        assert_eq!(renew_at(nb, na, &Half), UnixTime(1_000_000 + 57_600)); // 16 h
        assert_eq!(renew_at(nb, na, &Fixed(0)), UnixTime(1_000_000 + 57_600 - 4_320)); // -5%
        let late = renew_at(nb, na, &Fixed(0xff));
        assert!(late.0 <= 1_000_000 + 57_600 + 4_320 && late.0 >= 1_000_000 + 57_600 + 4_319, "{late:?}");
        // Degenerate validity: clamped into the window.
        assert_eq!(renew_at(na, nb, &Fixed(0xff)), na);
        let one = UnixTime(nb.0 + 1);
        let r = renew_at(nb, one, &Fixed(0));
        assert!(r >= nb && r <= one);
    }

    #[test]
    fn backoff_doubles_from_one_second_caps_at_five_minutes_and_is_jittered() {
        // The upper end of the jitter is the full step.
        let top = |a| backoff(a, &Fixed(0xff));
        assert!(top(0) <= Duration::from_secs(1) && top(0) > Duration::from_millis(999));
        assert!(top(1) <= Duration::from_secs(2) && top(1) > Duration::from_millis(1999));
        assert!(top(3) <= Duration::from_secs(8) && top(3) > Duration::from_millis(7999));
        assert!(top(8) <= Duration::from_secs(256) && top(8) > Duration::from_millis(255_999));
        assert!(top(9) <= BACKOFF_CAP && top(9) > BACKOFF_CAP - Duration::from_millis(1));
        assert!(top(40) <= BACKOFF_CAP);
        assert!(top(u32::MAX) <= BACKOFF_CAP);
        // The lower end is half the step.
        assert_eq!(backoff(0, &Fixed(0)), Duration::from_millis(500));
        assert_eq!(backoff(4, &Fixed(0)), Duration::from_secs(8));
        assert_eq!(backoff(20, &Fixed(0)), BACKOFF_CAP / 2);
        assert_eq!(backoff(2, &Half), Duration::from_secs(3));
    }

    #[test]
    fn retry_after_wins_over_backoff_and_is_capped() {
        assert_eq!(retry_delay(0, Some(Duration::from_secs(42)), &Half), Duration::from_secs(42));
        assert_eq!(retry_delay(0, Some(Duration::from_secs(86_400)), &Half), RETRY_AFTER_CAP);
        assert_eq!(retry_delay(1, None, &Half), Duration::from_millis(1500));
    }

    #[test]
    fn retry_after_seconds_and_http_dates() {
        let now = UnixTime(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:51:37 GMT", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("Sunday, 06-Nov-94 08:50:37 GMT", now), Some(Duration::from_secs(60)));
        assert_eq!(parse_retry_after("Sun Nov  6 08:49:47 1994", now), Some(Duration::from_secs(10)));
        // In the past: no wait.
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now), Some(Duration::ZERO));
        for bad in ["", "-1", "1.5", "soon", "Sun, 06 Nov 1994 08:49:37 PST", "Sun, 32 Nov 1994 08:49:37 GMT"]
        {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
    }
}
