//! `GET /metrics`: the real binary counts what it did (an enrollment, a refused one, OCSP
//! answers from the signer and from the cache) and renders it in the Prometheus text format.
//! Metrics do not depend on the store, so this runs on SQLite only.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Backend, Install, OpensslDir, enroll, http};

/// The value of the sample line `series` (`name{labels}` exactly as rendered).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_enrollments_ocsp_and_requests() {
    let install = Install::new(Backend::Sqlite).await;
    let server = install.serve();

    // One enrollment, one refused (unknown token).
    let token = install.add_device("metrics-ok");
    let (_key, csr) = devid_testkit::pki::csr_p256("metrics-ok");
    let (status, body, _) = enroll(&server, &token, &csr).await;
    assert_eq!(status, 200, "{body}");
    let cert_pem = body["certificate"].as_str().unwrap().to_string();
    let serial = body["serial"].as_str().unwrap().to_string();
    let chain = devid_testkit::pki::split_pem(body["chain"].as_str().unwrap());
    let bad_token = "devid_et_not-a-real-token-but-secret-looking";
    let (status, body, _) = enroll(&server, bad_token, &csr).await;
    assert_eq!(status, 401, "{body}");

    // OCSP over POST twice, without a nonce, right after the enrollment: both answers come
    // from the cache, since the node pre-signed the answer when it stored the certificate
    // (before the enrollment answered; the change-log poll runs only every 200 ms).
    let e = common::Enrolled {
        device: "metrics-ok".into(),
        serial: serial.clone(),
        cert_pem,
        issuing_pem: chain[0].clone(),
        root_pem: chain[1].clone(),
    };
    let d = OpensslDir::with_chain(&e);
    d.write("a.pem", &e.cert_pem);
    let url = server.url("/ocsp");
    for _ in 0..2 {
        let (ok, out) = d.ocsp(&url, &["-no_nonce", "-cert", "a.pem"]);
        assert!(ok && out.contains("a.pem: good"), "{out}");
    }

    let r = http().get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/plain"), "{ct}");
    assert!(ct.contains("version=0.0.4"), "{ct}");
    let text = r.text().await.unwrap();

    let v = |series: &str| value(&text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"));
    assert_eq!(v("devid_certificates_issued_total{method=\"token\"}"), 1.0);
    assert_eq!(v("devid_enrollment_failures_total{reason=\"token-invalid\"}"), 1.0);
    assert_eq!(v("devid_enrollment_failures_total{reason=\"token-used\"}"), 0.0);
    assert_eq!(v("devid_ocsp_responses_total{source=\"cache\"}"), 2.0, "{text}");
    assert_eq!(v("devid_ocsp_responses_total{source=\"signed\"}"), 0.0, "{text}");
    assert_eq!(v("devid_ocsp_responses_total{source=\"error\"}"), 0.0);
    assert!(v("devid_ocsp_cache_entries") >= 1.0, "{text}");
    assert_eq!(v("devid_http_requests_total{route=\"/v1/enroll\",method=\"POST\",status=\"200\"}"), 1.0);
    assert_eq!(v("devid_http_requests_total{route=\"/v1/enroll\",method=\"POST\",status=\"401\"}"), 1.0);
    assert_eq!(v("devid_http_requests_total{route=\"/ocsp\",method=\"POST\",status=\"200\"}"), 2.0);
    assert_eq!(v("devid_http_request_duration_seconds_count{route=\"/v1/enroll\",method=\"POST\"}"), 2.0);
    // Two CA signatures: the renewal listener's server certificate and the device's.
    assert_eq!(v("devid_kms_sign_seconds_count"), 2.0);
    assert_eq!(v("devid_kms_sign_seconds_bucket{le=\"+Inf\"}"), 2.0);
    assert_eq!(v("devid_attestation_failures_total{reason=\"bad-proof\"}"), 0.0);
    assert!(v("devid_kms_sign_seconds_sum") > 0.0, "{text}");
    assert_eq!(v("devid_certificates_revoked_total"), 0.0);
    assert!(text.contains("# TYPE devid_http_request_duration_seconds histogram\n"), "{text}");
    assert!(text.contains("# TYPE devid_ocsp_cache_entries gauge\n"), "{text}");

    // No secret in the output.
    assert!(!text.contains(&token) && !text.contains(bad_token), "{text}");
    assert!(!text.contains("devid_et_"), "{text}");

    // An unknown path counts as unmatched; the scrape itself counts under /metrics.
    let r = http().get(server.url("/no/such/route")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let text = http().get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert_eq!(
        value(&text, "devid_http_requests_total{route=\"unmatched\",method=\"GET\",status=\"404\"}"),
        Some(1.0)
    );
    assert_eq!(
        value(&text, "devid_http_requests_total{route=\"/metrics\",method=\"GET\",status=\"200\"}"),
        Some(1.0)
    );

    // A CRL was built at start; a revocation over REST counts once (revoking is idempotent).
    assert!(v("devid_crl_builds_total") >= 1.0, "{text}");
    assert!(v("devid_crl_build_seconds_count") >= 1.0, "{text}");
    let cred: serde_json::Value = serde_json::from_str(
        install.run_ok(&["credential", "create", "--role", "operator", "--json"]).trim(),
    )
    .unwrap();
    let (id, secret) = (cred["client_id"].as_str().unwrap(), cred["client_secret"].as_str().unwrap());
    let r = http()
        .post(server.url("/v1/auth/token"))
        .basic_auth(id, Some(secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let access: serde_json::Value = r.json().await.unwrap();
    let bearer = access["access_token"].as_str().unwrap().to_string();
    for _ in 0..2 {
        let r = http()
            .post(server.url(&format!("/v1/certificates/{serial}/revoke")))
            .bearer_auth(&bearer)
            .json(&serde_json::json!({"reason": "keyCompromise"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let text = http().get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert_eq!(value(&text, "devid_certificates_revoked_total"), Some(1.0), "{text}");
    assert_eq!(
        value(
            &text,
            "devid_http_requests_total{route=\"/v1/certificates/{serial}/revoke\",method=\"POST\",status=\"200\"}"
        ),
        Some(2.0),
        "{text}"
    );
    for secret in [secret, bearer.as_str()] {
        assert!(!text.contains(secret), "{text}");
    }

    // Every sample line is `name{labels} value` or `name value`, with a devid_ name.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, val) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {line:?}"));
        assert!(series.starts_with("devid_"), "{line}");
        assert!(val.parse::<f64>().is_ok(), "{line}");
    }

    drop(server);
    install.cleanup().await;
}

/// Request spans: at the default level (info), an admin or enrollment request's events carry
/// its span (method, path and the id the client got in x-request-id); the public revocation
/// routes (OCSP, CRL) get their span only at debug, which keeps it off brokers' hot path
/// (`request_span` in devid-api). Here tower-http's own per-request event is enabled (debug)
/// while devid's spans stay at info, so each request logs one line that shows which span
/// it got.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_spans_at_the_default_level() {
    let mut install = Install::new(Backend::Sqlite).await;
    install.env.push(("RUST_LOG".into(), "info,tower_http=debug".into()));
    let server = install.serve();
    let (_key, csr) = devid_testkit::pki::csr_p256("span-0");
    let body = serde_json::json!({ "method": "token", "token": "devid_et_not-a-real-token", "csr": csr });
    let r = http().post(server.url("/v1/enroll")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let enroll_id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let r = http().get(server.url("/ocsp/MAA%3D")).send().await.unwrap();
    assert_eq!(r.status(), 200, "an OCSP error status (malformedRequest) travels in a 200");
    let ocsp_id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let log = server.stop();
    let span = format!("request{{method=POST path=/v1/enroll request_id={enroll_id}}}");
    assert!(
        log.lines().any(|l| l.contains(" INFO ") && l.contains(&span) && l.contains("request refused")),
        "the refusal is logged in its span {span}:\n{log}"
    );
    assert!(log.lines().any(|l| l.contains(&span) && l.contains("started processing request")), "{log}");
    let started: Vec<&str> = log.lines().filter(|l| l.contains("started processing request")).collect();
    assert_eq!(started.len(), 2, "one line per request:\n{log}");
    assert!(
        !log.contains(&ocsp_id) && started.iter().any(|l| !l.contains("request{")),
        "the OCSP request has no span at info:\n{log}"
    );
}
