//! `devid-agent simulate`: a fleet of simulated devices against a devid server, to size a
//! deployment and as the project's load generator.
//!
//! 1. **Set-up** (not timed): an access token (OAuth 2.0 client credentials, an admin
//!    credential), then N devices: pre-registered with one-time tokens (`token`), or an
//!    enrollment group created for the run with an in-memory manufacturer CA and an IDevID
//!    per device (`x509`), or with a generated master key and derived device keys
//!    (`symmetric`). Every device's P-256 key and CSR are made here too, so that during the
//!    timed phases the load generator's CPU goes to requests.
//! 2. **Enroll** (timed): C workers over one keep-alive HTTP client, one enrollment per
//!    device (challenge included).
//! 3. **OCSP** (`--ocsp-share`, timed): a share of the enrolled devices asks
//!    `GET /ocsp/{request}` (RFC 5019) about its certificate.
//! 4. **Renew** (`--renew`, timed): each enrolled device opens its own mutual-TLS connection
//!    (a full handshake) and renews with its CSR. The devices share one validation of the
//!    server's chain ([`SharedVerifier`]); each handshake verifies the server's signature.
//!
//! Latencies are of successful operations, in microseconds in an HDR histogram; failures
//! are counted by kind: the problem code of the server's `application/problem+json` answer
//! (`token-used`), else `http-<status>`, `timeout`, `transport`, `protocol` (an answer
//! that is not the protocol), `ocsp-<status>` (an OCSP error status) or `local`.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use clap::{Args, ValueEnum};
use der::{Decode, Encode};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use crate::client::{endpoint, http_client, read_pem_certificates};
use crate::enroll::{issued_certificate, issued_chain, nonce_bytes};
use crate::error::{AgentError, ErrorKind, Problem};
use crate::keys::{Csr, DeviceKey, FactoryKey, read_key_material};
use crate::protocol::{
    ChallengeRequest, ChallengeResponse, EnrollRequest, EnrollResponse, RenewRequest, b64, unb64,
};

/// The most rows one `POST /v1/device-batches/{batch_id}` takes.
pub const BATCH_ROWS: usize = 100_000;

/// The longest latency the histograms hold (larger values are recorded as this): 10 min.
const MAX_LATENCY_US: u64 = 600_000_000;

pub(crate) const SIMULATE_AFTER_HELP: &str = "\
Set-up is not timed: the access token, the devices (token: pre-registered in batches of
100,000; x509: a manufacturer CA made in memory, an enrollment group that trusts it, and an
IDevID per device whose subject serialNumber is the device id; symmetric: an enrollment
group and its generated master key), and every device's P-256 key and CSR (with --renew,
the key also loaded for TLS). Keys and CSRs are made before the timed phases, so that the
load generator's CPU goes to requests while it measures. Device ids are sim-<run id>-<n>,
unique per run; without --group the group is named sim-<run id>.

Timed phases, in order: enroll (every device once, challenge included); ocsp (with
--ocsp-share: GET /ocsp/{request} about the device's certificate); renew (with --renew: a
new TLS connection per device, a full handshake with its certificate, POST /v1/renew with
its CSR; the devices share one path validation of the server's certificate chain, redone
when the chain changes and at least every minute, and every handshake verifies the
server's signature; the server's enroll.renew_after must allow renewing a fresh
certificate, and its per-source and per-device rate limits must allow the load).

Closed loop by default: each of the --concurrency workers starts its next device when its
last one ends. With --rate R (--renew-rate R for the renewals) the phase is an open loop:
device n is due n/R s after the phase starts whatever the answers' pace, at most
--concurrency are in flight, and each latency counts from the due time, so a server that
falls behind shows in the percentiles instead of slowing the load down. The summary says
how late the latest start was: more than a few ms means too few workers, or a load
generator short of CPU.

Latencies (p50, p90, p99, max) are of successful operations. Errors are counted by kind:
the server's problem code (token-used, rate-limited, ...), http-<status>, timeout,
transport, protocol, ocsp-<status>, local.

The client secret comes from DEVID_AGENT_CLIENT_SECRET or --client-secret-file; an admin
credential: `devid credential create --role admin --json`. Secrets, tokens and keys are
never printed.

Exit codes: 0 the run completed (errors are counted, not fatal); 2 usage; 3 the server
refused the set-up (bad credentials, a group that cannot be used); 4 the server is
unavailable; 1 other set-up failures.";

/// The attestation method the simulated devices use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SimMethod {
    /// One-time enrollment tokens (pre-registered in batches).
    Token,
    /// IEEE 802.1AR IDevIDs issued by a manufacturer CA made for the run.
    X509,
    /// Keys derived from the group master key (HMAC-SHA256).
    Symmetric,
}

impl SimMethod {
    /// The protocol's name of the method.
    pub fn as_str(self) -> &'static str {
        match self {
            SimMethod::Token => "token",
            SimMethod::X509 => "x509",
            SimMethod::Symmetric => "symmetric",
        }
    }
}

/// `devid-agent simulate`.
#[derive(Debug, Clone, Args)]
pub struct SimulateArgs {
    /// The enrollment server's base URL, e.g. http://127.0.0.1:8080.
    #[arg(long, value_name = "URL")]
    pub server: String,
    /// The renewal listener's base URL (mutual TLS), e.g. https://127.0.0.1:8443; needed
    /// with --renew.
    #[arg(long, value_name = "URL")]
    pub renew_server: Option<String>,
    /// How many devices to simulate.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub devices: u64,
    /// How many devices are in flight at once.
    #[arg(long, value_name = "C", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub concurrency: u64,
    /// How the devices prove their identity.
    #[arg(long, value_enum)]
    pub method: SimMethod,
    /// Use this enrollment group (created when missing; an existing one must allow the
    /// method). Default: a new group per run (x509, symmetric) or none (token).
    #[arg(long, value_name = "NAME")]
    pub group: Option<String>,
    /// symmetric with an existing --group: its master key file (raw or base64), which the
    /// server shows only when it creates the group.
    #[arg(long, value_name = "FILE")]
    pub group_key: Option<PathBuf>,
    /// The API client id of an admin credential.
    #[arg(long, value_name = "ID")]
    pub client_id: String,
    /// A file holding the client secret (else DEVID_AGENT_CLIENT_SECRET).
    #[arg(long, value_name = "FILE")]
    pub client_secret_file: Option<PathBuf>,
    /// Renew every enrolled device once over mutual TLS (needs --renew-server).
    #[arg(long, requires = "renew_server")]
    pub renew: bool,
    /// The share of enrolled devices (0 to 1) that ask the OCSP responder about their
    /// certificate.
    #[arg(long, value_name = "FRACTION")]
    pub ocsp_share: Option<f64>,
    /// Trust exactly the CA certificates of this PEM file for the server's TLS and the
    /// renewal listener (default: web PKI roots for the server; the root of the enrollment
    /// answer's chain for the listener).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Print one JSON object with the results.
    #[arg(long)]
    pub json: bool,
    /// Seed the choice of the devices that ask OCSP (default: random).
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Open loop: start the enrollments at this rate (a second), device n at n/RATE s
    /// after the phase's start, whatever the answers' pace; each is timed from when it was
    /// due, so that a late start counts in its latency. At most --concurrency are in
    /// flight. Default: closed loop (a worker starts its next device when the last ends).
    #[arg(long, value_name = "PER_SECOND")]
    pub rate: Option<f64>,
    /// Open loop for the renewals, as --rate.
    #[arg(long, value_name = "PER_SECOND", requires = "renew")]
    pub renew_rate: Option<f64>,
}

/// The fastest schedule `--rate` and `--renew-rate` take.
const MAX_RATE: f64 = 1_000_000.0;

/// A `--rate` value: a finite number of operations a second, above 0 and at most
/// [`MAX_RATE`].
fn check_rate(rate: Option<f64>, flag: &str) -> Result<Option<f64>, AgentError> {
    match rate {
        Some(r) if !(r.is_finite() && r > 0.0 && r <= MAX_RATE) => Err(AgentError::usage(format!(
            "{flag} must be a number of operations a second above 0 and at most {MAX_RATE}"
        ))),
        r => Ok(r),
    }
}

/// What one timed phase measured.
#[derive(Debug, Clone)]
pub struct PhaseReport {
    /// Successful operations.
    pub ok: u64,
    /// Failed operations by kind.
    pub errors: BTreeMap<String, u64>,
    /// Wall-clock time of the phase.
    pub elapsed: Duration,
    /// When the phase started, so that a script sampling CPU per process can attribute
    /// its samples to the phase (`started_unix_s` in the JSON).
    pub started: std::time::SystemTime,
    /// Latencies of the successful operations, microseconds.
    pub latency_us: Histogram<u64>,
    /// OCSP only: how many answers said good, revoked, unknown.
    pub ocsp: Option<OcspCounts>,
    /// Open loop (`--rate`): the schedule's operations a second, and how late the latest
    /// start was after its due time (the timer's granularity, or every worker busy: more
    /// --concurrency, or a load generator short of CPU).
    pub open_loop: Option<OpenLoop>,
}

