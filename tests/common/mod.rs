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
        let mut c = Command::new(devid_bin());
        c.args(args)
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg("--database-url")
            .arg(&self.db.url)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null());
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
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
        let mut child = self.command(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
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
