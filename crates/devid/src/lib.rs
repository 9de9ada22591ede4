//! The `devid` command: configuration, CLI, wiring and tracing. The logic lives in the
//! library crates; this crate only puts them together.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod config;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};
use devid_authority::{Actor, Authority, AuthorityConfig, CaInitParams};
use devid_ca::profile::CaSubject;
use devid_core::{Clock, DeviceId, Entropy, KeyRef, OsEntropy, RevocationReason, Serial, SystemClock};
use devid_kms::{Kms, soft::Kek, soft::SoftKeyStore};
use devid_store::{CaKind, Store};

use crate::config::{Config, KekSource, RawConfig};

/// devid: zero-touch device provisioning with its own PKI certificate authority.
#[derive(Debug, Parser)]
#[command(name = "devid", version, about, propagate_version = true)]
pub struct Cli {
    /// A TOML configuration file. Every key can also be set with a DEVID_* variable
    /// (nested keys joined by "__", e.g. DEVID_ISSUANCE__VALIDITY=12h).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory: SQLite database and software keys [default: ./devid-data].
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Database: sqlite:PATH or postgres://USER@HOST/DB [default: sqlite:<data-dir>/devid.db].
    #[arg(long, global = true, value_name = "URL")]
    database_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service. With no configuration: ./devid-data, SQLite, software keys, a
    /// development CA, HTTP on 127.0.0.1:8080.
    Serve(ServeArgs),
    /// CA operations.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Device operations.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Revoke a certificate by serial, or every certificate of a device.
    Revoke(RevokeArgs),
    /// Quarantine a device: revoke everything it holds and refuse its enrollment and
    /// renewal until it is released.
    Quarantine {
        /// The device id.
        device_id: String,
        /// The RFC 5280 reason recorded for the revoked certificates.
        #[arg(long, default_value = "privilegeWithdrawn", value_parser = parse_reason)]
        reason: RevocationReason,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Release a quarantined device (it must enroll again).
    Release {
        /// The device id.
        device_id: String,
    },
    /// CRL operations.
    #[command(subcommand)]
    Crl(CrlCommand),
    /// API credentials (for factory lines, operators, auditors, admins).
    #[command(subcommand)]
    Credential(CredentialCommand),
    /// The tamper-evident audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Enrollment groups (policy for a factory line's devices).
    #[command(subcommand)]
    Group(GroupCommand),
    /// Print the OpenAPI 3.1 document of the HTTP API.
    Openapi,
    /// Fill the store with a large population, for scale tests and benchmarks: devices and
    /// real certificates signed by the active issuing CA, a share revoked and a share
    /// expired. PostgreSQL only (rows are loaded with COPY, in one transaction); then the
    /// tables are vacuumed and analyzed and the CRL is rebuilt. Prints what it wrote.
    Seed(SeedArgs),
}

#[derive(Debug, Args)]
struct SeedArgs {
    /// Certificates to issue and store (e.g. 10000000).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    certificates: u64,
    /// Devices the certificates belong to (N/M each, in order); with more devices than
    /// certificates, the devices left without one stay registered [default: N/2, at least 1].
    #[arg(long, value_name = "M", value_parser = clap::value_parser!(u64).range(1..=9_999_999_999))]
    devices: Option<u64>,
    /// Share of the certificates that is revoked (0 to 1), each with its revocations row and
    /// change event.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.05, value_parser = parse_fraction, allow_hyphen_values = true)]
    revoked: f64,
    /// Share of the certificates whose notAfter has passed (0 to 1); the others expire
    /// within one issuance.validity from now.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.2, value_parser = parse_fraction, allow_hyphen_values = true)]
    expired: f64,
    /// Enrollment groups (token method) to spread three in four devices over.
    #[arg(long, value_name = "G", default_value_t = 8, value_parser = clap::value_parser!(u32).range(0..=1000))]
    groups: u32,
    /// Threads that build and sign certificates [default: the number of cores].
    #[arg(long, value_name = "J", value_parser = clap::value_parser!(u64).range(1..=1024))]
    jobs: Option<u64>,
    /// Only ANALYZE the seeded tables afterwards, without VACUUM (faster; the first reads
    /// of each page then set its hint bits).
    #[arg(long)]
    no_vacuum: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("'{s}' is not a fraction between 0 and 1 (e.g. 0.05)")),
    }
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the hash chain of the whole log: names the first edited, inserted or deleted
    /// entry and exits 1 if there is one. Prints the head (sequence number and hash): keep
    /// it elsewhere and pass it to a later verify as --expect, so that a rewrite of the
    /// whole chain is caught too.
    Verify {
        /// A head printed by an earlier verify (or the seq:hash of an exported entry), as
        /// SEQ:HASH; that entry must still be in the chain, unchanged.
        #[arg(long, value_name = "SEQ:HASH")]
        expect: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write the log as JSON lines to stdout (for a SIEM), oldest first.
    Export {
        /// Start after this sequence number (the last one you exported).
        #[arg(long, default_value_t = 0)]
        after: i64,
    },
}

#[derive(Debug, Subcommand)]
enum CredentialCommand {
    /// Create a credential and print its client id and secret (the secret is shown once).
    Create {
        /// admin, factory, operator or auditor.
        #[arg(long)]
        role: String,
        /// A label, e.g. the factory line.
        #[arg(long, default_value = "cli")]
        name: String,
        /// Also issue a client certificate for the credential into this directory
        /// (key.pem mode 0600, cert.pem, chain.pem): the client may then get tokens with
        /// mutual TLS on the renewal listener instead of its secret (RFC 8705 §2.1).
        #[arg(long, value_name = "DIR")]
        client_cert_out: Option<PathBuf>,
        /// For a factory credential: an enrollment group it is limited to (repeat for more).
        /// It then registers devices into those groups only and sees only their devices.
        #[arg(long = "group", value_name = "NAME")]
        groups: Vec<String>,
        /// Print {"client_id": …, "client_secret": …, "role": …}.
        #[arg(long)]
        json: bool,
    },
    /// List credentials (never their secrets).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a credential: its tokens stop working at once.
    Revoke {
        /// The client id.
        client_id: String,
    },
}

#[derive(Debug, Subcommand)]
enum CrlCommand {
    /// Build and store the next CRL of every issuing CA now (running servers pick it up
    /// within a second), and print what was built.
    Build {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["serial", "device"])))]
