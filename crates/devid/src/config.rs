//! Configuration: defaults, then a TOML file (`--config`), then `DEVID_*` environment
//! variables (nested keys with `__`, e.g. `DEVID_ISSUANCE__VALIDITY=12h`), then flags.
//! Every error names the key it is about.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Metadata, Profile, Provider};
use serde::{Deserialize, Serialize};

/// A secret from the configuration: never printed, wiped when dropped.
#[derive(Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret text: pass it straight to the part that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..redacted..)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// The raw configuration, as read. Unknown keys in the file are errors.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// HTTP listen address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Data directory (SQLite database, software keys).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// `sqlite:PATH` or `postgres://…`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    /// Connections the store's pool opens at most (PostgreSQL: all; SQLite: the readers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_pool_size: Option<String>,
    /// The public base URL printed into certificates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    /// Threads of the async runtime (default: twice the usable cores).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<String>,
    /// Issuance policy.
    pub issuance: IssuanceRaw,
    /// Key management.
    pub kms: KmsRaw,
    /// Logging.
    pub log: LogRaw,
    /// The OCSP responder.
    pub ocsp: OcspRaw,
    /// CRLs.
    pub crl: CrlRaw,
    /// API access tokens.
    pub auth: AuthRaw,
    /// The renewal listener (mutual TLS).
    pub tls: TlsRaw,
    /// Enrollment and renewal policy.
    pub enroll: EnrollRaw,
    /// Rate limits.
    pub limits: LimitsRaw,
}

/// `[limits]`: requests a minute (0: unlimited), shared by all replicas.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsRaw {
    /// Enrollment, challenge and renewal requests per source address (default 6000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_source: Option<String>,
    /// Enrollments and renewals per device (default 10).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_device: Option<String>,
    /// API requests per credential (default 6000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_credential: Option<String>,
    /// Enrollments per group when the group sets no rate (default 0: unlimited).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_group: Option<String>,
}

/// `[tls]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsRaw {
    /// Listen address of the renewal listener (HTTPS, mutual TLS), or `off`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// DNS names and IP addresses of its server certificate, comma-separated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub names: Option<String>,
    /// Lifetime of its server certificate (re-issued at half of it), e.g. `7d`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validity: Option<String>,
}

/// `[enroll]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnrollRaw {
    /// How long an enrollment challenge is accepted, e.g. `5m`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub challenge_ttl: Option<String>,
    /// Renewal opens at this fraction of a certificate's lifetime (0 to 1), e.g. `0.5`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renew_after: Option<String>,
    /// Renewal is still allowed this long after expiry, e.g. `1h`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renew_grace: Option<String>,
    /// How long an enrollment group read from the store serves enrollments and renewals,
    /// e.g. `1s` (`0s`: read it every time).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_cache: Option<String>,
}

/// `[auth]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthRaw {
    /// Access token lifetime, at most 15 minutes, e.g. `15m`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_lifetime: Option<String>,
}

/// `[ocsp]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OcspRaw {
    /// Validity of a response (nextUpdate − thisUpdate), e.g. `4h`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validity: Option<String>,
    /// Lifetime of the delegated responder certificate, e.g. `7d`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub responder_validity: Option<String>,
    /// Most responses kept in memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_capacity: Option<String>,
    /// The responder listener's address (OCSP, CRLs, CA certificates), or `off`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// The base URL certificates name for OCSP (`{public_url}/ocsp`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
}

/// `[crl]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CrlRaw {
    /// Validity of a CRL (nextUpdate − thisUpdate), e.g. `24h`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validity: Option<String>,
    /// Partition each CA's CRL into this many shards by serial (1: one CRL).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shards: Option<String>,
}

/// `[issuance]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IssuanceRaw {
    /// Device certificate lifetime, e.g. `24h`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validity: Option<String>,
    /// notBefore backdating, e.g. `1m`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backdate: Option<String>,
    /// URI SAN prefix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_uri_prefix: Option<String>,
}

/// `[kms]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KmsRaw {
    /// Software key directory (default `<data_dir>/keys`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soft_dir: Option<PathBuf>,
    /// Passphrase for the software keys' key-encryption key (Argon2id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passphrase: Option<Secret>,
    /// A file holding a 32-byte key-encryption key (hex or base64).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kek_file: Option<PathBuf>,
    /// PKCS#11.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pkcs11: Option<Pkcs11Raw>,
}

