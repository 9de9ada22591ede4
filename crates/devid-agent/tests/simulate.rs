//! `devid-agent simulate` against the real `devid` server binary: every method with
//! renewal over mutual TLS and OCSP, and a wrong client secret.
//!
//! The server binary is taken from `DEVID_BIN` when set, else from the target directory of
//! this test (`<target>/<profile>/devid`), built with `cargo build -p devid` first when it
//! is not there.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn agent_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_devid-agent"))
}

/// The devid server binary (see the module doc).
fn devid_bin() -> PathBuf {
    if let Ok(p) = std::env::var("DEVID_BIN") {
        return PathBuf::from(p);
    }
    // <target>/<profile>/deps/simulate-<hash>
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let bin = profile_dir.join("devid");
    if !bin.is_file() {
        let target_dir = profile_dir.parent().unwrap();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "devid", "--target-dir"]).arg(target_dir);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.current_dir(env!("CARGO_MANIFEST_DIR")).status().unwrap();
        assert!(status.success(), "cargo build -p devid failed");
    }
    bin
}

/// Run to completion, killed after 180 s.
fn run_bounded(mut cmd: Command) -> Output {
    let child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(180)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
            panic!("{cmd:?} did not finish within 180 s");
        }
    }
}

struct Server {
    child: Child,
    base: String,
    renew: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn devid(data: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(devid_bin());
    c.args(args)
        .arg("--data-dir")
        .arg(data)
        .env("RUST_LOG", "warn")
        .env("DEVID_TLS__LISTEN", "127.0.0.1:0")
        .env("DEVID_ENROLL__RENEW_AFTER", "0")
        .env("DEVID_LIMITS__PER_SOURCE", "0")
        .env("DEVID_LIMITS__PER_DEVICE", "0")
        .env("DEVID_LIMITS__PER_CREDENTIAL", "0");
    c
}

/// An admin credential: (client id, client secret).
fn admin_credential(data: &Path) -> (String, String) {
    let out = run_bounded(devid(data, &["credential", "create", "--role", "admin", "--json"]));
    assert!(out.status.success(), "credential create: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (v["client_id"].as_str().unwrap().to_string(), v["client_secret"].as_str().unwrap().to_string())
}

fn serve(data: &Path) -> Server {
    let mut child = devid(data, &["serve", "--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut renew = None;
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                if let Some(r) = line.strip_prefix("renewal listener on ") {
                    renew = Some(r.trim().to_string());
                }
                if let Some(base) = line.strip_prefix("listening on ") {
                    let renew = renew.expect("the renewal listener is announced first");
                    return Server { child, base: base.trim().to_string(), renew };
                }
            }
            Err(_) => {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("devid serve exited with {status}");
                }
                assert!(std::time::Instant::now() < deadline, "devid serve did not start");
            }
        }
    }
}

fn simulate(server: &Server, client_id: &str, secret: &str, extra: &[&str]) -> Output {
    let mut c = Command::new(agent_bin());
    c.args(["simulate", "--server", &server.base, "--renew-server", &server.renew, "--client-id", client_id])
        .args(extra)
        .env("RUST_LOG", "warn")
        .env("DEVID_AGENT_CLIENT_SECRET", secret);
    run_bounded(c)
}

/// p50 ≤ p90 ≤ p99 ≤ max, all present and positive.
fn assert_percentiles(phase: &serde_json::Value, what: &str) {
    let p: Vec<f64> = ["p50_ms", "p90_ms", "p99_ms", "max_ms"]
        .iter()
        .map(|k| phase[*k].as_f64().unwrap_or_else(|| panic!("{what}: {k} missing in {phase}")))
        .collect();
    assert!(p[0] > 0.0, "{what}: {phase}");
    assert!(p.windows(2).all(|w| w[0] <= w[1]), "{what}: percentiles out of order: {phase}");
    assert!(phase["elapsed_s"].as_f64().unwrap() > 0.0, "{what}: {phase}");
    assert!(phase["per_second"].as_f64().unwrap() > 0.0, "{what}: {phase}");
}

