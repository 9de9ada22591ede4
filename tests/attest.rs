//! Enrollment with attestation (x509, tpm, symmetric) and renewal over mutual TLS, end to
//! end with devid-agent as the device.
//!
//! The real `devid` binary serves on port 0 (HTTP) and its renewal listener on port 0
//! (HTTPS, mutual TLS), against SQLite and PostgreSQL; the device is the real
//! `devid-agent` binary (built with the `tpm` feature next to `devid`, see [`agent_bin`]),
//! or hand-made requests where a test needs a wrong signature, a replayed nonce or a
//! greedy CSR. The factory PKI (manufacturer root, intermediate, IDevIDs) is made with
//! rcgen; the TPM is a real swtpm (`devid_testkit::swtpm`). openssl is the independent
//! verifier. Every refusal is checked as an RFC 9457 problem with its code, and against
//! the store: the refused device holds no certificate.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{Backend, Install, Server, assert_problem, http, run_bounded};
use devid_testkit::pki;
use rcgen::{BasicConstraints, CertificateParams, DnType, DnValue, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use serde_json::{Value, json};

on_both_backends!(
    x509_enroll_and_renew,
    x509_refusals,
    nonces_are_single_use_and_scoped,
    nonce_expires,
    challenges_are_stored_without_the_key,
    group_deleted_during_enrollment,
    symmetric_enrollment,
    tpm_enrollment,
    tpm_refusals_over_http,
    tpm_renewal_over_mtls,
    renewal_refusals,
    renewal_past_grace_is_refused,
    renewal_listener_tls,
);

// --- the agent ---------------------------------------------------------------------------

/// The devid-agent binary next to the devid binary (same target directory and profile),
/// built with the `tpm` feature when it is missing, older than this test binary, or was
/// built without TPM support. `cargo test --workspace --all-features` (the README command)
/// builds it itself; `cargo test -p devid --test attest` does not, hence the build here.
fn agent_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let devid = common::devid_bin();
        let profile_dir = devid.parent().unwrap().to_path_buf();
        let agent = profile_dir.join("devid-agent");
        let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let this = std::env::current_exe().ok().and_then(|p| mtime(&p)).unwrap_or(SystemTime::UNIX_EPOCH);
        let fresh = mtime(&agent).is_some_and(|t| t >= this) && has_tpm_support(&agent);
        if !fresh {
            let target_dir = profile_dir.parent().unwrap();
            let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
            cmd.args(["build", "-p", "devid-agent", "--features", "tpm"])
                .env("CARGO_TARGET_DIR", target_dir)
                .current_dir(env!("CARGO_MANIFEST_DIR"));
            match profile_dir.file_name().and_then(|n| n.to_str()) {
                Some("debug") => {}
                Some("release") => {
                    cmd.arg("--release");
                }
                Some(other) => {
                    cmd.args(["--profile", other]);
                }
                None => panic!("unexpected target layout: {}", devid.display()),
            }
            let out = cmd.output().unwrap_or_else(|e| panic!("cannot run cargo to build devid-agent: {e}"));
            assert!(
                out.status.success(),
                "building devid-agent failed ({cmd:?}):\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(has_tpm_support(&agent), "{} still lacks the tpm feature", agent.display());
        }
        agent
    })
    .clone()
}

/// Whether this agent binary was built with the `tpm` feature: without `--tpm-tcti` it
/// says what is missing, not that TPM support is.
fn has_tpm_support(agent: &Path) -> bool {
    if !agent.is_file() {
        return false;
    }
    let mut c = Command::new(agent);
    c.args(["enroll", "--server", "http://127.0.0.1:9", "--method", "tpm", "--group", "g", "--out"])
        .arg(std::env::temp_dir().join("devid-agent-probe-unused"));
    let out = run_bounded(c);
    !String::from_utf8_lossy(&out.stderr).contains("without TPM support")
}

/// Run devid-agent with `args` (killed after 120 s).
fn agent(args: &[&str]) -> Output {
    let mut c = Command::new(agent_bin());
    c.args(args).env("RUST_LOG", "warn");
    run_bounded(c)
}

/// Run devid-agent, which must succeed with `--json` output; returns that JSON.
fn agent_ok(args: &[&str]) -> Value {
    let out = agent(args);
    assert!(
        out.status.success(),
        "devid-agent {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("devid-agent {args:?}: not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout))
    })
}

/// Run devid-agent, which the server must refuse: exit 3, and the stderr names the HTTP
/// status and the problem code (the agent prints `[code]` only from a problem document).
fn agent_refused(args: &[&str], status: u16, code: &str) -> String {
    let out = agent(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(3), "devid-agent {args:?}: {stderr}");
    assert!(
        stderr.contains(&format!("{status} ")) && stderr.contains(&format!("[{code}]")),
        "{args:?}: {stderr}"
    );
    stderr
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

// --- the factory PKI ------------------------------------------------------------------

/// A manufacturer: a root CA and an intermediate that signs IDevIDs (P-256).
struct Factory {
    root_pem: String,
    inter_der: Vec<u8>,
    inter: Issuer<'static, KeyPair>,
}

/// A device's factory identity: its key and chain (device certificate, intermediate).
struct Idevid {
    key: KeyPair,
    chain: Vec<Vec<u8>>,
}

fn p256() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::OrganizationName, "Acme Devices");
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(2045, 1, 1);
    p
}

impl Factory {
    fn new(name: &str) -> Factory {
        let root_key = p256();
        let root_params = ca_params(&format!("{name} Root CA"));
        let root = root_params.self_signed(&root_key).unwrap();
        let root_issuer = Issuer::new(root_params, root_key);
        let inter_key = p256();
        let inter_params = ca_params(&format!("{name} IDevID CA"));
        let inter_der = inter_params.signed_by(&inter_key, &root_issuer).unwrap().der().to_vec();
        Factory { root_pem: root.pem(), inter_der, inter: Issuer::new(inter_params, inter_key) }
    }

    /// An IDevID whose subject serialNumber is `serial`, valid over the given years.
    fn idevid_valid(&self, serial: &str, from: i32, until: i32) -> Idevid {
        let key = p256();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::OrganizationName, "Acme Devices");
        p.distinguished_name.push(
            DnType::CustomDnType(vec![2, 5, 4, 5]),
            DnValue::PrintableString(serial.try_into().unwrap()),
        );
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.not_before = rcgen::date_time_ymd(from, 1, 1);
        p.not_after = rcgen::date_time_ymd(until, 1, 1);
        let der = p.signed_by(&key, &self.inter).unwrap().der().to_vec();
        Idevid { key, chain: vec![der, self.inter_der.clone()] }
    }

    fn idevid(&self, serial: &str) -> Idevid {
        self.idevid_valid(serial, 2024, 2044)
    }

    /// Write the root CA (the group's trust anchor) into `dir`; returns the path.
    fn write_anchor(&self, dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, &self.root_pem).unwrap();
        p
    }
}

impl Idevid {
    /// Write the chain (PEM, device first) and the PKCS#8 key as the agent reads them;
    /// returns (chain, key) paths.
    fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        let pem: String = self.chain.iter().map(|d| devid_ca::to_pem("CERTIFICATE", d)).collect();
        std::fs::write(&cert, pem).unwrap();
        std::fs::write(&key, self.key.serialize_pem()).unwrap();
        (cert, key)
    }
}

// --- the protocol by hand -------------------------------------------------------------

fn sha256(b: &[u8]) -> Vec<u8> {
    hex::decode(devid_ca::fingerprint_sha256(b).replace(':', "")).unwrap()
}

/// PROTOCOL.md: SHA-256("devid-attest-v1" || 0x00 || nonce || SHA-256(CSR DER)).
fn binding(nonce: &[u8], csr_pem: &str) -> Vec<u8> {
    let csr_der = pem::parse(csr_pem).unwrap().into_contents();
    sha256(&[b"devid-attest-v1".as_slice(), &[0], nonce, &sha256(&csr_der)].concat())
}

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

/// POST JSON; returns (status, body, content type).
async fn post(url: &str, body: &Value) -> (u16, Value, String) {
    answer(http().post(url).json(body).send().await.unwrap()).await
}

/// (status, body, content type) of a response.
async fn answer(resp: reqwest::Response) -> (u16, Value, String) {
    let status = resp.status().as_u16();
    let ct = resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    (status, resp.json::<Value>().await.unwrap_or(Value::Null), ct)
}