/// The schedule of an open-loop phase and how well it was kept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpenLoop {
    /// Operations started a second, as asked.
    pub rate: f64,
    /// The latest start after its due time.
    pub max_start_lag: Duration,
}

/// OCSP answers by certificate status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OcspCounts {
    /// `good`.
    pub good: u64,
    /// `revoked`.
    pub revoked: u64,
    /// `unknown`.
    pub unknown: u64,
}

impl PhaseReport {
    /// Successful operations a second.
    pub fn per_second(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 { self.ok as f64 / s } else { 0.0 }
    }

    /// The latency at quantile `q` (0 to 1) in milliseconds; `None` without samples.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        (!self.latency_us.is_empty()).then(|| self.latency_us.value_at_quantile(q) as f64 / 1000.0)
    }

    /// The largest latency in milliseconds; `None` without samples.
    pub fn max_ms(&self) -> Option<f64> {
        (!self.latency_us.is_empty()).then(|| self.latency_us.max() as f64 / 1000.0)
    }

    /// The failures, all kinds.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// `{ok, errors, per_second, p50_ms, p90_ms, p99_ms, max_ms, elapsed_s}` (and
    /// `good`, `revoked`, `unknown` for OCSP; `rate` and `max_start_lag_ms` for an open
    /// loop).
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "ok": self.ok,
            "errors": self.errors,
            "per_second": round3(self.per_second()),
            "p50_ms": self.quantile_ms(0.5).map(round3),
            "p90_ms": self.quantile_ms(0.9).map(round3),
            "p99_ms": self.quantile_ms(0.99).map(round3),
            "max_ms": self.max_ms().map(round3),
            "elapsed_s": round3(self.elapsed.as_secs_f64()),
            "started_unix_s": self
                .started
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| round3(d.as_secs_f64()))
                .unwrap_or_default(),
        });
        if let (Some(c), Some(o)) = (self.ocsp, v.as_object_mut()) {
            o.insert("good".into(), c.good.into());
            o.insert("revoked".into(), c.revoked.into());
            o.insert("unknown".into(), c.unknown.into());
        }
        if let (Some(l), Some(o)) = (self.open_loop, v.as_object_mut()) {
            o.insert("rate".into(), round3(l.rate).into());
            o.insert("max_start_lag_ms".into(), round3(l.max_start_lag.as_secs_f64() * 1000.0).into());
        }
        v
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The results of a run.
#[derive(Debug, Clone)]
pub struct Report {
    /// The method.
    pub method: SimMethod,
    /// The number of devices.
    pub devices: u64,
    /// The number of workers.
    pub concurrency: u64,
    /// The run id (the device ids' prefix is `sim-<run id>-`).
    pub run_id: String,
    /// The enrollment group used, if any.
    pub group: Option<String>,
    /// The enroll phase.
    pub enroll: PhaseReport,
    /// The renew phase, when run.
    pub renew: Option<PhaseReport>,
    /// The OCSP phase, when run.
    pub ocsp: Option<PhaseReport>,
}

impl Report {
    /// The JSON form (`--json`): the phases, and the enroll phase's `ok`, `errors`,
    /// `per_second`, `p50_ms` and `p99_ms` at the top level too.
    pub fn to_json(&self) -> serde_json::Value {
        let enroll = self.enroll.to_json();
        let mut v = serde_json::json!({
            "method": self.method.as_str(),
            "devices": self.devices,
            "concurrency": self.concurrency,
            "run_id": self.run_id,
            "group": self.group,
            "enroll": enroll,
            "ok": enroll["ok"],
            "errors": enroll["errors"],
            "per_second": enroll["per_second"],
            "p50_ms": enroll["p50_ms"],
            "p99_ms": enroll["p99_ms"],
        });
        if let Some(o) = v.as_object_mut() {
            if let Some(r) = &self.renew {
                o.insert("renew".into(), r.to_json());
            }
            if let Some(r) = &self.ocsp {
                o.insert("ocsp".into(), r.to_json());
            }
        }
        v
    }

    /// The summary for a person: one line per phase, then the errors by kind.
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "simulated {} devices, method {}, concurrency {}, run {}{}\n",
            self.devices,
            self.method.as_str(),
            self.concurrency,
            self.run_id,
            self.group.as_ref().map(|g| format!(", group {g}")).unwrap_or_default()
        );
        s.push_str(&format!(
            "{:<7} {:>9} {:>7} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9}\n",
            "phase", "ok", "errors", "elapsed s", "per sec", "p50 ms", "p90 ms", "p99 ms", "max ms"
        ));
        let ms = |x: Option<f64>| x.map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into());
        let mut phases = vec![("enroll", &self.enroll)];
        if let Some(r) = &self.ocsp {
            phases.push(("ocsp", r));
        }
        if let Some(r) = &self.renew {
            phases.push(("renew", r));
        }
        for (name, p) in &phases {
            s.push_str(&format!(
                "{:<7} {:>9} {:>7} {:>10.3} {:>10.1} {:>9} {:>9} {:>9} {:>9}\n",
                name,
                p.ok,
                p.error_count(),
                p.elapsed.as_secs_f64(),
                p.per_second(),
                ms(p.quantile_ms(0.5)),
                ms(p.quantile_ms(0.9)),
                ms(p.quantile_ms(0.99)),
                ms(p.max_ms()),
            ));
        }
        for (name, p) in &phases {
            if let Some(l) = p.open_loop {
                s.push_str(&format!(
                    "{name}: open loop at {:.1}/s, latencies from each due time; latest start {:.2} ms late\n",
                    l.rate,
                    l.max_start_lag.as_secs_f64() * 1000.0
                ));
            }
        }
        if let Some(c) = self.ocsp.as_ref().and_then(|o| o.ocsp) {
            s.push_str(&format!(
                "ocsp answers: good {}, revoked {}, unknown {}\n",
                c.good, c.revoked, c.unknown
            ));
        }
        for (name, p) in &phases {
            if !p.errors.is_empty() {
                let list: Vec<String> = p.errors.iter().map(|(k, n)| format!("{k} {n}")).collect();
                s.push_str(&format!("{name} errors: {}\n", list.join(", ")));
            }
        }
        s
    }
}

// --- failures ---

/// A failed operation of a timed phase (or of the set-up).
#[derive(Debug, Clone)]
struct Failure {
    /// The kind it is counted under.
    kind: String,
    /// For a person (never a secret).
    message: String,
    /// The HTTP status, when the server answered.
    status: Option<u16>,
}

impl Failure {
    fn new(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Failure { kind: kind.into(), message: message.into(), status: None }
    }

    fn local(e: AgentError) -> Self {
        Failure::new("local", e.to_string())
    }

    fn protocol(message: impl Into<String>) -> Self {
        Failure::new("protocol", message)
    }

    fn transport(e: &reqwest::Error) -> Self {
        let kind = if e.is_timeout() { "timeout" } else { "transport" };
        Failure::new(kind, crate::client::error_chain(e))
    }

    /// The set-up's error: the kind decides the exit code.
    fn into_setup(self, what: &str) -> AgentError {
        let kind = match self.status {
            Some(s) if s == 408 || s == 429 || s >= 500 => ErrorKind::Unavailable,
            Some(_) => ErrorKind::Refused,
            None if self.kind == "timeout" || self.kind == "transport" => ErrorKind::Unavailable,
            None if self.kind == "local" => ErrorKind::Crypto,
            None => ErrorKind::Protocol,
        };
        AgentError::new(kind, format!("{what}: {}", self.message))
    }
}

/// Send a request and read the whole answer: the body of a 2xx, else a [`Failure`] named
/// by the problem code (`application/problem+json`) or `http-<status>`.
async fn fetch(req: reqwest::RequestBuilder) -> Result<Vec<u8>, Failure> {
    let resp = req.send().await.map_err(|e| Failure::transport(&e))?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| Failure::transport(&e))?;
    answer(status, &body)
}

/// The body of a 2xx answer, else the [`Failure`] it stands for.
fn answer(status: hyper::StatusCode, body: &[u8]) -> Result<Vec<u8>, Failure> {
    if status.is_success() {
        return Ok(body.to_vec());
    }
    let code = status.as_u16();
    let problem = serde_json::from_slice::<Problem>(body).ok();
    let mut f = match &problem {
        Some(p) if !p.kind.is_empty() => {
            let mut m = format!("{code} {}", p.title);
            m.push_str(&format!(" [{}]", p.code()));
            if !p.detail.is_empty() {
                m.push_str(&format!(": {}", p.detail));
            }
            Failure::new(p.code().to_string(), m)
        }
        _ => Failure::new(
            format!("http-{code}"),
            format!("HTTP {code} {}", status.canonical_reason().unwrap_or("")),
        ),
    };
    f.status = Some(code);
    Err(f)
}

/// [`fetch`], then the body as JSON.
async fn fetch_json<R: DeserializeOwned>(req: reqwest::RequestBuilder) -> Result<R, Failure> {
    let body = fetch(req).await?;
    serde_json::from_slice(&body)
        .map_err(|e| Failure::protocol(format!("the answer is not the protocol: {e}")))
}

// --- devices ---

