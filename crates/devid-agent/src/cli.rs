//! The `devid-agent` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use devid_core::DeviceId;
use zeroize::Zeroizing;

use crate::enroll::{EnrollPlan, Evidence, Outcome, RenewPlan};
use crate::error::AgentError;
use crate::files::Layout;
use crate::keys::{FactoryKey, pem_certificates, read_key_material};

const AFTER_HELP: &str = "\
Files written to --out (created with mode 0700 when missing), each replaced atomically:
  key.pem    the device key, PKCS#8 PEM, mode 0600 (key.tpm for a TPM key)
  cert.pem   the device certificate
  chain.pem  the issuing CA certificate, then the root

Exit codes: 0 success; 1 local failure (files, keys, TPM, protocol); 2 usage;
3 the server refused (4xx); 4 the server is unavailable or unreachable (retry later).

Secrets (tokens, keys) are never printed. Prefer the environment variables or files over
command-line values, which other users may see in the process list.";

/// The devid device agent: enroll this device with a devid server, then keep its
/// certificate renewed over mutual TLS.
#[derive(Debug, Parser)]
#[command(name = "devid-agent", version, after_help = AFTER_HELP, max_term_width = 100)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Enroll once: make a key and a CSR, prove this device's identity, write the files.
    #[command(after_help = AFTER_HELP)]
    Enroll(EnrollArgs),
    /// Renew once over mutual TLS with the current certificate (POST /v1/renew).
    #[command(after_help = AFTER_HELP)]
    Renew(RenewArgs),
    /// Keep a certificate: enroll if there is none, renew at 2/3 of its lifetime, retry
    /// with backoff; stops on SIGTERM or Ctrl-C.
    #[command(after_help = AFTER_HELP)]
    Run(RunArgs),
    /// Simulate a fleet: set up N devices (keys, CSRs and evidence made before timing),
    /// enroll them with C workers, optionally ask OCSP and renew over mutual TLS; print
    /// throughput and latency percentiles per phase.
    #[command(after_help = crate::simulate::SIMULATE_AFTER_HELP)]
    Simulate(crate::simulate::SimulateArgs),
}

/// How the device proves its identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Method {
    /// A one-time enrollment token (`devid device add`).
    Token,
    /// The factory IEEE 802.1AR IDevID certificate chain and key.
    X509,
    /// A key derived from the group master key (HMAC-SHA256), or the device's own key.
    Symmetric,
    /// A TPM 2.0 (EK certificate, credential activation, key certified by an AK); needs a
    /// build with the `tpm` feature.
    Tpm,
}

/// Which TPM endorsement key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EkArg {
    /// RSA-2048 EK (TCG template L-1).
    Rsa,
    /// ECC NIST P-256 EK (TCG template L-2).
    Ecc,
}

/// The evidence flags, shared by `enroll` and `run`.
#[derive(Debug, Args)]
pub struct MethodArgs {
    /// How this device proves its identity.
    #[arg(long, value_enum)]
    pub method: Option<Method>,
    /// The enrollment group (required for x509, symmetric and tpm).
    #[arg(long, value_name = "NAME")]
    pub group: Option<String>,
    /// token: the one-time enrollment token.
    #[arg(long, env = "DEVID_AGENT_TOKEN", hide_env_values = true, value_name = "T")]
    pub token: Option<String>,
    /// x509: the factory certificate chain, PEM, device certificate first.
    #[arg(long, value_name = "FILE")]
    pub idevid_cert: Option<PathBuf>,
    /// x509: the factory private key, PKCS#8 PEM (P-256, P-384, RSA or Ed25519).
    #[arg(long, value_name = "FILE")]
    pub idevid_key: Option<PathBuf>,
    /// The device id: the CSR's common name; symmetric: the id the key is derived for.
    #[arg(long, value_name = "ID")]
    pub device_id: Option<String>,
    /// symmetric: the device's own key: a file (raw or base64) or base64 text. URL-safe
    /// base64 may begin with '-': the value is taken as given.
    #[arg(
        long,
        env = "DEVID_AGENT_DEVICE_KEY",
        hide_env_values = true,
        value_name = "FILE|B64",
        allow_hyphen_values = true
    )]
    pub device_key: Option<String>,
    /// symmetric: the group master key file (raw or base64); the device key is derived
    /// from it and --device-id (HMAC-SHA256).
    #[arg(long, value_name = "FILE", conflicts_with = "device_key")]
    pub group_key: Option<PathBuf>,
    /// tpm: the TCTI, e.g. device:/dev/tpmrm0 or swtpm:host=127.0.0.1,port=2321; recorded
    /// in key.tpm, where renewals find it.
    #[arg(long, value_name = "TCTI")]
    pub tpm_tcti: Option<String>,
    /// tpm: which endorsement key.
    #[arg(long, value_enum, default_value = "ecc")]
    pub ek: EkArg,
}

