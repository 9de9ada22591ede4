//! `devid-agent enroll --method token` against the real `devid` server binary.
//!
//! The server binary is taken from `DEVID_BIN` when set, else from the target directory of
//! this test (`<target>/<profile>/devid`), built with `cargo build -p devid` first when it
//! is not there.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
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
    // <target>/<profile>/deps/agent_token-<hash>
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

/// Run to completion, killed after 120 s.
fn run_bounded(mut cmd: Command) -> Output {
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

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn devid(data: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(devid_bin());
    c.args(args).arg("--data-dir").arg(data).env("RUST_LOG", "warn").env("DEVID_TLS__LISTEN", "127.0.0.1:0");
    c
}

fn add_device(data: &Path, id: &str) -> String {
    let out = run_bounded(devid(data, &["device", "add", "--id", id, "--json"]));
    assert!(out.status.success(), "device add: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["token"].as_str().unwrap().to_string()
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
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                if let Some(base) = line.strip_prefix("listening on ") {
                    return Server { child, base: base.trim().to_string() };
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

fn agent(args: &[&str]) -> Command {
    let mut c = Command::new(agent_bin());
    c.args(args).env("RUST_LOG", "warn").env_remove("DEVID_AGENT_TOKEN");
    c
}

#[test]
fn enroll_with_a_token_end_to_end() {
    let data = tempfile::tempdir().unwrap();
    let token = add_device(data.path(), "sensor-0001");
    let server = serve(data.path());
    let work = tempfile::tempdir().unwrap();
    let out_dir = work.path().join("identity");
    let out_str = out_dir.to_str().unwrap();

    // The token from the environment, JSON output.
    let mut cmd =
        agent(&["enroll", "--server", &server.base, "--method", "token", "--out", out_str, "--json"]);
    cmd.env("DEVID_AGENT_TOKEN", &token);
    let out = run_bounded(cmd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "enroll failed: {stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["device_id"], "sensor-0001", "{v}");
    assert_eq!(v["serial"].as_str().unwrap().len(), 40, "{v}");
    assert!(v["not_after"].as_str().unwrap().ends_with('Z'), "{v}");
    for (field, name) in [("cert", "cert.pem"), ("chain", "chain.pem"), ("key", "key.pem")] {
        assert_eq!(v[field], out_dir.join(name).to_str().unwrap(), "{v}");
    }
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr);
    assert!(!all.contains(&token), "the token must not be printed");
    assert!(!all.contains("PRIVATE KEY"), "the key must not be printed");

    // The files: key 0600, new directory 0700, the certificate is for the key.
    assert_eq!(std::fs::metadata(&out_dir).unwrap().mode() & 0o777, 0o700);
    assert_eq!(std::fs::metadata(out_dir.join("key.pem")).unwrap().mode() & 0o777, 0o600);
    let key_pem = std::fs::read_to_string(out_dir.join("key.pem")).unwrap();
    let key = devid_agent::keys::DeviceKey::from_pkcs8_pem(&key_pem).unwrap();
    let cert_pem = std::fs::read_to_string(out_dir.join("cert.pem")).unwrap();
    let cert_der = devid_agent::keys::pem_certificates(&cert_pem).unwrap().remove(0);
    assert_eq!(devid_agent::files::cert_spki_der(&cert_der).unwrap(), key.spki_der());
    let chain =
        devid_agent::keys::pem_certificates(&std::fs::read_to_string(out_dir.join("chain.pem")).unwrap())
            .unwrap();
    assert_eq!(chain.len(), 2);

    // openssl agrees: the chain verifies for client authentication.
    let root = work.path().join("root.pem");
    let issuing = work.path().join("issuing.pem");
    std::fs::write(&root, devid_agent::keys::certificate_pem(&chain[1])).unwrap();
    std::fs::write(&issuing, devid_agent::keys::certificate_pem(&chain[0])).unwrap();
    let mut verify = Command::new("openssl");
    verify
        .args(["verify", "-x509_strict", "-purpose", "sslclient", "-CAfile"])
        .arg(&root)
        .arg("-untrusted")
        .arg(&issuing)
        .arg(out_dir.join("cert.pem"));
    let v_out = run_bounded(verify);
    assert!(v_out.status.success(), "openssl verify: {}", String::from_utf8_lossy(&v_out.stdout));

    // The same token again: refused, shown as the server's problem, exit code 3, the old
    // files untouched.
    let before = std::fs::read(out_dir.join("cert.pem")).unwrap();
    let out = run_bounded(agent(&[
        "enroll",
        "--server",
        &server.base,
        "--method",
        "token",
        "--token",
        &token,
        "--out",
        out_str,
    ]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("enrollment failed: 409"), "{stderr}");
    assert!(stderr.contains('[') && stderr.contains(']'), "the problem code is shown: {stderr}");
    assert!(!stderr.contains(&token), "{stderr}");
    assert_eq!(std::fs::read(out_dir.join("cert.pem")).unwrap(), before);

    // An unknown token: 401.
    let out = run_bounded(agent(&[
        "enroll",
        "--server",
        &server.base,
        "--method",
        "token",
        "--token",
        "nope",
        "--out",
        out_str,
    ]));
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
}

#[test]
fn usage_errors_and_an_unreachable_server() {
    let work = tempfile::tempdir().unwrap();
    let out_str = work.path().join("o");
    let out_str = out_str.to_str().unwrap();
    // No token.
    let out = run_bounded(agent(&[
        "enroll",
        "--server",
        "http://127.0.0.1:9",
        "--method",
        "token",
        "--out",
        out_str,
    ]));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--token"));
    // x509 without a group.
    let out = run_bounded(agent(&[
        "enroll",
        "--server",
        "http://127.0.0.1:9",
        "--method",
        "symmetric",
        "--out",
        out_str,
    ]));
    assert_eq!(out.status.code(), Some(2));
    // Nobody listens on the discard port: unavailable, exit code 4.
    let out = run_bounded(agent(&[
        "enroll",
        "--server",
        "http://127.0.0.1:9",
        "--method",
        "token",
        "--token",
        "t",
        "--out",
        out_str,
    ]));
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!work.path().join("o").join("key.pem").exists());
}

#[test]
fn help_documents_every_flag() {
    for (sub, flags) in [
        (
            "enroll",
            &[
                "--server",
                "--method",
                "--token",
                "--idevid-cert",
                "--idevid-key",
                "--device-id",
                "--device-key",
                "--group-key",
                "--tpm-tcti",
                "--ek",
                "--out",
                "--ca",
                "--group",
                "--json",
            ][..],
        ),
        ("renew", &["--server", "--out", "--ca", "--rekey", "--json"][..]),
        ("run", &["--server", "--renew-server", "--out", "--ca", "--renew-ca", "--method", "--rekey"][..]),
    ] {
        let out = run_bounded(agent(&[sub, "--help"]));
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        for f in flags {
            assert!(text.contains(f), "{sub} --help lacks {f}:\n{text}");
        }
        assert!(text.contains("Exit codes"), "{text}");
    }
}
