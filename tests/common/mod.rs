//! Shared helpers of the integration tests: run the real `devid` binary on port 0 against
//! a fresh database, and talk to it over HTTP.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub use devid_testkit::db::{Backend, TestDb};

/// Generate one `#[tokio::test]` per backend for each named `async fn name(Backend)`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name($crate::common::Backend::Sqlite).await } )*
        }
        mod postgres {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name($crate::common::Backend::Postgres).await } )*
        }
    };
}

/// The devid binary built for this test run.
pub fn devid_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_devid"))
}

/// Run a command to completion with captured output; a command still running after 120 s
/// is killed and the test fails (a command that should have stopped must not hang CI).
pub fn run_bounded(mut cmd: Command) -> Output {
    let child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
            panic!("{cmd:?} did not finish within 120 s");
        }
    }
}

/// A data directory and a database: what a devid installation is.
pub struct Install {
    pub dir: tempfile::TempDir,
    pub db: TestDb,
    /// Extra environment for every devid command of this installation.
    pub env: Vec<(String, String)>,
}

impl Install {
    pub async fn new(backend: Backend) -> Install {
        Install { dir: tempfile::tempdir().unwrap(), db: TestDb::new(backend).await, env: Vec::new() }
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// A devid command for this installation (global flags set).
    pub fn command(&self, args: &[&str]) -> Command {
        self.command_in(&self.data_path(), args)
    }

    /// Run a devid command to completion (killed, and the test failed, after 120 s).
    pub fn run(&self, args: &[&str]) -> Output {
        run_bounded(self.command(args))
    }

    /// Run a devid command that must succeed; returns stdout.
    pub fn run_ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "devid {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Register a device and return its token.
    pub fn add_device(&self, id: &str) -> String {
        let out = self.run_ok(&["device", "add", "--id", id, "--json"]);
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["id"], id);
        v["token"].as_str().unwrap().to_string()
    }

    /// Start `devid serve` on 127.0.0.1:0 and wait until it listens.
    pub fn serve(&self) -> Server {
        self.serve_with(&[])
    }

    pub fn serve_with(&self, extra: &[&str]) -> Server {
        let mut args = vec!["serve", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        start_server(self.command(&args))
    }

    pub async fn cleanup(self) {
        self.db.cleanup().await;
    }
}

/// A running `devid serve`; killed when dropped.
pub struct Server {
    child: Child,
    pub base: String,
    pub banner: Vec<String>,
    stderr: std::sync::Mutex<mpsc::Receiver<String>>,
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// The renewal listener's base URL (`https://127.0.0.1:PORT`).
    pub fn renew_base(&self) -> String {
        self.banner.iter().find_map(|l| l.strip_prefix("renewal listener on ")).unwrap().to_string()
    }

    /// The responder listener's base URL (`http://127.0.0.1:PORT`, with `ocsp.listen`) and
    /// its number of event loops.
    pub fn responder(&self) -> (String, usize) {
        let line = self
            .banner
            .iter()
            .find_map(|l| l.strip_prefix("responder listener on "))
            .expect("a responder listener");
        let (url, rest) = line.split_once(" (").unwrap();
        (url.to_string(), rest.split(' ').next().unwrap().parse().unwrap())
    }

    /// The root fingerprint the server printed.
    pub fn root_fingerprint(&self) -> String {
        self.banner.iter().find_map(|l| l.strip_prefix("root CA SHA-256 fingerprint: ")).unwrap().to_string()
    }