/// A challenge that must be granted: (nonce as sent, nonce bytes, expires_at).
async fn challenge(server: &Server, group: &str, method: &str) -> (String, Vec<u8>, String) {
    let (s, body, _) =
        post(&server.url("/v1/enroll/challenge"), &json!({"group": group, "method": method})).await;
    assert_eq!(s, 201, "challenge {group}/{method}: {body}");
    let text = body["nonce"].as_str().unwrap().to_string();
    let bytes = URL_SAFE_NO_PAD.decode(&text).unwrap();
    assert_eq!(bytes.len(), 32);
    (text, bytes, body["expires_at"].as_str().unwrap().to_string())
}

/// An x509 enrollment body: the chain and `signer`'s signature over the binding.
fn x509_body(
    group: &str,
    nonce: &(String, Vec<u8>, String),
    chain: &[Vec<u8>],
    signer: &KeyPair,
    csr: &str,
) -> Value {
    let sig = rcgen::SigningKey::sign(signer, &binding(&nonce.1, csr)).unwrap();
    json!({
        "method": "x509", "group": group, "nonce": nonce.0,
        "chain": chain.iter().map(|c| b64(c)).collect::<Vec<_>>(),
        "signature": b64(&sig), "csr": csr,
    })
}

/// Challenge, then enroll with `dev`'s chain signed by `signer`.
async fn x509_enroll_raw(
    server: &Server,
    group: &str,
    dev: &Idevid,
    signer: &KeyPair,
    csr: &str,
) -> (u16, Value, String) {
    let nonce = challenge(server, group, "x509").await;
    post(&server.url("/v1/enroll"), &x509_body(group, &nonce, &dev.chain, signer, csr)).await
}

// --- the store and the audit log ------------------------------------------------------

/// The certificates the store holds for `device`.
async fn certs_of(install: &Install, device: &str) -> Vec<devid_store::CertRecord> {
    let store = devid_store::connect(&install.db.url).await.unwrap();
    let id = devid_core::DeviceId::new(device).unwrap();
    store.list_certificates(Some(&id), None, 1000).await.unwrap().items
}

async fn assert_no_certificate(install: &Install, device: &str) {
    let certs = certs_of(install, device).await;
    assert!(
        certs.is_empty(),
        "{device} must hold no certificate: {:?}",
        certs.iter().map(|c| c.serial.to_hex()).collect::<Vec<_>>()
    );
}

async fn cert_record(install: &Install, serial: &str) -> devid_store::CertRecord {
    let store = devid_store::connect(&install.db.url).await.unwrap();
    store
        .get_certificate(&devid_core::Serial::from_hex(serial).unwrap())
        .await
        .unwrap()
        .expect("in the store")
}

fn audit_lines(install: &Install) -> Vec<Value> {
    install.run_ok(&["audit", "export"]).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn group_add(install: &Install, args: &[&str]) -> Value {
    let mut all = vec!["group", "add"];
    all.extend_from_slice(args);
    all.push("--json");
    serde_json::from_str(install.run_ok(&all).trim()).unwrap()
}

/// A server whose renewals are allowed at once (renewal opens at 0 of the lifetime).
fn serve_renewable(install: &mut Install) -> Server {
    install.env.push(("DEVID_ENROLL__RENEW_AFTER".into(), "0".into()));
    install.serve()
}

/// Enroll `serial` of `factory` through the agent into `group`; returns the agent's JSON.
fn agent_x509(server: &Server, group: &str, dev: &Idevid, work: &Path, out: &Path) -> Value {
    let (cert, key) = dev.write(work, &format!("idevid-{}", out.file_name().unwrap().to_str().unwrap()));
    agent_ok(&[
        "enroll",
        "--server",
        &server.base,
        "--method",
        "x509",
        "--group",
        group,
        "--idevid-cert",
        path_str(&cert),
        "--idevid-key",
        path_str(&key),
        "--out",
        path_str(out),
        "--json",
    ])
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

/// `devid group add <name> --method <method> --trust-anchor <anchor> --registration
/// <registration> <extra…>`; returns the group's JSON.
fn anchored_group(
    install: &Install,
    name: &str,
    method: &str,
    anchor: &Path,
    registration: &str,
    extra: &[&str],
) -> Value {
    let mut args =
        vec![name, "--method", method, "--trust-anchor", path_str(anchor), "--registration", registration];
    args.extend_from_slice(extra);
    group_add(install, &args)
}

/// A group of TPM devices trusting `tpm`'s vendor, registration optional.
fn tpm_group(install: &Install, name: &str, tpm: &devid_testkit::swtpm::Swtpm) -> Value {
    anchored_group(install, name, "tpm", &tpm.vendor_ca_pem_path(), "optional", &[])
}

/// A production line: an installation, a work directory, the "Acme" factory whose root
/// (`anchor`, in the work directory) a group trusts for x509 with optional registration.
struct Line {
    install: Install,
    work: tempfile::TempDir,
    factory: Factory,
    anchor: PathBuf,
    /// The JSON of `devid group add`.
    group: Value,
}

/// A [`Line`] whose x509 group is `group`, made with the `extra` flags of `group add`.
async fn x509_line(backend: Backend, group: &str, extra: &[&str]) -> Line {
    let install = Install::new(backend).await;
    let work = tempfile::tempdir().unwrap();
    let factory = Factory::new("Acme");
    let anchor = factory.write_anchor(work.path(), "ca.pem");
    let group = anchored_group(&install, group, "x509", &anchor, "optional", extra);
    Line { install, work, factory, anchor, group }
}

/// `devid-agent enroll --server <server> --method <method> --group <group> <extra…>
/// --out <out>`.
fn enroll_args<'a>(
    server: &'a Server,
    method: &'a str,
    group: &'a str,
    extra: &[&'a str],
    out: &'a Path,
) -> Vec<&'a str> {
    let mut args = vec!["enroll", "--server", &server.base, "--method", method, "--group", group];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--out", path_str(out)]);
    args
}

/// [`enroll_args`] of device `id` in the symmetric group "sym", its key given by
/// `key_flag` (`--group-key`, `--device-key`) and `key`; `--json` when `json`.
fn symmetric_args<'a>(
    server: &'a Server,
    id: &'a str,
    key_flag: &'a str,
    key: &'a str,
    out: &'a Path,
    json: bool,
) -> Vec<&'a str> {
    let mut args = enroll_args(server, "symmetric", "sym", &["--device-id", id, key_flag, key], out);
    if json {
        args.push("--json");
    }
    args
}

/// `devid-agent renew --server <base> --out <out> <extra…> --json`, which must succeed;
/// returns the agent's JSON.
fn renew_json(base: &str, out: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["renew", "--server", base, "--out", path_str(out)];
    args.extend_from_slice(extra);
    args.push("--json");
    agent_ok(&args)
}

/// [`renew_json`]: the new serial.
fn renew_ok(base: &str, out: &Path, extra: &[&str]) -> String {
    serial_of(&renew_json(base, out, extra))
}

/// `devid-agent renew` from `out`, which the renewal listener must refuse (403, `code`).
fn renew_refused(server: &Server, out: &Path, code: &str) {
    agent_refused(&["renew", "--server", &server.renew_base(), "--out", path_str(out)], 403, code);
}

/// The `serial` of a JSON answer.
fn serial_of(v: &Value) -> String {
    v["serial"].as_str().unwrap_or_else(|| panic!("serial: {v}")).to_string()
}

/// The store's record of `serial`, which must be a renewal of `predecessor`.
async fn renewal_record(install: &Install, serial: &str, predecessor: &str) -> devid_store::CertRecord {
    let rec = cert_record(install, serial).await;
    assert_eq!(rec.predecessor.as_ref().map(devid_core::Serial::to_hex).as_deref(), Some(predecessor));
    rec
}

/// openssl verifies `cert` against `chain` (issuing CA, root).
fn assert_verifies(dir: &Path, chain: &[String], cert: &str, what: &str) {
    let (ok, text) = pki::openssl_verify(dir, &chain[1], &chain[0], cert);
    assert!(ok, "openssl verify ({what}): {text}");
}

/// The public key of a PEM certificate, as openssl prints it.
fn spki(pem_text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.pem"), pem_text).unwrap();
    let (ok, t) = pki::openssl(dir.path(), &["x509", "-noout", "-pubkey", "-in", "c.pem"]);
    assert!(ok, "{t}");
    t
}

/// The permission bits of `p`.
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

// --- 1. x509 end to end, then renewal -------------------------------------------------