/// What proves a simulated device's identity.
enum Credential {
    Token(Zeroizing<String>),
    X509 { chain: Vec<String>, key: FactoryKey },
    Symmetric(Zeroizing<[u8; 32]>),
}

/// A device's key material, made before the timed phases.
struct Keys {
    /// The P-256 key, loaded for rustls (the mutual-TLS identity); only with `--renew`.
    tls_key: Option<Arc<dyn rustls::sign::SigningKey>>,
    /// Its SubjectPublicKeyInfo, DER.
    spki: Vec<u8>,
    /// A CSR for it, CN = the device id.
    csr: Csr,
}

struct Device {
    id: String,
    keys: Keys,
    cred: Credential,
}

/// A certificate the device got.
struct Enrolled {
    cert_der: Vec<u8>,
    /// DER, issuing CA first, root last; shared by the devices whose answers carried the
    /// same chain ([`Chains`]).
    chain: Chain,
}

/// The CA chains of the answers, each decoded once. Every answer carries the chain, and
/// in a run it is nearly always the same text: an answer whose chain is the last one's
/// shares that decoding instead of decoding its PEM again (this and the certificate's
/// whole decoding, which [`crate::files::cert_spki_der`] replaced, were about a quarter of
/// the simulator's CPU per enrollment: perf, issue #6). A different chain (the CA rotated)
/// is decoded and becomes the last one.
#[derive(Default)]
struct Chains {
    /// The last chain's text and its decoding.
    last: std::sync::Mutex<Option<(String, Chain)>>,
}

/// A decoded CA chain: DER, issuing CA first, root last.
type Chain = Arc<[Vec<u8>]>;

impl Chains {
    fn decode(&self, pem: &str) -> Result<Chain, Failure> {
        let lock = || self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((text, chain)) = lock().as_ref()
            && text == pem
        {
            return Ok(chain.clone());
        }
        let chain: Chain = issued_chain(pem).map_err(|e| Failure::protocol(e.to_string()))?.into();
        *lock() = Some((pem.to_string(), chain.clone()));
        Ok(chain)
    }
}

fn device_id(run_id: &str, i: usize) -> String {
    format!("sim-{run_id}-{i:06}")
}

/// A device's key and CSR; with `tls`, the key also loaded for rustls, so that the timed
/// renewal phase does not parse it (rustls' key provider tries RSA first: 5 % of the
/// simulator's CPU per renewal went to loading keys).
fn make_keys(id: &str, tls: bool) -> Result<Keys, AgentError> {
    let key = DeviceKey::generate()?;
    let csr = key.csr(Some(id))?;
    let tls_key = if tls {
        let pem_text = key.pkcs8_pem();
        let der = Zeroizing::new(
            pem::parse(pem_text.as_bytes())
                .map_err(|e| AgentError::crypto(format!("the device key is not PEM: {e}")))?
                .into_contents(),
        );
        let der = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
            der.as_slice(),
        ));
        Some(
            rustls::crypto::aws_lc_rs::sign::any_ecdsa_type(&der)
                .map_err(|e| AgentError::crypto(format!("the device key is not usable for TLS: {e}")))?,
        )
    } else {
        None
    };
    Ok(Keys { tls_key, spki: key.spki_der(), csr })
}

/// A manufacturer CA made in memory (P-256) for the x509 method.
struct Manufacturer {
    der: Vec<u8>,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

fn rcgen_err(what: &str) -> impl Fn(rcgen::Error) -> AgentError + '_ {
    move |e| AgentError::crypto(format!("{what}: {e}"))
}

fn validity(p: &mut rcgen::CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(3650);
}

impl Manufacturer {
    fn new(run_id: &str) -> Result<Self, AgentError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(rcgen_err("manufacturer CA key"))?;
        let mut p =
            rcgen::CertificateParams::new(Vec::<String>::new()).map_err(rcgen_err("manufacturer CA"))?;
        p.distinguished_name
            .push(rcgen::DnType::CommonName, format!("devid simulator manufacturer CA {run_id}"));
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        validity(&mut p);
        let der = p.self_signed(&key).map_err(rcgen_err("manufacturer CA"))?.der().to_vec();
        Ok(Manufacturer { der, issuer: rcgen::Issuer::new(p, key) })
    }

    /// An IDevID for `id` (subject serialNumber = id) and its factory key.
    fn idevid(&self, id: &str) -> Result<(Vec<String>, FactoryKey), AgentError> {
        let key =
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(rcgen_err("IDevID key"))?;
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(rcgen_err("IDevID"))?;
        p.distinguished_name.push(rcgen::DnType::CommonName, "devid simulated device");
        p.distinguished_name.push(rcgen::DnType::CustomDnType(vec![2, 5, 4, 5]), id);
        validity(&mut p);
        let der = p.signed_by(&key, &self.issuer).map_err(rcgen_err("IDevID"))?.der().to_vec();
        let factory = FactoryKey::from_pkcs8_der(&Zeroizing::new(key.serialize_der()))?;
        Ok((vec![b64(&der), b64(&self.der)], factory))
    }
}

/// `f(0..n)` on every core, in order, off the async runtime; stops at the first error.
async fn par_map<T, F>(n: usize, pb: ProgressBar, f: F) -> Result<Vec<T>, AgentError>
where
    T: Send + 'static,
    F: Fn(usize) -> Result<T, AgentError> + Send + Sync + 'static,
{
    let bar = pb.clone();
    let task = tokio::task::spawn_blocking(move || {
        let threads = std::thread::available_parallelism().map(|t| t.get()).unwrap_or(1).clamp(1, n.max(1));
        let chunk = n.div_ceil(threads);
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let (f, pb) = (&f, &pb);
                    s.spawn(move || {
                        (t * chunk..((t + 1) * chunk).min(n))
                            .map(|i| {
                                let r = f(i);
                                pb.inc(1);
                                r
                            })
                            .collect::<Result<Vec<T>, AgentError>>()
                    })
                })
                .collect();
            let mut out = Vec::with_capacity(n);
            for h in handles {
                match h.join() {
                    Ok(part) => out.extend(part?),
                    Err(_) => return Err(AgentError::crypto("a key generation thread panicked")),
                }
            }
            Ok(out)
        })
    });
    let out = task.await.map_err(|e| AgentError::crypto(format!("key generation failed: {e}")))?;
    bar.finish_and_clear();
    out
}

// --- progress ---

fn progress(len: u64, label: &'static str, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{prefix:>8} [{bar:40.cyan/blue}] {pos}/{len} {rate:>8} elapsed {elapsed} eta {eta}",
    ) {
        let style = style.progress_chars("=> ").with_key(
            "rate",
            |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.0}/s", state.per_sec());
            },
        );
        pb.set_style(style);
    }
    pb.set_prefix(label);
    pb
}

// --- timed phases ---

struct WorkerOut<R> {
    hist: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    first: BTreeMap<String, String>,
    results: Vec<(usize, R)>,
    max_lag: Duration,
}

fn histogram() -> Result<Histogram<u64>, AgentError> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
        .map_err(|e| AgentError::crypto(format!("internal: histogram set-up: {e}")))
}

/// Run `work(i)` for `i` in `0..n` on `concurrency` workers; time each call and the
/// whole. Returns the phase report (without OCSP counts) and the results by index.
///
/// Closed loop without `rate`: a worker calls `work` for the next index as soon as its
/// last call ends, and each call is timed from its start. With `rate`, an open loop: call
/// `i` is due `i / rate` seconds after the phase's start, a free worker waits for that time,
/// and the call is timed from its due time. A server that falls behind then shows in the
/// latencies, where a closed loop would hide it by sending less (coordinated omission).
async fn drive<R, F, Fut>(
    n: usize,
    concurrency: usize,
    rate: Option<f64>,
    pb: ProgressBar,
    label: &str,
    work: F,
) -> Result<(PhaseReport, Vec<(usize, R)>), AgentError>
where
    R: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, Failure>> + Send + 'static,
{
    let work = Arc::new(work);
    let next = Arc::new(AtomicUsize::new(0));
    // Each worker's histogram is about 170 KB of zeroed memory: made before the phase
    // starts, so that neither its time nor its page faults count in the phase (at c=256,
    // 44 MB and 3 % of the simulator's CPU in an enrollment phase: perf, issue #6).
    let outs = (0..concurrency.clamp(1, n.max(1)))
        .map(|_| {
            Ok(WorkerOut {
                hist: histogram()?,
                errors: BTreeMap::new(),
                first: BTreeMap::new(),
                results: Vec::new(),
                max_lag: Duration::ZERO,
            })
        })
        .collect::<Result<Vec<_>, AgentError>>()?;
    let start = Instant::now();
    let started = std::time::SystemTime::now();
    let mut tasks = Vec::new();
    for mut out in outs {
        let (work, next, pb) = (work.clone(), next.clone(), pb.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let t0 = match rate {
                    Some(r) => {
                        let due = start + Duration::from_secs_f64(i as f64 / r);
                        tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
                        out.max_lag = out.max_lag.max(due.elapsed());
                        due
                    }
                    None => Instant::now(),
                };
                match work(i).await {
                    Ok(r) => {
                        let us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
                        out.hist.saturating_record(us.max(1));
                        out.results.push((i, r));
                    }
                    Err(f) => {
                        *out.errors.entry(f.kind.clone()).or_default() += 1;
                        out.first.entry(f.kind).or_insert(f.message);
                    }
                }
                pb.inc(1);
            }
            out
        }));
    }
    let mut hist = histogram()?;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut first: BTreeMap<String, String> = BTreeMap::new();
    let mut results = Vec::with_capacity(n);
    let mut max_lag = Duration::ZERO;
    for t in tasks {
        let out =
            t.await.map_err(|e| AgentError::new(ErrorKind::Protocol, format!("a worker failed: {e}")))?;
        hist.add(&out.hist)
            .map_err(|e| AgentError::crypto(format!("internal: merging histograms: {e:?}")))?;
        for (k, v) in out.errors {
            *errors.entry(k).or_default() += v;
        }
        for (k, m) in out.first {
            first.entry(k).or_insert(m);
        }
        results.extend(out.results);
        max_lag = max_lag.max(out.max_lag);
    }
    let elapsed = start.elapsed();
    pb.finish_and_clear();
    for (kind, message) in &first {
        tracing::warn!(phase = label, kind = %kind, count = errors.get(kind).copied().unwrap_or(0), "first error of this kind: {message}");
    }
    results.sort_unstable_by_key(|(i, _)| *i);
    let ok = results.len() as u64;
    let open_loop = rate.map(|rate| OpenLoop { rate, max_start_lag: max_lag });
    Ok((PhaseReport { ok, errors, elapsed, started, latency_us: hist, ocsp: None, open_loop }, results))
}