    /// Stop with SIGTERM (graceful) and return what it logged.
    pub fn stop(mut self) -> String {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(100));
        match self.stderr.lock() {
            Ok(rx) => rx.try_iter().collect::<Vec<_>>().join("\n"),
            Err(_) => String::new(),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

/// POST /v1/enroll with a token and a CSR; returns (status, JSON body, content type).
pub async fn enroll(server: &Server, token: &str, csr_pem: &str) -> (u16, serde_json::Value, String) {
    let body = serde_json::json!({ "method": "token", "token": token, "csr": csr_pem });
    let resp = http().post(server.url("/v1/enroll")).json(&body).send().await.unwrap();
    let status = resp.status().as_u16();
    let ct = resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let v = resp.json::<serde_json::Value>().await.unwrap_or(serde_json::Value::Null);
    (status, v, ct)
}

/// Assert a response is an RFC 9457 problem of the given status and type code.
pub fn assert_problem(status: u16, body: &serde_json::Value, ct: &str, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "body: {body}");
    assert_eq!(ct, "application/problem+json", "body: {body}");
    assert_eq!(body["status"], want_status, "body: {body}");
    assert_eq!(body["type"], format!("urn:devid:problem:{want_code}"), "body: {body}");
    assert!(body["title"].is_string() && body["detail"].is_string(), "body: {body}");
}

// --- Revocation publishing (OCSP, CRL): helpers of tests/ocsp.rs and tests/crl.rs ---

/// A device enrolled through a server: its certificate and the chain, PEM.
pub struct Enrolled {
    pub device: String,
    pub serial: String,
    pub cert_pem: String,
    pub issuing_pem: String,
    pub root_pem: String,
}

/// Register a device, enroll it with a fresh P-256 key, and return what it received.
pub async fn enroll_device(install: &Install, server: &Server, id: &str) -> Enrolled {
    let token = install.add_device(id);
    let (_key, csr) = devid_testkit::pki::csr_p256(id);
    let (status, body, _) = enroll(server, &token, &csr).await;
    assert_eq!(status, 200, "enroll {id}: {body}");
    let chain = devid_testkit::pki::split_pem(body["chain"].as_str().unwrap());
    assert_eq!(chain.len(), 2, "{body}");
    Enrolled {
        device: id.to_string(),
        serial: body["serial"].as_str().unwrap().to_string(),
        cert_pem: body["certificate"].as_str().unwrap().to_string(),
        issuing_pem: chain[0].clone(),
        root_pem: chain[1].clone(),
    }
}

/// What [`enroll_device_with_key`] returns: an enrolled device with its private key.
pub struct EnrolledWithKey {
    pub key_pem: String,
    pub cert_pem: String,
    pub issuing_pem: String,
    pub root_pem: String,
}

/// Register and enroll a device, keeping its private key (PKCS#8 PEM).
pub async fn enroll_device_with_key(install: &Install, server: &Server, id: &str) -> EnrolledWithKey {
    let token = install.add_device(id);
    let (key, csr) = devid_testkit::pki::csr_p256(id);
    let (status, body, _) = enroll(server, &token, &csr).await;
    assert_eq!(status, 200, "enroll {id}: {body}");
    let chain = devid_testkit::pki::split_pem(body["chain"].as_str().unwrap());
    EnrolledWithKey {
        key_pem: key.serialize_pem(),
        cert_pem: body["certificate"].as_str().unwrap().to_string(),
        issuing_pem: chain[0].clone(),
        root_pem: chain[1].clone(),
    }
}

/// A scratch directory where files are written by name and `openssl` runs.
pub struct OpensslDir {
    pub dir: tempfile::TempDir,
}

impl OpensslDir {
    /// A new directory holding `root.pem`, `issuing.pem` and `chain.pem` (root + issuing)
    /// of the CA that issued `e`.
    pub fn with_chain(e: &Enrolled) -> OpensslDir {
        let d = OpensslDir { dir: tempfile::tempdir().unwrap() };
        d.write("root.pem", &e.root_pem);
        d.write("issuing.pem", &e.issuing_pem);
        d.write("chain.pem", format!("{}{}", e.root_pem, e.issuing_pem));
        d
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) {
        std::fs::write(self.dir.path().join(name), contents).unwrap();
    }

    pub fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.dir.path().join(name)).unwrap()
    }

    /// Run `openssl ARGS` here (killed after 120 s); returns (success, stdout + stderr).
    pub fn openssl(&self, args: &[&str]) -> (bool, String) {
        let mut cmd = Command::new("openssl");
        cmd.args(args).current_dir(self.dir.path());
        let out = run_bounded(cmd);
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    /// `openssl ocsp -issuer issuing.pem ARGS -url URL -CAfile root.pem -verify_other
    /// issuing.pem -timeout 20`: a query over HTTP POST, the response verified up to the
    /// root.
    pub fn ocsp(&self, url: &str, args: &[&str]) -> (bool, String) {
        let mut all = vec!["ocsp", "-issuer", "issuing.pem"];
        all.extend_from_slice(args);
        all.extend_from_slice(&[
            "-url",
            url,
            "-CAfile",
            "root.pem",
            "-verify_other",
            "issuing.pem",
            "-timeout",
            "20",
        ]);
        self.openssl(&all)
    }

    /// `openssl crl -inform DER -noout -text` of a DER CRL, verified with the issuing CA.
    pub fn crl_text(&self, der: &[u8]) -> String {
        self.write("fetched.crl", der);
        let (ok, text) = self.openssl(&[
            "crl",
            "-inform",
            "DER",
            "-in",
            "fetched.crl",
            "-noout",
            "-text",
            "-CAfile",
            "issuing.pem",
        ]);
        assert!(ok && text.contains("verify OK"), "openssl crl: {text}");
        text
    }
}

/// The CRL number that `openssl crl -text` printed.
pub fn crl_number(text: &str) -> u64 {
    let mut lines = text.lines();
    while let Some(l) = lines.next() {
        if l.contains("X509v3 CRL Number") {
            return lines.next().unwrap().trim().parse().unwrap();
        }
    }
    panic!("no CRL number in:\n{text}")
}

/// A GET with an optional If-None-Match: (status, headers, body).
pub async fn get(url: &str, if_none_match: Option<&str>) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut req = http().get(url);
    if let Some(tag) = if_none_match {
        req = req.header("if-none-match", tag);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.bytes().await.unwrap().to_vec())
}

