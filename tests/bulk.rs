//! Bulk pre-registration, end to end: `POST /v1/device-batches/{batch_id}` (JSON lines and
//! CSV, per-row results, tokens shown once, idempotent resubmission, limits, roles) and
//! `devid device import`, on both backends; and the time of a 100,000-row batch on
//! PostgreSQL.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Backend, Install, Server, enroll, http};
use devid_testkit::pki;
use serde_json::Value;

on_both_backends!(batch_over_rest, import_with_the_cli);

/// A token for a new credential of `role` (made with the CLI).
async fn role_token(install: &Install, server: &Server, role: &str) -> String {
    let out = install.run_ok(&["credential", "create", "--role", role, "--json"]);
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    let r = http()
        .post(server.url("/v1/auth/token"))
        .basic_auth(v["client_id"].as_str().unwrap(), v["client_secret"].as_str())
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    v["access_token"].as_str().unwrap().to_string()
}

/// POST a batch; returns (status, content type, JSON body).
async fn post_batch(
    server: &Server,
    token: &str,
    batch_id: &str,
    content_type: &str,
    body: String,
) -> (u16, String, Value) {
    let r = http()
        .post(server.url(&format!("/v1/device-batches/{batch_id}")))
        .bearer_auth(token)
        .header("content-type", content_type)
        .timeout(Duration::from_secs(60))
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let ct = common::header(r.headers(), "content-type");
    (status, ct, r.json().await.unwrap_or(Value::Null))
}