async fn x509_enroll_and_renew(backend: Backend) {
    let Line { mut install, work, factory, group: g, .. } = x509_line(backend, "line-x", &[]).await;
    assert_eq!(g["methods"], json!(["x509"]), "{g}");
    assert_eq!(g["registration"], "optional", "{g}");
    assert_eq!(g["id_source"], "subject-serial", "{g}");
    let server = serve_renewable(&mut install);

    let serial = "ACME-000123";
    let dev = factory.idevid(serial);
    let out = work.path().join("dev");
    let first = serial_of(&agent_x509(&server, "line-x", &dev, work.path(), &out));
    // The files: key.pem 0600, the certificate, the chain (issuing CA, root).
    let mode = mode(&out.join("key.pem"));
    assert_eq!(mode, 0o600, "key.pem mode {mode:o}");
    let cert = read(&out.join("cert.pem"));
    let chain = pki::split_pem(&read(&out.join("chain.pem")));
    assert_eq!(chain.len(), 2);
    assert_verifies(work.path(), &chain, &cert, "enrolled");
    let text = pki::openssl_text(work.path(), &cert);
    assert!(text.contains(&format!("URI:urn:devid:device:{serial}")), "{text}");
    assert!(text.contains("CA:FALSE"), "{text}");
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    let rec = cert_record(&install, &first).await;
    assert_eq!(rec.device.as_str(), serial);
    assert_eq!(rec.status, devid_store::CertStatus::Issued);
    assert!(rec.predecessor.is_none());

    // The audit log: the registration (optional registration) and the issue, with the
    // evidence summary.
    let log = audit_lines(&install);
    let issue = log
        .iter()
        .find(|e| e["action"] == "certificate.issue" && e["subject"] == first.as_str())
        .unwrap_or_else(|| panic!("certificate.issue of {first} in the audit log"));
    assert_eq!(issue["actor"], format!("device:{serial}"), "{issue}");
    assert_eq!(issue["details"]["method"], "x509", "{issue}");
    let ev = &issue["details"]["evidence"];
    assert_eq!(ev["method"], "x509", "{issue}");
    assert!(ev["issuer"].as_str().unwrap().contains("Acme IDevID CA"), "{issue}");
    assert!(ev["subject"].as_str().unwrap().contains(serial), "{issue}");
    assert!(ev["fingerprint_sha256"].is_string(), "{issue}");
    assert!(
        log.iter().any(|e| e["action"] == "device.register"
            && e["subject"] == serial
            && e["details"]["group"] == "line-x"),
        "device.register of {serial}"
    );

    // Renewal over mutual TLS with the same key: a new certificate whose predecessor is
    // the first.
    let renew_base = server.renew_base();
    assert!(renew_base.starts_with("https://127.0.0.1:"), "{renew_base}");
    let key_before = read(&out.join("key.pem"));
    let second = renew_ok(&renew_base, &out, &[]);
    assert_ne!(second, first);
    assert_eq!(read(&out.join("key.pem")), key_before, "renewal without --rekey keeps the key");
    let rec = renewal_record(&install, &second, &first).await;
    assert_eq!(rec.device.as_str(), serial);
    let cert2 = read(&out.join("cert.pem"));
    assert_ne!(cert2, cert);
    assert_verifies(work.path(), &chain, &cert2, "renewed");

    // --rekey: a new key, and the lineage goes on.
    let third = renew_ok(&renew_base, &out, &["--rekey"]);
    assert_ne!(read(&out.join("key.pem")), key_before, "--rekey writes a new key");
    renewal_record(&install, &third, &second).await;
    let cert3 = read(&out.join("cert.pem"));
    assert_eq!(spki(&cert2), spki(&cert), "same key");
    assert_ne!(spki(&cert3), spki(&cert2), "new key");
    let log = audit_lines(&install);
    let renews: Vec<&Value> = log.iter().filter(|e| e["action"] == "certificate.renew").collect();
    assert_eq!(renews.len(), 2, "{renews:?}");
    assert_eq!(renews[0]["details"]["evidence"]["same_key"], true, "{}", renews[0]);
    assert_eq!(renews[1]["details"]["evidence"]["same_key"], false, "{}", renews[1]);
    assert_eq!(certs_of(&install, serial).await.len(), 3);

    drop(server);
    install.cleanup().await;
}

// --- 2. x509 refusals -----------------------------------------------------------------

async fn x509_refusals(backend: Backend) {
    let Line { install, work, factory, anchor, .. } = x509_line(backend, "open", &[]).await;
    anchored_group(&install, "closed", "x509", &anchor, "required", &[]);
    let server = install.serve();

    // A chain to a CA the group does not trust: through the agent (exit 3) and by hand.
    let rogue = Factory::new("Rogue");
    let dev = rogue.idevid("ROGUE-1");
    let out = work.path().join("rogue");
    let (c, k) = dev.write(work.path(), "rogue");
    agent_refused(
        &enroll_args(
            &server,
            "x509",
            "open",
            &["--idevid-cert", path_str(&c), "--idevid-key", path_str(&k)],
            &out,
        ),
        401,
        "attestation-failed",
    );
    assert!(!out.join("cert.pem").exists() && !out.join("key.pem").exists(), "nothing written on refusal");
    let (_k, csr) = pki::csr_p256("ROGUE-1");
    let (s, b, ct) = x509_enroll_raw(&server, "open", &dev, &dev.key, &csr).await;
    assert_problem(s, &b, &ct, 401, "attestation-failed");
    assert_no_certificate(&install, "ROGUE-1").await;

    // An expired factory certificate.
    let dev = factory.idevid_valid("ACME-OLD", 2015, 2020);
    let (_k, csr) = pki::csr_p256("ACME-OLD");
    let (s, b, ct) = x509_enroll_raw(&server, "open", &dev, &dev.key, &csr).await;
    assert_problem(s, &b, &ct, 401, "attestation-failed");
    assert_no_certificate(&install, "ACME-OLD").await;

    // A good chain, but the signature over the binding is by another key.
    let dev = factory.idevid("ACME-STOLEN");
    let (_k, csr) = pki::csr_p256("ACME-STOLEN");
    let (s, b, ct) = x509_enroll_raw(&server, "open", &dev, &p256(), &csr).await;
    assert_problem(s, &b, &ct, 401, "attestation-failed");
    // ... or over another CSR than the one sent (the evidence does not move to another key).
    let nonce = challenge(&server, "open", "x509").await;
    let (_k2, other_csr) = pki::csr_p256("ACME-STOLEN");
    let mut body = x509_body("open", &nonce, &dev.chain, &dev.key, &other_csr);
    body["csr"] = json!(csr);
    let (s, b, ct) = post(&server.url("/v1/enroll"), &body).await;
    assert_problem(s, &b, &ct, 401, "attestation-failed");
    assert_no_certificate(&install, "ACME-STOLEN").await;

    // Registration required: refused until the device is registered in the group.
    let dev = factory.idevid("ACME-REG-7");
    let (_k, csr) = pki::csr_p256("ACME-REG-7");
    let (s, b, ct) = x509_enroll_raw(&server, "closed", &dev, &dev.key, &csr).await;
    assert_problem(s, &b, &ct, 403, "device-not-registered");
    assert_no_certificate(&install, "ACME-REG-7").await;
    // Registered in another group does not count either.
    let v: Value = serde_json::from_str(
        install
            .run_ok(&["device", "add", "--id", "ACME-REG-8", "--group", "open", "--no-token", "--json"])
            .trim(),
    )
    .unwrap();
    assert_eq!(v["token"], Value::Null, "{v}");
    let dev8 = factory.idevid("ACME-REG-8");
    let (_k, csr8) = pki::csr_p256("ACME-REG-8");
    let (s, b, ct) = x509_enroll_raw(&server, "closed", &dev8, &dev8.key, &csr8).await;
    assert_problem(s, &b, &ct, 403, "device-not-registered");
    assert_no_certificate(&install, "ACME-REG-8").await;
    install.run_ok(&["device", "add", "--id", "ACME-REG-7", "--group", "closed", "--no-token", "--json"]);
    let (s, b, _) = x509_enroll_raw(&server, "closed", &dev, &dev.key, &csr).await;
    assert_eq!(s, 200, "registered now: {b}");
    assert_eq!(certs_of(&install, "ACME-REG-7").await.len(), 1);

    // A CSR that asks for CA:TRUE and extra SANs gets the device profile only.
    let dev = factory.idevid("ACME-GREEDY");
    let (_k, csr) = pki::csr_greedy("whatever-the-device-says");
    let (s, b, _) = x509_enroll_raw(&server, "open", &dev, &dev.key, &csr).await;
    assert_eq!(s, 200, "{b}");
    let text = pki::openssl_text(work.path(), b["certificate"].as_str().unwrap());
    assert!(text.contains("CA:FALSE"), "{text}");
    assert!(!text.contains("CA:TRUE"), "{text}");
    let san_line = text
        .lines()
        .skip_while(|l| !l.contains("X509v3 Subject Alternative Name"))
        .nth(1)
        .unwrap_or_else(|| panic!("no SAN:\n{text}"))
        .trim();
    assert_eq!(san_line, "URI:urn:devid:device:ACME-GREEDY", "only the device URI:\n{text}");
    for absent in ["DNS:", "evil.example.com", "whatever-the-device-says"] {
        assert!(!text.contains(absent), "{absent} must not be in the certificate:\n{text}");
    }

    // Unknown group, and a group that does not allow the method.
    let (s, b, ct) =
        post(&server.url("/v1/enroll/challenge"), &json!({"group": "nope", "method": "x509"})).await;
    assert_problem(s, &b, &ct, 404, "not-found");
    let (s, b, ct) =
        post(&server.url("/v1/enroll/challenge"), &json!({"group": "open", "method": "symmetric"})).await;
    assert_problem(s, &b, &ct, 403, "method-not-allowed");

    // Refusals are audited.
    let log = audit_lines(&install);
    assert!(
        log.iter().any(|e| e["action"] == "enroll.refused"
            && e["subject"] == "open"
            && e["details"]["method"] == "x509"),
        "enroll.refused in the audit log"
    );
    drop(server);
    install.cleanup().await;
}

