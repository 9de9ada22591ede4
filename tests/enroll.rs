//! Enrollment with a one-time token, end to end: the real binary, a real database (SQLite
//! and PostgreSQL), and openssl as the independent verifier.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Backend, Install, assert_problem, enroll, http};
use devid_testkit::pki;

on_both_backends!(
    enroll_end_to_end,
    bad_requests_are_problems,
    second_start_reuses_the_ca,
    one_token_yields_one_certificate_under_concurrency,
    concurrent_tokens_each_find_their_own_device,
);

async fn enroll_end_to_end(backend: Backend) {
    let install = Install::new(backend).await;
    let token = install.add_device("sensor-0001");
    let server = install.serve();
    let client = http();

    // Health and readiness.
    let r = client.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = client.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-request-id"));

    // The chain: issuing CA first, then the root.
    let r = client.get(server.url("/v1/ca/chain")).send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "application/pem-certificate-chain");
    let chain = r.text().await.unwrap();
    let blocks = pki::split_pem(&chain);
    assert_eq!(blocks.len(), 2, "{chain}");

    // A device enrolls with its token and a CSR that asks for more than it may get.
    let (_key, csr) = pki::csr_greedy("whatever-the-device-says");
    let before_ms = unix_ms();
    let (status, body, _) = enroll(&server, &token, &csr).await;
    let after_ms = unix_ms();
    assert_eq!(status, 200, "{body}");
    let cert = body["certificate"].as_str().unwrap().to_string();
    let serial = body["serial"].as_str().unwrap().to_string();
    assert_eq!(serial.len(), 40, "the serial is 20 octets: {serial}");
    assert!(u8::from_str_radix(&serial[..2], 16).unwrap() < 0x80, "positive serial");
    // Its first 6 octets are the issuance time in milliseconds (Serial::timed).
    let issued_ms = i64::from_str_radix(&serial[..12], 16).unwrap();
    assert!((before_ms..=after_ms).contains(&issued_ms), "{before_ms} <= {issued_ms} <= {after_ms}");
    assert_eq!(body["chain"].as_str().unwrap(), chain);
    let not_after = time::OffsetDateTime::parse(
        body["not_after"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let lifetime = not_after - time::OffsetDateTime::now_utc();
    assert!(lifetime > time::Duration::hours(23) && lifetime <= time::Duration::hours(24), "{lifetime}");

    // openssl verifies the chain strictly for client authentication ...
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = pki::openssl_verify(dir.path(), &blocks[1], &blocks[0], &cert);
    assert!(ok, "openssl verify: {out}");
    // ... and shows every extension of the profile, and none of what the CSR asked for.
    let text = pki::openssl_text(dir.path(), &cert);
    let base = &server.base;
    for needle in [
        "Subject: CN = sensor-0001".to_string(),
        "CA:FALSE".to_string(),
        "Digital Signature".to_string(),
        "TLS Web Client Authentication".to_string(),
        "URI:urn:devid:device:sensor-0001".to_string(),
        "X509v3 Subject Key Identifier".to_string(),
        "X509v3 Authority Key Identifier".to_string(),
        format!("OCSP - URI:{base}/ocsp"),
        format!("CA Issuers - URI:{base}/v1/ca/"),
        format!("URI:{base}/crl/"),
    ] {
        assert!(text.contains(&needle), "missing {needle}:\n{text}");
    }
    for absent in ["CA:TRUE", "DNS:", "evil.example.com", "whatever-the-device-says"] {
        assert!(!text.contains(absent), "{absent} must not be in the leaf:\n{text}");
    }

    // The AIA caIssuers URL serves the issuing CA, DER.
    let ca_issuers =
        text.lines().find_map(|l| l.trim().strip_prefix("CA Issuers - URI:")).unwrap().to_string();
    let r = client.get(&ca_issuers).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/pkix-cert");
    let der = r.bytes().await.unwrap();
    assert_eq!(devid_ca::to_pem("CERTIFICATE", &der), blocks[0]);

    // The certificate handed out is in the store, byte for byte.
    let store = devid_store::connect(&install.db.url).await.unwrap();
    let s = devid_core::Serial::from_hex(&serial).unwrap();
    let rec = store.get_certificate(&s).await.unwrap().expect("in the store");
    assert_eq!(rec.status, devid_store::CertStatus::Issued);
    assert_eq!(devid_ca::to_pem("CERTIFICATE", rec.cert_der.as_ref().unwrap()), cert);
    assert_eq!(rec.device.as_str(), "sensor-0001");

    // A retry with the same token and CSR is idempotent: the same certificate.
    let (status, again, _) = enroll(&server, &token, &csr).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["serial"], serial.as_str());
    assert_eq!(again["certificate"], cert.as_str());

    // The same token with another CSR: refused.
    let (_k2, csr2) = pki::csr_p256("other");
    let (status, body, ct) = enroll(&server, &token, &csr2).await;
    assert_problem(status, &body, &ct, 409, "token-used");

    // An unknown token.
    let (status, body, ct) = enroll(&server, "devid_et_not-a-real-token", &csr2).await;
    assert_problem(status, &body, &ct, 401, "token-invalid");

    let page = store.list_certificates(None, None, 100).await.unwrap();
    let devices: Vec<_> = page.items.iter().filter(|c| c.device.as_str() != "devid-tls-server").collect();
    assert_eq!(devices.len(), 1, "exactly one device certificate exists");
    drop(store);
    let log = server.stop();
    assert!(!log.contains(&token), "the token must never be logged");
    install.cleanup().await;
}

