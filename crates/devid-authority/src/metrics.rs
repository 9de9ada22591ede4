//! Process metrics: a small registry of atomics, rendered in the Prometheus text format
//! (exposition format 0.0.4) by the HTTP layer.
//!
//! Every metric is a `static` with a fixed label set, so recording is one or two relaxed
//! atomic additions: no lock, no allocation, no lookup in a map. Recording does nothing
//! until the binary calls [`install`] (`devid serve`); CLI commands and unit tests leave it
//! off.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use devid_core::KeyRef;
use devid_kms::{KmsError, SignatureAlgorithm, Signer};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turn recording on for this process (once, in the binary).
pub fn install() {
    ENABLED.store(true, Relaxed);
}

/// Whether recording is on.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Relaxed)
}

/// A monotonic counter.
#[derive(Debug)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Zero.
    pub const fn new() -> Counter {
        Counter(AtomicU64::new(0))
    }

    /// Add one (when recording is on).
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Add `n` (when recording is on).
    #[inline]
    pub fn add(&self, n: u64) {
        if enabled() {
            self.0.fetch_add(n, Relaxed);
        }
    }

    /// Add `n` whether or not recording is on (for callers that checked [`enabled`]).
    #[inline]
    pub fn add_unchecked(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

impl Default for Counter {
    fn default() -> Self {
        Counter::new()
    }
}

/// Upper bounds of the histogram buckets, in seconds: 0.1 ms to 10 s.
pub const BUCKETS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

const BUCKETS_NS: [u64; 16] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// A histogram of durations over [`BUCKETS`] (plus `+Inf`). Each observation is two
/// relaxed additions (its bucket and the sum); the count is the sum of the buckets.
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; 17],
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Empty.
    pub const fn new() -> Histogram {
        Histogram { buckets: [const { AtomicU64::new(0) }; 17], sum_ns: AtomicU64::new(0) }
    }

    /// Record a duration (when recording is on).
    #[inline]
    pub fn observe(&self, d: Duration) {
        if enabled() {
            self.observe_unchecked(d);
        }
    }

    /// Record a duration whether or not recording is on.
    #[inline]
    pub fn observe_unchecked(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BUCKETS_NS.iter().position(|b| ns <= *b).unwrap_or(BUCKETS_NS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }

    /// Write `NAME_bucket{labels,le=…}`, `NAME_sum{labels}` and `NAME_count{labels}`.
    pub fn render(&self, out: &mut String, name: &str, labels: &[(&str, &str)]) {
        let mut cumulative = 0u64;
        let bucket = format!("{name}_bucket");
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Relaxed);
            let le = BUCKETS.get(i).map_or_else(|| "+Inf".to_string(), |bound| bound.to_string());
            let mut with_le: Vec<(&str, &str)> = labels.to_vec();
            with_le.push(("le", &le));
            sample(out, &bucket, &with_le, cumulative);
        }
        let sum = self.sum_ns.load(Relaxed) as f64 / 1e9;
        sample(out, &format!("{name}_sum"), labels, sum);
        sample(out, &format!("{name}_count"), labels, cumulative);
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