// --- 3. nonces ------------------------------------------------------------------------

async fn nonces_are_single_use_and_scoped(backend: Backend) {
    let Line { install, work: _work, factory, anchor, .. } = x509_line(backend, "line-a", &[]).await;
    anchored_group(&install, "line-b", "x509", &anchor, "optional", &[]);
    anchored_group(&install, "multi", "x509,symmetric", &anchor, "optional", &[]);
    let server = install.serve();
    let enroll_url = server.url("/v1/enroll");

    // Replay: the nonce that yielded a certificate is spent, even with another CSR.
    let dev = factory.idevid("ACME-R1");
    let nonce = challenge(&server, "line-a", "x509").await;
    let (_k, csr) = pki::csr_p256("ACME-R1");
    let (s, b, _) = post(&enroll_url, &x509_body("line-a", &nonce, &dev.chain, &dev.key, &csr)).await;
    assert_eq!(s, 200, "{b}");
    let (_k2, csr2) = pki::csr_p256("ACME-R1");
    let (s, b, ct) = post(&enroll_url, &x509_body("line-a", &nonce, &dev.chain, &dev.key, &csr2)).await;
    assert_problem(s, &b, &ct, 409, "nonce-used");
    assert_eq!(certs_of(&install, "ACME-R1").await.len(), 1, "the replay issued nothing");

    // A nonce of another group, or of another method, does not count.
    let dev = factory.idevid("ACME-S1");
    let (_k, csr) = pki::csr_p256("ACME-S1");
    let nonce_b = challenge(&server, "line-b", "x509").await;
    let (s, b, ct) = post(&enroll_url, &x509_body("line-a", &nonce_b, &dev.chain, &dev.key, &csr)).await;
    assert_problem(s, &b, &ct, 401, "nonce-invalid");
    let nonce_sym = challenge(&server, "multi", "symmetric").await;
    let (s, b, ct) = post(&enroll_url, &x509_body("multi", &nonce_sym, &dev.chain, &dev.key, &csr)).await;
    assert_problem(s, &b, &ct, 401, "nonce-invalid");
    // A nonce never issued, and one of the wrong length.
    let forged = (b64(&[7u8; 32]), vec![7u8; 32], String::new());
    let (s, b, ct) = post(&enroll_url, &x509_body("line-a", &forged, &dev.chain, &dev.key, &csr)).await;
    assert_problem(s, &b, &ct, 401, "nonce-invalid");
    let short = (b64(&[7u8; 16]), vec![7u8; 16], String::new());
    let (s, b, ct) = post(&enroll_url, &x509_body("line-a", &short, &dev.chain, &dev.key, &csr)).await;
    assert_problem(s, &b, &ct, 401, "nonce-invalid");
    assert_no_certificate(&install, "ACME-S1").await;
    // Those nonces are still good where they belong.
    let (s, b, _) = post(&enroll_url, &x509_body("line-b", &nonce_b, &dev.chain, &dev.key, &csr)).await;
    assert_eq!(s, 200, "{b}");

    // 50 concurrent enrollments on one nonce, each with valid evidence over its own CSR:
    // exactly one certificate.
    let dev = factory.idevid("ACME-RACE");
    let nonce = challenge(&server, "line-a", "x509").await;
    let bodies: Vec<Value> = (0..50)
        .map(|_| {
            let (_k, csr) = pki::csr_p256("ACME-RACE");
            x509_body("line-a", &nonce, &dev.chain, &dev.key, &csr)
        })
        .collect();
    let mut tasks = Vec::new();
    for body in bodies {
        let url = enroll_url.clone();
        tasks.push(tokio::spawn(async move { post(&url, &body).await }));
    }
    let mut ok = 0;
    for t in tasks {
        let (s, b, ct) = t.await.unwrap();
        match s {
            200 => ok += 1,
            _ => assert_problem(s, &b, &ct, 409, "nonce-used"),
        }
    }
    assert_eq!(ok, 1, "exactly one enrollment succeeds");
    assert_eq!(certs_of(&install, "ACME-RACE").await.len(), 1, "exactly one certificate");

    // x509 challenges are stateless: making one writes nothing; its redemption writes its
    // hash (redeemed) in the intent's transaction. Another node on the same store (and
    // sealing key) redeems it, and then the first node refuses it.
    let store = devid_store::connect(&install.db.url).await.unwrap();
    let other = install.serve();
    let dev = factory.idevid("ACME-N2");
    let (_k, csr) = pki::csr_p256("ACME-N2");
    let nonce = challenge(&server, "line-a", "x509").await;
    let hash = sha256(&nonce.1);
    assert!(store.get_challenge(&hash).await.unwrap().is_none(), "nothing stored for a stateless challenge");
    let (s, b, _) =
        post(&other.url("/v1/enroll"), &x509_body("line-a", &nonce, &dev.chain, &dev.key, &csr)).await;
    assert_eq!(s, 200, "{b}");
    let row = store.get_challenge(&hash).await.unwrap().expect("the redeemed nonce's row");
    assert!(row.redeemed_at.is_some() && row.group == "line-a" && row.method == "x509", "{row:?}");
    let (_k, csr) = pki::csr_p256("ACME-N2");
    let (s, b, ct) = post(&enroll_url, &x509_body("line-a", &nonce, &dev.chain, &dev.key, &csr)).await;
    assert_problem(s, &b, &ct, 409, "nonce-used");
    // Its expiry is in clear but under the tag: moved later, the nonce is invalid.
    let nonce = challenge(&server, "line-a", "x509").await;
    let mut later = nonce.1.clone();
    let expiry = u32::from_be_bytes(later[12..16].try_into().unwrap());
    later[12..16].copy_from_slice(&(expiry + 3600).to_be_bytes());
    let moved = (b64(&later), later, String::new());
    let (s, b, ct) = post(&enroll_url, &x509_body("line-a", &moved, &dev.chain, &dev.key, &csr)).await;
    assert_problem(s, &b, &ct, 401, "nonce-invalid");
    let (s, b, _) = post(&enroll_url, &x509_body("line-a", &nonce, &dev.chain, &dev.key, &csr)).await;
    assert_eq!(s, 200, "{b}");
    drop(other);
    drop(server);
    install.cleanup().await;
}

async fn nonce_expires(backend: Backend) {
    let Line { mut install, work: _work, factory, .. } = x509_line(backend, "line-a", &[]).await;
    install.env.push(("DEVID_ENROLL__CHALLENGE_TTL".into(), "1s".into()));
    let server = install.serve();
    let dev = factory.idevid("ACME-LATE");
    let nonce = challenge(&server, "line-a", "x509").await;
    let expires =
        time::OffsetDateTime::parse(&nonce.2, &time::format_description::well_known::Rfc3339).unwrap();
    let ttl = expires - time::OffsetDateTime::now_utc();
    assert!(ttl <= time::Duration::seconds(1), "expires_at {} for a 1 s TTL", nonce.2);
    // Wait until the server's clock (whole seconds) is past expires_at.
    while time::OffsetDateTime::now_utc() < expires + time::Duration::milliseconds(1100) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_k, csr) = pki::csr_p256("ACME-LATE");
    let (s, b, ct) =
        post(&server.url("/v1/enroll"), &x509_body("line-a", &nonce, &dev.chain, &dev.key, &csr)).await;
    assert_problem(s, &b, &ct, 401, "nonce-invalid");
    assert_no_certificate(&install, "ACME-LATE").await;
    // A fresh one works.
    let (s, b, _) = x509_enroll_raw(&server, "line-a", &dev, &dev.key, &csr).await;
    assert_eq!(s, 200, "{b}");
    drop(server);
    install.cleanup().await;
}