/// POST a body of `len` bytes, more than the route takes, over a connection of its own.
/// The server answers 413 without reading the rest and closes the connection, so the rest
/// cannot be written: a client that writes the whole body before it reads (reqwest) may
/// see the broken pipe instead of the answer, depending on timing. Here the body is written
/// from a task of its own while the answer is read.
async fn post_oversized(server: &Server, token: &str, batch_id: &str, len: usize) -> (u16, String, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let authority = server.base.trim_start_matches("http://").trim_end_matches('/').to_string();
    let stream = tokio::net::TcpStream::connect(&authority).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let head = format!(
        "POST /v1/device-batches/{batch_id} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/x-ndjson\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    );
    let writer = tokio::spawn(async move {
        let chunk = vec![b'a'; 64 * 1024];
        let mut left = len;
        if wr.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        while left > 0 {
            let n = left.min(chunk.len());
            if wr.write_all(&chunk[..n]).await.is_err() {
                return;
            }
            left -= n;
        }
    });
    let mut answer = Vec::new();
    let read = async {
        let mut buf = vec![0u8; 16 * 1024];
        // Until the server closes (or resets) the connection; what it sent stays readable.
        while let Ok(n) = rd.read(&mut buf).await {
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read).await.expect("an answer within 60 s");
    writer.abort();
    let text = String::from_utf8_lossy(&answer).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
    let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{head}"));
    let ct = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-type")))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    (status, ct, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// 1,000 JSON lines: 995 good devices `dev-00000`…`dev-00994` (every 10th with labels) and
/// 5 bad rows at lines 101, 202, 303, 404 and 505.
fn thousand_rows() -> String {
    let mut lines = Vec::new();
    let mut n: u32 = 0;
    for line in 1..=1000 {
        let bad = match line {
            101 => Some(r#"{"id":"bad id"}"#.to_string()),
            202 => Some("{not json".to_string()),
            303 => Some(r#"{"id":"x-303","method":"x509"}"#.to_string()),
            404 => Some(r#"{"id":"x-404","group":"line-1"}"#.to_string()),
            505 => Some(r#"{"id":"dev-00001"}"#.to_string()),
            _ => None,
        };
        lines.push(bad.unwrap_or_else(|| {
            let id = format!("dev-{n:05}");
            n += 1;
            if n.is_multiple_of(10) {
                serde_json::json!({ "id": id, "method": "token", "labels": { "line": "7", "rev": "b" } })
                    .to_string()
            } else {
                serde_json::json!({ "id": id }).to_string()
            }
        }));
    }
    lines.join("\n") + "\n"
}

fn rows_with(body: &Value, result: &str) -> Vec<Value> {
    body["rows"].as_array().unwrap().iter().filter(|r| r["result"] == result).cloned().collect()
}

async fn batch_over_rest(backend: Backend) {
    let install = Install::new(backend).await;
    let server = install.serve();
    let factory = role_token(&install, &server, "factory").await;
    let operator = role_token(&install, &server, "operator").await;

    // 1,000 rows, 5 bad.
    let (status, _, body) =
        post_batch(&server, &factory, "line-7.2026_01", "application/x-ndjson", thousand_rows()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["batch_id"], "line-7.2026_01");
    assert_eq!(
        (body["created"].as_u64(), body["present"].as_u64(), body["rejected"].as_u64()),
        (Some(995), Some(0), Some(5)),
        "{}",
        body["rows"]
    );
    let rows = body["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1000);
    assert!(rows.iter().enumerate().all(|(i, r)| r["line"] == i as u64 + 1), "rows in body order");
    let created = rows_with(&body, "created");
    assert!(
        created
            .iter()
            .all(|r| r["token"].as_str().unwrap().starts_with("devid_et_") && r.get("reason").is_none())
    );
    let rejected = rows_with(&body, "rejected");
    let reasons: Vec<(u64, &str, &str)> = rejected
        .iter()
        .map(|r| (r["line"].as_u64().unwrap(), r["id"].as_str().unwrap(), r["reason"].as_str().unwrap()))
        .collect();
    assert!(rejected.iter().all(|r| r.get("token").is_none()));
    assert_eq!(reasons[0].0, 101);
    assert!(reasons[0].2.starts_with("invalid id"), "{reasons:?}");
    assert!(reasons[1].0 == 202 && reasons[1].2.starts_with("bad JSON"), "{reasons:?}");
    assert_eq!(reasons[2], (303, "x-303", "method x509 needs a group"));
    assert_eq!(reasons[3], (404, "x-404", "unknown group line-1"));
    assert_eq!(reasons[4], (505, "dev-00001", "duplicate id (first on line 2)"));

    // A created device enrolls with its token.
    let first = created.iter().find(|r| r["id"] == "dev-00000").unwrap();
    let (_key, csr) = pki::csr_p256("dev-00000");
    let (status, enrolled, _) = enroll(&server, first["token"].as_str().unwrap(), &csr).await;
    assert_eq!(status, 200, "{enrolled}");

    // The same batch again: everything present, no token, no duplicate.
    let (status, _, again) =
        post_batch(&server, &factory, "line-7.2026_01", "application/x-ndjson", thousand_rows()).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        (again["created"].as_u64(), again["present"].as_u64(), again["rejected"].as_u64()),
        (Some(0), Some(995), Some(5))
    );
    assert!(again["rows"].as_array().unwrap().iter().all(|r| r.get("token").is_none()));
    let r = http().get(server.url("/v1/devices/dev-00000")).bearer_auth(&factory).send().await.unwrap();
    let d: Value = r.json().await.unwrap();
    assert_eq!(d["status"], "enrolled", "{d}");

    // CSV: quoted labels, one known device.
    let csv = "id,method,group,labels\r\ncsv-1,token,,\"site=berlin;note=a, b\"\r\ncsv-2,,,\r\ndev-00000,,,\r\ncsv-3,,\r\n";
    let (status, _, body) =
        post_batch(&server, &factory, "csv-1", "text/csv; charset=utf-8", csv.into()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["created"].as_u64(), body["present"].as_u64(), body["rejected"].as_u64()),
        (Some(2), Some(1), Some(1)),
        "{body}"
    );
    assert_eq!(body["rows"][2]["result"], "present");
    assert_eq!(body["rows"][3]["reason"], "bad CSV: expected 4 fields, found 3");

    // Rows in a group, with their own method: a token only for the token method; the
    // group's filter lists them; a method the group does not allow is refused.
    install.run_ok(&["group", "add", "sym", "--method", "symmetric,token", "--json"]);
    let rows = concat!(
        "{\"id\":\"g-1\",\"group\":\"sym\",\"method\":\"symmetric\",\"labels\":{\"line\":\"9\"}}\n",
        "{\"id\":\"g-2\",\"group\":\"sym\"}\n",
        "{\"id\":\"g-3\",\"group\":\"sym\",\"method\":\"x509\"}\n",
    );
    let (status, _, body) =
        post_batch(&server, &factory, "grouped", "application/x-ndjson", rows.into()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"][0]["result"], "created", "{body}");
    assert!(body["rows"][0].get("token").is_none(), "{body}");
    assert!(body["rows"][1]["token"].as_str().unwrap().starts_with("devid_et_"), "{body}");
    assert_eq!(body["rows"][2]["reason"], "group sym does not allow method x509", "{body}");
    let r = http().get(server.url("/v1/devices?group=sym")).bearer_auth(&factory).send().await.unwrap();
    let listed: Value = r.json().await.unwrap();
    let ids: Vec<&str> =
        listed["items"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["g-1", "g-2"], "{listed}");
    let r = http().get(server.url("/v1/devices?label=line%3D9")).bearer_auth(&factory).send().await.unwrap();
    let listed: Value = r.json().await.unwrap();
    assert_eq!(listed["items"][0]["id"], "g-1", "{listed}");
    assert_eq!(listed["items"].as_array().unwrap().len(), 1, "{listed}");
    let r = http().get(server.url("/v1/devices?status=bogus")).bearer_auth(&factory).send().await.unwrap();
    assert_eq!(r.status(), 400);

    // Not allowed for operators; the wrong media type; a bad batch id; no batch at all.
    let (status, ct, body) =
        post_batch(&server, &operator, "op", "application/x-ndjson", "{\"id\":\"o-1\"}".into()).await;
    common::assert_problem(status, &body, &ct, 403, "forbidden");
    let (status, ct, body) =
        post_batch(&server, &factory, "json", "application/json", "{\"id\":\"o-1\"}".into()).await;
    common::assert_problem(status, &body, &ct, 415, "unsupported-media-type");
    let (status, ct, body) =
        post_batch(&server, &factory, "a%20b", "application/x-ndjson", "{\"id\":\"o-1\"}".into()).await;
    common::assert_problem(status, &body, &ct, 400, "invalid-request");
    let (status, ct, body) =
        post_batch(&server, &factory, "garbage", "text/csv", "\u{1}\u{2},,\n".into()).await;
    common::assert_problem(status, &body, &ct, 400, "invalid-request");

    // More than 100,000 rows (about 2.3 MB: above the global 64 KiB limit, within this route's).
    let big: String = (0..100_001).map(|i| format!("{{\"id\":\"big-{i}\"}}\n")).collect();
    let (status, ct, body) = post_batch(&server, &factory, "too-big", "application/x-ndjson", big).await;
    common::assert_problem(status, &body, &ct, 400, "invalid-request");
    assert!(body["detail"].as_str().unwrap().contains("100000"), "{body}");
    // Over the route's 32 MiB limit.
    let (status, ct, body) = post_oversized(&server, &factory, "huge", 33 * 1024 * 1024).await;
    common::assert_problem(status, &body, &ct, 413, "body-too-large");

    drop(server);
    install.cleanup().await;
}

async fn import_with_the_cli(backend: Backend) {
    let install = Install::new(backend).await;
    let dir = install.data_dir().to_path_buf();
    let file = dir.join("line-7.jsonl");
    std::fs::write(&file, thousand_rows()).unwrap();
    let report = dir.join("rejected.csv");
    let out =
        install.run(&["device", "import", file.to_str().unwrap(), "--report", report.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let tokens: Vec<Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(tokens.len(), 995);
    assert!(tokens.iter().all(|t| t["id"].as_str().unwrap().starts_with("dev-")
        && t["token"].as_str().unwrap().starts_with("devid_et_")));
    assert!(stderr.contains("batch line-7: 995 created, 0 present, 5 rejected"), "{stderr}");
    assert!(!stderr.contains('\r'), "no progress bar without a terminal: {stderr}");
    let text = std::fs::read_to_string(&report).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6, "{text}");
    assert_eq!(lines[0], "line,id,reason");
    assert_eq!(lines[3], "303,x-303,method x509 needs a group");
    assert_eq!(lines[5], "505,dev-00001,duplicate id (first on line 2)");

    // Again, with the tokens to a file and a JSON summary: nothing new.
    let tokens_file = dir.join("tokens.jsonl");
    let out = install.run_ok(&[
        "device",
        "import",
        file.to_str().unwrap(),
        "--batch-id",
        "line-7",
        "--format",
        "jsonl",
        "--tokens",
        tokens_file.to_str().unwrap(),
        "--json",
    ]);
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (v["created"].as_u64(), v["present"].as_u64(), v["rejected"].as_u64()),
        (Some(0), Some(995), Some(5)),
        "{v}"
    );
    let default_report = format!("{}.rejected.csv", file.display());
    assert_eq!(v["report"], default_report.as_str());
    assert!(std::path::Path::new(&default_report).exists());
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(&tokens_file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.len(), 0);

    // A token from the CLI works.
    let server = install.serve();
    let (_key, csr) = pki::csr_p256("dev-00500");
    let t = tokens.iter().find(|t| t["id"] == "dev-00500").unwrap();
    let (status, body, _) = enroll(&server, t["token"].as_str().unwrap(), &csr).await;
    assert_eq!(status, 200, "{body}");
    drop(server);

    // A file that is not a batch at all fails.
    let bad = dir.join("bad.csv");
    std::fs::write(&bad, "name,serial\nx,y\n").unwrap();
    let out = install.run(&["device", "import", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown column"), "{out:?}");
    install.cleanup().await;
}

/// 100,000 devices in one request on PostgreSQL, and the same batch again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_rows_on_postgres() {
    let install = Install::new(Backend::Postgres).await;
    let server = install.serve();
    let factory = role_token(&install, &server, "factory").await;
    let body: String = (0..100_000)
        .map(|i| format!("{{\"id\":\"perf-{i:06}\",\"labels\":{{\"line\":\"{}\"}}}}\n", i % 7))
        .collect();
    let started = Instant::now();
    let (status, _, r) = post_batch(&server, &factory, "perf", "application/x-ndjson", body.clone()).await;
    let first = started.elapsed();
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["created"], 100_000);
    let started = Instant::now();
    let (status, _, r) = post_batch(&server, &factory, "perf", "application/x-ndjson", body).await;
    let again = started.elapsed();
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["present"], 100_000);
    println!("100,000-row batch on PostgreSQL: {first:?} (created), {again:?} (resubmitted, all present)");
    assert!(first < Duration::from_secs(30) && again < Duration::from_secs(30));
    drop(server);
    install.cleanup().await;
}
