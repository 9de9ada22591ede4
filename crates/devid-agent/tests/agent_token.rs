//! `devid-agent enroll --method token` against the real `devid` server binary.
//!
//! The server binary: see `common::devid_bin`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::{Server, agent_bin, devid};

/// Run to completion, killed after 120 s.
fn run_bounded(cmd: Command) -> Output {
    common::run_within(cmd, Duration::from_secs(120))
}

fn add_device(data: &Path, id: &str) -> String {
    let out = run_bounded(devid(data, &["device", "add", "--id", id, "--json"]));
    assert!(out.status.success(), "device add: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["token"].as_str().unwrap().to_string()
}

fn serve(data: &Path) -> Server {
    common::start_server(devid(data, &["serve", "--listen", "127.0.0.1:0"]))
}

fn agent(args: &[&str]) -> Command {
    let mut c = Command::new(agent_bin());
    c.args(args).env("RUST_LOG", "warn").env_remove("DEVID_AGENT_TOKEN");
    c
}

/// `devid-agent enroll --server <server> --method <method> <extra…> --out <out>`.
fn enroll(server: &str, method: &str, extra: &[&str], out: &str) -> Command {
    let mut args = vec!["enroll", "--server", server, "--method", method];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--out", out]);
    agent(&args)
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
    let mut cmd = enroll(&server.base, "token", &["--json"], out_str);
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
    let out = run_bounded(enroll(&server.base, "token", &["--token", &token], out_str));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("enrollment failed: 409"), "{stderr}");
    assert!(stderr.contains('[') && stderr.contains(']'), "the problem code is shown: {stderr}");
    assert!(!stderr.contains(&token), "{stderr}");
    assert_eq!(std::fs::read(out_dir.join("cert.pem")).unwrap(), before);

    // An unknown token: 401.
    let out = run_bounded(enroll(&server.base, "token", &["--token", "nope"], out_str));
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
}

/// Nobody listens on the discard port.
const UNREACHABLE: &str = "http://127.0.0.1:9";

#[test]
fn usage_errors_and_an_unreachable_server() {
    let work = tempfile::tempdir().unwrap();
    let out_str = work.path().join("o");
    let out_str = out_str.to_str().unwrap();
    // No token.
    let out = run_bounded(enroll(UNREACHABLE, "token", &[], out_str));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--token"));
    // x509 without a group.
    let out = run_bounded(enroll(UNREACHABLE, "symmetric", &[], out_str));
    assert_eq!(out.status.code(), Some(2));
    // Nobody listens on the discard port: unavailable, exit code 4.
    let out = run_bounded(enroll(UNREACHABLE, "token", &["--token", "t"], out_str));
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