/// A node that cannot open the stored challenge key (here: the stored secret is not one its
/// key manager sealed, as for a replica with another key-encryption key) stores its
/// challenges, as before stateless ones, and enrollment works the same.
async fn challenges_are_stored_without_the_key(backend: Backend) {
    let Line { install, work: _work, factory, .. } = x509_line(backend, "line-a", &[]).await;
    let store = devid_store::connect(&install.db.url).await.unwrap();
    let now = devid_core::UnixTime(
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64,
    );
    store.service_secret("challenge-key", b"not sealed by this node", now).await.unwrap();
    let server = install.serve();
    let dev = factory.idevid("ACME-STORED");
    let nonce = challenge(&server, "line-a", "x509").await;
    let hash = sha256(&nonce.1);
    let row = store.get_challenge(&hash).await.unwrap().expect("a stored challenge");
    assert!(row.redeemed_at.is_none() && row.group == "line-a" && row.method == "x509", "{row:?}");
    let (_k, csr) = pki::csr_p256("ACME-STORED");
    let enroll_url = server.url("/v1/enroll");
    let (s, b, _) = post(&enroll_url, &x509_body("line-a", &nonce, &dev.chain, &dev.key, &csr)).await;
    assert_eq!(s, 200, "{b}");
    assert!(store.get_challenge(&hash).await.unwrap().unwrap().redeemed_at.is_some());
    let (s, b, ct) = post(&enroll_url, &x509_body("line-a", &nonce, &dev.chain, &dev.key, &csr)).await;
    // The same CSR again: the certificate already issued for it (a retry), or nonce-used.
    assert!(
        s == 200 || (s == 409 && b["type"].as_str().unwrap_or_default().ends_with("nonce-used")),
        "{s} {b} {ct}"
    );
    assert_eq!(certs_of(&install, "ACME-STORED").await.len(), 1);
    let log = server.stop();
    assert!(log.contains("no key for stateless challenges"), "the fallback is logged: {log}");
    install.cleanup().await;
}

// --- 4. symmetric ---------------------------------------------------------------------

/// A group deleted while one of its new devices enrolls: the node still holds the group
/// (its cache, here for a minute) when the CLI deletes it, so the enrollment passes step 1
/// and its registration in step 4 finds no group. The answer is 404 `not-found`, not a 500,
/// and nothing is written.
async fn group_deleted_during_enrollment(backend: Backend) {
    let Line { mut install, work: _work, factory, .. } = x509_line(backend, "doomed", &[]).await;
    install.env.push(("DEVID_ENROLL__GROUP_CACHE".into(), "60s".into()));
    let server = install.serve();
    let dev = factory.idevid("ACME-G1");
    let nonce = challenge(&server, "doomed", "x509").await;
    install.run_ok(&["group", "remove", "doomed"]);
    let (_k, csr) = pki::csr_p256("ACME-G1");
    let (s, b, ct) =
        post(&server.url("/v1/enroll"), &x509_body("doomed", &nonce, &dev.chain, &dev.key, &csr)).await;
    assert_problem(s, &b, &ct, 404, "not-found");
    assert_eq!(b["detail"], "group not found", "{b}");
    assert_no_certificate(&install, "ACME-G1").await;
    let store = devid_store::connect(&install.db.url).await.unwrap();
    let id = devid_core::DeviceId::new("ACME-G1").unwrap();
    assert!(store.get_device(&id).await.unwrap().is_none(), "no device without its group");
    drop(server);
    install.cleanup().await;
}

async fn symmetric_enrollment(backend: Backend) {
    let install = Install::new(backend).await;
    let work = tempfile::tempdir().unwrap();
    let g = group_add(&install, &["sym", "--method", "symmetric", "--registration", "optional"]);
    let master = g["master_key"].as_str().unwrap_or_else(|| panic!("master_key shown once: {g}")).to_string();
    assert_eq!(URL_SAFE_NO_PAD.decode(&master).unwrap().len(), 32, "{g}");
    assert_eq!(g["has_master_key"], true, "{g}");
    assert_eq!(g["id_source"], "claimed", "{g}");
    // Shown once: listing the groups does not show it.
    let list = install.run_ok(&["group", "list", "--json"]);
    assert!(!list.contains(&master), "{list}");
    let master_file = work.path().join("master.key");
    std::fs::write(&master_file, &master).unwrap();
    let server = install.serve();

    // Enrolls with the key derived from the group master key.
    let out = work.path().join("d1");
    let v = agent_ok(&symmetric_args(&server, "d-1", "--group-key", path_str(&master_file), &out, true));
    assert_eq!(v["device_id"], "d-1", "{v}");
    let rec = cert_record(&install, v["serial"].as_str().unwrap()).await;
    assert_eq!(rec.device.as_str(), "d-1");
    let text = pki::openssl_text(work.path(), &read(&out.join("cert.pem")));
    assert!(text.contains("URI:urn:devid:device:d-1"), "{text}");
    let log = audit_lines(&install);
    let issue = log
        .iter()
        .find(|e| e["action"] == "certificate.issue" && e["details"]["device"] == "d-1")
        .expect("certificate.issue of d-1");
    assert_eq!(issue["details"]["method"], "symmetric", "{issue}");
    assert!(!issue.to_string().contains(&master), "no key in the log");

    // A wrong master key.
    let wrong_file = work.path().join("wrong.key");
    std::fs::write(&wrong_file, b64(&[0x42; 32])).unwrap();
    let d2 = work.path().join("d2");
    agent_refused(
        &symmetric_args(&server, "d-2", "--group-key", path_str(&wrong_file), &d2, false),
        401,
        "attestation-failed",
    );
    assert_no_certificate(&install, "d-2").await;
    // The right key for another device id.
    let d1_key = b64(&derive(&URL_SAFE_NO_PAD.decode(&master).unwrap(), "d-1"));
    agent_refused(
        &symmetric_args(&server, "d-2", "--device-key", &d1_key, &d2, false),
        401,
        "attestation-failed",
    );
    assert_no_certificate(&install, "d-2").await;

    // A device registered with its own key: that key enrolls, the group-derived one not.
    let own = [0x5au8; 32];
    let own_file = work.path().join("own.key");
    std::fs::write(&own_file, base64::engine::general_purpose::STANDARD.encode(own)).unwrap();
    install.run_ok(&[
        "device",
        "add",
        "--id",
        "d-own",
        "--group",
        "sym",
        "--method",
        "symmetric",
        "--secret-file",
        path_str(&own_file),
        "--no-token",
        "--json",
    ]);
    let own_refused = work.path().join("own-refused");
    agent_refused(
        &symmetric_args(&server, "d-own", "--group-key", path_str(&master_file), &own_refused, false),
        401,
        "attestation-failed",
    );
    assert_no_certificate(&install, "d-own").await;
    let own_out = work.path().join("own");
    let v = agent_ok(&symmetric_args(&server, "d-own", "--device-key", path_str(&own_file), &own_out, true));
    assert_eq!(v["device_id"], "d-own", "{v}");
    assert_eq!(certs_of(&install, "d-own").await.len(), 1);
    drop(server);
    install.cleanup().await;
}

/// HMAC-SHA256 (RFC 2104) from SHA-256: the device key of `id` under `master`.
fn derive(master: &[u8], id: &str) -> Vec<u8> {
    let mut key = [0u8; 64];
    if master.len() > 64 {
        key[..32].copy_from_slice(&sha256(master));
    } else {
        key[..master.len()].copy_from_slice(master);
    }
    let ipad: Vec<u8> = key.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = key.iter().map(|b| b ^ 0x5c).collect();
    let inner = sha256(&[ipad.as_slice(), id.as_bytes()].concat());
    sha256(&[opad.as_slice(), &inner].concat())
}

// --- 5. tpm ---------------------------------------------------------------------------

