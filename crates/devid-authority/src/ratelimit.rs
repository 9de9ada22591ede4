//! Rate limits: per source address on the public enrollment routes, per device, per API
//! credential and per enrollment group.
//!
//! Each limit is a rate (per minute) with a burst, enforced with the generic cell rate
//! algorithm (GCRA, the token bucket without a timer): a key's "theoretical arrival time"
//! moves forward by `60 / rate` seconds per allowed request, and a request is refused while
//! it is more than `burst` intervals in the future. The answer says when to retry.
//!
//! **Across replicas** (a documented approximation): every node writes a heartbeat to the
//! store and counts the live nodes; each node enforces `rate / nodes` (rounded up). With a
//! load balancer that spreads requests, the aggregate stays at the configured rate without
//! a database round trip per request; a client pinned to one node gets a stricter limit,
//! never a looser one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use devid_core::{Clock, UnixTime};

use crate::AuthorityError;

/// Entries kept per limiter before expired ones are swept.
const SWEEP_AT: usize = 100_000;

/// A rate: `per_minute` requests a minute on average, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Requests a minute (0: unlimited).
    pub per_minute: u64,
    /// How many may come at once.
    pub burst: u64,
}

impl Rate {
    /// `per_minute` with a burst of a tenth of a minute's worth, but at least ten (or the
    /// whole minute's worth when that is less): a device may retry a few times at once.
    pub fn per_minute(per_minute: u64) -> Rate {
        Rate { per_minute, burst: (per_minute / 10).max(per_minute.min(10)).max(1) }
    }

    /// No limit.
    pub const UNLIMITED: Rate = Rate { per_minute: 0, burst: 0 };
}

/// The configured limits (per minute; 0 is unlimited).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Enrollment, challenge and renewal requests per source address.
    pub per_source: Rate,
    /// Enrollments and renewals per device id.
    pub per_device: Rate,
    /// API requests per credential.
    pub per_credential: Rate,
    /// Enrollments per group when the group sets no rate of its own.
    pub per_group_default: Rate,
}

impl Default for Limits {
    /// 6000 a minute per source (a factory floor behind one NAT), 10 per device, 6000 per
    /// credential, groups unlimited unless they set a rate.
    fn default() -> Self {
        Limits {
            per_source: Rate::per_minute(6000),
            per_device: Rate::per_minute(10),
            per_credential: Rate::per_minute(6000),
            per_group_default: Rate::UNLIMITED,
        }
    }
}

/// One family of keys (sources, devices, …) with GCRA state, in milliseconds.
#[derive(Debug, Default)]
struct Buckets {
    tat_ms: Mutex<HashMap<String, i64>>,
}

impl Buckets {
    /// Admit one request of `key` at `now_ms` under `rate` shared by `nodes`; `Err(retry
    /// after, seconds)` when over.
    fn admit(&self, key: &str, rate: Rate, nodes: u64, now_ms: i64) -> Result<(), u64> {
        if rate.per_minute == 0 {
            return Ok(());
        }
        let per_node = rate.per_minute.div_ceil(nodes.max(1)).max(1);
        let interval = (60_000 / per_node).max(1) as i64;
        let burst = rate.burst.div_ceil(nodes.max(1)).max(1) as i64;
        let mut map = match self.tat_ms.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        if map.len() >= SWEEP_AT {
            map.retain(|_, tat| *tat > now_ms);
        }
        let tat = map.get(key).copied().unwrap_or(now_ms).max(now_ms);
        // Allowed while the new arrival time is within `burst` intervals of now.
        if tat - now_ms > (burst - 1) * interval {
            let wait_ms = tat - now_ms - (burst - 1) * interval;
            return Err(((wait_ms + 999) / 1000).max(1) as u64);
        }
        map.insert(key.to_string(), tat + interval);
        Ok(())
    }
}

/// The limiters of one node.
#[derive(Debug)]
pub struct RateLimiter {
    limits: Limits,
    nodes: AtomicU64,
    sources: Buckets,
    devices: Buckets,
    credentials: Buckets,
    groups: Buckets,
}