struct RevokeArgs {
    /// The certificate's serial number, hex (colons allowed).
    serial: Option<String>,
    /// Revoke every issued certificate of this device instead.
    #[arg(long, value_name = "DEVICE_ID")]
    device: Option<String>,
    /// An RFC 5280 reason: unspecified, keyCompromise, cACompromise, affiliationChanged,
    /// superseded, cessationOfOperation, privilegeWithdrawn, aACompromise.
    #[arg(long, default_value = "unspecified", value_parser = parse_reason)]
    reason: RevocationReason,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn parse_reason(s: &str) -> Result<RevocationReason, String> {
    s.parse()
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// HTTP listen address [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Public base URL put into certificates (OCSP, CA issuers, CRL) [default: http://<listen address>].
    #[arg(long, value_name = "URL")]
    public_url: Option<String>,
    /// Renewal listener (HTTPS, mutual TLS) address, or `off` [default: 127.0.0.1:8443].
    #[arg(long, value_name = "ADDR")]
    tls_listen: Option<String>,
    /// Responder listener for brokers (OCSP, CRLs, CA certificates), or `off` [default: off].
    #[arg(long, value_name = "ADDR")]
    ocsp_listen: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum KmsKind {
    /// Encrypted software keys in the key directory.
    Soft,
    /// A PKCS#11 token ([kms.pkcs11] module and PIN from the configuration).
    Pkcs11,
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// The CA ceremony: create the root and the issuing CA, with keys in a KMS.
    Init(Box<CaInitArgs>),
    /// Show the CAs in the store.
    Show {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
struct CaInitArgs {
    /// Where the keys are created.
    #[arg(long, value_enum, default_value = "soft")]
    kms: KmsKind,
    /// The PKCS#11 token label (with --kms pkcs11).
    #[arg(long, value_name = "LABEL", required_if_eq("kms", "pkcs11"))]
    token: Option<String>,
    /// The root key reference [default: generated in the chosen KMS].
    #[arg(long, value_name = "KEYREF")]
    root_key: Option<String>,
    /// The issuing key reference [default: generated in the chosen KMS].
    #[arg(long, value_name = "KEYREF")]
    issuing_key: Option<String>,
    /// Keep the root key offline: it is not recorded in the store and the service never uses it.
    #[arg(long)]
    offline_root: bool,
    /// With --offline-root and soft keys: create the root key in this directory (e.g. removable media).
    #[arg(long, value_name = "DIR", requires = "offline_root")]
    root_keystore: Option<PathBuf>,
    /// Organization name in both CA subjects.
    #[arg(long, default_value = "devid")]
    organization: String,
    /// Root CA common name.
    #[arg(long, default_value = "devid Root CA")]
    root_cn: String,
    /// Issuing CA common name.
    #[arg(long, default_value = "devid Issuing CA")]
    issuing_cn: String,
    /// Root lifetime.
    #[arg(long, default_value = "20y", value_parser = parse_duration)]
    root_validity: std::time::Duration,
    /// Issuing CA lifetime.
    #[arg(long, default_value = "5y", value_parser = parse_duration)]
    issuing_validity: std::time::Duration,
    /// Replace an existing CA (the old CAs stay in the store, inactive).
    #[arg(long)]
    force: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum DeviceCommand {
    /// Register a device and print its one-time enrollment token.
    Add(DeviceAddArgs),
    /// Pre-register a batch of devices from a file (JSON lines or CSV with a header row
    /// id,method,group,labels). Idempotent: importing the same file again creates nothing
    /// and resumes an import that stopped midway. Created devices' one-time tokens are
    /// written as JSON lines {"id", "token"} (shown once), to stdout or --tokens FILE.
    Import(ImportArgs),
}

#[derive(Debug, Args)]
struct DeviceAddArgs {
    /// The device id (1-128 of A-Z a-z 0-9 . _ : -).
    #[arg(long)]
    id: String,
    /// Its enrollment group (devices of groups with `--registration required` must be
    /// registered in the group before they enroll).
    #[arg(long, value_name = "NAME")]
    group: Option<String>,
    /// Its own attestation method, which its group must allow: token, x509, tpm, symmetric
    /// [default: a token, and whatever its group allows].
    #[arg(long, value_name = "METHOD", value_parser = parse_method)]
    method: Option<devid_authority::groups::Method>,
    /// Its own derived key for the symmetric method: a file holding 32-64 bytes (raw, hex
    /// or base64). Stored sealed.
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,
    /// Do not make a one-time enrollment token (for devices that attest another way).
    #[arg(long)]
    no_token: bool,
    /// Print {"id": …, "token": …}.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum GroupCommand {
    /// Define an enrollment group: which attestation methods it allows, their trust
    /// anchors, whether devices must be registered first, the certificate lifetime.
    Add(GroupAddArgs),
    /// List the groups.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a group.
    Show {
        /// The group name.
        name: String,
    },
    /// Delete a group no device belongs to.
    Remove {
        /// The group name.
        name: String,
    },
}

#[derive(Debug, Args)]
struct GroupAddArgs {
    /// The group name (1-64 of A-Z a-z 0-9 . _ -).
    name: String,
    /// Allowed methods (repeat, or comma-separate): x509, tpm, symmetric, token.
    #[arg(long = "method", value_name = "METHOD", required = true, value_delimiter = ',', value_parser = parse_method)]
    methods: Vec<devid_authority::groups::Method>,
    /// A trust anchor: a PEM (or DER) file of CA certificates (the manufacturer's IDevID CA
    /// for x509, the TPM vendor's EK CA for tpm). Repeat for more.
    #[arg(long = "trust-anchor", value_name = "FILE")]
    trust_anchors: Vec<PathBuf>,
    /// A manufacturer CRL (PEM or DER) checked for x509 chains. Repeat for more.
    #[arg(long = "crl", value_name = "FILE")]
    crls: Vec<PathBuf>,
    /// required: devices must be registered in the group first; optional: any device the
    /// group's evidence proves may enroll (it is registered then).
    #[arg(long, default_value = "required", value_parser = ["required", "optional"])]
    registration: String,
    /// Maximum certificate lifetime, e.g. 12h (capped by issuance.validity).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    validity: Option<std::time::Duration>,
    /// For x509: where the device id is: subject-serial, subject-cn, san-uri:<prefix>,
    /// san-dns [default: subject-serial].
    #[arg(long, value_name = "SOURCE")]
    id_source: Option<String>,
    /// For symmetric: the master key, a file holding 32-64 bytes (raw, hex or base64)
    /// [default: generated, printed once].
    #[arg(long, value_name = "FILE")]
    master_key_file: Option<PathBuf>,
    /// Enrollments a minute for the whole group.
    #[arg(long, value_name = "N")]
    rate: Option<i64>,
    /// Replace the group if it exists.
    #[arg(long)]
    replace: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn parse_method(s: &str) -> Result<devid_authority::groups::Method, String> {
    s.parse()
}

#[derive(Debug, Args)]
struct ImportArgs {
    /// The file: JSON lines (one {"id", "method"?, "group"?, "labels"?} a line) or CSV.
    file: PathBuf,
    /// The batch id (1-64 of A-Z a-z 0-9 . _ -) [default: the file name without extension].
    #[arg(long, value_name = "ID")]
    batch_id: Option<String>,
    /// jsonl or csv [default: from the extension: .csv is CSV, anything else JSON lines].
    #[arg(long, value_parser = parse_batch_format)]
    format: Option<devid_authority::bulk::BatchFormat>,
    /// Write the rejected rows here, as CSV line,id,reason [default: FILE.rejected.csv,
    /// written only when rows are rejected].
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Write the tokens to this file (mode 0600) instead of stdout; the summary then goes
    /// to stdout.
    #[arg(long, value_name = "FILE")]
    tokens: Option<PathBuf>,
    /// Print the summary as JSON {"batch_id", "created", "present", "rejected", "report"}.
    #[arg(long)]
    json: bool,
}

fn parse_batch_format(s: &str) -> Result<devid_authority::bulk::BatchFormat, String> {
    s.parse()
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

/// A command failed: the message is for the operator.
#[derive(Debug)]
pub struct CliError(String);

impl<E: std::fmt::Display> From<E> for CliError {
    fn from(e: E) -> Self {
        CliError(e.to_string())
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The configuration first: it sizes the runtime (`workers`).
    let cfg = match load_config(&cli) {
        Ok(cfg) => cfg,
        Err(CliError(msg)) => {
            eprintln!("error: {msg}");
            return ExitCode::FAILURE;
        }
    };
    let rt =
        match tokio::runtime::Builder::new_multi_thread().worker_threads(cfg.workers).enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("error: cannot start the runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
    match rt.block_on(run(cli, cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// The configuration: the file, then `DEVID_*` variables, then the command's flags.
fn load_config(cli: &Cli) -> Result<Config, CliError> {
    let mut overrides = RawConfig {
        data_dir: cli.data_dir.clone(),
        database_url: cli.database_url.clone(),
        ..Default::default()
    };
    if let Command::Serve(a) = &cli.command {
        overrides.listen = a.listen.clone();
        overrides.public_url = a.public_url.clone();
        overrides.tls.listen = a.tls_listen.clone();
        overrides.ocsp.listen = a.ocsp_listen.clone();
    }
    Ok(config::load(cli.config.as_deref(), &overrides)?)
}

async fn run(cli: Cli, cfg: Config) -> Result<(), CliError> {
    init_tracing(&cfg);
    match cli.command {
        Command::Serve(_) => serve(cfg).await,
        Command::Ca(CaCommand::Init(args)) => ca_init(&cfg, *args).await,
        Command::Ca(CaCommand::Show { json }) => ca_show(&cfg, json).await,
        Command::Device(DeviceCommand::Add(args)) => device_add(&cfg, args).await,
        Command::Group(g) => group(&cfg, g).await,
        Command::Device(DeviceCommand::Import(args)) => device_import(&cfg, args).await,
        Command::Revoke(args) => revoke(&cfg, args).await,
        Command::Quarantine { device_id, reason, json } => quarantine(&cfg, &device_id, reason, json).await,
        Command::Release { device_id } => release(&cfg, &device_id).await,
        Command::Crl(CrlCommand::Build { json }) => crl_build(&cfg, json).await,
        Command::Credential(c) => credential(&cfg, c).await,
        Command::Audit(a) => audit(&cfg, a).await,
        Command::Seed(args) => seed(&cfg, args).await,
        Command::Openapi => {
            println!("{}", openapi_json()?);
            Ok(())
        }
    }
}

/// The OpenAPI document as pretty JSON (what is committed under `openapi/`).
pub fn openapi_json() -> Result<String, CliError> {
    Ok(devid_api::openapi().to_pretty_json()?)
}

fn init_tracing(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log_level));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    // try_init: a second initialisation (tests) is not an error worth stopping for.
    let _ = if cfg.log_json { builder.json().try_init() } else { builder.try_init() };
}

fn create_private_dir(dir: &Path) -> Result<(), CliError> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| CliError(format!("cannot create {}: {e}", dir.display())))?;
    }
    Ok(())
}

fn kek(cfg: &Config) -> Result<Kek, CliError> {
    Ok(match &cfg.kek {
        KekSource::Passphrase(p) => Kek::Passphrase(zeroize::Zeroizing::new(p.expose().to_string())),
        KekSource::File(f) => Kek::from_key_file(f)?,
        KekSource::Generated(f) => {
            if !f.exists() {
                create_private_dir(&cfg.data_dir)?;
                Kek::generate_key_file(f)?;
                tracing::warn!(
                    path = %f.display(),
                    "generated a key-encryption key next to the data; for production set kms.passphrase or kms.kek_file"
                );
            }
            Kek::from_key_file(f)?
        }
    })
}

fn build_kms(cfg: &Config) -> Result<Kms, CliError> {
    let mut kms = Kms::new().with_soft(SoftKeyStore::open(&cfg.soft_dir, kek(cfg)?)?);
    if let Some(p) = &cfg.pkcs11 {
        let m = devid_kms::pkcs11::Pkcs11KeyManager::new(
            &p.module,
            zeroize::Zeroizing::new(p.pin.expose().to_string()),
        )?;
        kms = kms.with_pkcs11(m);
    }
    Ok(kms)
}

async fn open_store(cfg: &Config) -> Result<Arc<dyn Store>, CliError> {
    if cfg.database_url.starts_with("sqlite:") {
        create_private_dir(&cfg.data_dir)?;
    }
    devid_store::connect_with(&cfg.database_url, devid_store::PoolSize(cfg.database_pool_size))
        .await
        .map_err(|e| CliError(format!("database {}: {e}", redact_url(&cfg.database_url))))
}

/// A database URL without its password, for messages.
fn redact_url(u: &str) -> String {
    match url::Url::parse(u) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => u.to_string(),
    }
}

fn random_suffix(rng: &dyn Entropy) -> String {
    let mut b = [0u8; 4];
    rng.fill(&mut b);
    hex::encode(b)
}

fn subject(org: &str, cn: &str) -> CaSubject {
    CaSubject { common_name: cn.to_string(), organization: org.to_string() }
}

async fn serve(cfg: Config) -> Result<(), CliError> {
    // Metrics are recorded by this process only (GET /metrics); other commands leave them off.
    devid_authority::metrics::install();
    tracing::info!(workers = cfg.workers, "runtime threads");
    tracing::info!(responses = cfg.ocsp_cache_capacity, "OCSP cache capacity");
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let rng: Arc<dyn Entropy> = Arc::new(OsEntropy);
    let store = open_store(&cfg).await?;
    let kms = Arc::new(build_kms(&cfg)?);
    if store.active_ca(CaKind::Issuing).await?.is_none() {
        // First start on a bare machine: a development CA with software keys.
        let sfx = random_suffix(rng.as_ref());
        let params = CaInitParams {
            root_key: KeyRef::soft(&format!("devid-root-{sfx}"))?,
            issuing_key: KeyRef::soft(&format!("devid-issuing-{sfx}"))?,
            root_subject: subject("devid", "devid Development Root CA"),
            issuing_subject: subject("devid", "devid Development Issuing CA"),
            root_validity_secs: 10 * 365 * 86400,
            issuing_validity_secs: 5 * 365 * 86400,
            offline_root: false,
            force: false,
        };
        devid_authority::init_ca(
            store.as_ref(),
            kms.clone(),
            kms.clone(),
            clock.as_ref(),
            rng.as_ref(),
            &params,
            &Actor::System,
        )
        .await?;
        println!("created a development CA (software keys in {})", cfg.soft_dir.display());
    }
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| CliError(format!("cannot listen on {}: {e}", cfg.listen)))?;
    let addr = listener.local_addr()?;
    let public_url = match &cfg.public_url {
        Some(u) => u.clone(),
        None => url::Url::parse(&format!("http://{addr}"))?,
    };
    let authority =
        Authority::load(store.clone(), kms, clock, rng, authority_config(&cfg, public_url.clone())).await?;
    let authority = Arc::new(authority);
    // Heartbeats: the rate limits are shared among the replicas seen in the last 15 s.
    {
        let authority = authority.clone();
        let node = format!("{}-{}", std::process::id(), random_suffix(&OsEntropy));
        tokio::spawn(async move {
            loop {
                let now = SystemClock.now();
                match authority.store().node_heartbeat(&node, now, now.plus(-15)).await {
                    Ok(n) => authority.limiter().set_nodes(n),
                    Err(e) => tracing::warn!(error = %e, "node heartbeat failed"),
                }
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            }
        });
    }
    let tls = match cfg.tls_listen {
        None => None,
        Some(addr) => Some(start_tls(&cfg, &authority, addr).await?),
    };
    let responder = match cfg.ocsp_listen {
        None => None,
        Some(addr) => Some(bind_responder(addr, cfg.workers).await?),
    };
    let publish = publish_config(&cfg, public_url.clone());
    let publisher = devid_authority::publish::Publisher::start(
        store.clone(),
        authority.kms().clone(),
        Arc::new(SystemClock),
        Arc::new(OsEntropy),
        publish,
    )
    .await?;
    publisher.run();
    authority.publish_to(publisher.clone());
    let issuer = authority.issuer().await;
    let base = public_url.as_str().trim_end_matches('/');
    println!("devid {}", env!("CARGO_PKG_VERSION"));
    println!("store: {} ({})", store.backend(), redact_url(&cfg.database_url));
    // Advice only: a failure to read the settings does not stop the start.
    match store.advisories().await {
        Ok(advice) => advice.iter().for_each(|a| tracing::warn!("{a}")),
        Err(e) => tracing::warn!(error = %e, "could not read the database's settings"),
    }
    println!("root CA SHA-256 fingerprint: {}", devid_ca::fingerprint_sha256(&issuer.root_der));
    println!("issuing CA: {}", issuer.id);
    println!("enroll: POST {base}/v1/enroll   chain: GET {base}/v1/ca/chain   API: GET {base}/openapi.json");
    let ocsp_base = cfg.ocsp_public_url.as_ref().map_or(base, |u| u.as_str().trim_end_matches('/'));
    if cfg.crl_shards > 1 {
        println!("OCSP: {ocsp_base}/ocsp   CRL: {base}/crl/{}-<0..{}>.crl", issuer.id, cfg.crl_shards - 1);
    } else {
        println!("OCSP: {ocsp_base}/ocsp   CRL: {base}/crl/{}.crl", issuer.id);
    }
    if let Some((l, _)) = &tls {
        println!("renewal listener on https://{}", l.local_addr()?);
    }
    if let Some(listeners) = &responder
        && let Some(l) = listeners.first()
    {
        println!("responder listener on http://{} ({} event loops)", l.local_addr()?, listeners.len());
    }
    println!("listening on http://{addr}");
    let tokens = Arc::new(devid_authority::auth::TokenService::new(
        store.clone(),
        authority.kms().clone(),
        Arc::new(SystemClock),
        Arc::new(OsEntropy),
        {
            let mut t = devid_authority::auth::TokenConfig::new(base.to_string());
            t.lifetime_secs = cfg.token_lifetime.as_secs() as i64;
            t
        },
    ));
    let state = devid_api::AppState::new(devid_api::Services { authority, publisher, tokens });
    let app = devid_api::router(state.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let tls_task = tls.map(|(l, config)| {
        tokio::spawn(devid_api::tls::serve(l, config, app.clone(), stopped(stop_rx.clone())))
    });
    // The responder's event loops keep their runtimes until the rest has stopped too: a
    // socket opened from one of them is registered with it. (Its store work runs on this
    // runtime, so none should be a database connection; this keeps it so if one ever is.)
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let responder_threads = match responder {
        None => Vec::new(),
        Some(listeners) => {
            let app = devid_api::responder_router(state.clone(), tokio::runtime::Handle::current());
            serve_responder(listeners, app, &stop_rx, &done_rx)?
        }
    };
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
        .with_graceful_shutdown(stopped(stop_rx))
        .await?;
    if let Some(t) = tls_task {
        let _ = t.await;
    }
    let _ = done_tx.send(true);
    if !responder_threads.is_empty() {
        let _ = tokio::task::spawn_blocking(move || {
            for t in responder_threads {
                let _ = t.join();
            }
        })
        .await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// The responder listener's sockets (`ocsp.listen`): one per event loop, all bound to the
/// same address with SO_REUSEPORT, so that the kernel spreads the connections over them
/// and each loop accepts its own. (Only a process of the same user can bind that address
/// as well.) Async because the sockets are made in the runtime's context, then handed over
/// to the event loops as standard sockets.
async fn bind_responder(
    addr: std::net::SocketAddr,
    loops: usize,
) -> Result<Vec<std::net::TcpListener>, CliError> {
    let err = |e: std::io::Error| CliError(format!("cannot listen on {addr} (ocsp.listen): {e}"));
    let mut listeners: Vec<std::net::TcpListener> = Vec::with_capacity(loops);
    for _ in 0..loops.max(1) {
        // The first binds the address as configured; the others its actual port (port 0).
        let at = match listeners.first() {
            Some(l) => l.local_addr().map_err(err)?,
            None => addr,
        };
        let socket =
            if at.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }
                .map_err(err)?;
        socket.set_reuseaddr(true).map_err(err)?;
        socket.set_reuseport(true).map_err(err)?;
        socket.bind(at).map_err(err)?;
        listeners.push(socket.listen(1024).map_err(err)?.into_std().map_err(err)?);
    }
    Ok(listeners)
}

/// Serve the responder listener: a thread per socket, each with a single-threaded runtime
/// that accepts, reads, answers and writes on the one thread. For cached OCSP answers this
/// serves more than the shared multi-threaded runtime can, whose workers park and wake
/// one another and leave a part of the cores idle in between: on a 2-core VM with the
/// load generator beside it, 84,000–96,000 answers/s against 67,000–78,000, p99 2.2–4.0 ms
/// against 3.6–4.5 ms (bench/RESULTS.md, twentieth machine). Enrollment is not served
/// here: its work is uneven (signatures, database batches) and needs the shared runtime's
/// balancing. A loop stops accepting on `stop`, and ends once `done` is set.
fn serve_responder(
    listeners: Vec<std::net::TcpListener>,
    app: axum::Router,
    stop: &tokio::sync::watch::Receiver<bool>,
    done: &tokio::sync::watch::Receiver<bool>,
) -> Result<Vec<std::thread::JoinHandle<()>>, CliError> {
    let mut threads = Vec::with_capacity(listeners.len());
    for (i, listener) in listeners.into_iter().enumerate() {
        let app = app.clone();
        let mut stop = stop.clone();
        let mut done = done.clone();
        let serve = move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "responder listener: cannot start an event loop");
                    return;
                }
            };
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "responder listener: cannot register the socket");
                        return;
                    }
                };
                let served =
                    axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
                        .with_graceful_shutdown(async move {
                            let _ = stop.wait_for(|s| *s).await;
                        })
                        .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "responder listener stopped");
                }
                let _ = done.wait_for(|d| *d).await;
            });
        };
        let thread = std::thread::Builder::new()
            .name(format!("devid-responder-{i}"))
            .spawn(serve)
            .map_err(|e| CliError(format!("cannot start the responder listener: {e}")))?;
        threads.push(thread);
    }
    Ok(threads)
}