async fn tpm_enrollment(backend: Backend) {
    let install = Install::new(backend).await;
    let work = tempfile::tempdir().unwrap();
    let tpm = devid_testkit::swtpm::Swtpm::start();
    let g = tpm_group(&install, "tpm-line", &tpm);
    assert_eq!(g["id_source"], "ek-hash", "{g}");
    // A group trusting another vendor.
    let other = Factory::new("Other TPM Vendor");
    let other_anchor = other.write_anchor(work.path(), "other-vendor.pem");
    anchored_group(&install, "tpm-other", "tpm", &other_anchor, "optional", &[]);
    let server = install.serve();

    let mut ids = Vec::new();
    for ek in ["rsa", "ecc"] {
        let out = work.path().join(format!("tpm-{ek}"));
        let tcti = tpm.tcti();
        let v = agent_ok(&enroll_args(
            &server,
            "tpm",
            "tpm-line",
            &["--tpm-tcti", &tcti, "--ek", ek, "--json"],
            &out,
        ));
        let id = v["device_id"].as_str().unwrap_or_else(|| panic!("device id: {v}")).to_string();
        assert!(
            id.starts_with("tpm-") && id.len() == 36 && id[4..].bytes().all(|b| b.is_ascii_hexdigit()),
            "{id}"
        );
        let rec = cert_record(&install, v["serial"].as_str().unwrap()).await;
        assert_eq!(rec.device.as_str(), id);
        assert!(out.join("key.tpm").is_file(), "the key stays in the TPM");
        assert!(!out.join("key.pem").exists(), "no software key");
        let cert = read(&out.join("cert.pem"));
        let chain = pki::split_pem(&read(&out.join("chain.pem")));
        assert_verifies(work.path(), &chain, &cert, ek);
        let text = pki::openssl_text(work.path(), &cert);
        assert!(text.contains(&format!("URI:urn:devid:device:{id}")), "{text}");
        let log = audit_lines(&install);
        let issue = log
            .iter()
            .find(|e| e["action"] == "certificate.issue" && e["details"]["device"] == id.as_str())
            .unwrap_or_else(|| panic!("certificate.issue of {id}"));
        assert_eq!(issue["details"]["method"], "tpm", "{issue}");
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1], "the RSA and ECC EKs are different identities");

    // A group that does not trust this TPM's vendor refuses it at the challenge.
    let out = work.path().join("tpm-untrusted");
    let tcti = tpm.tcti();
    let stderr = agent_refused(
        &enroll_args(&server, "tpm", "tpm-other", &["--tpm-tcti", &tcti, "--ek", "ecc"], &out),
        401,
        "attestation-failed",
    );
    assert!(!stderr.contains("BEGIN"), "{stderr}");
    assert_eq!(certs_of(&install, &ids[1]).await.len(), 1, "nothing more issued");
    // The same by hand (an EK and an AK made by tpm2-tools), for the problem document.
    tpm.create_ek_ak(true);
    let identity = json!({
        "ek_cert": b64(&tpm.ek_cert(true)),
        "ek_public": b64(&std::fs::read(tpm.path("ek.pub")).unwrap()),
        "ak_public": b64(&std::fs::read(tpm.path("ak.pub")).unwrap()),
    });
    let url = server.url("/v1/enroll/challenge");
    let (s, b, ct) = post(&url, &json!({"group": "tpm-other", "method": "tpm", "tpm": identity})).await;
    assert_problem(s, &b, &ct, 401, "attestation-failed");
    let (s, b, _) = post(&url, &json!({"group": "tpm-line", "method": "tpm", "tpm": identity})).await;
    assert_eq!(s, 201, "{b}");
    assert!(b["tpm"]["credential_blob"].is_string() && b["tpm"]["encrypted_secret"].is_string(), "{b}");
    let (s, b, ct) = post(&url, &json!({"group": "tpm-line", "method": "tpm"})).await;
    assert_problem(s, &b, &ct, 400, "invalid-request");
    assert_eq!(certs_of(&install, &ids[1]).await.len(), 1, "nothing more issued");
    drop(server);
    drop(tpm);
    install.cleanup().await;
}

// --- 5b. tpm refusals through the server, and renewal with the TPM key ----------------

/// The device id the server gives this TPM's ECC EK (`tpm-` + hex of the first 16 bytes of
/// SHA-256 of the EK certificate's SPKI), computed by the server-side code.
fn tpm_device_id(tpm: &devid_testkit::swtpm::Swtpm, identity: &devid_agent::tpm::TpmIdentity) -> String {
    use devid_core::Clock;
    let policy = devid_attest::tpm::TpmPolicy { ek_anchors: vec![tpm.vendor_ca_der()] };
    let (pending, _) = devid_attest::tpm::start(
        &policy,
        &identity.ek_cert,
        &identity.ek_public,
        &identity.ak_public,
        &devid_core::OsEntropy,
        devid_core::SystemClock.now(),
    )
    .unwrap();
    pending.device_id
}

fn tpm_identity_json(identity: &devid_agent::tpm::TpmIdentity, ak_public: &[u8]) -> Value {
    json!({
        "ek_cert": b64(&identity.ek_cert),
        "ek_public": b64(&identity.ek_public),
        "ak_public": b64(ak_public),
    })
}

/// Every certificate the store holds, of any device.
async fn all_certs(install: &Install) -> usize {
    let store = devid_store::connect(&install.db.url).await.unwrap();
    store.list_certificates(None, None, 1000).await.unwrap().items.len()
}