/// `devid-agent enroll`.
#[derive(Debug, Args)]
pub struct EnrollArgs {
    /// The enrollment server's base URL, e.g. https://devid.example:8080.
    #[arg(long, value_name = "URL")]
    pub server: String,
    /// The evidence.
    #[command(flatten)]
    pub method: MethodArgs,
    /// The directory to write key.pem, cert.pem and chain.pem into.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Trust exactly the CA certificates of this PEM file for the server's TLS (default:
    /// the built-in web PKI roots).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Print {device_id, serial, not_after, cert, chain, key} as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `devid-agent renew`.
#[derive(Debug, Args)]
pub struct RenewArgs {
    /// The renewal listener's base URL (mutual TLS), e.g. https://devid.example:8443.
    #[arg(long, value_name = "URL")]
    pub server: String,
    /// The directory holding key.pem, cert.pem and chain.pem.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Trust exactly the CA certificates of this PEM file for the listener (default: the
    /// root at the end of chain.pem).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Make a new key (written only after the new certificate is issued); for a TPM key,
    /// a new key in the same TPM (key.tpm is replaced).
    #[arg(long)]
    pub rekey: bool,
    /// For a TPM key (key.tpm): the TCTI of its TPM, e.g. device:/dev/tpmrm0 (default: the
    /// one key.tpm records from the enrollment). The TLS handshake and the CSR are signed
    /// in the TPM.
    #[arg(long, value_name = "TCTI")]
    pub tpm_tcti: Option<String>,
    /// Print {device_id, serial, not_after, cert, chain, key} as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `devid-agent run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The enrollment server's base URL.
    #[arg(long, value_name = "URL")]
    pub server: String,
    /// The renewal listener's base URL (mutual TLS).
    #[arg(long, value_name = "URL")]
    pub renew_server: String,
    /// The evidence, used when there is no certificate (or it expired).
    #[command(flatten)]
    pub method: MethodArgs,
    /// The directory holding key.pem, cert.pem and chain.pem.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Trust exactly the CA certificates of this PEM file for the enrollment server.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Trust exactly the CA certificates of this PEM file for the renewal listener
    /// (default: the root at the end of chain.pem).
    #[arg(long, value_name = "FILE")]
    pub renew_ca: Option<PathBuf>,
    /// Make a new key at every renewal.
    #[arg(long)]
    pub rekey: bool,
    /// Print each issued certificate's {device_id, serial, not_after, cert, chain, key}
    /// as one JSON line.
    #[arg(long)]
    pub json: bool,
}

/// The evidence the flags describe.
pub fn evidence(m: &MethodArgs) -> Result<Option<(Evidence, Option<DeviceId>)>, AgentError> {
    let Some(method) = m.method else {
        return Ok(None);
    };
    let device_id = match &m.device_id {
        Some(id) => {
            Some(DeviceId::new(id.as_str()).map_err(|e| AgentError::usage(format!("--device-id: {e}")))?)
        }
        None => None,
    };
    let group = || {
        m.group
            .clone()
            .ok_or_else(|| AgentError::usage(format!("--method {method:?} needs --group").to_lowercase()))
    };
    let ev = match method {
        Method::Token => {
            let token = m.token.clone().ok_or_else(|| {
                AgentError::usage("--method token needs --token (or DEVID_AGENT_TOKEN in the environment)")
            })?;
            Evidence::Token { token: Zeroizing::new(token) }
        }
        Method::X509 => {
            let (Some(cert), Some(key)) = (&m.idevid_cert, &m.idevid_key) else {
                return Err(AgentError::usage("--method x509 needs --idevid-cert and --idevid-key"));
            };
            let chain = pem_certificates(&crate::files::read_text(cert)?)?;
            if chain.is_empty() {
                return Err(AgentError::crypto(format!("{} holds no PEM certificate", cert.display())));
            }
            let key_text = Zeroizing::new(crate::files::read_text(key)?);
            Evidence::X509 { group: group()?, chain, key: FactoryKey::from_pkcs8_pem(&key_text)? }
        }
        Method::Symmetric => {
            let id =
                device_id.clone().ok_or_else(|| AgentError::usage("--method symmetric needs --device-id"))?;
            let device_key = match (&m.device_key, &m.group_key) {
                (Some(k), None) => {
                    let k = read_key_material(k, false)?;
                    let arr: [u8; 32] = k.as_slice().try_into().map_err(|_| {
                        AgentError::usage(format!(
                            "--device-key must be 32 bytes (HMAC-SHA256 output), not {}",
                            k.len()
                        ))
                    })?;
                    Zeroizing::new(arr)
                }
                (None, Some(path)) => {
                    let master = read_key_material(&path.display().to_string(), true)?;
                    Zeroizing::new(devid_attest::symmetric::derive_device_key(&master, id.as_str()))
                }
                _ => return Err(AgentError::usage("--method symmetric needs --device-key or --group-key")),
            };
            Evidence::Symmetric { group: group()?, device_id: id, device_key }
        }
        Method::Tpm => tpm_evidence(m, group()?)?,
    };
    Ok(Some((ev, device_id)))
}

#[cfg(feature = "tpm")]
fn tpm_evidence(m: &MethodArgs, group: String) -> Result<Evidence, AgentError> {
    let tcti = m.tpm_tcti.clone().ok_or_else(|| AgentError::usage("--method tpm needs --tpm-tcti"))?;
    let ek = match m.ek {
        EkArg::Rsa => crate::tpm::EkKind::Rsa2048,
        EkArg::Ecc => crate::tpm::EkKind::EccP256,
    };
    Ok(Evidence::Tpm { group, tcti, ek })
}

#[cfg(not(feature = "tpm"))]
fn tpm_evidence(_: &MethodArgs, _: String) -> Result<Evidence, AgentError> {
    Err(AgentError::usage("this devid-agent was built without TPM support (cargo feature `tpm`)"))
}

fn print_outcome(out: &Outcome, json: bool) {
    if json {
        println!("{}", out.to_json());
    } else {
        println!(
            "{}: serial {}, valid until {}\n  certificate: {}\n  chain:       {}\n  key:         {}",
            out.device_id.as_deref().unwrap_or("(no device id)"),
            out.serial,
            out.not_after,
            out.cert.display(),
            out.chain.display(),
            out.key.display()
        );
    }
}

/// Run a parsed command line.
pub async fn execute(cli: Cli) -> Result<(), AgentError> {
    match cli.command {
        Command::Enroll(a) => {
            let (evidence, device_id) =
                evidence(&a.method)?.ok_or_else(|| AgentError::usage("enroll needs --method"))?;
            let plan = EnrollPlan { server: a.server, ca: a.ca, evidence, device_id };
            let out = crate::enroll::enroll(&plan, &Layout::new(a.out)).await?;
            print_outcome(&out, a.json);
            Ok(())
        }
        Command::Renew(a) => {
            let plan = RenewPlan { server: a.server, ca: a.ca, rekey: a.rekey };
            let out =
                crate::enroll::renew_with_tcti(&plan, &Layout::new(a.out), a.tpm_tcti.as_deref()).await?;
            print_outcome(&out, a.json);
            Ok(())
        }
        Command::Run(a) => {
            let enroll = evidence(&a.method)?.map(|(evidence, device_id)| EnrollPlan {
                server: a.server.clone(),
                ca: a.ca.clone(),
                evidence,
                device_id,
            });
            // Check the URLs now rather than at the first renewal.
            crate::client::endpoint(&a.server, "/")?;
            crate::client::endpoint(&a.renew_server, "/")?;
            let cfg = crate::run::RunConfig {
                layout: Layout::new(a.out),
                enroll,
                renew: RenewPlan { server: a.renew_server, ca: a.renew_ca, rekey: a.rekey },
            };
            let json = a.json;
            crate::run::run(&cfg, &devid_core::SystemClock, &devid_core::OsEntropy, shutdown_signal(), |o| {
                if json {
                    println!("{}", o.to_json());
                }
            })
            .await
        }
        Command::Simulate(a) => crate::simulate::run(a).await,
    }
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = term => tracing::info!("SIGTERM: stopping"),
        r = tokio::signal::ctrl_c() => {
            if r.is_ok() { tracing::info!("interrupted: stopping") } else { std::future::pending::<()>().await }
        }
    }
}

/// The `devid-agent` program: parse the command line, run, map the error to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
    // One TLS provider for the whole process: aws-lc-rs (also for reqwest's own configs).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // The simulator is a load generator: it gets every core.
    let rt = if matches!(cli.command, Command::Simulate(_)) {
        tokio::runtime::Builder::new_multi_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("devid-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(execute(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("devid-agent: {e}");
            ExitCode::from(e.kind.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn a_device_key_may_begin_with_a_hyphen() {
        let cli = Cli::try_parse_from([
            "devid-agent",
            "enroll",
            "--server",
            "http://ca:8080",
            "--out",
            "/tmp/d",
            "--method",
            "symmetric",
            "--device-key",
            "-qb4lKtAMsYlhUCxAx9-TTBQmC1LJlS-WiVeYl8vz8c",
            "--device-id",
            "d-2",
        ])
        .expect("parses");
        let Command::Enroll(a) = cli.command else { panic!("not enroll") };
        assert_eq!(a.method.device_key.as_deref(), Some("-qb4lKtAMsYlhUCxAx9-TTBQmC1LJlS-WiVeYl8vz8c"));
        assert_eq!(a.method.device_id.as_deref(), Some("d-2"));
    }
}