/// The renewal listener: bind, get a server certificate from our own CA for a key held in
/// memory only, and re-issue it (with a new key) at half its lifetime.
async fn start_tls(
    cfg: &Config,
    authority: &Arc<Authority>,
    addr: std::net::SocketAddr,
) -> Result<(tokio::net::TcpListener, rustls::ServerConfig), CliError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| CliError(format!("cannot listen on {addr} (tls.listen): {e}")))?;
    let validity = cfg.tls_validity.as_secs() as i64;
    let names = cfg.tls_names.clone();
    let (chain, pkcs8) = server_certificate(authority, &names, validity).await?;
    let resolver = Arc::new(devid_api::tls::ServerCert::new(chain, &pkcs8)?);
    let issuing: Vec<Vec<u8>> = authority
        .store()
        .list_cas()
        .await?
        .into_iter()
        .filter(|c| c.kind == CaKind::Issuing)
        .map(|c| c.cert_der)
        .collect();
    let config = devid_api::tls::server_config(resolver.clone(), &issuing, cfg.renew_grace.as_secs())?;
    let authority = authority.clone();
    tokio::spawn(async move {
        let every = std::time::Duration::from_secs((validity / 2).max(60) as u64);
        loop {
            tokio::time::sleep(every).await;
            match server_certificate(&authority, &names, validity).await {
                Ok((chain, pkcs8)) => {
                    if let Err(e) = resolver.replace(chain, &pkcs8) {
                        tracing::error!(error = %e, "renewal listener: new server certificate not usable");
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e.0, "renewal listener: cannot renew the server certificate")
                }
            }
        }
    });
    Ok((listener, config))
}