/// `[kms.pkcs11]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pkcs11Raw {
    /// The PKCS#11 module (shared library).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module: Option<PathBuf>,
    /// The user PIN.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pin: Option<Secret>,
    /// A file holding the user PIN.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pin_file: Option<PathBuf>,
}

/// `[log]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogRaw {
    /// `text` or `json`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// A tracing filter, e.g. `info` or `devid=debug,info`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
}

/// Where the software keys' key-encryption key comes from.
#[derive(Debug, Clone)]
pub enum KekSource {
    /// A passphrase (Argon2id).
    Passphrase(Secret),
    /// A key file.
    File(PathBuf),
    /// Nothing configured: a generated key file in the data directory (development only).
    Generated(PathBuf),
}

/// PKCS#11 settings.
#[derive(Debug, Clone)]
pub struct Pkcs11Config {
    /// The module.
    pub module: PathBuf,
    /// The PIN.
    pub pin: Secret,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// HTTP listen address.
    pub listen: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Database URL.
    pub database_url: String,
    /// The store's pool size (`None`: the backend's default, 16 on PostgreSQL and 4 readers
    /// on SQLite).
    pub database_pool_size: Option<std::num::NonZeroU32>,
    /// Public base URL; `None` means "http://<bound address>".
    pub public_url: Option<url::Url>,
    /// Device certificate lifetime.
    pub validity: Duration,
    /// notBefore backdating.
    pub backdate: Duration,
    /// URI SAN prefix.
    pub device_uri_prefix: String,
    /// Software key directory.
    pub soft_dir: PathBuf,
    /// KEK source.
    pub kek: KekSource,
    /// PKCS#11, if configured.
    pub pkcs11: Option<Pkcs11Config>,
    /// Log format is JSON.
    pub log_json: bool,
    /// Log filter.
    pub log_level: String,
    /// OCSP response validity.
    pub ocsp_validity: Duration,
    /// OCSP responder certificate lifetime.
    pub ocsp_responder_validity: Duration,
    /// OCSP cache capacity (responses).
    pub ocsp_cache_capacity: usize,
    /// The responder listener's address (`None`: off): OCSP, CRLs and the CA certificates,
    /// served by `workers` single-threaded event loops.
    pub ocsp_listen: Option<SocketAddr>,
    /// The base URL of the OCSP responder that certificates name (`None`: `public_url`).
    pub ocsp_public_url: Option<url::Url>,
    /// CRL validity.
    pub crl_validity: Duration,
    /// CRL shards per CA.
    pub crl_shards: u16,
    /// Access token lifetime.
    pub token_lifetime: Duration,
    /// Renewal listener address (`None`: off).
    pub tls_listen: Option<SocketAddr>,
    /// Names in the renewal listener's certificate.
    pub tls_names: Vec<String>,
    /// Lifetime of the renewal listener's certificate.
    pub tls_validity: Duration,
    /// Enrollment challenge lifetime.
    pub challenge_ttl: Duration,
    /// Renewal opens at this fraction of the lifetime.
    pub renew_after: f64,
    /// Renewal grace period after expiry.
    pub renew_grace: Duration,
    /// How long a group read from the store serves enrollments and renewals.
    pub group_cache: Duration,
    /// Rate limits, per minute (0: unlimited): per source, device, credential, group.
    pub limits: [u64; 4],
    /// Threads of the async runtime that serves HTTP, OCSP and renewals.
    pub workers: usize,
}

/// A configuration error, naming the key.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

fn bad(key: &str, msg: impl std::fmt::Display) -> ConfigError {
    ConfigError(format!("key `{key}`: {msg}"))
}

/// The top-level keys, used to keep unrelated `DEVID_*` variables (e.g. the test
/// runner's `DEVID_TEST_*`) out of the configuration.
const KEYS: [&str; 15] = [
    "limits",
    "workers",
    "database_pool_size",
    "listen",
    "data_dir",
    "database_url",
    "public_url",
    "issuance",
    "kms",
    "log",
    "ocsp",
    "crl",
    "auth",
    "tls",
    "enroll",
];

/// Whether a `DEVID_`-stripped, lowercased variable name is one of ours (`listen`,
/// `kms__passphrase`, …), as opposed to e.g. the test runner's `DEVID_TEST_*`.
fn is_config_var(name: &str) -> bool {
    KEYS.iter().any(|key| name == *key || name.strip_prefix(key).is_some_and(|rest| rest.starts_with("__")))
}