/// Counters for a fixed set of values of one label; a value outside the set counts under
/// the last one (`other`).
#[derive(Debug)]
pub struct LabeledCounters<const N: usize> {
    values: [&'static str; N],
    counts: [Counter; N],
}

impl<const N: usize> LabeledCounters<N> {
    /// Counters for these label values (the last is the catch-all).
    pub const fn new(values: [&'static str; N]) -> Self {
        LabeledCounters { values, counts: [const { Counter::new() }; N] }
    }

    /// Add one to the counter of `value`.
    #[inline]
    pub fn inc(&self, value: &str) {
        if !enabled() {
            return;
        }
        let i = self.values.iter().position(|v| *v == value).unwrap_or(N - 1);
        self.counts[i].add_unchecked(1);
    }

    /// The value of the counter of `value` (exact match; 0 when not in the set).
    pub fn get(&self, value: &str) -> u64 {
        self.values.iter().position(|v| *v == value).map(|i| self.counts[i].get()).unwrap_or(0)
    }

    /// Write one sample per label value.
    pub fn render(&self, out: &mut String, name: &str, label: &str) {
        for (v, c) in self.values.iter().zip(&self.counts) {
            sample(out, name, &[(label, v)], c.get());
        }
    }
}

/// Write `# HELP` and `# TYPE` lines.
pub fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {}", help.replace('\\', "\\\\").replace('\n', "\\n"));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Write one sample line: `name{k="v",…} value`, label values escaped.
pub fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(k);
            out.push_str("=\"");
            for ch in v.chars() {
                match ch {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    '\n' => out.push_str("\\n"),
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// Certificates issued, by enrollment method.
pub static CERTIFICATES_ISSUED: LabeledCounters<6> =
    LabeledCounters::new(["token", "x509", "tpm", "symmetric", "renewal", "other"]);
/// Refused attestation evidence, by reason (`devid_attest::Failure`).
pub static ATTESTATION_FAILURES: LabeledCounters<10> = LabeledCounters::new([
    "malformed",
    "untrusted-chain",
    "expired",
    "revoked",
    "bad-proof",
    "binding-mismatch",
    "bad-attributes",
    "no-device-id",
    "unsupported-algorithm",
    "other",
]);
/// Certificates revoked through this process (REST, or quarantine racing an enrollment).
pub static CERTIFICATES_REVOKED: Counter = Counter::new();
/// Refused enrollments, by problem code.
pub static ENROLLMENT_FAILURES: LabeledCounters<22> = LabeledCounters::new([
    "bad-csr",
    "token-invalid",
    "token-used",
    "device-quarantined",
    "nonce-invalid",
    "nonce-used",
    "attestation-failed",
    "method-not-allowed",
    "device-not-registered",
    "renewal-refused",
    "client-certificate-required",
    "rate-limited",
    "forbidden",
    "invalid-request",
    "unsupported-media-type",
    "body-too-large",
    "no-ca",
    "unavailable",
    "conflict",
    "not-found",
    "internal",
    "other",
]);
/// Requests refused by a rate limit.
pub static RATE_LIMITED: Counter = Counter::new();
/// OCSP answers served from the pre-signed cache.
pub static OCSP_CACHE: Counter = Counter::new();
/// OCSP answers signed for the request.
pub static OCSP_SIGNED: Counter = Counter::new();
/// OCSP error responses (malformedRequest, unauthorized, tryLater, internalError).
pub static OCSP_ERROR: Counter = Counter::new();
/// Time of the CA key's signatures in the issuance path.
pub static KMS_SIGN: Histogram = Histogram::new();
/// CRLs built by this process (one per shard).
pub static CRL_BUILDS: Counter = Counter::new();
/// Time to build (stream, sign, store) one CRL.
pub static CRL_BUILD: Histogram = Histogram::new();
/// Group-commit transactions of the issuance cycle (intents, certificates, challenges).
pub static GROUP_COMMITS: Counter = Counter::new();
/// Writes carried by those transactions (÷ [`GROUP_COMMITS`]: the mean batch size).
pub static GROUP_COMMIT_ITEMS: Counter = Counter::new();

/// Write the metrics of the use cases.
pub fn render(out: &mut String) {
    let name = "devid_certificates_issued_total";
    family(out, name, "counter", "Certificates issued, by enrollment method.");
    CERTIFICATES_ISSUED.render(out, name, "method");
    let name = "devid_certificates_revoked_total";
    family(out, name, "counter", "Certificates revoked through this process (REST or enrollment).");
    sample(out, name, &[], CERTIFICATES_REVOKED.get());
    let name = "devid_enrollment_failures_total";
    family(out, name, "counter", "Refused enrollments, by problem code.");
    ENROLLMENT_FAILURES.render(out, name, "reason");
    let name = "devid_rate_limited_total";
    family(out, name, "counter", "Requests refused by a rate limit.");
    sample(out, name, &[], RATE_LIMITED.get());
    let name = "devid_attestation_failures_total";
    family(out, name, "counter", "Refused attestation evidence, by reason.");
    ATTESTATION_FAILURES.render(out, name, "reason");
    let name = "devid_ocsp_responses_total";
    family(out, name, "counter", "OCSP responses, by source: cache, signed or error.");
    sample(out, name, &[("source", "cache")], OCSP_CACHE.get());
    sample(out, name, &[("source", "signed")], OCSP_SIGNED.get());
    sample(out, name, &[("source", "error")], OCSP_ERROR.get());
    let name = "devid_kms_sign_seconds";
    family(out, name, "histogram", "Time of CA key signatures made by the issuance path.");
    KMS_SIGN.render(out, name, &[]);
    let name = "devid_crl_builds_total";
    family(out, name, "counter", "CRLs built by this process (one per shard).");
    sample(out, name, &[], CRL_BUILDS.get());
    let name = "devid_crl_build_seconds";
    family(out, name, "histogram", "Time to build, sign and store one CRL.");
    CRL_BUILD.render(out, name, &[]);
    let name = "devid_group_commits_total";
    family(out, name, "counter", "Transactions of the issuance cycle's group commit.");
    sample(out, name, &[], GROUP_COMMITS.get());
    let name = "devid_group_commit_items_total";
    family(
        out,
        name,
        "counter",
        "Writes carried by group-commit transactions (mean batch = items / commits).",
    );
    sample(out, name, &[], GROUP_COMMIT_ITEMS.get());
}

/// A signer that times its [`Signer::sign`] calls into a histogram.
pub(crate) struct TimedSigner<'a> {
    pub(crate) inner: &'a dyn Signer,
    pub(crate) histogram: &'a Histogram,
}

impl Signer for TimedSigner<'_> {
    fn key_ref(&self) -> &KeyRef {
        self.inner.key_ref()
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        self.inner.algorithm()
    }

    fn public_key_spki_der(&self) -> &[u8] {
        self.inner.public_key_spki_der()
    }

    fn may_block(&self) -> bool {
        self.inner.may_block()
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, KmsError> {
        let start = Instant::now();
        let r = self.inner.sign(msg);
        self.histogram.observe(start.elapsed());
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_renders_cumulative_buckets_sum_and_count() {
        let h = Histogram::new();
        h.observe_unchecked(Duration::from_micros(50)); // ≤ 0.1 ms
        h.observe_unchecked(Duration::from_micros(100)); // ≤ 0.1 ms (bounds are inclusive)
        h.observe_unchecked(Duration::from_millis(3)); // ≤ 5 ms
        h.observe_unchecked(Duration::from_secs(20)); // +Inf
        assert_eq!(h.count(), 4);
        let mut out = String::new();
        h.render(&mut out, "x_seconds", &[("route", "/a")]);
        assert!(out.contains("x_seconds_bucket{route=\"/a\",le=\"0.0001\"} 2\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{route=\"/a\",le=\"0.0025\"} 2\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{route=\"/a\",le=\"0.005\"} 3\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{route=\"/a\",le=\"10\"} 3\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{route=\"/a\",le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("x_seconds_sum{route=\"/a\"} 20.00315\n"), "{out}");
        assert!(out.contains("x_seconds_count{route=\"/a\"} 4\n"), "{out}");
        assert_eq!(out.lines().count(), 19);
    }

    #[test]
    fn label_values_are_escaped_and_unknown_values_count_as_other() {
        let mut out = String::new();
        sample(&mut out, "m", &[("a", "x\"y\\z\nw")], 1);
        assert_eq!(out, "m{a=\"x\\\"y\\\\z\\nw\"} 1\n");
        let c: LabeledCounters<3> = LabeledCounters::new(["a", "b", "other"]);
        c.counts[0].add_unchecked(2);
        let mut out = String::new();
        c.render(&mut out, "n_total", "k");
        assert_eq!(out, "n_total{k=\"a\"} 2\nn_total{k=\"b\"} 0\nn_total{k=\"other\"} 0\n");
    }

    #[test]
    fn every_enrollment_error_code_has_its_own_label() {
        use crate::AuthorityError;
        for e in [
            AuthorityError::TokenUnknown,
            AuthorityError::TokenUsed,
            AuthorityError::DeviceQuarantined,
            AuthorityError::NonceInvalid,
            AuthorityError::NonceUsed,
            AuthorityError::MethodNotAllowed("x509".into()),
            AuthorityError::DeviceNotRegistered("d".into()),
            AuthorityError::RenewalRefused("x".into()),
            AuthorityError::ClientCertificateRequired,
            AuthorityError::RateLimited { retry_after_secs: 1 },
            AuthorityError::NoCa,
            AuthorityError::BadCsr(devid_ca::CaError::InvalidCertificate("x".into())),
            AuthorityError::Internal("x".into()),
        ] {
            assert!(ENROLLMENT_FAILURES.values[..21].contains(&e.code()), "{}", e.code());
        }
    }
}