/// A server certificate chain (leaf, issuing CA) and its in-memory key (PKCS#8).
async fn server_certificate(
    authority: &Authority,
    names: &[String],
    validity: i64,
) -> Result<(Vec<Vec<u8>>, zeroize::Zeroizing<Vec<u8>>), CliError> {
    let (pkcs8, spki) = devid_api::tls::generate_server_key()?;
    let issued = authority.issue_server_certificate(names, &spki, validity).await?;
    let mut chain = vec![issued.cert_der];
    // The issuing CA (the first certificate of the chain); the root stays with the client.
    if let Some(p) = pem::parse_many(issued.chain_pem.as_bytes())?.into_iter().next() {
        chain.push(p.into_contents());
    }
    Ok((chain, pkcs8))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down: finishing in-flight requests");
}

async fn ca_init(cfg: &Config, a: CaInitArgs) -> Result<(), CliError> {
    let clock = SystemClock;
    let rng = OsEntropy;
    let store = open_store(cfg).await?;
    let kms: Arc<Kms> = Arc::new(build_kms(cfg)?);
    let sfx = random_suffix(&rng);
    let default_ref = |role: &str| -> Result<KeyRef, CliError> {
        let object = format!("devid-{role}-{sfx}");
        Ok(match a.kms {
            KmsKind::Soft => KeyRef::soft(&object)?,
            KmsKind::Pkcs11 => {
                let token = a
                    .token
                    .clone()
                    .ok_or_else(|| CliError("--token is required with --kms pkcs11".into()))?;
                format!("pkcs11:token={token};object={object}").parse()?
            }
        })
    };
    let root_key = match &a.root_key {
        Some(r) => r.parse::<KeyRef>()?,
        None => default_ref("root")?,
    };
    let issuing_key = match &a.issuing_key {
        Some(r) => r.parse::<KeyRef>()?,
        None => default_ref("issuing")?,
    };
    if a.kms == KmsKind::Pkcs11 && cfg.pkcs11.is_none() {
        return Err(CliError(
            "--kms pkcs11 needs [kms.pkcs11] module and pin in the configuration (or DEVID_KMS__PKCS11__MODULE and DEVID_KMS__PKCS11__PIN)".into(),
        ));
    }
    let root_kms: Arc<dyn devid_kms::KeyManager> = match &a.root_keystore {
        Some(dir) => Arc::new(Kms::new().with_soft(SoftKeyStore::open(dir, kek(cfg)?)?)),
        None => kms.clone(),
    };
    let params = CaInitParams {
        root_key,
        issuing_key,
        root_subject: subject(&a.organization, &a.root_cn),
        issuing_subject: subject(&a.organization, &a.issuing_cn),
        root_validity_secs: a.root_validity.as_secs() as i64,
        issuing_validity_secs: a.issuing_validity.as_secs() as i64,
        offline_root: a.offline_root,
        force: a.force,
    };
    let report =
        devid_authority::init_ca(store.as_ref(), root_kms, kms, &clock, &rng, &params, &Actor::cli()).await?;
    let fp = devid_ca::fingerprint_sha256(&report.root_der);
    if a.json {
        let v = serde_json::json!({
            "root_id": report.root_id.to_string(),
            "issuing_id": report.issuing_id.to_string(),
            "root_key": params.root_key.to_string(),
            "issuing_key": params.issuing_key.to_string(),
            "offline_root": params.offline_root,
            "root_fingerprint_sha256": fp,
            "root_pem": devid_ca::to_pem("CERTIFICATE", &report.root_der),
            "issuing_pem": devid_ca::to_pem("CERTIFICATE", &report.issuing_der),
        });
        println!("{v}");
    } else {
        println!(
            "root CA {} (key {}{})",
            report.root_id,
            params.root_key,
            if a.offline_root { ", offline" } else { "" }
        );
        println!("issuing CA {} (key {})", report.issuing_id, params.issuing_key);
        println!("root CA SHA-256 fingerprint: {fp}");
    }
    Ok(())
}