impl RateLimiter {
    /// Limiters with these limits, for one node until [`RateLimiter::set_nodes`] says more.
    pub fn new(limits: Limits) -> RateLimiter {
        RateLimiter {
            limits,
            nodes: AtomicU64::new(1),
            sources: Buckets::default(),
            devices: Buckets::default(),
            credentials: Buckets::default(),
            groups: Buckets::default(),
        }
    }

    /// The number of live nodes sharing the limits.
    pub fn set_nodes(&self, n: u64) {
        self.nodes.store(n.max(1), Ordering::Relaxed);
    }

    fn check(
        &self,
        b: &Buckets,
        key: &str,
        rate: Rate,
        now: UnixTime,
        now_ms: Option<i64>,
    ) -> Result<(), AuthorityError> {
        let ms = now_ms.unwrap_or(now.0.saturating_mul(1000));
        b.admit(key, rate, self.nodes.load(Ordering::Relaxed), ms).map_err(|retry_after_secs| {
            crate::metrics::RATE_LIMITED.inc();
            AuthorityError::RateLimited { retry_after_secs }
        })
    }

    /// A request from `source` to a public enrollment route.
    pub fn source(&self, source: &str, clock: &dyn Clock) -> Result<(), AuthorityError> {
        self.check(&self.sources, source, self.limits.per_source, clock.now(), clock_ms(clock))
    }

    /// An enrollment or renewal of `device`.
    pub fn device(&self, device: &str, clock: &dyn Clock) -> Result<(), AuthorityError> {
        self.check(&self.devices, device, self.limits.per_device, clock.now(), clock_ms(clock))
    }

    /// An API request by `client_id`.
    pub fn credential(&self, client_id: &str, clock: &dyn Clock) -> Result<(), AuthorityError> {
        self.check(&self.credentials, client_id, self.limits.per_credential, clock.now(), clock_ms(clock))
    }

    /// An enrollment in `group`, whose own rate (per minute) wins over the default.
    pub fn group(&self, group: &str, own: Option<i64>, clock: &dyn Clock) -> Result<(), AuthorityError> {
        let rate = match own {
            Some(r) if r > 0 => Rate::per_minute(r as u64),
            _ => self.limits.per_group_default,
        };
        self.check(&self.groups, group, rate, clock.now(), clock_ms(clock))
    }
}

/// Millisecond time where the clock has it (rates above one a second need it); a fixed
/// (test) clock counts in whole seconds.
fn clock_ms(clock: &dyn Clock) -> Option<i64> {
    clock.now_ms()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_allows_the_burst_then_the_rate() {
        let b = Buckets::default();
        let rate = Rate { per_minute: 60, burst: 3 };
        for _ in 0..3 {
            assert!(b.admit("k", rate, 1, 0).is_ok());
        }
        assert_eq!(b.admit("k", rate, 1, 0), Err(1));
        assert!(b.admit("other", rate, 1, 0).is_ok(), "keys are independent");
        assert!(b.admit("k", rate, 1, 1000).is_ok(), "one a second after the burst");
        assert!(b.admit("k", rate, 1, 1000).is_err());
        assert!(b.admit("k", Rate::UNLIMITED, 1, 1000).is_ok());
    }

    #[test]
    fn replicas_share_the_rate() {
        let b = Buckets::default();
        // 600 a minute over 2 nodes: 300 a minute (one per 200 ms) here, burst 30.
        let rate = Rate { per_minute: 600, burst: 60 };
        let ok = (0..100).filter(|_| b.admit("k", rate, 2, 0).is_ok()).count();
        assert_eq!(ok, 30);
        assert!(b.admit("k", rate, 2, 200).is_ok());
    }

    #[test]
    fn retry_after_is_when_a_slot_frees() {
        let b = Buckets::default();
        let rate = Rate { per_minute: 1, burst: 1 };
        assert!(b.admit("k", rate, 1, 0).is_ok());
        assert_eq!(b.admit("k", rate, 1, 0), Err(60));
        assert_eq!(b.admit("k", rate, 1, 30_000), Err(30));
        assert!(b.admit("k", rate, 1, 60_000).is_ok());
    }
}