/// `DEVID_*` variables as configuration, every value a string. (figment's own `Env` infers
/// types, which turns a PIN like `0123` into the number 123.)
struct EnvStrings(Vec<(String, String)>);

impl EnvStrings {
    fn from_process() -> Self {
        let vars = std::env::vars_os()
            .filter_map(|(k, v)| {
                let name = k.to_str()?.strip_prefix("DEVID_")?.to_ascii_lowercase();
                is_config_var(&name).then(|| (name, v.to_string_lossy().into_owned()))
            })
            .collect();
        EnvStrings(vars)
    }
}

fn insert_path(dict: &mut Dict, path: &[&str], value: &str) {
    match path {
        [] => {}
        [last] => {
            dict.insert((*last).to_string(), Value::from(value.to_string()));
        }
        [first, rest @ ..] => {
            let entry = dict.entry((*first).to_string()).or_insert_with(|| Value::from(Dict::new()));
            if let Value::Dict(_, inner) = entry {
                insert_path(inner, rest, value);
            }
        }
    }
}

impl Provider for EnvStrings {
    fn metadata(&self) -> Metadata {
        Metadata::named("`DEVID_` environment variable(s)")
    }
    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        for (name, value) in &self.0 {
            let path: Vec<&str> = name.split("__").collect();
            insert_path(&mut dict, &path, value);
        }
        Ok(Profile::Default.collect(dict))
    }
}

/// Read the configuration: defaults < file < environment < `overrides` (flags).
pub fn load(file: Option<&Path>, overrides: &RawConfig) -> Result<Config, ConfigError> {
    let mut fig = Figment::new();
    if let Some(path) = file {
        if !path.is_file() {
            return Err(ConfigError(format!("config file {} does not exist", path.display())));
        }
        fig = fig.merge(Toml::file_exact(path));
    }
    fig = fig.merge(EnvStrings::from_process()).merge(Serialized::defaults(overrides));
    let raw: RawConfig = fig.extract().map_err(|e| {
        let msgs: Vec<String> = e.into_iter().map(|e| e.to_string()).collect();
        ConfigError(msgs.join("; "))
    })?;
    validate(raw)
}

fn duration(
    key: &str,
    v: Option<&str>,
    default: Duration,
    min: Duration,
    max: Duration,
) -> Result<Duration, ConfigError> {
    let d = match v {
        None => default,
        Some(s) => {
            humantime::parse_duration(s).map_err(|e| bad(key, format!("invalid duration '{s}': {e}")))?
        }
    };
    if d < min || d > max {
        return Err(bad(
            key,
            format!(
                "{} is out of range ({} to {})",
                humantime::format_duration(d),
                humantime::format_duration(min),
                humantime::format_duration(max)
            ),
        ));
    }
    Ok(d)
}

fn number(key: &str, v: Option<&str>, default: usize, min: usize, max: usize) -> Result<usize, ConfigError> {
    let n = match v {
        None => default,
        Some(s) => {
            s.trim().replace('_', "").parse().map_err(|_| bad(key, format!("'{s}' is not a whole number")))?
        }
    };
    if n < min || n > max {
        return Err(bad(key, format!("{n} is out of range ({min} to {max})")));
    }
    Ok(n)
}

/// The runtime's threads by default: twice the usable cores.
///
/// Measured on a 2-core VM with the load generator on the same machine (`bench/ocsp.sh`,
/// two rounds): cached OCSP POST 67–68k/s with 2 threads against 81–84k/s with 4, GET
/// 64–66k/s against 74–78k/s, with p99 still under 4 ms; 6 threads pushed the GET p99 past
/// 5 ms. Enrollment and renewal rates were the same with 2 and 4. Most of a cached answer's
/// cost is the kernel's: waking the peer's thread and switching tasks, which costs less
/// when a runtime thread is already awake to take the next connection.
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).saturating_mul(2).clamp(2, 1024)
}

/// Memory one cached OCSP answer takes, rounded up: 771 bytes measured with its share of
/// the map (`ROUNDS=2 bench/enroll.sh 100000 256 token`, 400,000 answers cached).
const OCSP_CACHE_ENTRY_BYTES: u64 = 1024;
/// The default OCSP cache's share of the memory devid may use.
const OCSP_CACHE_MEMORY_SHARE: u64 = 8;
/// The default OCSP cache's bounds: at most about 1 GiB, and at least enough for a small fleet.
const OCSP_CACHE_DEFAULT_MAX: usize = 1_000_000;
const OCSP_CACHE_DEFAULT_MIN: usize = 10_000;