async fn ca_show(cfg: &Config, json: bool) -> Result<(), CliError> {
    let store = open_store(cfg).await?;
    let cas = store.list_cas().await?;
    if cas.is_empty() {
        return Err(CliError("no CA exists yet: run `devid ca init` (or start `devid serve` once)".into()));
    }
    let rows: Vec<serde_json::Value> = cas
        .iter()
        .map(|c| {
            serde_json::json!({
                "id": c.id.to_string(),
                "kind": match c.kind { CaKind::Root => "root", CaKind::Issuing => "issuing" },
                "active": c.active,
                "key": c.key_ref.clone().unwrap_or_else(|| "offline".to_string()),
                "not_after": c.not_after.to_rfc3339(),
                "fingerprint_sha256": devid_ca::fingerprint_sha256(&c.cert_der),
            })
        })
        .collect();
    if json {
        println!("{}", serde_json::Value::Array(rows));
    } else {
        for r in rows {
            println!(
                "{} {} active={} key={} not_after={} sha256={}",
                r["id"].as_str().unwrap_or(""),
                r["kind"].as_str().unwrap_or(""),
                r["active"],
                r["key"].as_str().unwrap_or(""),
                r["not_after"].as_str().unwrap_or(""),
                r["fingerprint_sha256"].as_str().unwrap_or("")
            );
        }
    }
    Ok(())
}

async fn device_add(cfg: &Config, a: DeviceAddArgs) -> Result<(), CliError> {
    let id = DeviceId::new(&a.id).map_err(|e| CliError(format!("--id: {e}")))?;
    let secret = match &a.secret_file {
        Some(f) => Some(read_key_file(f, "--secret-file")?),
        None => None,
    };
    let store = open_store(cfg).await?;
    let kms = build_kms(cfg)?;
    let opts = devid_authority::DeviceOptions {
        token: !a.no_token,
        group: a.group.clone(),
        method: a.method,
        secret,
        labels: None,
    };
    let (_, token) = devid_authority::register_device(
        store.as_ref(),
        &kms,
        &SystemClock,
        &OsEntropy,
        &id,
        &opts,
        &Actor::cli(),
    )
    .await?;
    match (token, a.json) {
        (Some(t), true) => println!("{}", serde_json::json!({ "id": id.to_string(), "token": t.reveal() })),
        (None, true) => println!("{}", serde_json::json!({ "id": id.to_string(), "token": null })),
        (Some(t), false) => {
            println!("device {id} registered; one-time enrollment token (shown once):");
            println!("{}", t.reveal());
        }
        (None, false) => println!("device {id} registered"),
    }
    Ok(())
}

/// A key file: raw bytes, or 64-128 hex digits, or base64 (surrounding whitespace ignored).
fn read_key_file(path: &Path, flag: &str) -> Result<zeroize::Zeroizing<Vec<u8>>, CliError> {
    use base64::Engine;
    let raw = zeroize::Zeroizing::new(
        std::fs::read(path).map_err(|e| CliError(format!("{flag}: cannot read {}: {e}", path.display())))?,
    );
    let text = std::str::from_utf8(&raw).ok().map(str::trim);
    let decoded = text.and_then(|t| {
        if t.len() >= 64 && t.len() % 2 == 0 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(t).ok()
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(t)
                .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(t.trim_end_matches('=')))
                .ok()
                .filter(|k| k.len() >= 32)
        }
    });
    let key = zeroize::Zeroizing::new(decoded.unwrap_or_else(|| raw.to_vec()));
    if key.len() < 32 || key.len() > 64 {
        return Err(CliError(format!("{flag}: {} does not hold a 32-64 byte key", path.display())));
    }
    Ok(key)
}

/// Certificates or CRLs from a PEM (any number of blocks with `label`) or DER file.
fn read_ders(path: &Path, label: &str, flag: &str) -> Result<Vec<Vec<u8>>, CliError> {
    let bytes =
        std::fs::read(path).map_err(|e| CliError(format!("{flag}: cannot read {}: {e}", path.display())))?;
    if bytes.starts_with(b"-----") || bytes.iter().take(64).all(|b| b.is_ascii()) {
        let blocks = pem::parse_many(&bytes)
            .map_err(|e| CliError(format!("{flag}: {} is not PEM: {e}", path.display())))?;
        let ders: Vec<Vec<u8>> =
            blocks.into_iter().filter(|p| p.tag() == label).map(|p| p.into_contents()).collect();
        if ders.is_empty() {
            return Err(CliError(format!("{flag}: no {label} in {}", path.display())));
        }
        Ok(ders)
    } else {
        Ok(vec![bytes])
    }
}