struct Ctx {
    http: reqwest::Client,
    challenge_url: String,
    enroll_url: String,
    method: SimMethod,
    group: Option<String>,
    devices: Vec<Device>,
    chains: Arc<Chains>,
}

async fn enroll_one(ctx: &Ctx, i: usize) -> Result<Enrolled, Failure> {
    let d = ctx.devices.get(i).ok_or_else(|| Failure::new("local", "no such device"))?;
    let body = match &d.cred {
        Credential::Token(t) => EnrollRequest::Token { token: t.to_string(), csr: d.keys.csr.pem.clone() },
        Credential::X509 { chain, key } => {
            let (group, nonce, binding) = challenge(ctx, d).await?;
            EnrollRequest::X509 {
                group,
                nonce,
                chain: chain.clone(),
                signature: b64(&key.sign(&binding).map_err(Failure::local)?),
                csr: d.keys.csr.pem.clone(),
            }
        }
        Credential::Symmetric(k) => {
            let (group, nonce, binding) = challenge(ctx, d).await?;
            EnrollRequest::Symmetric {
                group,
                device_id: d.id.clone(),
                nonce,
                proof: b64(&devid_attest::symmetric::proof(k.as_slice(), &binding)),
                csr: d.keys.csr.pem.clone(),
            }
        }
    };
    let resp: EnrollResponse = fetch_json(ctx.http.post(&ctx.enroll_url).json(&body)).await?;
    issued(&resp, &d.keys.spki, &ctx.chains)
}

fn issued(resp: &EnrollResponse, spki: &[u8], chains: &Chains) -> Result<Enrolled, Failure> {
    // The same checks as `devid-agent enroll`.
    let cert_der = issued_certificate(resp, spki).map_err(|e| Failure::protocol(e.to_string()))?;
    Ok(Enrolled { cert_der, chain: chains.decode(&resp.chain)? })
}

/// `POST /v1/enroll/challenge`: the group, the nonce as sent, and the binding.
async fn challenge(ctx: &Ctx, d: &Device) -> Result<(String, String, [u8; 32]), Failure> {
    let group = ctx.group.clone().ok_or_else(|| Failure::new("local", "no group"))?;
    let req = ChallengeRequest { group: group.clone(), method: ctx.method.as_str().into(), tpm: None };
    let resp: ChallengeResponse = fetch_json(ctx.http.post(&ctx.challenge_url).json(&req)).await?;
    let nonce = nonce_bytes(&resp).map_err(|e| Failure::protocol(e.to_string()))?;
    let binding = devid_attest::binding(&nonce, &d.keys.csr.der);
    Ok((group, resp.nonce, binding))
}

async fn renew_one(
    d: &Device,
    e: &Enrolled,
    target: &RenewTarget,
    tls: &RenewTls,
) -> Result<Enrolled, Failure> {
    let verifier = tls.verifier(e)?;
    let key = d
        .keys
        .tls_key
        .clone()
        .ok_or_else(|| Failure::new("local", "the device key is not loaded for TLS"))?;
    // The certificate and the intermediates (not the root: the server has it).
    let mut presented = vec![rustls::pki_types::CertificateDer::from(e.cert_der.clone())];
    presented.extend(e.chain.iter().take(e.chain.len().saturating_sub(1)).cloned().map(Into::into));
    let identity = Arc::new(Identity(Arc::new(rustls::sign::CertifiedKey::new(presented, key))));
    let mut cfg = rustls::ClientConfig::builder_with_provider(tls.provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Failure::local(AgentError::crypto(format!("TLS set-up: {e}"))))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(identity);
    // A new client per device: a new TLS session, a full handshake, and nothing to resume.
    cfg.resumption = rustls::client::Resumption::disabled();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let body = serde_json::to_vec(&RenewRequest { csr: d.keys.csr.pem.clone() })
        .map_err(|e| Failure::local(AgentError::new(ErrorKind::Protocol, format!("renewal request: {e}"))))?;
    let answer = post_once(target, Arc::new(cfg), body).await?;
    let resp: EnrollResponse = serde_json::from_slice(&answer)
        .map_err(|e| Failure::protocol(format!("the answer is not the protocol: {e}")))?;
    issued(&resp, &d.keys.spki, &tls.chains)
}

/// Where renewals go: the renewal listener's addresses (resolved once, in the set-up),
/// the name its certificate must carry, and the request's path.
struct RenewTarget {
    addrs: Vec<std::net::SocketAddr>,
    server_name: rustls::pki_types::ServerName<'static>,
    /// `host[:port]`, for the `Host` header.
    authority: String,
    path: String,
}

impl RenewTarget {
    async fn resolve(url: &str) -> Result<RenewTarget, AgentError> {
        let u = url::Url::parse(url).map_err(|e| AgentError::usage(format!("{url:?} is not a URL: {e}")))?;
        if u.scheme() != "https" {
            return Err(AgentError::usage(format!(
                "--renew-server must be an https:// URL (mutual TLS), not {url:?}"
            )));
        }
        let host = u.host_str().ok_or_else(|| AgentError::usage(format!("{url:?} has no host")))?;
        let port = u.port_or_known_default().unwrap_or(443);
        // An IPv6 literal is bracketed in the URL, not in a server name or a lookup.
        let bare = host.trim_start_matches('[').trim_end_matches(']').to_string();
        let server_name = rustls::pki_types::ServerName::try_from(bare.clone())
            .map_err(|e| AgentError::usage(format!("{url:?}: not a TLS server name: {e}")))?;
        let addrs: Vec<_> = tokio::net::lookup_host((bare.as_str(), port))
            .await
            .map_err(|e| AgentError::new(ErrorKind::Unavailable, format!("cannot resolve {host}: {e}")))?
            .collect();
        if addrs.is_empty() {
            return Err(AgentError::new(ErrorKind::Unavailable, format!("{host} has no address")));
        }
        let authority = match u.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        Ok(RenewTarget { addrs, server_name, authority, path: u.path().to_string() })
    }
}