/// `ocsp.cache_capacity` when the configuration does not set it: an eighth of the memory
/// devid may use (`memory_bytes`, from [`host_memory_bytes`]) at about 1 KiB an answer,
/// within 10,000 to 1,000,000 answers. On a host of 8 GiB or more that is the 1,000,000
/// of earlier releases; in a container limited to 1 GiB it is 131,072 (128 MiB), so the
/// cache cannot by default take a small host's memory. Unknown memory: 1,000,000.
fn default_ocsp_cache_capacity(memory_bytes: Option<u64>) -> usize {
    match memory_bytes {
        None => OCSP_CACHE_DEFAULT_MAX,
        Some(bytes) => {
            let entries = bytes / OCSP_CACHE_MEMORY_SHARE / OCSP_CACHE_ENTRY_BYTES;
            usize::try_from(entries)
                .unwrap_or(usize::MAX)
                .clamp(OCSP_CACHE_DEFAULT_MIN, OCSP_CACHE_DEFAULT_MAX)
        }
    }
}

/// The memory this process may use: the machine's `MemTotal` (`/proc/meminfo`), or the
/// lowest cgroup memory limit from the process's cgroup up to the root where that is less
/// (`/proc/self/cgroup` names the cgroups: v2 `memory.max`, v1 `memory.limit_in_bytes`);
/// `None` where none can be read.
fn host_memory_bytes() -> Option<u64> {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let total = read("/proc/meminfo").and_then(|text| meminfo_total(&text));
    let cgroups = read("/proc/self/cgroup").unwrap_or_default();
    let limit = cgroup_limit_files(&cgroups)
        .iter()
        .filter_map(|f| read(f).and_then(|text| cgroup_limit(&text)))
        .min();
    match (total, limit) {
        (Some(t), Some(l)) => Some(t.min(l)),
        (t, l) => t.or(l),
    }
}

/// The files holding the memory limits of the process's cgroups and their ancestors, from
/// the text of `/proc/self/cgroup`: `0::/path` (v2) and `N:…memory…:/path` (v1).
fn cgroup_limit_files(text: &str) -> Vec<String> {
    let mut files = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let (root, file) = if id == "0" && controllers.is_empty() {
            ("/sys/fs/cgroup", "memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            ("/sys/fs/cgroup/memory", "memory.limit_in_bytes")
        } else {
            continue;
        };
        let mut dir = path.trim_end_matches('/');
        loop {
            files.push(format!("{root}{dir}/{file}"));
            match dir.rfind('/') {
                Some(at) => dir = &dir[..at],
                None => break,
            }
        }
    }
    files
}

/// `MemTotal` in bytes from the text of `/proc/meminfo` (`MemTotal:  24596436 kB`).
fn meminfo_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line["MemTotal:".len()..].split_whitespace();
    let n: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => n.checked_mul(1024),
        None => Some(n),
        Some(_) => None,
    }
}

/// A cgroup memory limit in bytes: `max` (v2) or a huge v1 value means none.
fn cgroup_limit(text: &str) -> Option<u64> {
    let n: u64 = text.trim().parse().ok()?;
    // cgroup v1 reports "no limit" as a page-rounded i64::MAX.
    (n < (1 << 62)).then_some(n)
}

/// A base URL (`public_url`, `ocsp.public_url`): http or https, with a host, and neither a
/// query nor a fragment, since paths are appended to it.
fn base_url(key: &str, s: &str) -> Result<url::Url, ConfigError> {
    let u = url::Url::parse(s).map_err(|e| bad(key, format!("'{s}' is not a URL: {e}")))?;
    if !matches!(u.scheme(), "http" | "https") || u.host().is_none() {
        return Err(bad(key, format!("'{s}' must be an http:// or https:// URL with a host")));
    }
    if u.query().is_some() || u.fragment().is_some() {
        return Err(bad(key, "must not have a query or fragment"));
    }
    Ok(u)
}

fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    let listen_text = raw.listen.as_deref().unwrap_or("127.0.0.1:8080");
    let listen: SocketAddr = listen_text
        .parse()
        .map_err(|_| bad("listen", format!("'{listen_text}' is not an address like 127.0.0.1:8080")))?;
    let data_dir = raw.data_dir.clone().unwrap_or_else(|| PathBuf::from("./devid-data"));
    let database_url = match raw.database_url.as_deref() {
        None => format!("sqlite:{}", data_dir.join("devid.db").display()),
        Some(u)
            if u.starts_with("sqlite:") || u.starts_with("postgres://") || u.starts_with("postgresql://") =>
        {
            u.to_string()
        }
        Some(_) => return Err(bad("database_url", "must start with sqlite: or postgres://")),
    };
    let public_url = raw.public_url.as_deref().map(|s| base_url("public_url", s)).transpose()?;
    let ocsp_public_url =
        raw.ocsp.public_url.as_deref().map(|s| base_url("ocsp.public_url", s)).transpose()?;
    let ocsp_listen = match raw.ocsp.listen.as_deref().unwrap_or("off") {
        "off" => None,
        text => Some(text.parse::<SocketAddr>().map_err(|_| {
            bad("ocsp.listen", format!("'{text}' is not an address like 0.0.0.0:8081 (or off)"))
        })?),
    };
    let validity = duration(
        "issuance.validity",
        raw.issuance.validity.as_deref(),
        Duration::from_secs(24 * 3600),
        Duration::from_secs(5 * 60),
        Duration::from_secs(397 * 24 * 3600),
    )?;
    let backdate = duration(
        "issuance.backdate",
        raw.issuance.backdate.as_deref(),
        Duration::from_secs(60),
        Duration::ZERO,
        Duration::from_secs(3600),
    )?;
    let device_uri_prefix = raw
        .issuance
        .device_uri_prefix
        .clone()
        .unwrap_or_else(|| devid_ca::profile::DEFAULT_DEVICE_URI_PREFIX.to_string());
    if url::Url::parse(&format!("{device_uri_prefix}x")).is_err()
        || device_uri_prefix.contains(char::is_whitespace)
    {
        return Err(bad(
            "issuance.device_uri_prefix",
            format!("'{device_uri_prefix}' + a device id is not a URI"),
        ));
    }
    let soft_dir = raw.kms.soft_dir.clone().unwrap_or_else(|| data_dir.join("keys"));
    let kek = match (&raw.kms.passphrase, &raw.kms.kek_file) {
        (Some(_), Some(_)) => {
            return Err(bad("kms.passphrase", "set either kms.passphrase or kms.kek_file, not both"));
        }
        (Some(p), None) if p.expose().chars().count() < 12 => {
            return Err(bad("kms.passphrase", "must be at least 12 characters"));
        }
        (Some(p), None) => KekSource::Passphrase(p.clone()),
        (None, Some(f)) => KekSource::File(f.clone()),
        (None, None) => KekSource::Generated(data_dir.join("kek")),
    };
    let pkcs11 = match &raw.kms.pkcs11 {
        None => None,
        Some(p) => {
            let module = p
                .module
                .clone()
                .ok_or_else(|| bad("kms.pkcs11.module", "is required when [kms.pkcs11] is set"))?;
            if !module.is_file() {
                return Err(bad("kms.pkcs11.module", format!("{} does not exist", module.display())));
            }
            let pin = match (&p.pin, &p.pin_file) {
                (Some(pin), None) => pin.clone(),
                (None, Some(f)) => {
                    let text = std::fs::read_to_string(f).map_err(|e| {
                        bad("kms.pkcs11.pin_file", format!("cannot read {}: {e}", f.display()))
                    })?;
                    Secret(text.trim().to_string())
                }
                _ => {
                    return Err(bad(
                        "kms.pkcs11.pin",
                        "set exactly one of kms.pkcs11.pin and kms.pkcs11.pin_file",
                    ));
                }
            };
            Some(Pkcs11Config { module, pin })
        }
    };
    let log_json = match raw.log.format.as_deref() {
        None | Some("text") => false,
        Some("json") => true,
        Some(other) => return Err(bad("log.format", format!("'{other}' is not text or json"))),
    };
    let log_level = raw.log.level.clone().unwrap_or_else(|| "info".to_string());
    if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
        return Err(bad("log.level", format!("'{log_level}' is not a valid filter")));
    }
    let ocsp_validity = duration(
        "ocsp.validity",
        raw.ocsp.validity.as_deref(),
        Duration::from_secs(4 * 3600),
        Duration::from_secs(60),
        Duration::from_secs(7 * 86400),
    )?;
    let ocsp_responder_validity = duration(
        "ocsp.responder_validity",
        raw.ocsp.responder_validity.as_deref(),
        Duration::from_secs(7 * 86400),
        Duration::from_secs(3600),
        Duration::from_secs(397 * 86400),
    )?;
    if ocsp_responder_validity < ocsp_validity * 3 {
        return Err(bad("ocsp.responder_validity", "must be at least three times ocsp.validity"));
    }
    let ocsp_cache_capacity = number(
        "ocsp.cache_capacity",
        raw.ocsp.cache_capacity.as_deref(),
        default_ocsp_cache_capacity(host_memory_bytes()),
        1,
        100_000_000,
    )?;
    let crl_validity = duration(
        "crl.validity",
        raw.crl.validity.as_deref(),
        Duration::from_secs(86400),
        Duration::from_secs(300),
        Duration::from_secs(31 * 86400),
    )?;
    let crl_shards = number("crl.shards", raw.crl.shards.as_deref(), 1, 1, 1024)? as u16;
    let token_lifetime = duration(
        "auth.token_lifetime",
        raw.auth.token_lifetime.as_deref(),
        Duration::from_secs(900),
        Duration::from_secs(1),
        Duration::from_secs(900),
    )?;
    let tls_listen = match raw.tls.listen.as_deref().unwrap_or("127.0.0.1:8443") {
        "off" => None,
        text => Some(text.parse::<SocketAddr>().map_err(|_| {
            bad("tls.listen", format!("'{text}' is not an address like 127.0.0.1:8443 (or off)"))
        })?),
    };
    let tls_names: Vec<String> = match raw.tls.names.as_deref() {
        Some(n) => n.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
        None => {
            let mut names = vec!["localhost".to_string()];
            if let Some(a) = tls_listen {
                let ip = a.ip();
                names.push(if ip.is_unspecified() { "127.0.0.1".to_string() } else { ip.to_string() });
            }
            names
        }
    };
    if tls_names.is_empty()
        || tls_names.iter().any(|n| n.len() > 253 || !n.is_ascii() || n.contains(char::is_whitespace))
    {
        return Err(bad("tls.names", "give one or more DNS names or IP addresses, comma-separated"));
    }
    let tls_validity = duration(
        "tls.validity",
        raw.tls.validity.as_deref(),
        Duration::from_secs(7 * 86400),
        Duration::from_secs(3600),
        Duration::from_secs(397 * 86400),
    )?;
    let challenge_ttl = duration(
        "enroll.challenge_ttl",
        raw.enroll.challenge_ttl.as_deref(),
        Duration::from_secs(300),
        Duration::from_secs(1),
        Duration::from_secs(3600),
    )?;
    let renew_after = match raw.enroll.renew_after.as_deref() {
        None => 0.5,
        Some(s) => match s.trim().parse::<f64>() {
            Ok(f) if (0.0..=1.0).contains(&f) => f,
            _ => return Err(bad("enroll.renew_after", format!("'{s}' is not a fraction from 0 to 1"))),
        },
    };
    let renew_grace = duration(
        "enroll.renew_grace",
        raw.enroll.renew_grace.as_deref(),
        Duration::from_secs(3600),
        Duration::ZERO,
        Duration::from_secs(30 * 86400),
    )?;
    let group_cache = duration(
        "enroll.group_cache",
        raw.enroll.group_cache.as_deref(),
        Duration::from_secs(1),
        Duration::ZERO,
        Duration::from_secs(60),
    )?;
    let limits = [
        number("limits.per_source", raw.limits.per_source.as_deref(), 6000, 0, 100_000_000)? as u64,
        number("limits.per_device", raw.limits.per_device.as_deref(), 10, 0, 100_000_000)? as u64,
        number("limits.per_credential", raw.limits.per_credential.as_deref(), 6000, 0, 100_000_000)? as u64,
        number("limits.per_group", raw.limits.per_group.as_deref(), 0, 0, 100_000_000)? as u64,
    ];
    let workers = number("workers", raw.workers.as_deref(), default_workers(), 1, 1024)?;
    let database_pool_size = match raw.database_pool_size.as_deref() {
        None => None,
        Some(text) => std::num::NonZeroU32::new(number("database_pool_size", Some(text), 1, 1, 1000)? as u32),
    };
    Ok(Config {
        database_pool_size,
        limits,
        workers,
        tls_listen,
        tls_names,
        tls_validity,
        challenge_ttl,
        renew_after,
        renew_grace,
        group_cache,
        ocsp_validity,
        ocsp_responder_validity,
        ocsp_cache_capacity,
        ocsp_listen,
        ocsp_public_url,
        crl_validity,
        crl_shards,
        token_lifetime,
        listen,
        data_dir,
        database_url,
        public_url,
        validity,
        backdate,
        device_uri_prefix,
        soft_dir,
        kek,
        pkcs11,
        log_json,
        log_level,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig =
            Figment::new().merge(Toml::string(text)).extract().map_err(|e| ConfigError(e.to_string()))?;
        validate(raw)
    }

    #[test]
    fn defaults() {
        let c = from_toml("").expect("defaults are valid");
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.data_dir, PathBuf::from("./devid-data"));
        assert_eq!(c.database_url, "sqlite:./devid-data/devid.db");
        assert_eq!(c.validity, Duration::from_secs(86400));
        assert!(matches!(c.kek, KekSource::Generated(_)));
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(c.workers, (cores * 2).max(2));
        assert_eq!(c.database_pool_size, None);
    }

    #[test]
    fn the_default_ocsp_cache_is_sized_from_the_memory_devid_may_use() {
        const GIB: u64 = 1 << 30;
        assert_eq!(default_ocsp_cache_capacity(None), 1_000_000);
        assert_eq!(default_ocsp_cache_capacity(Some(24 * GIB)), 1_000_000);
        assert_eq!(default_ocsp_cache_capacity(Some(8 * GIB)), 1_000_000);
        assert_eq!(default_ocsp_cache_capacity(Some(4 * GIB)), 524_288);
        assert_eq!(default_ocsp_cache_capacity(Some(GIB)), 131_072);
        assert_eq!(default_ocsp_cache_capacity(Some(64 << 20)), 10_000);
        assert_eq!(default_ocsp_cache_capacity(Some(0)), 10_000);
        assert_eq!(default_ocsp_cache_capacity(Some(u64::MAX)), 1_000_000);
        // What this host gives is within the bounds, and a set value wins over it.
        let here = from_toml("").expect("defaults are valid").ocsp_cache_capacity;
        assert_eq!(here, default_ocsp_cache_capacity(host_memory_bytes()));
        assert!((10_000..=1_000_000).contains(&here));
        let set = from_toml("[ocsp]\ncache_capacity = '5'").expect("valid").ocsp_cache_capacity;
        assert_eq!(set, 5);
    }

    #[test]
    fn memory_is_read_from_meminfo_and_the_cgroup_limit() {
        let meminfo = "MemFree:         1000 kB\nMemTotal:       24596436 kB\nBuffers: 1 kB\n";
        assert_eq!(meminfo_total(meminfo), Some(24_596_436 * 1024));
        assert_eq!(meminfo_total("MemTotal: 4096\n"), Some(4096));
        assert_eq!(meminfo_total("MemTotal: 12 MB\n"), None);
        assert_eq!(meminfo_total("MemTotal: lots kB\n"), None);
        assert_eq!(meminfo_total("MemFree: 1 kB\n"), None);
        assert_eq!(cgroup_limit("max\n"), None);
        assert_eq!(cgroup_limit("1073741824\n"), Some(1 << 30));
        assert_eq!(cgroup_limit("9223372036854771712\n"), None);
        assert_eq!(cgroup_limit(""), None);
        let files =
            cgroup_limit_files("4:memory:/process_api/abc\n3:cpu:/\n0::/system.slice/devid.service\n");
        assert_eq!(
            files,
            [
                "/sys/fs/cgroup/memory/process_api/abc/memory.limit_in_bytes",
                "/sys/fs/cgroup/memory/process_api/memory.limit_in_bytes",
                "/sys/fs/cgroup/memory/memory.limit_in_bytes",
                "/sys/fs/cgroup/system.slice/devid.service/memory.max",
                "/sys/fs/cgroup/system.slice/memory.max",
                "/sys/fs/cgroup/memory.max",
            ]
        );
        assert_eq!(cgroup_limit_files("0::/\n"), ["/sys/fs/cgroup/memory.max"]);
        assert!(cgroup_limit_files("garbage\n").is_empty());
        assert!(host_memory_bytes().is_some_and(|b| b > 0), "this Linux host has /proc/meminfo");
    }

    #[test]
    fn the_pool_size_is_configurable() {
        let size = |text: &str| from_toml(text).expect(text).database_pool_size.map(|n| n.get());
        assert_eq!(size("database_pool_size = '6'"), Some(6));
        assert_eq!(size("database_pool_size = '1'"), Some(1));
        assert_eq!(size("database_pool_size = '1000'"), Some(1000));
        assert!(is_config_var("database_pool_size"));
    }

    #[test]
    fn the_responder_listener_is_off_unless_configured() {
        let c = from_toml("").expect("defaults are valid");
        assert_eq!(c.ocsp_listen, None);
        assert_eq!(c.ocsp_public_url, None);
        let c = from_toml("[ocsp]\nlisten = '0.0.0.0:8081'\npublic_url = 'http://ocsp.example.net:8081'")
            .expect("valid");
        assert_eq!(c.ocsp_listen, Some("0.0.0.0:8081".parse().expect("address")));
        assert_eq!(
            c.ocsp_public_url.map(|u| u.to_string()).as_deref(),
            Some("http://ocsp.example.net:8081/")
        );
        assert_eq!(from_toml("[ocsp]\nlisten = 'off'").expect("valid").ocsp_listen, None);
        assert!(is_config_var("ocsp__listen") && is_config_var("ocsp__public_url"));
    }

    #[test]
    fn workers_are_configurable() {
        assert_eq!(from_toml("workers = '3'").expect("valid").workers, 3);
        assert_eq!(from_toml("workers = '1'").expect("valid").workers, 1);
        assert!(is_config_var("workers"));
    }

    #[test]
    fn errors_name_the_key() {
        for (text, key) in [
            ("listen = 'nope'", "listen"),
            ("database_url = 'mysql://x'", "database_url"),
            ("public_url = 'ftp://x'", "public_url"),
            ("[issuance]\nvalidity = 'forever'", "issuance.validity"),
            ("[issuance]\nvalidity = '1s'", "issuance.validity"),
            ("[kms]\npassphrase = 'short'", "kms.passphrase"),
            ("[kms.pkcs11]\npin = '1234'", "kms.pkcs11.module"),
            ("[log]\nformat = 'xml'", "log.format"),
            ("workers = '0'", "workers"),
            ("workers = 'many'", "workers"),
            ("workers = '1025'", "workers"),
            ("database_pool_size = '0'", "database_pool_size"),
            ("database_pool_size = 'few'", "database_pool_size"),
            ("database_pool_size = '1001'", "database_pool_size"),
            ("listne = '1'", "listne"),
            ("[ocsp]\nlisten = '8081'", "ocsp.listen"),
            ("[ocsp]\npublic_url = 'ocsp.example.net'", "ocsp.public_url"),
            ("[ocsp]\npublic_url = 'ftp://ocsp.example.net'", "ocsp.public_url"),
            ("[ocsp]\npublic_url = 'http://ocsp.example.net/?x=1'", "ocsp.public_url"),
        ] {
            let err = from_toml(text).expect_err(text).to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn unset_flags_do_not_hide_the_file() {
        // Flags that were not given must not override what lower layers set.
        let raw: RawConfig = Figment::new()
            .merge(Toml::string("listen = '127.0.0.1:9999'\n[issuance]\nvalidity = '2h'"))
            .merge(Serialized::defaults(RawConfig::default()))
            .extract()
            .expect("extract");
        let c = validate(raw).expect("valid");
        assert_eq!(c.listen.to_string(), "127.0.0.1:9999");
        assert_eq!(c.validity, Duration::from_secs(7200));
    }

    #[test]
    fn only_our_variables_are_configuration() {
        for ours in [
            "listen",
            "data_dir",
            "kms__passphrase",
            "issuance__validity",
            "kms__pkcs11__pin",
            "ocsp__validity",
            "crl__shards",
            "auth__token_lifetime",
            "workers",
        ] {
            assert!(is_config_var(ours), "{ours}");
        }
        for theirs in ["test_database_url", "test_pkcs11_pin", "listener", "kmsx__a", "config"] {
            assert!(!is_config_var(theirs), "{theirs}");
        }
    }

    #[test]
    fn environment_values_stay_strings() {
        let env = EnvStrings(vec![
            ("kms__pkcs11__pin".into(), "0123".into()),
            ("kms__pkcs11__module".into(), "/bin/sh".into()),
            ("issuance__validity".into(), "2h".into()),
        ]);
        let raw: RawConfig = Figment::new().merge(env).extract().expect("extract");
        assert_eq!(raw.kms.pkcs11.as_ref().and_then(|p| p.pin.as_ref()).map(|p| p.expose()), Some("0123"));
        assert_eq!(raw.issuance.validity.as_deref(), Some("2h"));
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret("hunter2hunter2".into());
        assert!(!format!("{s:?}").contains("hunter2"));
        let c = from_toml("[kms]\npassphrase = 'correct horse battery'").expect("valid");
        assert!(!format!("{c:?}").contains("horse"));
    }
}