async fn group(cfg: &Config, g: GroupCommand) -> Result<(), CliError> {
    use devid_authority::groups;
    let store = open_store(cfg).await?;
    let show = |v: &groups::GroupView, master_key: Option<&[u8]>| {
        use base64::Engine;
        serde_json::json!({
            "name": v.record.name, "methods": v.record.methods, "registration": v.record.registration,
            "id_source": v.record.id_source, "validity_secs": v.record.validity_secs,
            "trust_anchors": v.anchors.iter().map(|(s, f)| serde_json::json!({"subject": s, "sha256": f})).collect::<Vec<_>>(),
            "crls": v.record.crls.len(), "has_master_key": v.has_master_key, "rate_per_minute": v.record.rate_per_minute,
            "created_at": v.record.created_at.to_rfc3339(), "updated_at": v.record.updated_at.to_rfc3339(),
            "master_key": master_key.map(|k| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(k)),
        })
    };
    match g {
        GroupCommand::Add(a) => {
            let mut anchors = Vec::new();
            for f in &a.trust_anchors {
                anchors.extend(read_ders(f, "CERTIFICATE", "--trust-anchor")?);
            }
            let mut crls = Vec::new();
            for f in &a.crls {
                crls.extend(read_ders(f, "X509 CRL", "--crl")?);
            }
            let master_key = match &a.master_key_file {
                Some(f) => Some(read_key_file(f, "--master-key-file")?),
                None => None,
            };
            let spec = groups::GroupSpec {
                name: a.name.clone(),
                methods: a.methods.clone(),
                registration_required: a.registration == "required",
                id_source: a.id_source.clone(),
                validity_secs: a.validity.map(|d| d.as_secs() as i64),
                trust_anchors: anchors,
                crls,
                master_key,
                rate_per_minute: a.rate,
            };
            let kms = build_kms(cfg)?;
            let (view, generated) = groups::put_group(
                store.as_ref(),
                &kms,
                &SystemClock,
                &OsEntropy,
                spec,
                a.replace,
                &Actor::cli(),
            )
            .await?;
            if a.json {
                println!("{}", show(&view, generated.as_deref().map(|k| k.as_slice())));
            } else {
                println!("group {} defined: methods {}", view.record.name, view.record.methods.join(","));
                if let Some(k) = generated {
                    println!("master key (base64url, shown once): {}", {
                        use base64::Engine;
                        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(k.as_slice())
                    });
                }
            }
        }
        GroupCommand::List { json } => {
            let all: Vec<serde_json::Value> =
                groups::list_groups(store.as_ref()).await?.iter().map(|v| show(v, None)).collect();
            if json {
                println!("{}", serde_json::Value::Array(all));
            } else {
                for g in all {
                    println!("{g}");
                }
            }
        }
        GroupCommand::Show { name } => {
            println!("{}", show(&groups::get_group(store.as_ref(), &name).await?, None))
        }
        GroupCommand::Remove { name } => {
            groups::delete_group(store.as_ref(), &SystemClock, &name, &Actor::cli()).await?;
            println!("group {name} deleted");
        }
    }
    Ok(())
}

/// A CSV field, quoted when it has to be (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

/// The default batch id: the file name without its extension, other characters as `_`.
fn default_batch_id(file: &Path) -> String {
    let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    stem.chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' })
        .take(64)
        .collect()
}

async fn device_import(cfg: &Config, a: ImportArgs) -> Result<(), CliError> {
    use devid_authority::bulk::{self, BatchFormat, ChunkDone, RowResult};
    use std::io::{IsTerminal, Write};

    let batch_id = a.batch_id.clone().unwrap_or_else(|| default_batch_id(&a.file));
    let batch_id = bulk::BatchId::new(&batch_id).map_err(|e| CliError(format!("--batch-id: {e}")))?;
    let format = a.format.unwrap_or_else(|| {
        match a.file.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("csv") => BatchFormat::Csv,
            _ => BatchFormat::JsonLines,
        }
    });
    let body =
        std::fs::read(&a.file).map_err(|e| CliError(format!("cannot read {}: {e}", a.file.display())))?;
    let rows =
        bulk::parse_batch(&body, format).map_err(|e| CliError(format!("{}: {e}", a.file.display())))?;
    drop(body);
    let store = open_store(cfg).await?;

    // The tokens are written as each chunk commits: a failure later keeps them.
    let mut tokens_out: Box<dyn Write + Send> = match &a.tokens {
        Some(path) => {
            use std::os::unix::fs::OpenOptionsExt;
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| CliError(format!("cannot create {}: {e}", path.display())))?;
            Box::new(std::io::BufWriter::new(f))
        }
        None => Box::new(std::io::stdout()),
    };
    let progress = std::io::stderr().is_terminal();
    let mut write_error: Option<std::io::Error> = None;
    let mut on_chunk = |c: &ChunkDone<'_>| {
        for row in c.rows {
            if let RowResult::Created(Some(t)) = &row.result {
                let line = serde_json::json!({ "id": row.id, "token": t.reveal() });
                if let Err(e) = writeln!(tokens_out, "{line}") {
                    write_error.get_or_insert(e);
                }
            }
        }
        if let Err(e) = tokens_out.flush() {
            write_error.get_or_insert(e);
        }
        if progress {
            let pct = (c.done * 100).checked_div(c.total).unwrap_or(100);
            eprint!("\rimporting {batch_id}: {}/{} rows ({pct}%)", c.done, c.total);
        }
    };
    let result = bulk::import_batch(
        store.as_ref(),
        &SystemClock,
        &OsEntropy,
        &batch_id,
        rows,
        &Actor::cli(),
        &mut on_chunk,
    )
    .await;
    if progress {
        eprintln!();
    }
    let report = result?;
    if let Some(e) = write_error {
        return Err(CliError(format!("cannot write the tokens: {e}")));
    }

    let report_path = match &a.report {
        Some(p) => Some(p.clone()),
        None if report.rejected > 0 => {
            let mut name = a.file.as_os_str().to_owned();
            name.push(".rejected.csv");
            Some(PathBuf::from(name))
        }
        None => None,
    };
    if let Some(path) = &report_path {
        let mut text = String::from("line,id,reason\n");
        for row in &report.rows {
            if let RowResult::Rejected(why) = &row.result {
                text.push_str(&format!("{},{},{}\n", row.line, csv_field(&row.id), csv_field(why)));
            }
        }
        std::fs::write(path, text).map_err(|e| CliError(format!("cannot write {}: {e}", path.display())))?;
    }
    let summary = if a.json {
        serde_json::json!({
            "batch_id": report.batch_id, "created": report.created, "present": report.present,
            "rejected": report.rejected, "report": report_path.as_ref().map(|p| p.display().to_string()),
        })
        .to_string()
    } else {
        let mut s = format!(
            "batch {}: {} created, {} present, {} rejected",
            report.batch_id, report.created, report.present, report.rejected
        );
        if let Some(p) = &report_path {
            s.push_str(&format!("; rejected rows in {}", p.display()));
        }
        s
    };
    // stdout carries the tokens unless they went to a file.
    if a.tokens.is_some() {
        println!("{summary}");
    } else {
        eprintln!("{summary}");
    }
    Ok(())
}

fn device_id_arg(id: &str) -> Result<DeviceId, CliError> {
    DeviceId::new(id).map_err(|e| CliError(format!("device id '{id}': {e}")))
}

fn serials_json(serials: &[Serial]) -> serde_json::Value {
    serde_json::Value::Array(serials.iter().map(|s| serde_json::Value::String(s.to_hex())).collect())
}

