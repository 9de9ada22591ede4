//! Rate limits: per source address on the enrollment routes, per device, per credential,
//! per group (its own rate), with 429 problems that say when to retry; and shared across
//! replicas on one database.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use common::{Backend, Install, Server, access_token, cli_credential, enroll, http};
use devid_testkit::pki;
use serde_json::{Value, json};

on_both_backends!(limits_answer_429_with_retry_after);

fn assert_429(status: u16, headers: &reqwest::header::HeaderMap, body: &Value, ctx: &str) {
    assert_eq!(status, 429, "{ctx}: {body}");
    assert_eq!(body["type"], "urn:devid:problem:rate-limited", "{ctx}: {body}");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{ctx}: Retry-After {retry}");
}

async fn post(server: &Server, path: &str, body: Value) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = http().post(server.url(path)).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.json().await.unwrap_or(Value::Null))
}

/// A symmetric enrollment of `device` in `group` (challenge, proof, enroll).
async fn symmetric_enroll(
    server: &Server,
    group: &str,
    master: &[u8],
    device: &str,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let (s, _, c) =
        post(server, "/v1/enroll/challenge", json!({"group": group, "method": "symmetric"})).await;
    assert_eq!(s, 201, "{c}");
    let nonce = B64.decode(c["nonce"].as_str().unwrap()).unwrap();
    let (_k, csr) = pki::csr_p256(device);
    let der = pem::parse(&csr).unwrap().into_contents();
    let key = devid_attest::symmetric::derive_device_key(master, device);
    let proof = devid_attest::symmetric::proof(&key, &devid_attest::binding(&nonce, &der));
    let body = json!({"method": "symmetric", "group": group, "device_id": device,
        "nonce": B64.encode(&nonce), "proof": B64.encode(proof), "csr": csr});
    post(server, "/v1/enroll", body).await
}

async fn limits_answer_429_with_retry_after(backend: Backend) {
    let mut install = Install::new(backend).await;
    install.env.push(("DEVID_LIMITS__PER_SOURCE".into(), "12".into()));
    install.env.push(("DEVID_LIMITS__PER_DEVICE".into(), "2".into()));
    install.env.push(("DEVID_LIMITS__PER_CREDENTIAL".into(), "10".into()));
    let server = install.serve();

    // Per device: a burst of 2, then 429 (the retry of an enrollment counts too).
    let token = install.add_device("limited-1");
    let (_k, csr) = pki::csr_p256("limited-1");
    for _ in 0..2 {
        let (s, b, _) = enroll(&server, &token, &csr).await;
        assert_eq!(s, 200, "{b}");
    }
    let r = http()
        .post(server.url("/v1/enroll"))
        .json(&json!({"method": "token", "token": token, "csr": csr}))
        .send()
        .await
        .unwrap();
    let (s, h) = (r.status().as_u16(), r.headers().clone());
    assert_429(s, &h, &r.json().await.unwrap(), "per device");

    // Per group: its own rate (1 a minute, burst 1).
    let out = install.run_ok(&[
        "group",
        "add",
        "slow",
        "--method",
        "symmetric",
        "--registration",
        "optional",
        "--rate",
        "1",
        "--json",
    ]);
    let g: Value = serde_json::from_str(out.trim()).unwrap();
    let master = B64.decode(g["master_key"].as_str().unwrap()).unwrap();
    let (s, _, b) = symmetric_enroll(&server, "slow", &master, "sym-1").await;
    assert_eq!(s, 200, "{b}");
    let (s, h, b) = symmetric_enroll(&server, "slow", &master, "sym-2").await;
    assert_429(s, &h, &b, "per group");
    let store = devid_store::connect(&install.db.url).await.unwrap();
    let sym2 = devid_core::DeviceId::new("sym-2").unwrap();
    assert!(store.list_certificates(Some(&sym2), None, 10).await.unwrap().items.is_empty());

    // Per credential: 10 a minute, burst 10.
    let admin = cli_credential(&install, "admin");
    let t = access_token(&server, &admin).await;
    let mut limited = None;
    for _ in 0..12 {
        let r = http().get(server.url("/v1/devices")).bearer_auth(&t).send().await.unwrap();
        if r.status() == 429 {
            let h = r.headers().clone();
            limited = Some((h, r.json::<Value>().await.unwrap()));
            break;
        }
        assert_eq!(r.status(), 200);
    }
    let (h, b) = limited.expect("the 11th API call is limited");
    assert_429(429, &h, &b, "per credential");

    // Per source: 12 a minute with a burst of 10 on the enrollment routes, counted before
    // anything else (so malformed requests count too). Some were used above.
    let mut refused = 0;
    for _ in 0..12 {
        let (s, h, b) =
            post(&server, "/v1/enroll/challenge", json!({"group": "slow", "method": "bogus"})).await;
        if s == 429 {
            assert_429(s, &h, &b, "per source");
            refused += 1;
        } else {
            assert_eq!(s, 400, "{b}");
        }
    }
    assert!(refused >= 2, "{refused}");
    let text = http().get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.lines().any(|l| l.starts_with("devid_rate_limited_total ") && !l.ends_with(" 0")), "{text}");
    drop(server);
    install.cleanup().await;
}

/// Two replicas on one database share a per-source limit: each enforces half once it has
/// seen the other's heartbeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_the_limits() {
    let mut install = Install::new(Backend::Postgres).await;
    install.env.push(("DEVID_LIMITS__PER_SOURCE".into(), "40".into()));
    let a = install.serve();
    // A replica: the same keys (a copy of the data directory), the same database.
    let replica = install.dir.path().join("replica");
    common::copy_dir(&install.data_path(), &replica);
    let b = install.serve_in(&replica);
    // Heartbeats are every 5 s: after a little more, each node counts two.
    let deadline = Instant::now() + Duration::from_secs(30);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut ok = 0;
    for i in 0..40 {
        let server = if i % 2 == 0 { &a } else { &b };
        let (s, _, _) =
            post(server, "/v1/enroll/challenge", json!({"group": "none", "method": "x509"})).await;
        if s != 429 {
            ok += 1;
        }
    }
    // Burst of 10 (a tenth of... at least ten) split over two nodes: 5 each.
    assert!(ok <= 12, "{ok} passed; the limit must hold across replicas");
    assert!(ok >= 8, "{ok} passed");
    assert!(Instant::now() < deadline);
    drop((a, b));
    install.cleanup().await;
}