async fn bad_requests_are_problems(backend: Backend) {
    let install = Install::new(backend).await;
    let token = install.add_device("dev-bad");
    let server = install.serve();
    let client = http();
    let url = server.url("/v1/enroll");
    let (_k, csr) = pki::csr_p256("x");

    let send = |body: Vec<u8>, ct: &'static str| {
        let client = client.clone();
        let url = url.clone();
        async move {
            let r = client.post(&url).header("content-type", ct).body(body).send().await.unwrap();
            let status = r.status().as_u16();
            let ctype =
                r.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
            let v: serde_json::Value = r.json().await.unwrap_or(serde_json::Value::Null);
            (status, v, ctype)
        }
    };

    // Not JSON.
    let (s, b, ct) = send(b"{not json".to_vec(), "application/json").await;
    assert_problem(s, &b, &ct, 400, "invalid-request");
    // Wrong content type.
    let (s, b, ct) = send(b"{}".to_vec(), "text/plain").await;
    assert_problem(s, &b, &ct, 415, "unsupported-media-type");
    // Missing fields, unknown method, unknown field.
    for body in [
        serde_json::json!({"method": "token"}),
        serde_json::json!({"method": "carrier-pigeon", "token": token, "csr": csr}),
        serde_json::json!({"method": "token", "token": token, "csr": csr, "extra": 1}),
        serde_json::json!([1, 2, 3]),
    ] {
        let (s, b, ct) = send(serde_json::to_vec(&body).unwrap(), "application/json").await;
        assert!((400..500).contains(&s), "{body} → {s}");
        assert_eq!(ct, "application/problem+json", "{body}");
        assert_eq!(b["status"], s);
    }
    // Oversized body. On a client of its own: the server answers 413 before it has read the
    // body and then closes that connection, and a later request that reused it from the pool
    // could meet the close (reqwest's IncompleteMessage, seen once in CI).
    let big = serde_json::json!({"method": "token", "token": token, "csr": "A".repeat(200 * 1024)});
    let r = http()
        .post(&url)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&big).unwrap())
        .send()
        .await
        .unwrap();
    let (s, ct) = (r.status().as_u16(), r.headers()["content-type"].to_str().unwrap().to_string());
    let b: serde_json::Value = r.json().await.unwrap_or(serde_json::Value::Null);
    assert_problem(s, &b, &ct, 413, "body-too-large");
    // A CSR that is not one, and one whose signature was tampered with.
    let (s, b, ct) = enroll(
        &server,
        &token,
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    )
    .await;
    assert_problem(s, &b, &ct, 400, "bad-csr");
    let der = pem_der(&csr);
    let mut tampered = der.clone();
    let n = tampered.len() - 5;
    tampered[n] ^= 0x40;
    let (s, b, ct) = enroll(&server, &token, &devid_ca::to_pem("CERTIFICATE REQUEST", &tampered)).await;
    assert_problem(s, &b, &ct, 400, "bad-csr");
    // A weak key: RSA-1024 is refused.
    let (s, b, ct) = enroll(&server, &token, RSA_1024_CSR).await;
    assert_problem(s, &b, &ct, 400, "bad-csr");
    // The failed attempts did not burn the token.
    let (s, b, _) = enroll(&server, &token, &csr).await;
    assert_eq!(s, 200, "{b}");

    // Unknown route and wrong method.
    let r = client.get(server.url("/v1/nothing-here")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let r = client.get(server.url("/v1/enroll")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let r = client.get(server.url("/v1/ca/nope.cer")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = client.get(server.url("/v1/ca/Bad%20Id")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    drop(server);
    install.cleanup().await;
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

fn pem_der(p: &str) -> Vec<u8> {
    use base64::Engine;
    let b64: String = p.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD.decode(b64).unwrap()
}

/// `openssl req -new -newkey rsa:1024 -nodes -subj /CN=weak` (a committed vector: rcgen
/// cannot make RSA keys).
const RSA_1024_CSR: &str = include_str!("vectors/rsa1024.csr.pem");

async fn second_start_reuses_the_ca(backend: Backend) {
    let install = Install::new(backend).await;
    let first = install.serve();
    assert!(first.banner.iter().any(|l| l.starts_with("created a development CA")), "{:?}", first.banner);
    let fp = first.root_fingerprint();
    first.stop();
    let second = install.serve();
    assert!(!second.banner.iter().any(|l| l.starts_with("created a development CA")), "{:?}", second.banner);
    assert_eq!(second.root_fingerprint(), fp);
    // And it still issues.
    let token = install.add_device("after-restart");
    let (_k, csr) = pki::csr_p256("x");
    let (s, b, _) = enroll(&second, &token, &csr).await;
    assert_eq!(s, 200, "{b}");
    drop(second);
    install.cleanup().await;
}

async fn one_token_yields_one_certificate_under_concurrency(backend: Backend) {
    let install = Install::new(backend).await;
    let token = install.add_device("racer");
    let server = install.serve();
    let server = std::sync::Arc::new(server);
    let mut tasks = Vec::new();
    for i in 0..24 {
        let server = server.clone();
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            let (_k, csr) = pki::csr_p256(&format!("r{i}"));
            enroll(&server, &token, &csr).await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        let (s, b, ct) = t.await.unwrap();
        match s {
            200 => ok += 1,
            _ => assert_problem(s, &b, &ct, 409, "token-used"),
        }
    }
    assert_eq!(ok, 1, "exactly one enrollment succeeds");
    let store = devid_store::connect(&install.db.url).await.unwrap();
    let page = store.list_certificates(None, None, 100).await.unwrap();
    let devices: Vec<_> = page.items.iter().filter(|c| c.device.as_str() != "devid-tls-server").collect();
    assert_eq!(devices.len(), 1, "exactly one device certificate row");
    drop(store);
    drop(server);
    install.cleanup().await;
}

/// Concurrent token enrollments look their devices up together (one read for the tokens
/// queued at that moment): each certificate must still name the device of its own token,
/// and an unknown token among them is refused alone.
async fn concurrent_tokens_each_find_their_own_device(backend: Backend) {
    let install = Install::new(backend).await;
    let devices: Vec<(String, String)> =
        (0..12).map(|i| format!("pack-{i:02}")).map(|id| (install.add_device(&id), id)).collect();
    let server = std::sync::Arc::new(install.serve());
    let mut tasks = Vec::new();
    for round in 0..2 {
        for (i, (token, id)) in devices.iter().enumerate() {
            // Round 0: every device's own token; round 1: tokens no device holds.
            let (token, want) =
                if round == 0 { (token.clone(), Some(id.clone())) } else { (format!("{token}x{i}"), None) };
            let server = server.clone();
            tasks.push(tokio::spawn(async move {
                let (_k, csr) = pki::csr_p256(&format!("c{round}-{i}"));
                (want, enroll(&server, &token, &csr).await)
            }));
        }
    }
    let store = devid_store::connect(&install.db.url).await.unwrap();
    let mut issued = 0;
    for t in tasks {
        let (want, (status, body, ct)) = t.await.unwrap();
        match want {
            Some(id) => {
                assert_eq!(status, 200, "{id}: {body}");
                let serial = devid_core::Serial::from_hex(body["serial"].as_str().unwrap()).unwrap();
                let cert = store.get_certificate(&serial).await.unwrap().unwrap();
                assert_eq!(cert.device.as_str(), id, "the certificate of {id}'s token");
                issued += 1;
            }
            None => assert_problem(status, &body, &ct, 401, "token-invalid"),
        }
    }
    assert_eq!(issued, devices.len());
    drop(store);
    drop(server);
    install.cleanup().await;
}