async fn revoke(cfg: &Config, a: RevokeArgs) -> Result<(), CliError> {
    let store = open_store(cfg).await?;
    if let Some(device) = &a.device {
        let device = device_id_arg(device)?;
        let serials =
            devid_authority::revoke_device(store.as_ref(), &SystemClock, &device, a.reason, &Actor::cli())
                .await?;
        if a.json {
            println!(
                "{}",
                serde_json::json!({ "device": device.to_string(), "revoked": serials_json(&serials) })
            );
        } else {
            println!("revoked {} certificate(s) of device {device} ({})", serials.len(), a.reason);
        }
        return Ok(());
    }
    let text = a.serial.as_deref().unwrap_or_default();
    let serial = Serial::from_hex(text).map_err(|e| CliError(format!("serial '{text}': {e}")))?;
    let c =
        devid_authority::revoke_certificate(store.as_ref(), &SystemClock, &serial, a.reason, &Actor::cli())
            .await?;
    let (at, reason) = c.revocation.map(|(t, r)| (t.to_rfc3339(), r.name())).unwrap_or_default();
    if a.json {
        println!(
            "{}",
            serde_json::json!({ "serial": c.serial.to_hex(), "device": c.device.to_string(), "revoked_at": at, "reason": reason })
        );
    } else {
        println!("certificate {} of device {} revoked at {at} ({reason})", c.serial, c.device);
    }
    Ok(())
}

async fn quarantine(cfg: &Config, id: &str, reason: RevocationReason, json: bool) -> Result<(), CliError> {
    let device = device_id_arg(id)?;
    let store = open_store(cfg).await?;
    let serials =
        devid_authority::quarantine(store.as_ref(), &SystemClock, &device, reason, &Actor::cli()).await?;
    if json {
        println!(
            "{}",
            serde_json::json!({ "device": device.to_string(), "quarantined": true, "revoked": serials_json(&serials) })
        );
    } else {
        println!("device {device} quarantined; {} certificate(s) revoked", serials.len());
    }
    Ok(())
}

async fn release(cfg: &Config, id: &str) -> Result<(), CliError> {
    let device = device_id_arg(id)?;
    let store = open_store(cfg).await?;
    if devid_authority::release(store.as_ref(), &SystemClock, &device, &Actor::cli()).await? {
        println!("device {device} released; it must enroll again");
    } else {
        println!("device {device} was not quarantined");
    }
    Ok(())
}

fn publish_config(cfg: &Config, public_url: url::Url) -> devid_authority::publish::PublishConfig {
    let mut p = devid_authority::publish::PublishConfig::new(public_url);
    p.ocsp_validity_secs = cfg.ocsp_validity.as_secs() as i64;
    p.responder_validity_secs = cfg.ocsp_responder_validity.as_secs() as i64;
    p.ocsp_cache_capacity = cfg.ocsp_cache_capacity;
    p.crl_validity_secs = cfg.crl_validity.as_secs() as i64;
    p.crl_shards = cfg.crl_shards;
    p
}

async fn seed(cfg: &Config, a: SeedArgs) -> Result<(), CliError> {
    use std::io::IsTerminal;
    let store = devid_store::seed::connect(&cfg.database_url)
        .await
        .map_err(|e| CliError(format!("database {}: {e}", redact_url(&cfg.database_url))))?;
    let public_url = match &cfg.public_url {
        Some(u) => u.clone(),
        None if cfg.crl_shards > 1 => {
            return Err(CliError(
                "key `public_url`: required to seed with sharded CRLs (crl.shards > 1): set it to the URL the server uses".into(),
            ));
        }
        None => url::Url::parse(&format!("http://{}", cfg.listen))?,
    };
    let kms: Arc<dyn devid_kms::KeyManager> = Arc::new(build_kms(cfg)?);
    let jobs = match a.jobs {
        Some(j) => j as usize,
        None => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    };
    let params = devid_authority::seed::SeedParams {
        certificates: a.certificates,
        devices: a.devices.unwrap_or((a.certificates / 2).max(1)),
        revoked: a.revoked,
        expired: a.expired,
        groups: a.groups,
        jobs,
        vacuum: !a.no_vacuum,
    };
    // Progress on stderr: every 2 s on a terminal, every 30 s otherwise (logs).
    let every = if std::io::stderr().is_terminal() { 2.0 } else { 30.0 };
    let started = std::time::Instant::now();
    let mut last = 0.0f64;
    let total = a.certificates;
    let mut progress = move |c: devid_store::seed::SeedCounts| {
        let t = started.elapsed().as_secs_f64();
        if t - last >= every && c.certificates < total {
            last = t;
            eprintln!(
                "seed: {} of {total} certificates ({:.0}/s, {t:.0} s)",
                c.certificates,
                c.certificates as f64 / t.max(1e-9)
            );
        }
    };
    let report = devid_authority::seed::seed(
        &store,
        kms.as_ref(),
        &SystemClock,
        Arc::new(OsEntropy),
        &authority_config(cfg, public_url.clone()),
        &params,
        &Actor::cli(),
        &mut progress,
    )
    .await?;
    // The stored CRL (if any) predates the seeded revocations: build the next one now, so
    // that it lists them and `devid serve` starts with a current CRL.
    let crl_started = std::time::Instant::now();
    let store: Arc<dyn Store> = Arc::new(store);
    let publisher = devid_authority::publish::Publisher::load(
        store,
        kms,
        Arc::new(SystemClock),
        Arc::new(OsEntropy),
        publish_config(cfg, public_url),
    )
    .await?;
    publisher.rebuild_crls(&report.issuer).await?;
    let crl_secs = crl_started.elapsed().as_secs_f64();
    let crl_bytes: usize = (0..publisher.crl_shards())
        .filter_map(|s| publisher.crl(report.issuer.as_str(), s))
        .map(|c| c.der.len())
        .sum();
    let c = report.counts;
    let rate = c.certificates as f64 / report.load_secs.max(1e-9);
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "batch_id": report.batch_id, "issuer": report.issuer.to_string(), "groups": report.groups,
                "certificates": c.certificates, "devices": c.devices, "revoked": c.revoked, "expired": c.expired,
                "load_seconds": (report.load_secs * 10.0).round() / 10.0,
                "certificates_per_second": rate.round(),
                "analyze_seconds": (report.analyze_secs * 10.0).round() / 10.0,
                "vacuum": params.vacuum,
                "crl_seconds": (crl_secs * 10.0).round() / 10.0, "crl_bytes": crl_bytes,
            })
        );
    } else {
        println!(
            "seeded {} certificates ({} revoked, {} expired) of {} devices in batch {}, issued by {}",
            c.certificates, c.revoked, c.expired, c.devices, report.batch_id, report.issuer
        );
        println!(
            "load {:.1} s ({rate:.0} certificates/s); {} {:.1} s; CRL rebuilt in {crl_secs:.1} s ({crl_bytes} bytes)",
            report.load_secs,
            if params.vacuum { "vacuum + analyze" } else { "analyze" },
            report.analyze_secs
        );
    }
    Ok(())
}

async fn crl_build(cfg: &Config, json: bool) -> Result<(), CliError> {
    let store = open_store(cfg).await?;
    let kms: Arc<dyn devid_kms::KeyManager> = Arc::new(build_kms(cfg)?);
    // Sharded CRLs carry their own URL (issuingDistributionPoint), which must be the one in
    // the certificates: only the configured public URL says what that is.
    let public_url = match &cfg.public_url {
        Some(u) => u.clone(),
        None if cfg.crl_shards > 1 => {
            return Err(CliError(
                "key `public_url`: required to build sharded CRLs (crl.shards > 1): set it to the URL the server uses".into(),
            ));
        }
        None => url::Url::parse(&format!("http://{}", cfg.listen))?,
    };
    let publisher = devid_authority::publish::Publisher::load(
        store.clone(),
        kms,
        Arc::new(SystemClock),
        Arc::new(OsEntropy),
        publish_config(cfg, public_url),
    )
    .await?;
    let mut rows = Vec::new();
    for ca in store.list_cas().await? {
        if ca.kind != CaKind::Issuing {
            continue;
        }
        let started = std::time::Instant::now();
        publisher.rebuild_crls(&ca.id).await?;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        for shard in 0..publisher.crl_shards() {
            if let Some(crl) = publisher.crl(ca.id.as_str(), shard) {
                rows.push(serde_json::json!({
                    "issuer": ca.id.to_string(), "shard": shard, "crl_number": crl.crl_number,
                    "bytes": crl.der.len(), "next_update": crl.next_update.to_rfc3339(), "build_ms": ms.round(),
                }));
            }
        }
    }
    if json {
        println!("{}", serde_json::Value::Array(rows));
    } else {
        for r in rows {
            println!("{r}");
        }
    }
    Ok(())
}