/// POST `body` (JSON) on a new connection with the TLS configuration `cfg`, read the whole
/// answer and close: a device's renewal. This is HTTP/1.1 straight on the connection,
/// without an HTTP client's per-client set-up (a new reqwest client per device, its pool,
/// connector and proxy settings), so that the simulator's CPU goes to the handshake
/// itself; the answer is classified as [`fetch`] does.
async fn post_once(
    target: &RenewTarget,
    cfg: Arc<rustls::ClientConfig>,
    body: Vec<u8>,
) -> Result<Vec<u8>, Failure> {
    use http_body_util::BodyExt;
    let to = &target.authority;
    let transport =
        |what: &str, e: &dyn std::fmt::Display| Failure::new("transport", format!("{what} {to}: {e}"));
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(target.addrs.as_slice())
            .await
            .map_err(|e| transport("cannot connect to", &e))?;
        let _ = tcp.set_nodelay(true);
        let tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(target.server_name.clone(), tcp)
            .await
            .map_err(|e| transport("TLS handshake with", &e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| transport("HTTP/1.1 with", &e))?;
        let req = hyper::Request::post(target.path.as_str())
            .header(hyper::header::HOST, to.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::USER_AGENT, crate::client::USER_AGENT)
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .map_err(|e| Failure::local(AgentError::usage(format!("renewal request: {e}"))))?;
        let request = async move {
            let resp = sender.send_request(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            // With the last handle gone, the connection future ends once the exchange is over.
            drop(sender);
            Ok::<_, hyper::Error>((status, body))
        };
        // The connection is driven here, alongside the request: no task of its own.
        let (result, _closed) = tokio::join!(request, conn);
        let (status, body) = result.map_err(|e| transport("the answer of", &e))?;
        answer(status, &body)
    };
    tokio::time::timeout(crate::client::REQUEST_TIMEOUT, exchange).await.map_err(|_| {
        Failure::new("timeout", format!("no answer from {to} within {:?}", crate::client::REQUEST_TIMEOUT))
    })?
}

/// The client side of the renewal phase that the simulated devices share: the crypto
/// provider and, per set of trust anchors, one [`SharedVerifier`] of the server.
struct RenewTls {
    provider: Arc<rustls::crypto::CryptoProvider>,
    /// `--ca`: these anchors for every device.
    fixed: Option<Arc<SharedVerifier>>,
    /// Otherwise the root of each device's enrollment chain, by its DER.
    by_root: HashMap<Vec<u8>, Arc<SharedVerifier>>,
    /// The renewal answers' chains.
    chains: Arc<Chains>,
}

impl RenewTls {
    /// Verifiers for `roots` (`--ca`), or for the roots of the `enrolled` chains.
    fn new(
        roots: Option<&[Vec<u8>]>,
        enrolled: &[(usize, Enrolled)],
        chains: Arc<Chains>,
    ) -> Result<RenewTls, AgentError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = |roots: &[Vec<u8>]| -> Result<Arc<SharedVerifier>, AgentError> {
            let mut store = rustls::RootCertStore::empty();
            for r in roots {
                store
                    .add(rustls::pki_types::CertificateDer::from(r.clone()))
                    .map_err(|e| AgentError::crypto(format!("a trust anchor is not usable: {e}")))?;
            }
            let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(store),
                provider.clone(),
            )
            .build()
            .map_err(|e| AgentError::crypto(format!("TLS set-up: {e}")))?;
            Ok(Arc::new(SharedVerifier { inner, verified: std::sync::Mutex::new(None) }))
        };
        let mut tls = RenewTls { provider: provider.clone(), fixed: None, by_root: HashMap::new(), chains };
        match roots {
            Some(r) => tls.fixed = Some(verifier(r)?),
            None => {
                for (_, e) in enrolled {
                    if let Some(root) = e.chain.last()
                        && !tls.by_root.contains_key(root)
                    {
                        tls.by_root.insert(root.clone(), verifier(std::slice::from_ref(root))?);
                    }
                }
            }
        }
        Ok(tls)
    }

    fn verifier(&self, e: &Enrolled) -> Result<Arc<SharedVerifier>, Failure> {
        if let Some(v) = &self.fixed {
            return Ok(v.clone());
        }
        let root = e.chain.last().ok_or_else(|| Failure::protocol("the chain is empty"))?;
        self.by_root.get(root).cloned().ok_or_else(|| Failure::new("local", "no verifier for this root"))
    }
}