#[test]
fn simulate_every_method_with_renewal_and_ocsp() {
    let data = tempfile::tempdir().unwrap();
    let (client_id, secret) = admin_credential(data.path());
    let server = serve(data.path());
    for method in ["token", "x509", "symmetric"] {
        let out = simulate(
            &server,
            &client_id,
            &secret,
            &[
                "--devices",
                "40",
                "--concurrency",
                "8",
                "--method",
                method,
                "--renew",
                "--ocsp-share",
                "0.5",
                "--json",
                "--seed",
                "7",
            ],
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{method}: {stderr}");
        assert!(!stdout.contains(&secret) && !stderr.contains(&secret), "the secret must not be printed");
        assert!(!stdout.contains("devid_et_") && !stderr.contains("devid_et_"), "tokens must not be printed");
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        eprintln!("{method}: {v}");
        assert_eq!(v["method"], method, "{v}");
        assert_eq!(v["devices"], 40, "{v}");
        assert_eq!(v["concurrency"], 8, "{v}");

        let enroll = &v["enroll"];
        assert_eq!(enroll["ok"], 40, "{method}: {v}");
        assert_eq!(enroll["errors"], serde_json::json!({}), "{method}: {v}");
        assert_percentiles(enroll, &format!("{method} enroll"));
        for k in ["ok", "errors", "per_second", "p50_ms", "p99_ms"] {
            assert_eq!(v[k], enroll[k], "{method}: top-level {k} is the enroll phase's: {v}");
        }

        let renew = &v["renew"];
        assert_eq!(renew["ok"], 40, "{method}: {v}");
        assert_eq!(renew["errors"], serde_json::json!({}), "{method}: {v}");
        assert_percentiles(renew, &format!("{method} renew"));

        let ocsp = &v["ocsp"];
        assert_eq!(ocsp["ok"], 20, "{method}: {v}");
        assert_eq!(ocsp["good"], 20, "{method}: {v}");
        assert_eq!(ocsp["revoked"], 0, "{method}: {v}");
        assert_eq!(ocsp["unknown"], 0, "{method}: {v}");
        assert_eq!(ocsp["errors"], serde_json::json!({}), "{method}: {v}");
        assert_percentiles(ocsp, &format!("{method} ocsp"));

        match method {
            "token" => assert!(v["group"].is_null(), "{v}"),
            _ => assert!(v["group"].as_str().unwrap().starts_with("sim-"), "{v}"),
        }
    }

    // The text summary: one line per phase.
    let out = simulate(&server, &client_id, &secret, &["--devices", "3", "--method", "symmetric"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l.starts_with("enroll ") && l.split_whitespace().nth(1) == Some("3")),
        "{text}"
    );
}

#[test]
fn a_wrong_client_secret_fails_the_setup_clearly() {
    let data = tempfile::tempdir().unwrap();
    let (client_id, _secret) = admin_credential(data.path());
    let server = serve(data.path());
    let wrong = "not-the-secret-0123456789";
    let out = simulate(&server, &client_id, wrong, &["--devices", "5", "--method", "token", "--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(out.stdout.is_empty(), "no report for a failed set-up");
    assert!(stderr.contains("cannot get an access token"), "{stderr}");
    assert!(stderr.contains("401"), "{stderr}");
    assert!(stderr.contains("client secret"), "{stderr}");
    assert!(!stderr.contains(wrong), "{stderr}");

    // No secret at all: a usage error.
    let mut c = Command::new(agent_bin());
    c.args(["simulate", "--server", &server.base, "--client-id", &client_id, "--devices", "1"])
        .args(["--method", "token"])
        .env_remove("DEVID_AGENT_CLIENT_SECRET");
    let out = run_bounded(c);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("DEVID_AGENT_CLIENT_SECRET"));
}