async fn audit(cfg: &Config, a: AuditCommand) -> Result<(), CliError> {
    let store = open_store(cfg).await?;
    match a {
        AuditCommand::Verify { expect, json } => {
            let expect = match &expect {
                None => None,
                Some(e) => {
                    let parsed = e.split_once(':').and_then(|(s, h)| {
                        let seq: i64 = s.parse().ok()?;
                        (seq > 0 && h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
                            .then_some((seq, h))
                    });
                    Some(parsed.ok_or_else(|| {
                        CliError("--expect: give SEQ:HASH (a sequence number and 64 hex digits)".into())
                    })?)
                }
            };
            let r = devid_authority::audit::verify(store.as_ref(), expect).await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "ok": r.first_bad.is_none(), "entries": r.entries,
                        "head": {"seq": r.head.0, "hash": r.head.1},
                        "first_bad": r.first_bad.as_ref().map(|(seq, why)| serde_json::json!({"seq": seq, "reason": why})),
                    })
                );
            } else if r.first_bad.is_none() {
                println!("audit log intact: {} entries; head {}:{}", r.entries, r.head.0, r.head.1);
            }
            match r.first_bad {
                None => Ok(()),
                Some((seq, why)) => {
                    Err(CliError(format!("audit log is NOT intact: first bad entry {seq}: {why}")))
                }
            }
        }
        AuditCommand::Export { after } => {
            use std::io::Write;
            if after < 0 {
                return Err(CliError("--after must be 0 or more".into()));
            }
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let mut last = after;
            loop {
                let page = store.audit_entries(last, 1000).await?;
                for r in &page {
                    serde_json::to_writer(&mut out, &devid_authority::audit::to_json(r))?;
                    out.write_all(b"\n")?;
                }
                match page.last() {
                    Some(r) if page.len() == 1000 => last = r.seq,
                    _ => break,
                }
            }
            out.flush()?;
            Ok(())
        }
    }
}

/// The authority's settings from the configuration.
fn authority_config(cfg: &Config, public_url: url::Url) -> AuthorityConfig {
    use devid_authority::ratelimit::{Limits, Rate};
    let rate = |n: u64| if n == 0 { Rate::UNLIMITED } else { Rate::per_minute(n) };
    AuthorityConfig {
        public_url,
        ocsp_public_url: cfg.ocsp_public_url.clone(),
        leaf_validity_secs: cfg.validity.as_secs() as i64,
        backdate_secs: cfg.backdate.as_secs() as i64,
        device_uri_prefix: cfg.device_uri_prefix.clone(),
        crl_shards: cfg.crl_shards,
        challenge_ttl_secs: cfg.challenge_ttl.as_secs() as i64,
        renew_after_fraction: cfg.renew_after,
        renew_grace_secs: cfg.renew_grace.as_secs() as i64,
        group_cache_ms: cfg.group_cache.as_millis() as i64,
        limits: Limits {
            per_source: rate(cfg.limits[0]),
            per_device: rate(cfg.limits[1]),
            per_credential: rate(cfg.limits[2]),
            per_group_default: rate(cfg.limits[3]),
        },
    }
}

/// Issue a client certificate for a credential into `dir`: key.pem (0600), cert.pem,
/// chain.pem. Returns the directory as text.
async fn write_client_certificate(
    cfg: &Config,
    store: Arc<dyn devid_store::Store>,
    client_id: &str,
    dir: &Path,
) -> Result<String, CliError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let public_url = match &cfg.public_url {
        Some(u) => u.clone(),
        None => url::Url::parse(&format!("http://{}", cfg.listen))?,
    };
    let kms: Arc<dyn devid_kms::KeyManager> = Arc::new(build_kms(cfg)?);
    let authority = Authority::load(
        store,
        kms,
        Arc::new(SystemClock),
        Arc::new(OsEntropy),
        authority_config(cfg, public_url),
    )
    .await?;
    let (pkcs8, spki) = devid_api::tls::generate_server_key()?;
    let issued = authority.issue_credential_certificate(client_id, &spki, &Actor::cli()).await?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| CliError(format!("--client-cert-out: cannot create {}: {e}", dir.display())))?;
    let write = |name: &str, data: &[u8], mode: u32| -> Result<(), CliError> {
        use std::io::Write;
        let path = dir.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&path)
            .map_err(|e| CliError(format!("cannot write {}: {e}", path.display())))?;
        f.write_all(data).map_err(|e| CliError(format!("cannot write {}: {e}", path.display())))
    };
    let key_pem = zeroize::Zeroizing::new(devid_ca::to_pem("PRIVATE KEY", &pkcs8));
    write("key.pem", key_pem.as_bytes(), 0o600)?;
    write("cert.pem", devid_authority::certificate_pem(&issued.cert_der).as_bytes(), 0o644)?;
    write("chain.pem", issued.chain_pem.as_bytes(), 0o644)?;
    Ok(dir.display().to_string())
}

async fn credential(cfg: &Config, c: CredentialCommand) -> Result<(), CliError> {
    let store = open_store(cfg).await?;
    match c {
        CredentialCommand::Create { role, name, client_cert_out, groups, json } => {
            let role: devid_authority::auth::Role =
                role.parse().map_err(|e: String| CliError(format!("--role: {e}")))?;
            let c = devid_authority::auth::create_credential(
                store.as_ref(),
                &SystemClock,
                &OsEntropy,
                role,
                &name,
                (!groups.is_empty()).then_some(groups),
                &Actor::cli(),
            )
            .await?;
            let cert_dir = match &client_cert_out {
                Some(dir) => {
                    Some(write_client_certificate(cfg, store.clone(), &c.record.client_id, dir).await?)
                }
                None => None,
            };
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "client_id": c.record.client_id, "client_secret": c.client_secret, "role": c.record.role, "client_cert_dir": cert_dir })
                );
            } else {
                println!("client_id:     {}", c.record.client_id);
                println!("client_secret: {} (shown once)", c.client_secret);
                println!("role:          {}", c.record.role);
            }
        }
        CredentialCommand::List { json } => {
            let rows: Vec<serde_json::Value> = store
                .list_credentials()
                .await?
                .into_iter()
                .map(|c| {
                    serde_json::json!({
                        "client_id": c.client_id, "role": c.role, "name": c.name, "groups": c.groups,
                        "created_at": c.created_at.to_rfc3339(), "revoked_at": c.revoked_at.map(|t| t.to_rfc3339()),
                    })
                })
                .collect();
            if json {
                println!("{}", serde_json::Value::Array(rows));
            } else {
                for r in rows {
                    println!("{r}");
                }
            }
        }
        CredentialCommand::Revoke { client_id } => {
            let c = devid_authority::auth::revoke_credential(
                store.as_ref(),
                &SystemClock,
                &client_id,
                &Actor::cli(),
            )
            .await
            .map_err(|e| match e {
                devid_authority::AuthorityError::NotFound(_) => {
                    CliError(format!("no credential {client_id}"))
                }
                e => CliError(e.to_string()),
            })?;
            println!("credential {} revoked", c.client_id);
        }
    }
    Ok(())
}