/// The device's certificate and key, for every handshake.
#[derive(Debug)]
struct Identity(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for Identity {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// How long a verified server chain is taken as verified again without a new path
/// validation (never past the chain's own notAfter).
const SERVER_CHAIN_REUSE: Duration = Duration::from_secs(60);

/// rustls-webpki's verification of the server (RFC 5280 §6 path validation and the name,
/// RFC 6125), shared by the simulated devices: the chain last found valid, byte for byte
/// and for the same name, is not validated again for [`SERVER_CHAIN_REUSE`] (nor past the
/// chain's notAfter). Every handshake still verifies the server's signature over its own
/// transcript (RFC 8446 §4.4.3). One validation per device was a third of the simulator's
/// CPU per renewal, the same work with the same answer each time; real devices each do it
/// on their own CPU, which the server does not see.
#[derive(Debug)]
struct SharedVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    verified: std::sync::Mutex<Option<Verified>>,
}

/// A server chain found valid.
#[derive(Debug)]
struct Verified {
    /// The end entity, then the intermediates, DER.
    chain: Vec<Vec<u8>>,
    name: String,
    /// Unix seconds.
    until: u64,
}

impl SharedVerifier {
    fn chain(
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
    ) -> Vec<Vec<u8>> {
        std::iter::once(end_entity).chain(intermediates).map(|c| c.to_vec()).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Verified>> {
        self.verified.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl rustls::client::danger::ServerCertVerifier for SharedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let name = server_name.to_str();
        let same = |chain: &[Vec<u8>]| {
            chain.len() == intermediates.len() + 1
                && std::iter::once(end_entity)
                    .chain(intermediates)
                    .zip(chain)
                    .all(|(c, v)| c.as_ref() == v.as_slice())
        };
        if let Some(v) = self.lock().as_ref()
            && now.as_secs() < v.until
            && v.name == name
            && same(&v.chain)
        {
            return Ok(rustls::client::danger::ServerCertVerified::assertion());
        }
        let ok = self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        let chain = SharedVerifier::chain(end_entity, intermediates);
        let not_after = chain
            .iter()
            .filter_map(|der| x509_cert::Certificate::from_der(der).ok())
            .map(|c| c.tbs_certificate.validity.not_after.to_unix_duration().as_secs())
            .min()
            .unwrap_or(0);
        let until = now.as_secs().saturating_add(SERVER_CHAIN_REUSE.as_secs()).min(not_after);
        *self.lock() = Some(Verified { chain, name: name.into_owned(), until });
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The certificate status an OCSP answer gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OcspStatus {
    Good,
    Revoked,
    Unknown,
}

/// SHA-1 (RFC 5019 §2.1.1: the hash clients use in a CertID).
fn sha1(data: &[u8]) -> Result<der::asn1::OctetString, AgentError> {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, data);
    der::asn1::OctetString::new(d.as_ref()).map_err(|e| AgentError::crypto(format!("CertID: {e}")))
}

/// A DER OCSPRequest (RFC 6960 §4.1.1) for `cert`, issued by `issuer`, with a SHA-1 CertID
/// and no nonce (RFC 5019), and its serial number.
pub fn ocsp_request(cert_der: &[u8], issuer_der: &[u8]) -> Result<Vec<u8>, AgentError> {
    use x509_cert::Certificate;
    let bad = |e: der::Error| AgentError::crypto(format!("OCSP request: {e}"));
    let cert = Certificate::from_der(cert_der).map_err(bad)?;
    let issuer = Certificate::from_der(issuer_der).map_err(bad)?;
    let cert_id = x509_ocsp::CertId {
        hash_algorithm: x509_cert::spki::AlgorithmIdentifierOwned {
            oid: der::oid::db::rfc5912::ID_SHA_1,
            parameters: Some(der::asn1::Null.into()),
        },
        issuer_name_hash: sha1(&issuer.tbs_certificate.subject.to_der().map_err(bad)?)?,
        issuer_key_hash: sha1(issuer.tbs_certificate.subject_public_key_info.subject_public_key.raw_bytes())?,
        serial_number: cert.tbs_certificate.serial_number.clone(),
    };
    let req = x509_ocsp::OcspRequest {
        tbs_request: x509_ocsp::TbsRequest {
            request_list: vec![x509_ocsp::Request { req_cert: cert_id, single_request_extensions: None }],
            ..Default::default()
        },
        optional_signature: None,
    };
    req.to_der().map_err(bad)
}

/// The GET form of an OCSP request (RFC 5019 §5): base64, URL-encoded, after `/ocsp/`.
fn ocsp_get_url(server: &str, request_der: &[u8]) -> Result<String, AgentError> {
    use base64::Engine as _;
    let text = base64::engine::general_purpose::STANDARD.encode(request_der);
    let encoded = text.replace('+', "%2B").replace('/', "%2F").replace('=', "%3D");
    endpoint(server, &format!("/ocsp/{encoded}"))
}

async fn ocsp_one(http: &reqwest::Client, url: &str) -> Result<OcspStatus, Failure> {
    let body = fetch(http.get(url)).await?;
    let resp = x509_ocsp::OcspResponse::from_der(&body)
        .map_err(|e| Failure::protocol(format!("not an OCSPResponse: {e}")))?;
    if resp.response_status != x509_ocsp::OcspResponseStatus::Successful {
        let name = match resp.response_status {
            x509_ocsp::OcspResponseStatus::MalformedRequest => "malformed-request",
            x509_ocsp::OcspResponseStatus::InternalError => "internal-error",
            x509_ocsp::OcspResponseStatus::TryLater => "try-later",
            x509_ocsp::OcspResponseStatus::SigRequired => "sig-required",
            x509_ocsp::OcspResponseStatus::Unauthorized => "unauthorized",
            x509_ocsp::OcspResponseStatus::Successful => "successful",
        };
        return Err(Failure::new(format!("ocsp-{name}"), format!("the responder answered {name}")));
    }
    let bytes = resp
        .response_bytes
        .ok_or_else(|| Failure::protocol("a successful OCSP answer without a response"))?;
    let basic = x509_ocsp::BasicOcspResponse::from_der(bytes.response.as_bytes())
        .map_err(|e| Failure::protocol(format!("not a BasicOCSPResponse: {e}")))?;
    let single = basic
        .tbs_response_data
        .responses
        .first()
        .ok_or_else(|| Failure::protocol("an OCSP answer without a status"))?;
    Ok(match single.cert_status {
        x509_ocsp::CertStatus::Good(_) => OcspStatus::Good,
        x509_ocsp::CertStatus::Revoked(_) => OcspStatus::Revoked,
        x509_ocsp::CertStatus::Unknown(_) => OcspStatus::Unknown,
    })
}

// --- set-up ---

fn random_bytes<const N: usize>() -> Result<[u8; N], AgentError> {
    let mut b = [0u8; N];
    SystemRandom::new().fill(&mut b).map_err(|_| AgentError::crypto("the system random generator failed"))?;
    Ok(b)
}

/// SplitMix64: the seeded choice of the OCSP devices.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `k` of `0..n`, chosen with `seed`, in increasing order.
fn choose(n: usize, k: usize, seed: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    let mut state = seed;
    let k = k.min(n);
    for i in 0..k {
        let j = i + (splitmix64(&mut state) % (n - i) as u64) as usize;
        idx.swap(i, j);
    }
    idx.truncate(k);
    idx.sort_unstable();
    idx
}

fn client_secret(args: &SimulateArgs) -> Result<Zeroizing<String>, AgentError> {
    let secret = match &args.client_secret_file {
        Some(p) => Zeroizing::new(crate::files::read_text(p)?.trim().to_string()),
        None => Zeroizing::new(
            std::env::var("DEVID_AGENT_CLIENT_SECRET")
                .map_err(|_| {
                    AgentError::usage(
                        "give the client secret in DEVID_AGENT_CLIENT_SECRET or --client-secret-file",
                    )
                })?
                .trim()
                .to_string(),
        ),
    };
    if secret.is_empty() {
        return Err(AgentError::usage("the client secret is empty"));
    }
    Ok(secret)
}

/// OAuth 2.0 client credentials (RFC 6749 §4.4) at `POST /v1/auth/token`.
async fn access_token(
    http: &reqwest::Client,
    server: &str,
    client_id: &str,
    secret: &str,
) -> Result<Zeroizing<String>, AgentError> {
    let url = endpoint(server, "/v1/auth/token")?;
    let req = http
        .post(&url)
        .basic_auth(client_id, Some(secret))
        .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials");
    let v: serde_json::Value = fetch_json(req).await.map_err(|f| {
        let hint = if f.status == Some(401) { " (check --client-id and the client secret)" } else { "" };
        let mut e = f.into_setup(&format!("cannot get an access token from {url}"));
        e.message.push_str(hint);
        e
    })?;
    v.get("access_token").and_then(|t| t.as_str()).map(|t| Zeroizing::new(t.to_string())).ok_or_else(|| {
        AgentError::new(ErrorKind::Protocol, format!("{url} answered without an access_token"))
    })
}

/// An existing group's methods, or `None` when there is no such group.
async fn group_methods(
    http: &reqwest::Client,
    server: &str,
    bearer: &str,
    name: &str,
) -> Result<Option<Vec<String>>, AgentError> {
    let url = endpoint(server, &format!("/v1/groups/{name}"))?;
    match fetch_json::<serde_json::Value>(http.get(&url).bearer_auth(bearer)).await {
        Ok(v) => Ok(Some(
            v.get("methods")
                .and_then(|m| m.as_array())
                .map(|m| m.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
                .unwrap_or_default(),
        )),
        Err(f) if f.status == Some(404) => Ok(None),
        Err(f) => Err(f.into_setup(&format!("looking up group {name}"))),
    }
}

/// `POST /v1/groups`: the answer (with `master_key` when the server generated one).
async fn create_group(
    http: &reqwest::Client,
    server: &str,
    bearer: &str,
    body: &serde_json::Value,
) -> Result<serde_json::Value, AgentError> {
    let url = endpoint(server, "/v1/groups")?;
    let name = body.get("name").and_then(|n| n.as_str()).unwrap_or_default().to_string();
    fetch_json(http.post(&url).bearer_auth(bearer).json(body))
        .await
        .map_err(|f| f.into_setup(&format!("creating enrollment group {name}")))
}

/// Pre-register `ids` with one-time tokens (`POST /v1/device-batches/{batch}`, at most
/// [`BATCH_ROWS`] a request): the tokens, by id.
async fn register_batches(
    http: &reqwest::Client,
    server: &str,
    bearer: &str,
    run_id: &str,
    ids: &[String],
    group: Option<&str>,
) -> Result<HashMap<String, Zeroizing<String>>, AgentError> {
    let mut tokens = HashMap::with_capacity(ids.len());
    for (n, chunk) in ids.chunks(BATCH_ROWS).enumerate() {
        let batch = format!("sim-{run_id}-{n}");
        let mut body = String::with_capacity(chunk.len() * 48);
        for id in chunk {
            let mut row = serde_json::json!({ "id": id, "method": "token" });
            if let (Some(g), Some(o)) = (group, row.as_object_mut()) {
                o.insert("group".into(), g.into());
            }
            body.push_str(&row.to_string());
            body.push('\n');
        }
        let url = endpoint(server, &format!("/v1/device-batches/{batch}"))?;
        let req = http
            .post(&url)
            .bearer_auth(bearer)
            .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
            .timeout(Duration::from_secs(600))
            .body(body);
        let v: serde_json::Value =
            fetch_json(req).await.map_err(|f| f.into_setup(&format!("registering batch {batch}")))?;
        let rows = v.get("rows").and_then(|r| r.as_array()).ok_or_else(|| {
            AgentError::new(ErrorKind::Protocol, format!("the answer to batch {batch} has no rows"))
        })?;
        for row in rows {
            let id = row.get("id").and_then(|x| x.as_str()).unwrap_or_default();
            match row.get("token").and_then(|t| t.as_str()) {
                Some(t) => {
                    tokens.insert(id.to_string(), Zeroizing::new(t.to_string()));
                }
                None => {
                    let result = row.get("result").and_then(|x| x.as_str()).unwrap_or("?");
                    let reason = row.get("reason").and_then(|x| x.as_str()).unwrap_or("");
                    return Err(AgentError::new(
                        ErrorKind::Refused,
                        format!("registering batch {batch}: device {id}: {result} {reason}"),
                    ));
                }
            }
        }
    }
    Ok(tokens)
}

/// The group for x509 and symmetric: `(name, master key for symmetric)`.
async fn prepare_group(
    http: &reqwest::Client,
    args: &SimulateArgs,
    bearer: &str,
    run_id: &str,
    anchor: Option<&[u8]>,
) -> Result<(String, Option<Zeroizing<Vec<u8>>>), AgentError> {
    let method = args.method.as_str();
    let name = args.group.clone().unwrap_or_else(|| format!("sim-{run_id}"));
    if args.group.is_some()
        && let Some(methods) = group_methods(http, &args.server, bearer, &name).await?
    {
        if !methods.iter().any(|m| m == method) {
            return Err(AgentError::new(
                ErrorKind::Refused,
                format!("group {name} exists and does not allow the {method} method (it allows {methods:?})"),
            ));
        }
        return match args.method {
            SimMethod::Token => Ok((name, None)),
            SimMethod::X509 => Err(AgentError::new(
                ErrorKind::Refused,
                format!(
                    "group {name} exists: it does not trust this run's manufacturer CA; omit --group or name a new group"
                ),
            )),
            SimMethod::Symmetric => {
                let path = args.group_key.as_ref().ok_or_else(|| {
                    AgentError::usage(format!(
                        "group {name} exists: give its master key with --group-key (the server shows it only when it creates the group), or omit --group"
                    ))
                })?;
                Ok((name, Some(read_key_material(&path.display().to_string(), true)?)))
            }
        };
    }
    let mut body = serde_json::json!({ "name": name, "methods": [method], "registration": "optional" });
    if let (Some(a), Some(o)) = (anchor, body.as_object_mut()) {
        o.insert("trust_anchors".into(), serde_json::json!([b64(a)]));
    }
    let v = create_group(http, &args.server, bearer, &body).await?;
    let master = match args.method {
        SimMethod::Symmetric => Some(
            v.get("master_key").and_then(|k| k.as_str()).and_then(unb64).map(Zeroizing::new).ok_or_else(
                || {
                    AgentError::new(
                        ErrorKind::Protocol,
                        format!("group {name} was created without a master key in the answer"),
                    )
                },
            )?,
        ),
        _ => None,
    };
    tracing::info!(group = %name, "created the enrollment group");
    Ok((name, master))
}

/// Run the simulation: set-up, then the timed phases. `show_progress` draws progress bars
/// on stderr.
pub async fn simulate(args: &SimulateArgs, show_progress: bool) -> Result<Report, AgentError> {
    let n = usize::try_from(args.devices).map_err(|_| AgentError::usage("--devices is too large"))?;
    let concurrency =
        usize::try_from(args.concurrency).map_err(|_| AgentError::usage("--concurrency is too large"))?;
    if let Some(s) = args.ocsp_share
        && !(0.0..=1.0).contains(&s)
    {
        return Err(AgentError::usage("--ocsp-share must be a fraction from 0 to 1"));
    }
    let rate = check_rate(args.rate, "--rate")?;
    let renew_rate = check_rate(args.renew_rate, "--renew-rate")?;
    if args.group_key.is_some() && args.method != SimMethod::Symmetric {
        return Err(AgentError::usage("--group-key is for --method symmetric"));
    }
    endpoint(&args.server, "/")?;
    let renew_url = match (&args.renew_server, args.renew) {
        (Some(r), true) => Some(endpoint(r, "/v1/renew")?),
        (None, true) => return Err(AgentError::usage("--renew needs --renew-server")),
        (Some(r), false) => {
            endpoint(r, "/")?;
            None
        }
        (None, false) => None,
    };
    // Resolved before the set-up, so that a wrong URL fails before any device enrolls.
    let renew_target = match &renew_url {
        Some(u) => Some(Arc::new(RenewTarget::resolve(u).await?)),
        None => None,
    };
    let roots = match &args.ca {
        Some(p) => Some(read_pem_certificates(p)?),
        None => None,
    };
    let secret = client_secret(args)?;
    let http = http_client(roots.as_deref())?;

    // Set-up.
    let bearer = access_token(&http, &args.server, &args.client_id, &secret).await?;
    drop(secret);
    let run_id = hex::encode(random_bytes::<4>()?);
    let ids: Vec<String> = (0..n).map(|i| device_id(&run_id, i)).collect();
    tracing::info!(run = %run_id, devices = n, method = args.method.as_str(), "setting up");

    let (group, manufacturer, master) = match args.method {
        SimMethod::Token => {
            let group = match &args.group {
                Some(_) => Some(prepare_group(&http, args, &bearer, &run_id, None).await?.0),
                None => None,
            };
            (group, None, None)
        }
        SimMethod::X509 => {
            let m = Arc::new(Manufacturer::new(&run_id)?);
            let (g, _) = prepare_group(&http, args, &bearer, &run_id, Some(&m.der)).await?;
            (Some(g), Some(m), None)
        }
        SimMethod::Symmetric => {
            let (g, k) = prepare_group(&http, args, &bearer, &run_id, None).await?;
            (Some(g), None, k)
        }
    };
    let mut tokens = match args.method {
        SimMethod::Token => {
            register_batches(&http, &args.server, &bearer, &run_id, &ids, group.as_deref()).await?
        }
        _ => HashMap::new(),
    };
    drop(bearer);

    // Keys, CSRs and the per-device evidence, on every core.
    let pb = progress(args.devices, "keys", show_progress);
    let shared_ids = Arc::new(ids);
    let (ids2, manufacturer2, master2) = (shared_ids.clone(), manufacturer.clone(), master.clone());
    let with_tls = renew_url.is_some();
    let made = par_map(n, pb, move |i| {
        let id = ids2.get(i).ok_or_else(|| AgentError::usage("no such device"))?;
        let keys = make_keys(id, with_tls)?;
        let extra = match (&manufacturer2, &master2) {
            (Some(m), _) => {
                let (chain, key) = m.idevid(id)?;
                Some(Credential::X509 { chain, key })
            }
            (None, Some(k)) => {
                Some(Credential::Symmetric(Zeroizing::new(devid_attest::symmetric::derive_device_key(k, id))))
            }
            (None, None) => None,
        };
        Ok((keys, extra))
    })
    .await?;
    let mut devices = Vec::with_capacity(n);
    for (id, (keys, cred)) in shared_ids.iter().zip(made) {
        let cred = match cred {
            Some(c) => c,
            None => Credential::Token(tokens.remove(id).ok_or_else(|| {
                AgentError::new(ErrorKind::Protocol, format!("the batch answer has no token for {id}"))
            })?),
        };
        devices.push(Device { id: id.clone(), keys, cred });
    }
    let ctx = Arc::new(Ctx {
        http: http.clone(),
        challenge_url: endpoint(&args.server, "/v1/enroll/challenge")?,
        enroll_url: endpoint(&args.server, "/v1/enroll")?,
        method: args.method,
        group: group.clone(),
        devices,
        chains: Arc::new(Chains::default()),
    });

    // Enroll.
    let pb = progress(args.devices, "enroll", show_progress);
    let c = ctx.clone();
    let (enroll, results) = drive(n, concurrency, rate, pb, "enroll", move |i| {
        let c = c.clone();
        async move { enroll_one(&c, i).await }
    })
    .await?;
    let enrolled: Arc<Vec<(usize, Enrolled)>> = Arc::new(results);

    // OCSP about the enrolled certificates.
    let ocsp = match args.ocsp_share {
        Some(share) => {
            let k = ((enrolled.len() as f64) * share).round() as usize;
            let seed = match args.seed {
                Some(s) => s,
                None => u64::from_le_bytes(random_bytes::<8>()?),
            };
            let mut urls = Vec::with_capacity(k);
            for j in choose(enrolled.len(), k, seed) {
                let Some((_, e)) = enrolled.get(j) else { continue };
                let issuer = e.chain.first().ok_or_else(|| {
                    AgentError::new(ErrorKind::Protocol, "an enrollment answer had an empty chain")
                })?;
                urls.push(ocsp_get_url(&args.server, &ocsp_request(&e.cert_der, issuer)?)?);
            }
            let urls = Arc::new(urls);
            let pb = progress(urls.len() as u64, "ocsp", show_progress);
            let (u, h) = (urls.clone(), http.clone());
            let (mut report, statuses) = drive(urls.len(), concurrency, None, pb, "ocsp", move |i| {
                let (u, h) = (u.clone(), h.clone());
                async move {
                    let url = u.get(i).ok_or_else(|| Failure::new("local", "no such request"))?;
                    ocsp_one(&h, url).await
                }
            })
            .await?;
            let mut counts = OcspCounts::default();
            for (_, s) in statuses {
                match s {
                    OcspStatus::Good => counts.good += 1,
                    OcspStatus::Revoked => counts.revoked += 1,
                    OcspStatus::Unknown => counts.unknown += 1,
                }
            }
            report.ocsp = Some(counts);
            Some(report)
        }
        None => None,
    };

    // Renew: a new mutual-TLS connection per device.
    let renew = match renew_target {
        Some(target) => {
            let pb = progress(enrolled.len() as u64, "renew", show_progress);
            let tls = Arc::new(RenewTls::new(roots.as_deref(), &enrolled, ctx.chains.clone())?);
            let (c, e) = (ctx.clone(), enrolled.clone());
            let (report, _) = drive(enrolled.len(), concurrency, renew_rate, pb, "renew", move |j| {
                let (c, e, target, tls) = (c.clone(), e.clone(), target.clone(), tls.clone());
                async move {
                    let (i, en) = e.get(j).ok_or_else(|| Failure::new("local", "no such device"))?;
                    let d = c.devices.get(*i).ok_or_else(|| Failure::new("local", "no such device"))?;
                    renew_one(d, en, &target, &tls).await
                }
            })
            .await?;
            Some(report)
        }
        None => None,
    };

    Ok(Report {
        method: args.method,
        devices: args.devices,
        concurrency: args.concurrency,
        run_id,
        group,
        enroll,
        renew,
        ocsp,
    })
}

/// `devid-agent simulate`: run, then print the summary (JSON with `--json`) on stdout.
pub async fn run(args: SimulateArgs) -> Result<(), AgentError> {
    let show = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let report = simulate(&args, show).await?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

    /// A root CA and a server certificate for `localhost` it signed, valid for an hour.
    fn server_chain(cn: &str) -> (Vec<u8>, CertificateDer<'static>, u64) {
        let now = time::OffsetDateTime::now_utc();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        p.not_before = now - time::Duration::hours(1);
        p.not_after = now + time::Duration::days(1);
        let root = p.self_signed(&key).unwrap().der().to_vec();
        let issuer = rcgen::Issuer::new(p, key);
        let mut p = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        p.not_before = now - time::Duration::hours(1);
        p.not_after = now + time::Duration::hours(1);
        let leaf_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let leaf = p.signed_by(&leaf_key, &issuer).unwrap().der().clone();
        (root, leaf, (now + time::Duration::hours(1)).unix_timestamp() as u64)
    }

    fn at(secs: u64) -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_secs(secs))
    }

    #[test]
    fn answers_with_the_same_chain_share_one_decoding() {
        let pem = |der: &[u8]| crate::keys::certificate_pem(der);
        let (a, b) = (vec![0x30, 0x03, 0x02, 0x01, 0x01], vec![0x30, 0x03, 0x02, 0x01, 0x02]);
        let chains = Chains::default();
        let first = chains.decode(&format!("{}{}", pem(&a), pem(&b))).expect("decodes");
        assert_eq!(&*first, &[a.clone(), b.clone()]);
        let again = chains.decode(&format!("{}{}", pem(&a), pem(&b))).expect("decodes");
        assert!(Arc::ptr_eq(&first, &again), "the same text shares the decoding");
        let rotated = chains.decode(&pem(&b)).expect("decodes");
        assert_eq!(&*rotated, std::slice::from_ref(&b));
        assert!(!Arc::ptr_eq(&first, &rotated));
        assert!(Arc::ptr_eq(&rotated, &chains.decode(&pem(&b)).expect("decodes")));
        assert_eq!(chains.decode("no PEM here").expect_err("no chain").kind, "protocol");
        assert!(chains.decode("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n").is_err());
    }

    #[test]
    fn the_shared_server_verifier_reuses_only_the_same_valid_chain() {
        let (root, leaf, not_after) = server_chain("sim root");
        let (_, stranger, _) = server_chain("another root");
        let tls = RenewTls::new(Some(&[root]), &[], Arc::default()).unwrap();
        let v = tls.fixed.clone().unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let now = not_after - 1800;
        assert!(v.verify_server_cert(&leaf, &[], &name, &[], at(now)).is_ok());
        // Again within the minute: the same answer.
        assert!(v.verify_server_cert(&leaf, &[], &name, &[], at(now + 30)).is_ok());
        // Another name, another chain: validated on their own, and refused.
        let other = ServerName::try_from("example.org").unwrap();
        assert!(v.verify_server_cert(&leaf, &[], &other, &[], at(now + 31)).is_err());
        assert!(v.verify_server_cert(&stranger, &[], &name, &[], at(now + 32)).is_err());
        assert!(
            v.verify_server_cert(&leaf, std::slice::from_ref(&stranger), &name, &[], at(now + 33)).is_ok()
        );
        // Past the chain's notAfter the reuse ends: the expired chain is refused.
        assert!(v.verify_server_cert(&leaf, &[], &name, &[], at(not_after - 10)).is_ok());
        assert!(v.verify_server_cert(&leaf, &[], &name, &[], at(not_after + 5)).is_err());
        // A refusal does not replace what was verified; that is reused until its time.
        assert!(v.verify_server_cert(&leaf, &[], &name, &[], at(not_after - 5)).is_ok());
    }

    #[test]
    fn renewal_verifiers_follow_each_devices_root() {
        let (root_a, _, _) = server_chain("root a");
        let (root_b, _, _) = server_chain("root b");
        let device = |root: &[u8]| Enrolled { cert_der: vec![1], chain: vec![vec![2], root.to_vec()].into() };
        let enrolled = vec![(0, device(&root_a)), (1, device(&root_b)), (2, device(&root_a))];
        let tls = RenewTls::new(None, &enrolled, Arc::default()).unwrap();
        assert_eq!(tls.by_root.len(), 2);
        let (a, b) = (tls.verifier(&enrolled[0].1).unwrap(), tls.verifier(&enrolled[1].1).unwrap());
        assert!(Arc::ptr_eq(&a, &tls.verifier(&enrolled[2].1).unwrap()));
        assert!(!Arc::ptr_eq(&a, &b));
        assert!(tls.verifier(&Enrolled { cert_der: vec![1], chain: Vec::new().into() }).is_err());
    }

    #[test]
    fn choice_is_seeded_sorted_and_distinct() {
        let a = choose(40, 20, 7);
        assert_eq!(a, choose(40, 20, 7));
        assert_eq!(a.len(), 20);
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(choose(5, 9, 1), vec![0, 1, 2, 3, 4]);
        assert!(choose(0, 3, 1).is_empty());
    }

    #[test]
    fn ocsp_request_names_the_certificate_with_sha1() {
        let m = Manufacturer::new("t").expect("ca");
        let (chain, _) = m.idevid("dev-1").expect("idevid");
        let leaf = unb64(&chain[0]).expect("b64");
        let der = ocsp_request(&leaf, &m.der).expect("request");
        let req = x509_ocsp::OcspRequest::from_der(&der).expect("parses");
        let id = &req.tbs_request.request_list[0].req_cert;
        assert_eq!(id.hash_algorithm.oid, der::oid::db::rfc5912::ID_SHA_1);
        assert_eq!(id.issuer_name_hash.as_bytes().len(), 20);
        let cert = x509_cert::Certificate::from_der(&leaf).expect("cert");
        assert_eq!(id.serial_number, cert.tbs_certificate.serial_number);
        let url = ocsp_get_url("http://127.0.0.1:1/", &der).expect("url");
        assert!(url.starts_with("http://127.0.0.1:1/ocsp/M"), "{url}");
        assert!(!url["http://127.0.0.1:1/ocsp/".len()..].contains(['+', '/', '=']), "{url}");
    }

    #[test]
    fn reports_have_the_documented_shape() {
        let mut h = histogram().expect("histogram");
        for us in [1_000u64, 2_000, 3_000, 40_000] {
            h.record(us).expect("record");
        }
        let phase = PhaseReport {
            ok: 4,
            errors: BTreeMap::from([("token-used".to_string(), 1)]),
            elapsed: Duration::from_secs(2),
            started: std::time::UNIX_EPOCH + Duration::from_millis(1_700_000_000_250),
            latency_us: h,
            ocsp: None,
            open_loop: None,
        };
        let r = Report {
            method: SimMethod::Token,
            devices: 5,
            concurrency: 2,
            run_id: "abcd".into(),
            group: None,
            enroll: phase.clone(),
            renew: None,
            ocsp: Some(PhaseReport {
                ocsp: Some(OcspCounts { good: 4, ..Default::default() }),
                ..phase.clone()
            }),
        };
        let v = r.to_json();
        assert_eq!(v["method"], "token");
        assert_eq!(v["ok"], 4);
        assert_eq!(v["errors"]["token-used"], 1);
        assert_eq!(v["per_second"], 2.0);
        let max = v["enroll"]["max_ms"].as_f64().expect("max");
        assert!((40.0..40.1).contains(&max), "{v}");
        assert!(v["enroll"]["p50_ms"].as_f64().expect("p50") <= v["enroll"]["p99_ms"].as_f64().expect("p99"));
        assert!(v.get("renew").is_none());
        assert_eq!(v["enroll"]["started_unix_s"], 1_700_000_000.25);
        assert_eq!(v["ocsp"]["good"], 4);
        let text = r.to_text();
        assert!(text.contains("enroll errors: token-used 1"), "{text}");
        assert!(text.contains("ocsp answers: good 4"), "{text}");
        assert!(v["enroll"].get("rate").is_none() && !text.contains("open loop"), "closed loop: {v}");

        let open = Report {
            enroll: PhaseReport {
                open_loop: Some(OpenLoop { rate: 2500.0, max_start_lag: Duration::from_micros(1_250) }),
                ..phase
            },
            ocsp: None,
            ..r
        };
        let v = open.to_json();
        assert_eq!(v["enroll"]["rate"], 2500.0, "{v}");
        assert_eq!(v["enroll"]["max_start_lag_ms"], 1.25, "{v}");
        let text = open.to_text();
        assert!(text.contains("enroll: open loop at 2500.0/s"), "{text}");
    }

    #[test]
    fn rates_must_be_positive_finite_and_bounded() {
        assert_eq!(check_rate(None, "--rate").expect("none"), None);
        assert_eq!(check_rate(Some(4000.0), "--rate").expect("4000"), Some(4000.0));
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, MAX_RATE * 2.0] {
            let e = check_rate(Some(bad), "--renew-rate").expect_err("rejected");
            assert_eq!(e.kind, ErrorKind::Usage, "{bad}");
            assert!(e.to_string().contains("--renew-rate"), "{e}");
        }
    }

    /// The open loop keeps its schedule: nothing starts before its due time, so 20
    /// operations at 200/s take at least 95 ms.
    #[tokio::test]
    async fn an_open_loop_starts_each_operation_at_its_due_time() {
        let (report, results) =
            drive(20, 4, Some(200.0), ProgressBar::hidden(), "test", |i| async move { Ok::<_, Failure>(i) })
                .await
                .expect("drive");
        assert_eq!(report.ok, 20);
        assert_eq!(results.iter().map(|(i, _)| *i).collect::<Vec<_>>(), (0..20).collect::<Vec<_>>());
        assert!(report.elapsed >= Duration::from_millis(95), "{:?}", report.elapsed);
        assert_eq!(report.open_loop.map(|l| l.rate), Some(200.0));
    }

    /// A server slower than the schedule shows in the latencies: one worker, 5 ms a call,
    /// 20 calls due within 2 ms. The last starts about 95 ms after it was due, and its
    /// latency counts from then (a closed loop would report about 5 ms for every call).
    #[tokio::test]
    async fn an_open_loop_times_from_the_due_time_so_falling_behind_shows() {
        let (report, _) = drive(20, 1, Some(10_000.0), ProgressBar::hidden(), "test", |_| async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            Ok::<_, Failure>(())
        })
        .await
        .expect("drive");
        assert_eq!(report.ok, 20);
        let lag = report.open_loop.expect("open loop").max_start_lag;
        assert!(lag >= Duration::from_millis(90), "{lag:?}");
        assert!(report.max_ms().expect("max") >= 95.0, "{:?}", report.max_ms());

        let (closed, _) = drive(4, 1, None, ProgressBar::hidden(), "test", |_| async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            Ok::<_, Failure>(())
        })
        .await
        .expect("drive");
        assert!(closed.open_loop.is_none());
        assert!(closed.max_ms().expect("max") >= 5.0);
    }
}
