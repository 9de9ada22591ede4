//! `devid-agent simulate` against the real `devid` server binary: every method with
//! renewal over mutual TLS and OCSP, and a wrong client secret.
//!
//! The server binary: see `common::devid_bin`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::{Server, agent_bin};

/// Run to completion, killed after 180 s.
fn run_bounded(cmd: Command) -> Output {
    common::run_within(cmd, Duration::from_secs(180))
}

/// A devid command with renewal at once and no rate limits.
fn devid(data: &Path, args: &[&str]) -> Command {
    let mut c = common::devid(data, args);
    c.env("DEVID_ENROLL__RENEW_AFTER", "0")
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

/// `devid serve`, whose renewal listener is announced before `listening on`.
fn serve(data: &Path) -> Server {
    let server = common::start_server(devid(data, &["serve", "--listen", "127.0.0.1:0"]));
    assert!(server.renew.is_some(), "the renewal listener is announced first");
    server
}

/// The renewal listener's base URL.
fn renew_base(server: &Server) -> &str {
    server.renew.as_deref().unwrap()
}

fn simulate(server: &Server, client_id: &str, secret: &str, extra: &[&str]) -> Output {
    let mut c = Command::new(agent_bin());
    c.args([
        "simulate",
        "--server",
        &server.base,
        "--renew-server",
        renew_base(server),
        "--client-id",
        client_id,
    ])
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

#[test]
fn an_open_loop_run_keeps_its_rates_and_says_so() {
    let data = tempfile::tempdir().unwrap();
    let (client_id, secret) = admin_credential(data.path());
    let server = serve(data.path());
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
            "token",
            "--renew",
            "--rate",
            "200",
            "--renew-rate",
            "100",
            "--json",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for (phase, rate) in [("enroll", 200.0), ("renew", 100.0)] {
        let p = &v[phase];
        assert_eq!(p["ok"], 40, "{phase}: {v}");
        assert_eq!(p["rate"], rate, "{phase}: {v}");
        assert!(p["max_start_lag_ms"].as_f64().unwrap() >= 0.0, "{phase}: {v}");
        // Device 39 is due 39/rate s after the start: the phase cannot end sooner.
        assert!(p["elapsed_s"].as_f64().unwrap() >= 39.0 / rate, "{phase}: {v}");
        assert!(p["per_second"].as_f64().unwrap() <= rate * 1.01, "{phase}: {v}");
        assert_percentiles(p, phase);
    }

    // A rate that is no rate is a usage error, before any set-up.
    for bad in ["0", "-5", "fast", "NaN", "inf"] {
        let flag = format!("--rate={bad}");
        let out = simulate(&server, &client_id, &secret, &["--devices", "1", "--method", "token", &flag]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--rate {bad}: {stderr}");
        assert!(stderr.contains("--rate"), "--rate {bad}: {stderr}");
    }
    // --renew-rate without --renew.
    let out =
        simulate(&server, &client_id, &secret, &["--devices", "1", "--method", "token", "--renew-rate", "5"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A renewal the server refuses is counted under its problem code, as an enrollment's is,
/// and the run still completes: here the server's default `enroll.renew_after` makes a
/// fresh certificate too young to renew.
#[test]
fn refused_renewals_are_counted_by_problem_code() {
    let data = tempfile::tempdir().unwrap();
    let (client_id, secret) = admin_credential(data.path());
    let mut c = common::devid(data.path(), &["serve", "--listen", "127.0.0.1:0"]);
    c.env("DEVID_LIMITS__PER_SOURCE", "0")
        .env("DEVID_LIMITS__PER_DEVICE", "0")
        .env("DEVID_LIMITS__PER_CREDENTIAL", "0");
    let server = common::start_server(c);
    let out =
        simulate(&server, &client_id, &secret, &["--devices", "6", "--method", "token", "--renew", "--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["enroll"]["ok"], 6, "{v}");
    assert_eq!(v["renew"]["ok"], 0, "{v}");
    assert_eq!(v["renew"]["errors"], serde_json::json!({"renewal-refused": 6}), "{v}");
    assert!(stderr.contains("too early"), "the first refusal's detail is logged: {stderr}");
}
