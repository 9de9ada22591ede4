//! The audit log end to end: acts from the CLI, devices and API clients land in one hash
//! chain; `GET /v1/audit` and `devid audit export` stream the same lines; `devid audit
//! verify` names the first edited, deleted or re-chained entry, and the tail deleted with
//! its head moved back is caught by a head recorded earlier.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Backend, Install, access_token, cli_credential, enroll, http};
use devid_testkit::pki;
use serde_json::Value;

on_both_backends!(audit_chain_end_to_end);

/// Run SQL against the installation's database (the attacker with write access).
async fn tamper(install: &Install, sql: &str, binds: &[&[u8]]) {
    match install.db.backend() {
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&install.db.url).await.unwrap();
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()));
            for b in binds {
                q = q.bind(b.to_vec());
            }
            q.execute(&pool).await.unwrap();
            pool.close().await;
        }
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&install.db.url).await.unwrap();
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()));
            for b in binds {
                q = q.bind(b.to_vec());
            }
            q.execute(&pool).await.unwrap();
            pool.close().await;
        }
    }
}

fn lines(text: &str) -> Vec<Value> {
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// `devid audit verify --json`: (exit ok, report).
fn verify(install: &Install, expect: Option<&str>) -> (bool, Value) {
    let mut args = vec!["audit", "verify", "--json"];
    if let Some(e) = expect {
        args.extend(["--expect", e]);
    }
    let out = install.run(&args);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (out.status.success(), v)
}

async fn audit_chain_end_to_end(backend: Backend) {
    let install = Install::new(backend).await;
    let server = install.serve();
    let admin = cli_credential(&install, "admin");
    let auditor = cli_credential(&install, "auditor");
    let operator = cli_credential(&install, "operator");
    let token = install.add_device("audited-1");
    let (_k, csr) = pki::csr_p256("audited-1");
    let (s, body, _) = enroll(&server, &token, &csr).await;
    assert_eq!(s, 200, "{body}");
    let serial = body["serial"].as_str().unwrap().to_string();
    // A failed authentication, and a revocation by an API client.
    let r = http()
        .post(server.url("/v1/auth/token"))
        .basic_auth(&admin.client_id, Some("devid_cs_wrong"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let op = access_token(&server, &operator).await;
    let r = http()
        .post(server.url(&format!("/v1/certificates/{serial}/revoke")))
        .bearer_auth(&op)
        .json(&serde_json::json!({"reason": "keyCompromise"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // The auditor reads the log; the operator may not.
    let au = access_token(&server, &auditor).await;
    let r = http().get(server.url("/v1/audit")).bearer_auth(&au).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let api = lines(&r.text().await.unwrap());
    let r = http().get(server.url("/v1/audit")).bearer_auth(&op).send().await.unwrap();
    assert_eq!(r.status(), 403);

    let actions: Vec<(&str, &str)> =
        api.iter().map(|e| (e["action"].as_str().unwrap(), e["actor"].as_str().unwrap())).collect();
    let find = |action: &str| {
        api.iter().find(|e| e["action"] == action).unwrap_or_else(|| panic!("{action} in {actions:?}"))
    };
    assert_eq!(api[0]["action"], "ca.init");
    assert_eq!(api[0]["actor"], "system");
    assert!(find("credential.create")["actor"].as_str().unwrap().starts_with("cli:"));
    let of_device = |action: &str| {
        api.iter()
            .find(|e| {
                e["action"] == action
                    && (e["subject"] == "audited-1" || e["details"]["device"] == "audited-1")
            })
            .unwrap_or_else(|| panic!("{action} of audited-1 in {actions:?}"))
    };
    assert_eq!(of_device("device.register")["subject"], "audited-1");
    let issue = of_device("certificate.issue");
    assert_eq!(issue["actor"], "device:audited-1");
    assert_eq!(issue["subject"], serial.as_str());
    assert_eq!(issue["details"]["method"], "token");
    let fail = find("auth.failure");
    assert_eq!(fail["subject"], admin.client_id.as_str());
    assert!(!fail.to_string().contains("devid_cs_wrong"), "no secret in the log: {fail}");
    let rev = find("certificate.revoke");
    assert_eq!(rev["actor"], format!("credential:{}(operator)", operator.client_id));
    assert_eq!(rev["details"]["reason"], "keyCompromise");
    for (i, e) in api.iter().enumerate() {
        assert_eq!(e["seq"], i as i64 + 1);
        if i > 0 {
            assert_eq!(e["prev_hash"], api[i - 1]["hash"]);
        }
    }
    // Paging: after and limit.
    let r = http().get(server.url("/v1/audit?after=2&limit=2")).bearer_auth(&au).send().await.unwrap();
    let page = lines(&r.text().await.unwrap());
    assert_eq!(page.len(), 2);
    assert_eq!(page[0]["seq"], 3);
    let r = http().get(server.url("/v1/audit?after=-1")).bearer_auth(&au).send().await.unwrap();
    assert_eq!(r.status(), 400);
    drop(server);

    // The CLI export is the same stream, and verify finds the chain intact.
    let export = lines(&install.run_ok(&["audit", "export"]));
    assert!(export.len() >= api.len());
    assert_eq!(export[..api.len()], api[..]);
    let (ok, report) = verify(&install, None);
    assert!(ok, "{report}");
    assert_eq!(report["ok"], true);
    let n = report["entries"].as_i64().unwrap();
    assert!(n >= 8, "{report}");
    let head = format!("{}:{}", report["head"]["seq"], report["head"]["hash"].as_str().unwrap());

    // Edited details: that entry is named.
    tamper(&install, "UPDATE audit_log SET details = '{\"reason\":\"unspecified\"}' WHERE seq = 5", &[])
        .await;
    let (ok, report) = verify(&install, None);
    assert!(!ok);
    assert_eq!(report["first_bad"]["seq"], 5, "{report}");
    let restore = export[4]["details"].to_string();
    tamper(
        &install,
        &format!("UPDATE audit_log SET details = '{}' WHERE seq = 5", restore.replace('\'', "''")),
        &[],
    )
    .await;
    assert!(verify(&install, None).0, "restored");

    // Edited and re-hashed (SHA-256 has no key): the next entry's recorded hash names it.
    let rec = &export[3];
    let ev = devid_store::AuditEvent {
        at: devid_core::UnixTime(
            time::OffsetDateTime::parse(
                rec["at"].as_str().unwrap(),
                &time::format_description::well_known::Rfc3339,
            )
            .unwrap()
            .unix_timestamp(),
        ),
        actor: "cli:someone-else".into(),
        action: rec["action"].as_str().unwrap().into(),
        subject: rec["subject"].as_str().unwrap().into(),
        details: rec["details"].to_string(),
    };
    let prev = hex::decode(rec["prev_hash"].as_str().unwrap()).unwrap();
    let forged = devid_store::audit::entry_hash(&prev, 4, &ev);
    tamper(&install, "UPDATE audit_log SET actor = 'cli:someone-else', hash = $1 WHERE seq = 4", &[&forged])
        .await;
    let (ok, report) = verify(&install, None);
    assert!(!ok);
    assert_eq!(report["first_bad"]["seq"], 4, "{report}");
    let orig = hex::decode(rec["hash"].as_str().unwrap()).unwrap();
    tamper(
        &install,
        &format!(
            "UPDATE audit_log SET actor = '{}', hash = $1 WHERE seq = 4",
            rec["actor"].as_str().unwrap()
        ),
        &[&orig],
    )
    .await;
    assert!(verify(&install, None).0, "restored");

    // A deleted entry in the middle.
    tamper(&install, "DELETE FROM audit_log WHERE seq = 6", &[]).await;
    let (ok, report) = verify(&install, None);
    assert!(!ok);
    assert_eq!(report["first_bad"]["seq"], 6, "{report}");

    // The tail deleted: caught by the head row; with the head moved back as well, only a
    // head recorded earlier catches it.
    let install2 = install; // same database
    tamper(&install2, "DELETE FROM audit_log WHERE seq >= 6", &[]).await;
    let (ok, report) = verify(&install2, None);
    assert!(!ok);
    assert_eq!(report["first_bad"]["seq"], 6, "{report}");
    let h5 = hex::decode(export[4]["hash"].as_str().unwrap()).unwrap();
    tamper(&install2, "UPDATE audit_head SET seq = 5, hash = $1 WHERE id = 1", &[&h5]).await;
    assert!(verify(&install2, None).0, "a consistent truncation passes without an outside anchor");
    let (ok, report) = verify(&install2, Some(&head));
    assert!(!ok, "{report}");
    let bad = install2.run(&["audit", "verify", "--expect", "nonsense"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("SEQ:HASH"));
    install2.cleanup().await;
}