async fn tpm_refusals_over_http(backend: Backend) {
    use devid_agent::tpm::{EkKind, TpmAgent};
    let install = Install::new(backend).await;
    let tpm = devid_testkit::swtpm::Swtpm::start();
    tpm_group(&install, "tpm-line", &tpm);
    let server = install.serve();
    let challenge_url = server.url("/v1/enroll/challenge");
    let mut agent = TpmAgent::open(&tpm.tcti()).unwrap();
    let identity = agent.identity(EkKind::EccP256).unwrap();
    let device = tpm_device_id(&tpm, &identity);
    // The server's own certificates (its TLS listener's) are in the store too.
    let before = all_certs(&install).await;

    // (1) An "AK" that is not restricted: a real TPM key (fixedTPM, signing) made under the
    // storage primary, presented as the AK. The server refuses it at the challenge: it
    // could sign anything, so a TPM2_Certify by it would prove nothing.
    let not_an_ak = agent.create_device_key().unwrap();
    let (s, b, ct) = post(
        &challenge_url,
        &json!({"group": "tpm-line", "method": "tpm", "tpm": tpm_identity_json(&identity, &not_an_ak.public)}),
    )
    .await;
    assert_problem(s, &b, &ct, 401, "attestation-failed");
    assert!(b.get("tpm").is_none() && b.get("nonce").is_none(), "no credential is made: {b}");
    assert_no_certificate(&install, &device).await;

    // (2) A tampered credential: the TPM's integrity check refuses it (activation fails),
    // so the device can only guess the secret; the server refuses the enrollment.
    let (s, b, _) = post(
        &challenge_url,
        &json!({"group": "tpm-line", "method": "tpm", "tpm": tpm_identity_json(&identity, &identity.ak_public)}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let nonce_text = b["nonce"].as_str().unwrap().to_string();
    let nonce = URL_SAFE_NO_PAD.decode(&nonce_text).unwrap();
    let mut blob = URL_SAFE_NO_PAD.decode(b["tpm"]["credential_blob"].as_str().unwrap()).unwrap();
    let enc = URL_SAFE_NO_PAD.decode(b["tpm"]["encrypted_secret"].as_str().unwrap()).unwrap();
    let last = blob.len() - 1;
    blob[last] ^= 0x01;
    let secret = match agent.activate(&blob, &enc) {
        Err(devid_agent::tpm::TpmError::Command { op: "TPM2_ActivateCredential", .. }) => {
            let mut guess = [0u8; 32];
            devid_core::Entropy::fill(&devid_core::OsEntropy, &mut guess);
            guess.to_vec()
        }
        Err(e) => panic!("unexpected activation error: {e}"),
        // Were the TPM to decrypt it, the secret would be another one: send it.
        Ok(wrong) => wrong,
    };
    let key = agent.create_device_key().unwrap();
    let csr_der = agent.sign_csr(&key, "tpm-device").unwrap();
    let csr = devid_ca::to_pem("CERTIFICATE REQUEST", &csr_der);
    let bind: [u8; 32] = binding(&nonce, &csr).try_into().unwrap();
    let (certify_info, certify_signature) = agent.certify(&key, &bind).unwrap();
    let body = json!({
        "method": "tpm", "group": "tpm-line", "nonce": nonce_text, "secret": b64(&secret),
        "key_public": b64(&key.public), "certify_info": b64(&certify_info),
        "certify_signature": b64(&certify_signature), "csr": csr,
    });
    let (s, b, ct) = post(&server.url("/v1/enroll"), &body).await;
    assert_problem(s, &b, &ct, 401, "attestation-failed");
    assert_no_certificate(&install, &device).await;
    assert_eq!(all_certs(&install).await, before, "nothing issued to anyone");
    // The nonce was redeemed by the failed attempt: the right secret cannot follow it.
    let (s, _, _) = post(&server.url("/v1/enroll"), &body).await;
    assert_eq!(s, 401);

    drop(agent);
    drop(server);
    drop(tpm);
    install.cleanup().await;
}

/// A clock at `at` until `real` is set, then the system clock (for `run`: renewal due now,
/// then the next renewal in the future, where `run` waits and sees the shutdown).
struct SteppingClock {
    at: devid_core::UnixTime,
    real: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl devid_core::Clock for SteppingClock {
    fn now(&self) -> devid_core::UnixTime {
        if self.real.load(std::sync::atomic::Ordering::SeqCst) {
            devid_core::SystemClock.now()
        } else {
            self.at
        }
    }
}

async fn tpm_renewal_over_mtls(backend: Backend) {
    let mut install = Install::new(backend).await;
    let work = tempfile::tempdir().unwrap();
    let tpm = devid_testkit::swtpm::Swtpm::start();
    let tcti = tpm.tcti();
    tpm_group(&install, "tpm-line", &tpm);
    let server = serve_renewable(&mut install);
    let out = work.path().join("tpm-dev");
    let v = agent_ok(&enroll_args(
        &server,
        "tpm",
        "tpm-line",
        &["--tpm-tcti", &tcti, "--ek", "ecc", "--json"],
        &out,
    ));
    let device = v["device_id"].as_str().unwrap().to_string();
    let first = serial_of(&v);
    let key_tpm = read(&out.join("key.tpm"));
    assert!(key_tpm.starts_with(&format!("TCTI: {tcti}\n-----BEGIN TPM2B PUBLIC-----")), "{key_tpm}");
    let mode = mode(&out.join("key.tpm"));
    assert_eq!(mode, 0o600, "key.tpm mode {mode:o}");
    let cert1 = read(&out.join("cert.pem"));
    let chain = pki::split_pem(&read(&out.join("chain.pem")));

    // Renewal over mutual TLS, the handshake signed in the TPM: a new certificate for the
    // same TPM key, whose predecessor is the first; key.tpm untouched.
    let renew_base = server.renew_base();
    let v = renew_json(&renew_base, &out, &["--tpm-tcti", &tcti]);
    let second = serial_of(&v);
    assert_ne!(second, first);
    assert_eq!(v["key"], path_str(&out.join("key.tpm")), "{v}");
    assert_eq!(read(&out.join("key.tpm")), key_tpm, "renewal without --rekey keeps the TPM key");
    assert!(!out.join("key.pem").exists(), "no software key");
    let rec = renewal_record(&install, &second, &first).await;
    assert_eq!(rec.device.as_str(), device);
    let cert2 = read(&out.join("cert.pem"));
    assert_ne!(cert2, cert1);
    assert_eq!(spki(&cert2), spki(&cert1), "same TPM key");
    assert_verifies(work.path(), &chain, &cert2, "renewed");
    let text = pki::openssl_text(work.path(), &cert2);
    assert!(text.contains(&format!("URI:urn:devid:device:{device}")), "{text}");

    // Without --tpm-tcti: the TPM recorded in key.tpm.
    let third = renew_ok(&renew_base, &out, &[]);
    renewal_record(&install, &third, &second).await;
    assert_eq!(read(&out.join("key.tpm")), key_tpm);

    // A TCTI where no TPM answers: a local failure (exit 1), nothing changes.
    let out_before = read(&out.join("cert.pem"));
    let bad = agent(&[
        "renew",
        "--server",
        &renew_base,
        "--out",
        path_str(&out),
        "--tpm-tcti",
        "swtpm:host=127.0.0.1,port=9",
    ]);
    assert_eq!(bad.status.code(), Some(1), "{}", String::from_utf8_lossy(&bad.stderr));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("TPM"), "{}", String::from_utf8_lossy(&bad.stderr));
    assert_eq!(read(&out.join("cert.pem")), out_before);
    assert_eq!(read(&out.join("key.tpm")), key_tpm);

    // --rekey: a new key made in the same TPM; key.tpm replaced (with the TCTI), the
    // lineage goes on.
    let fourth = renew_ok(&renew_base, &out, &["--rekey"]);
    let key_tpm2 = read(&out.join("key.tpm"));
    assert_ne!(key_tpm2, key_tpm, "--rekey writes a new key.tpm");
    assert!(key_tpm2.starts_with(&format!("TCTI: {tcti}\n")), "{key_tpm2}");
    renewal_record(&install, &fourth, &third).await;
    let cert4 = read(&out.join("cert.pem"));
    assert_ne!(spki(&cert4), spki(&cert2), "new TPM key");
    assert_verifies(work.path(), &chain, &cert4, "rekeyed");

    // `run` renews a TPM device too (the library's loop, with a clock at which the renewal
    // is due): through the TPM recorded in key.tpm.
    let layout = devid_agent::files::Layout::new(&out);
    let info = devid_agent::files::cert_info(&pki_der(&cert4)).unwrap();
    let real = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clock = SteppingClock { at: devid_core::UnixTime(info.not_after.0 - 60), real: real.clone() };
    let cfg = devid_agent::run::RunConfig {
        layout,
        enroll: None,
        renew: devid_agent::enroll::RenewPlan { server: renew_base.clone(), ca: None, rekey: false },
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let mut tx = Some(tx);
    let mut issued = Vec::new();
    let stop = async {
        let _ = rx.await;
    };
    let r = tokio::time::timeout(
        Duration::from_secs(120),
        devid_agent::run::run(&cfg, &clock, &devid_core::OsEntropy, stop, |o| {
            issued.push(o.serial.clone());
            real.store(true, std::sync::atomic::Ordering::SeqCst);
            if let Some(tx) = tx.take() {
                let _ = tx.send(());
            }
        }),
    )
    .await
    .expect("run stops");
    r.unwrap();
    assert_eq!(issued.len(), 1, "{issued:?}");
    renewal_record(&install, &issued[0], &fourth).await;
    assert_eq!(read(&out.join("key.tpm")), key_tpm2, "run keeps the key");

    let log = audit_lines(&install);
    let renews: Vec<&Value> = log
        .iter()
        .filter(|e| e["action"] == "certificate.renew" && e["details"]["device"] == device.as_str())
        .collect();
    assert_eq!(renews.len(), 4, "{renews:?}");
    assert_eq!(certs_of(&install, &device).await.len(), 5);

    drop(server);
    drop(tpm);
    install.cleanup().await;
}

/// The DER of the first PEM certificate of `text`.
fn pki_der(text: &str) -> Vec<u8> {
    pem::parse(text).unwrap().into_contents()
}

// --- 6. renewal refusals --------------------------------------------------------------

/// A client for the renewal listener presenting the identity in `dir` (key.pem, cert.pem,
/// and the issuing CA from chain.pem), trusting the root at the end of chain.pem.
fn mtls_client(dir: &Path) -> reqwest::Client {
    let chain = pki::split_pem(&read(&dir.join("chain.pem")));
    let identity = format!("{}{}{}", read(&dir.join("key.pem")), read(&dir.join("cert.pem")), chain[0]);
    tls_client(&chain[1], Some(reqwest::Identity::from_pem(identity.as_bytes()).unwrap()))
}

/// A rustls client trusting only `root_pem`, presenting `identity` when there is one.
fn tls_client(root_pem: &str, identity: Option<reqwest::Identity>) -> reqwest::Client {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(root_pem.as_bytes()).unwrap())
        .timeout(Duration::from_secs(30));
    if let Some(identity) = identity {
        builder = builder.identity(identity);
    }
    builder.build().unwrap()
}

/// POST /v1/renew with a fresh CSR through `client`.
async fn renew_with(
    client: &reqwest::Client,
    server: &Server,
    cn: &str,
) -> reqwest::Result<reqwest::Response> {
    let (_k, csr) = pki::csr_p256(cn);
    client.post(format!("{}/v1/renew", server.renew_base())).json(&json!({"csr": csr})).send().await
}

/// POST /v1/renew over mutual TLS as the device in `dir`, with a fresh CSR.
async fn renew_raw(server: &Server, dir: &Path) -> (u16, Value, String) {
    answer(renew_with(&mtls_client(dir), server, "renewing").await.unwrap()).await
}

async fn renewal_refusals(backend: Backend) {
    let Line { mut install, work, factory, .. } = x509_line(backend, "line-x", &[]).await;
    let server = serve_renewable(&mut install);

    // Plain HTTP has no client certificate.
    let (_k, csr) = pki::csr_p256("x");
    let (s, b, ct) = post(&server.url("/v1/renew"), &json!({"csr": csr})).await;
    assert_problem(s, &b, &ct, 403, "client-certificate-required");

    // Revoked: the agent is refused (exit 3, the code named), and so is a raw request.
    let out = work.path().join("revoked");
    let v = agent_x509(&server, "line-x", &factory.idevid("ACME-REV"), work.path(), &out);
    install.run_ok(&["revoke", &serial_of(&v), "--reason", "keyCompromise", "--json"]);
    let cert_before = read(&out.join("cert.pem"));
    renew_refused(&server, &out, "renewal-refused");
    assert_eq!(read(&out.join("cert.pem")), cert_before, "the files stay as they were");
    let (s, b, ct) = renew_raw(&server, &out).await;
    assert_problem(s, &b, &ct, 403, "renewal-refused");
    assert_eq!(certs_of(&install, "ACME-REV").await.len(), 1, "nothing issued");

    // Quarantined.
    let out = work.path().join("quarantined");
    agent_x509(&server, "line-x", &factory.idevid("ACME-Q"), work.path(), &out);
    install.run_ok(&["quarantine", "ACME-Q", "--json"]);
    let (s, b, ct) = renew_raw(&server, &out).await;
    assert_problem(s, &b, &ct, 403, "device-quarantined");
    renew_refused(&server, &out, "device-quarantined");
    assert_eq!(certs_of(&install, "ACME-Q").await.len(), 1, "nothing issued");
    // ... and it cannot enroll again either.
    let dev = factory.idevid("ACME-Q");
    let (_k, csr) = pki::csr_p256("ACME-Q");
    let (s, b, ct) = x509_enroll_raw(&server, "line-x", &dev, &dev.key, &csr).await;
    assert_problem(s, &b, &ct, 403, "device-quarantined");
    assert_eq!(certs_of(&install, "ACME-Q").await.len(), 1, "nothing issued");

    // A healthy device still renews (raw), and a renewal with a certificate of another
    // CA does not get past the TLS handshake.
    let out = work.path().join("healthy");
    let v = agent_x509(&server, "line-x", &factory.idevid("ACME-OK"), work.path(), &out);
    let (s, b, _) = renew_raw(&server, &out).await;
    assert_eq!(s, 200, "{b}");
    renewal_record(&install, &serial_of(&b), &serial_of(&v)).await;
    // The CSR's self-signature: checked for a new key (a broken one is refused), not again
    // for the key the TLS handshake just proved the device holds.
    let broken = |csr_pem: &str| {
        let b64: String = csr_pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let mut der = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        let n = der.len() - 3;
        der[n] ^= 0x01;
        devid_ca::to_pem("CERTIFICATE REQUEST", &der)
    };
    let renew_url = format!("{}/v1/renew", server.renew_base());
    let (_k, new_key_csr) = pki::csr_p256("ACME-OK");
    let r =
        mtls_client(&out).post(&renew_url).json(&json!({"csr": broken(&new_key_csr)})).send().await.unwrap();
    let (s, b, ct) = answer(r).await;
    assert_problem(s, &b, &ct, 400, "bad-csr");
    let device_key = KeyPair::from_pem(&read(&out.join("key.pem"))).unwrap();
    let same_key_csr = CertificateParams::new(Vec::new()).unwrap().serialize_request(&device_key).unwrap();
    let r = mtls_client(&out)
        .post(&renew_url)
        .json(&json!({"csr": broken(&same_key_csr.pem().unwrap())}))
        .send()
        .await
        .unwrap();
    let (s, b, _) = answer(r).await;
    assert_eq!(s, 200, "{b}");
    let foreign = work.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    let dev = factory.idevid("ACME-FOREIGN");
    std::fs::write(foreign.join("key.pem"), dev.key.serialize_pem()).unwrap();
    std::fs::write(foreign.join("cert.pem"), devid_ca::to_pem("CERTIFICATE", &dev.chain[0])).unwrap();
    let devid_root = pki::split_pem(&read(&out.join("chain.pem"))).pop().unwrap();
    let pems = [devid_ca::to_pem("CERTIFICATE", &dev.chain[1]), devid_root];
    std::fs::write(foreign.join("chain.pem"), pems.concat()).unwrap();
    let r = renew_with(&mtls_client(&foreign), &server, "ACME-FOREIGN").await;
    assert!(r.is_err(), "a certificate of another CA must not get an HTTP answer: {r:?}");
    assert_no_certificate(&install, "ACME-FOREIGN").await;
    drop(server);
    install.cleanup().await;
}

async fn renewal_past_grace_is_refused(backend: Backend) {
    let Line { mut install, work, factory, .. } = x509_line(backend, "short", &["--validity", "60s"]).await;
    install.env.push(("DEVID_ENROLL__RENEW_GRACE".into(), "0s".into()));
    let server = serve_renewable(&mut install);
    let out = work.path().join("dev");
    let v = agent_x509(&server, "short", &factory.idevid("ACME-SHORT"), work.path(), &out);
    let not_after = time::OffsetDateTime::parse(
        v["not_after"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let left = not_after - time::OffsetDateTime::now_utc();
    assert!(left <= time::Duration::seconds(60), "group validity caps the lifetime: {left}");
    // Wait (polling) until it has expired, by a whole second on the server's clock.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while time::OffsetDateTime::now_utc() < not_after + time::Duration::milliseconds(1100) {
        assert!(std::time::Instant::now() < deadline, "the certificate did not expire");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The TLS layer lets the expired certificate through; the policy refuses it.
    let (s, b, ct) = renew_raw(&server, &out).await;
    assert_problem(s, &b, &ct, 403, "renewal-refused");
    renew_refused(&server, &out, "renewal-refused");
    assert_eq!(certs_of(&install, "ACME-SHORT").await.len(), 1, "nothing issued");
    drop(server);
    install.cleanup().await;
}

// --- the TLS listener -----------------------------------------------------------------

async fn renewal_listener_tls(backend: Backend) {
    let Line { mut install, work, factory, .. } = x509_line(backend, "line-x", &[]).await;
    let server = serve_renewable(&mut install);
    let out = work.path().join("dev");
    agent_x509(&server, "line-x", &factory.idevid("ACME-TLS"), work.path(), &out);
    let chain = pki::split_pem(&read(&out.join("chain.pem")));
    std::fs::write(work.path().join("root.pem"), &chain[1]).unwrap();
    std::fs::write(work.path().join("issuing.pem"), &chain[0]).unwrap();
    std::fs::copy(out.join("cert.pem"), work.path().join("cert.pem")).unwrap();
    std::fs::copy(out.join("key.pem"), work.path().join("key.pem")).unwrap();
    let addr = server.renew_base().trim_start_matches("https://").to_string();
    let s_client = |extra: &[&str]| {
        let mut args =
            vec!["s_client", "-connect", &addr, "-CAfile", "root.pem", "-verify_return_error", "-brief"];
        args.extend_from_slice(extra);
        // s_client reads stdin: /dev/null ends the session after the handshake.
        pki::openssl(work.path(), &args)
    };
    let with_cert = ["-cert", "cert.pem", "-key", "key.pem", "-cert_chain", "issuing.pem"];

    // TLS 1.2 and 1.3 with the device certificate.
    for (flag, name) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let mut args = vec![flag];
        args.extend_from_slice(&with_cert);
        let (ok, text) = s_client(&args);
        assert!(ok, "{flag} with a client certificate: {text}");
        assert!(text.contains(&format!("Protocol version: {name}")), "{flag}: {text}");
    }
    // The server's suite preference (AES-128-GCM with SHA-256) wins over the client's
    // (AES-256-GCM with SHA-384 first).
    let mut args = vec!["-tls1_3", "-ciphersuites", "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256"];
    args.extend_from_slice(&with_cert);
    let (ok, text) = s_client(&args);
    assert!(ok, "TLS 1.3 offering AES-256 first: {text}");
    assert!(text.contains("Ciphersuite: TLS_AES_128_GCM_SHA256"), "{text}");
    // No client certificate: refused in the handshake. TLS 1.2: the server's alert ends
    // it. TLS 1.3: the server checks the client's (empty) Certificate after the client
    // has sent its Finished, so the alert arrives right after: -ign_eof waits for it.
    let (ok, text) = s_client(&["-tls1_2"]);
    assert!(!ok, "TLS 1.2 without a client certificate: {text}");
    assert!(
        text.contains("alert handshake failure") || text.contains("alert certificate required"),
        "{text}"
    );
    let (ok, text) = s_client(&["-tls1_3", "-ign_eof"]);
    assert!(!ok, "TLS 1.3 without a client certificate: {text}");
    assert!(text.contains("alert certificate required"), "TLS 1.3 without a client certificate: {text}");
    // reqwest without an identity gets no HTTP answer.
    let r = renew_with(&tls_client(&chain[1], None), &server, "x").await;
    assert!(r.is_err(), "a client without a certificate must not get an HTTP answer: {r:?}");
    // TLS 1.1 (and older) is refused, even when the client allows it.
    let mut args = vec!["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"];
    args.extend_from_slice(&with_cert);
    let (ok, text) = s_client(&args);
    assert!(!ok, "TLS 1.1 must fail: {text}");
    assert!(!text.contains("Protocol version: TLSv1.1"), "{text}");
    drop(server);
    install.cleanup().await;
}