/// A header as a string ("" when absent).
pub fn header(h: &reqwest::header::HeaderMap, name: &str) -> String {
    h.get(name).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default()
}

/// The `max-age` of a Cache-Control value.
pub fn max_age(cache_control: &str) -> Option<i64> {
    cache_control.split(',').find_map(|d| d.trim().strip_prefix("max-age=")).and_then(|v| v.parse().ok())
}

/// Call `f` every `every` until it returns `Some`, for at most `limit`; returns the value
/// and the time it took, or `None` when the limit passed.
pub async fn poll_until<T>(
    limit: Duration,
    every: Duration,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> Option<(T, Duration)> {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = f().await {
            return Some((v, start.elapsed()));
        }
        if start.elapsed() >= limit {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

/// Copy a directory tree, keeping file and directory permissions (a data directory: keys
/// and the key-encryption key).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    std::fs::set_permissions(to, std::fs::metadata(from).unwrap().permissions()).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

impl Install {
    /// The data directory that [`Install::command`] passes.
    pub fn data_path(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Like [`Install::command`], with another data directory (a replica on the same
    /// database).
    pub fn command_in(&self, data_dir: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(devid_bin());
        c.args(args)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--database-url")
            .arg(&self.db.url)
            .env("RUST_LOG", "warn")
            // The renewal listener on a free port: tests run side by side.
            .env("DEVID_TLS__LISTEN", "127.0.0.1:0")
            // Tests enroll one device many times on purpose; tests/ratelimit.rs sets limits.
            .env("DEVID_LIMITS__PER_DEVICE", "0")
            .stdin(Stdio::null());
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// `devid serve` on 127.0.0.1:0 with another data directory, on this database.
    pub fn serve_in(&self, data_dir: &Path) -> Server {
        start_server(self.command_in(data_dir, &["serve", "--listen", "127.0.0.1:0"]))
    }
}

/// Spawn a `devid serve` command and wait until it listens; panics with its output if it
/// exits or does not listen within 60 s.
pub fn start_server(mut cmd: Command) -> Server {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (etx, erx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = etx.send(line);
        }
    });
    let mut banner = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                let done = line.starts_with("listening on ");
                banner.push(line);
                if done {
                    break;
                }
            }
            Err(_) => {
                if let Ok(Some(status)) = child.try_wait() {
                    let err: Vec<String> = erx.try_iter().collect();
                    panic!("devid serve exited with {status}: {banner:?}\n{}", err.join("\n"));
                }
                assert!(std::time::Instant::now() < deadline, "devid serve did not start: {banner:?}");
            }
        }
    }
    let base = banner.last().unwrap().trim_start_matches("listening on ").to_string();
    Server { child, base, banner, stderr: std::sync::Mutex::new(erx) }
}

impl Server {
    /// The issuing CA id the server printed.
    pub fn issuing_ca(&self) -> String {
        self.banner.iter().find_map(|l| l.strip_prefix("issuing CA: ")).unwrap().to_string()
    }
}

/// A credential made with `devid credential create`.
#[derive(Clone, Debug)]
pub struct Cred {
    pub client_id: String,
    pub secret: String,
}

/// `devid credential create --role ROLE --json`.
pub fn cli_credential(install: &Install, role: &str) -> Cred {
    let name = format!("test {role}");
    let out = install.run_ok(&["credential", "create", "--role", role, "--name", &name, "--json"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["role"], role, "{v}");
    let cred = Cred {
        client_id: v["client_id"].as_str().unwrap().to_string(),
        secret: v["client_secret"].as_str().unwrap().to_string(),
    };
    assert!(cred.client_id.starts_with("devid_ci_"), "{v}");
    assert!(cred.secret.starts_with("devid_cs_"), "{v}");
    cred
}

/// An access token for a credential (client-credentials grant), which must be granted.
pub async fn access_token(server: &Server, c: &Cred) -> String {
    let r = http()
        .post(server.url("/v1/auth/token"))
        .basic_auth(&c.client_id, Some(&c.secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "token for {}", c.client_id);
    let v: serde_json::Value = r.json().await.unwrap();
    v["access_token"].as_str().unwrap().to_string()
}
