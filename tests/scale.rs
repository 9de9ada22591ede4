//! Scale (issue #6): `devid seed` fills a PostgreSQL store with real certificates, a share
//! revoked and a share expired, in the same rows the normal paths write; OCSP and the CRL
//! answer correctly for seeded certificates; and every list and lookup query the API runs
//! on the big tables (devices, certificates, revocations, cert_events, audit_log) reads
//! them through an index, never with a sequential scan.
//!
//! The plans are the real ones: the store is opened with PostgreSQL's `auto_explain`
//! module loaded on its connections (`session_preload_libraries`), which sends the plan of
//! every statement the store executes, with the statement's own parameters, back to the
//! client as a NOTICE; sqlx logs notices through `tracing`, where this test collects them.
//! A store query that stops using an index fails the test, whatever its SQL text is.
//!
//! PostgreSQL only (seeding needs COPY); a missing server fails the tests, as everywhere.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Mutex;

use common::{Backend, Install, OpensslDir, http};
use devid_core::{DeviceId, Serial, UnixTime};
use devid_store::{CertFilter, CertStatus, DeviceFilter, DeviceStatus, PgStore, Store};
use sqlx::Connection;

/// The tables that grow with the fleet: none may be read by a sequential scan.
const BIG_TABLES: [&str; 5] = ["devices", "certificates", "revocations", "cert_events", "audit_log"];

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

async fn db(install: &Install) -> sqlx::PgConnection {
    sqlx::PgConnection::connect(&install.db.url).await.unwrap()
}

async fn count(conn: &mut sqlx::PgConnection, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.to_string())).fetch_one(conn).await.unwrap()
}

/// `devid ca init --json` then `devid seed ARGS --json`: (CA report, seed report).
fn init_and_seed(install: &Install, args: &[&str]) -> (serde_json::Value, serde_json::Value) {
    let ca: serde_json::Value =
        serde_json::from_str(install.run_ok(&["ca", "init", "--json"]).trim()).unwrap();
    let mut all = vec!["seed"];
    all.extend_from_slice(args);
    all.push("--json");
    let seeded: serde_json::Value = serde_json::from_str(install.run_ok(&all).trim()).unwrap();
    (ca, seeded)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_writes_what_was_asked_and_ocsp_answers_from_it() {
    let install = Install::new(Backend::Postgres).await;
    let (ca, s) = init_and_seed(
        &install,
        &[
            "--certificates",
            "3000",
            "--devices",
            "1000",
            "--revoked",
            "0.1",
            "--expired",
            "0.3",
            "--groups",
            "3",
        ],
    );
    let issuer = ca["issuing_id"].as_str().unwrap().to_string();
    assert_eq!(s["issuer"], issuer.as_str(), "{s}");
    assert_eq!(
        (&s["certificates"], &s["devices"], &s["revoked"], &s["expired"]),
        (&3000.into(), &1000.into(), &300.into(), &900.into()),
        "{s}"
    );
    let batch = s["batch_id"].as_str().unwrap().to_string();

    // The store holds exactly that, in the rows the normal paths write.
    let mut c = db(&install).await;
    let t = now();
    assert_eq!(count(&mut c, "SELECT count(*) FROM certificates").await, 3000);
    assert_eq!(count(&mut c, "SELECT count(*) FROM certificates WHERE status = 'revoked'").await, 300);
    assert_eq!(count(&mut c, "SELECT count(*) FROM certificates WHERE status = 'issued'").await, 2700);
    assert_eq!(count(&mut c, &format!("SELECT count(*) FROM certificates WHERE not_after < {t}")).await, 900);
    assert_eq!(count(&mut c, "SELECT count(*) FROM certificates WHERE cert_der IS NULL").await, 0);
    // Each revoked certificate has its revocations row (issuer and notAfter copied, for CRL
    // building) and its `revoked` change event, and nothing else has either.
    let matched = "SELECT count(*) FROM certificates c JOIN revocations r ON r.serial = c.serial \
                   WHERE c.status = 'revoked' AND r.issuer_id = c.issuer_id AND r.not_after = c.not_after \
                   AND r.revoked_at BETWEEN c.created_at AND c.updated_at + 1";
    assert_eq!(count(&mut c, matched).await, 300);
    assert_eq!(count(&mut c, "SELECT count(*) FROM revocations").await, 300);
    let events = "SELECT count(*) FROM cert_events e JOIN certificates c ON c.serial = e.serial \
                  WHERE e.kind = 'revoked' AND c.status = 'revoked'";
    assert_eq!(count(&mut c, events).await, 300);
    assert_eq!(count(&mut c, "SELECT count(*) FROM cert_events").await, 300);
    // Devices: all in the batch, all enrolled (every device has certificates), with tokens
    // redeemed; groups and labels on a share of them.
    assert_eq!(
        count(&mut c, &format!("SELECT count(*) FROM devices WHERE batch_id = '{batch}'")).await,
        1000
    );
    assert_eq!(count(&mut c, "SELECT count(*) FROM devices WHERE status = 'enrolled'").await, 1000);
    assert_eq!(count(&mut c, "SELECT count(*) FROM devices WHERE token_used_at IS NULL").await, 0);
    assert_eq!(count(&mut c, "SELECT count(DISTINCT device_id) FROM certificates").await, 1000);
    assert_eq!(count(&mut c, "SELECT count(*) FROM enrollment_groups").await, 3);
    let grouped = count(&mut c, "SELECT count(*) FROM devices WHERE group_name IS NOT NULL").await;
    assert!((600..900).contains(&grouped), "{grouped} of 1000 devices in groups");
    let labelled = count(&mut c, "SELECT count(*) FROM devices WHERE labels IS NOT NULL").await;
    assert!((350..650).contains(&labelled), "{labelled} of 1000 devices with labels");
    // Serials have issuance's shape (Serial::timed): 20 octets, the first 6 a time in
    // milliseconds, here in the seed's issuance window (90 days plus one validity, at
    // most a year here) and before now, so that later issuance sorts after them.
    let (lo, hi, shortest, longest): (String, String, i32, i32) = sqlx::query_as(
        "SELECT min(serial), max(serial), min(length(serial)), max(length(serial)) FROM certificates",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert_eq!((shortest, longest), (40, 40), "every serial is 40 hex digits");
    let ms = |s: &str| i64::from_str_radix(&s[..12], 16).unwrap();
    assert!(ms(&lo) >= (t - 455 * 86_400) * 1000, "{lo}");
    assert!(ms(&hi) <= (now() + 1) * 1000, "{hi}");
    assert!(ms(&hi) - ms(&lo) >= 90 * 86_400 * 1000 * 2999 / 3000, "{lo} .. {hi}");
    // One audit entry for the act, and the chain still verifies.
    let audit = "SELECT count(*) FROM audit_log WHERE action = 'store.seed'";
    assert_eq!(count(&mut c, audit).await, 1);
    install.run_ok(&["audit", "verify"]);

    // More devices than certificates: the rest stay registered.
    let more: serde_json::Value = serde_json::from_str(
        install
            .run_ok(&["seed", "--certificates", "10", "--devices", "25", "--groups", "0", "--json"])
            .trim(),
    )
    .unwrap();
    assert_eq!((&more["certificates"], &more["devices"]), (&10.into(), &25.into()), "{more}");
    let b2 = more["batch_id"].as_str().unwrap();
    let q = |st: &str| format!("SELECT count(*) FROM devices WHERE batch_id = '{b2}' AND status = '{st}'");
    assert_eq!(count(&mut c, &q("enrolled")).await, 10);
    assert_eq!(count(&mut c, &q("registered")).await, 15);

    // Through the running server: a seeded revoked certificate is revoked, a seeded good one
    // is good (neither is in the OCSP cache: each answer comes from the store, signed).
    let pick = |status: &str| {
        format!(
            "SELECT serial, cert_der FROM certificates WHERE status = '{status}' AND not_after > {} \
             ORDER BY serial LIMIT 1 OFFSET 7",
            t + 60
        )
    };
    let (revoked_serial, revoked_der): (String, Vec<u8>) =
        sqlx::query_as(sqlx::AssertSqlSafe(pick("revoked"))).fetch_one(&mut c).await.unwrap();
    let (good_serial, good_der): (String, Vec<u8>) =
        sqlx::query_as(sqlx::AssertSqlSafe(pick("issued"))).fetch_one(&mut c).await.unwrap();
    let server = install.serve();
    let d = OpensslDir { dir: tempfile::tempdir().unwrap() };
    d.write("root.pem", ca["root_pem"].as_str().unwrap());
    d.write("issuing.pem", ca["issuing_pem"].as_str().unwrap());
    d.write("revoked.pem", devid_ca::to_pem("CERTIFICATE", &revoked_der));
    d.write("good.pem", devid_ca::to_pem("CERTIFICATE", &good_der));
    // The seeded certificates are real: they verify up to the root.
    let (ok, out) = d.openssl(&["verify", "-CAfile", "root.pem", "-untrusted", "issuing.pem", "good.pem"]);
    assert!(ok && out.contains("good.pem: OK"), "{out}");
    let url = server.url("/ocsp");
    for nonce in [&["-no_nonce"][..], &[][..]] {
        for (file, want) in [("revoked.pem", "revoked"), ("good.pem", "good")] {
            let mut args = vec!["-cert", file];
            args.extend_from_slice(nonce);
            let (ok, out) = d.ocsp(&url, &args);
            assert!(ok && out.contains("Response verify OK"), "{out}");
            assert!(out.contains(&format!("{file}: {want}")), "{file} {nonce:?}: {out}");
        }
    }
    // The CRL the seed rebuilt lists every revoked, unexpired certificate.
    let crl = http().get(server.url(&format!("/crl/{issuer}.crl"))).send().await.unwrap();
    assert_eq!(crl.status(), 200);
    let text = d.crl_text(&crl.bytes().await.unwrap());
    let listed = text.matches("Serial Number:").count() as i64;
    let unexpired = format!("SELECT count(*) FROM revocations WHERE not_after > {}", now());
    assert_eq!(listed, count(&mut c, &unexpired).await, "CRL entries");
    assert!(text.contains(&revoked_serial.to_uppercase()), "{revoked_serial} not in the CRL");
    assert!(!text.contains(&good_serial.to_uppercase()));
    drop(server);
    let _ = c.close().await;
    install.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_refuses_bad_input_with_a_clear_message() {
    let sqlite = Install::new(Backend::Sqlite).await;
    let pg = Install::new(Backend::Postgres).await;
    let stderr = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();
    // Flags: exit 2 (usage), naming the flag.
    for (args, needle) in [
        (&["seed", "--certificates", "10", "--revoked", "1.5"][..], "--revoked"),
        (&["seed", "--certificates", "10", "--expired", "-0.1"][..], "--expired"),
        (&["seed", "--certificates", "0"][..], "--certificates"),
        (&["seed", "--certificates", "ten"][..], "--certificates"),
        (&["seed", "--certificates", "10", "--devices", "0"][..], "--devices"),
        (&["seed"][..], "--certificates"),
    ] {
        let out = pg.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
    // SQLite: refused, saying why.
    let out = sqlite.run(&["seed", "--certificates", "10"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("seeding needs PostgreSQL"), "{}", stderr(&out));
    // No CA yet: refused, saying what to run; nothing written.
    let out = pg.run(&["seed", "--certificates", "10"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("devid ca init"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    let mut c = db(&pg).await;
    assert_eq!(count(&mut c, "SELECT count(*) FROM devices").await, 0);
    let _ = c.close().await;
    pg.cleanup().await;
}

// --- query plans ---

/// Plans sent by `auto_explain` (JSON), as received.
static PLANS: Mutex<Vec<serde_json::Value>> = Mutex::new(Vec::new());

/// Collects the NOTICEs sqlx logs (target `sqlx::postgres::notice`) that carry a plan.
struct PlanCapture;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for PlanCapture {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() != "sqlx::postgres::notice" {
            return;
        }
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_str(&mut self, f: &tracing::field::Field, v: &str) {
                if f.name() == "message" {
                    self.0 = v.to_string();
                }
            }
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                if f.name() == "message" {
                    self.0 = format!("{v:?}");
                }
            }
        }
        let mut m = Message(String::new());
        event.record(&mut m);
        // "duration: 0.123 ms  plan:\n{ ... }"
        if let (true, Some(start)) = (m.0.starts_with("duration:"), m.0.find('{'))
            && let Ok(plan) = serde_json::from_str::<serde_json::Value>(&m.0[start..])
        {
            PLANS.lock().unwrap().push(plan);
        }
    }
}

/// What one plan did on the big tables.
#[derive(Debug, Default)]
struct Reads {
    /// "Seq Scan on <table>" nodes.
    seq_scans: Vec<String>,
    /// Rows the scans of big tables produced or filtered out (actual, all loops).
    rows_read: f64,
    /// Of those, rows a filter threw away (an index scan whose index does not narrow it).
    discarded: f64,
    /// The scan nodes, for the report: "<node type> on <table> using <index>".
    scans: Vec<String>,
}

fn walk(node: &serde_json::Value, out: &mut Reads) {
    let kind = node["Node Type"].as_str().unwrap_or_default();
    if let Some(table) = node["Relation Name"].as_str()
        && BIG_TABLES.contains(&table)
    {
        if kind == "Seq Scan" {
            out.seq_scans.push(table.to_string());
        }
        let loops = node["Actual Loops"].as_f64().unwrap_or(1.0);
        let removed = node["Rows Removed by Filter"].as_f64().unwrap_or(0.0)
            + node["Rows Removed by Index Recheck"].as_f64().unwrap_or(0.0);
        out.rows_read += (node["Actual Rows"].as_f64().unwrap_or(0.0) + removed) * loops;
        out.discarded += removed * loops;
        let index = node["Index Name"].as_str().map(|i| format!(" using {i}")).unwrap_or_default();
        out.scans.push(format!("{kind} on {table}{index}"));
    }
    for child in node["Plans"].as_array().into_iter().flatten() {
        walk(child, out);
    }
}

/// The store, opened with `auto_explain` on every connection: each statement's plan (with
/// actual row counts, without timing) comes back as a NOTICE. `pool`: its pool size (the
/// store's default when `None`).
async fn explaining_store(url: &str, pool: Option<u32>) -> PgStore {
    use tracing_subscriber::layer::SubscriberExt;
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(PlanCapture)).unwrap();
    });
    let sep = if url.contains('?') { '&' } else { '?' };
    let url = format!(
        "{url}{sep}options[session_preload_libraries]=auto_explain&options[auto_explain.log_min_duration]=0\
         &options[auto_explain.log_format]=json&options[auto_explain.log_level]=notice\
         &options[auto_explain.log_analyze]=on&options[auto_explain.log_timing]=off\
         &options[client_min_messages]=notice"
    );
    let pool = devid_store::PoolSize(pool.map(|n| std::num::NonZeroU32::new(n).unwrap()));
    PgStore::connect_with(&url, pool).await.unwrap()
}

/// The plan tests share [`PLANS`]: one at a time.
static PLAN_TEST: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A CRL sink that counts entries and signs nothing.
struct CountingSink(u64);

impl devid_store::CrlSink for CountingSink {
    fn begin(&mut self, _: u64, _: u64) -> Result<(), String> {
        Ok(())
    }
    fn entry(&mut self, _: &Serial, _: UnixTime, _: devid_core::RevocationReason) -> Result<(), String> {
        self.0 += 1;
        Ok(())
    }
    fn finish(&mut self) -> Result<(UnixTime, UnixTime, Vec<u8>), String> {
        Ok((UnixTime(now()), UnixTime(now() + 60), vec![0x30, 0x00]))
    }
}

/// Certificates the plan test seeds (plus a history of expired revoked ones, below):
/// enough that a sequential scan is never the cheap way for a paged or keyed query (the
/// planner works from the statistics the seed's ANALYZE gathered).
const PLAN_CERTIFICATES: &str = "50000";

/// What one check found: a failure per offending plan.
type Outcome = Vec<String>;

/// The inputs of the checks: real keys from the seeded store.
struct Inputs {
    issuer: devid_core::CaId,
    group: String,
    label: (String, String),
    device: DeviceId,
    other_device: DeviceId,
    csr: Vec<u8>,
    serial: Serial,
    token_hash: Vec<u8>,
    device_cursor: String,
    serial_cursor: String,
    seq_cursor: i64,
    event_cursor: i64,
}

async fn inputs(c: &mut sqlx::PgConnection, issuer: devid_core::CaId) -> Inputs {
    let one = |sql: &str| sqlx::AssertSqlSafe(sql.to_string());
    let (group,): (String,) = sqlx::query_as(one(
        "SELECT group_name FROM devices WHERE group_name IS NOT NULL ORDER BY id LIMIT 1",
    ))
    .fetch_one(&mut *c)
    .await
    .unwrap();
    let (labels,): (String,) =
        sqlx::query_as(one("SELECT labels FROM devices WHERE labels IS NOT NULL ORDER BY id LIMIT 1"))
            .fetch_one(&mut *c)
            .await
            .unwrap();
    let labels: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&labels).unwrap();
    let label = labels.iter().next().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string())).unwrap();
    let (device, csr, serial): (String, Vec<u8>, String) = sqlx::query_as(one(&format!(
        "SELECT device_id, csr_sha256, serial FROM certificates WHERE status = 'issued' AND not_after > {} \
         ORDER BY serial LIMIT 1 OFFSET 1000",
        now() + 60
    )))
    .fetch_one(&mut *c)
    .await
    .unwrap();
    let (other_device,): (String,) = sqlx::query_as(one(
        "SELECT device_id FROM certificates WHERE status = 'issued' ORDER BY serial DESC LIMIT 1 OFFSET 1000",
    ))
    .fetch_one(&mut *c)
    .await
    .unwrap();
    let (token_hash,): (Vec<u8>,) = sqlx::query_as(one(
        "SELECT token_hash FROM devices WHERE token_hash IS NOT NULL ORDER BY id LIMIT 1 OFFSET 500",
    ))
    .fetch_one(&mut *c)
    .await
    .unwrap();
    let (device_cursor,): (String,) =
        sqlx::query_as(one("SELECT id FROM devices ORDER BY id LIMIT 1 OFFSET 10000"))
            .fetch_one(&mut *c)
            .await
            .unwrap();
    let (serial_cursor,): (String,) =
        sqlx::query_as(one("SELECT serial FROM certificates ORDER BY serial LIMIT 1 OFFSET 50000"))
            .fetch_one(&mut *c)
            .await
            .unwrap();
    let (seq_cursor,): (i64,) =
        sqlx::query_as(one("SELECT seq - 20000 FROM audit_head")).fetch_one(&mut *c).await.unwrap();
    let (event_cursor,): (i64,) =
        sqlx::query_as(one("SELECT min(seq) + 100 FROM cert_events")).fetch_one(&mut *c).await.unwrap();
    Inputs {
        issuer,
        group,
        label,
        device: DeviceId::new(device).unwrap(),
        other_device: DeviceId::new(other_device).unwrap(),
        csr,
        serial: Serial::from_hex(&serial).unwrap(),
        token_hash,
        device_cursor,
        serial_cursor,
        seq_cursor,
        event_cursor,
    }
}

/// Rows a paged list may read on the big tables (all scans, all loops, including what
/// filters discard): 40 per row of a 100-row page.
const PAGE_BUDGET: f64 = 40.0 * 101.0;

/// Run `call` and check the plans it sent: none may scan a big table sequentially, nor read
/// more than `budget` rows of big tables (all scans, all loops, with what filters discard).
/// Returns (name, a failure per offending plan); `report` gets one line per plan.
async fn check_plans<T>(
    name: impl Into<String>,
    budget: f64,
    call: impl std::future::Future<Output = T>,
    report: &mut Vec<String>,
) -> (String, Outcome) {
    let name: String = name.into();
    let before = PLANS.lock().unwrap().len();
    let _ = call.await;
    let plans: Vec<serde_json::Value> = PLANS.lock().unwrap()[before..].to_vec();
    let mut failures = Vec::new();
    if plans.is_empty() {
        failures.push("no plan captured (is auto_explain loaded?)".to_string());
    }
    for p in &plans {
        let mut r = Reads::default();
        walk(&p["Plan"], &mut r);
        let sql = p["Query Text"].as_str().unwrap_or_default().to_string();
        let plan = serde_json::to_string_pretty(&p["Plan"]).unwrap();
        if !r.seq_scans.is_empty() {
            failures.push(format!("sequential scan of {:?}\n  query: {sql}\n  plan: {plan}", r.seq_scans));
        } else if r.rows_read > budget {
            failures.push(format!(
                "read {} rows of big tables ({} discarded by filters; budget {budget}): an index that does not \
                 narrow the scan\n  query: {sql}\n  plan: {plan}",
                r.rows_read, r.discarded
            ));
        }
        if !r.scans.is_empty() {
            report.push(format!(
                "{:<44} read {:>6} discarded {:>6}  {}",
                name,
                r.rows_read,
                r.discarded,
                r.scans.join(", ")
            ));
        }
    }
    (name, failures)
}

/// An enrollment group of claimed ids with these methods and registration, nothing else set.
fn group_record(name: &str, methods: &[&str], registration: &str) -> devid_store::GroupRecord {
    devid_store::GroupRecord {
        name: name.into(),
        methods: methods.iter().map(|m| m.to_string()).collect(),
        registration: registration.into(),
        id_source: "claimed".into(),
        validity_secs: None,
        trust_anchors: Vec::new(),
        crls: Vec::new(),
        master_key: None,
        rate_per_minute: None,
        created_at: UnixTime(now()),
        updated_at: UnixTime(now()),
    }
}

/// Print `report` under `title`, then fail with every failure of `outcomes`, if any.
fn assert_plans(title: &str, report: &[String], outcomes: &[(String, Outcome)]) {
    println!("{title}:");
    for line in report {
        println!("  {line}");
    }
    let failures: Vec<String> = outcomes
        .iter()
        .filter(|(_, f)| !f.is_empty())
        .map(|(name, f)| format!("{name}: {}", f.join("\n")))
        .collect();
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

/// Run the checks, each the store call the API makes, and return (name, outcome); `report`
/// gets one line per plan.
async fn run_checks(store: &PgStore, i: &Inputs, report: &mut Vec<String>) -> Vec<(String, Outcome)> {
    let page = 100u32;
    let soon = UnixTime(now() + 3600);
    let audit =
        devid_store::AuditEvent::new(UnixTime(now()), "system", "test.plan", "x", serde_json::json!({}));
    let devices = |f: DeviceFilter| f;
    let certs = |f: CertFilter| f;
    let mut out = Vec::new();
    // check!(name, budget of rows read on big tables per plan, call)
    macro_rules! check {
        ($name:expr, $budget:expr, $call:expr) => {
            out.push(check_plans($name, $budget as f64, $call, report).await)
        };
    }
    // GET /v1/devices and its filters.
    check!("devices", PAGE_BUDGET, store.list_devices_filtered(&DeviceFilter::default(), None, page));
    check!(
        "devices after cursor",
        PAGE_BUDGET,
        store.list_devices_filtered(&DeviceFilter::default(), Some(&i.device_cursor), page)
    );
    check!(
        "devices ?group",
        PAGE_BUDGET,
        store.list_devices_filtered(
            &devices(DeviceFilter { group: Some(i.group.clone()), ..Default::default() }),
            None,
            page
        )
    );
    check!(
        "devices ?group (empty)",
        10,
        store.list_devices_filtered(
            &devices(DeviceFilter { group: Some("no-such-group".into()), ..Default::default() }),
            None,
            page
        )
    );
    for st in [DeviceStatus::Enrolled, DeviceStatus::Registered, DeviceStatus::Quarantined] {
        check!(
            format!("devices ?status={st:?}"),
            PAGE_BUDGET,
            store.list_devices_filtered(
                &devices(DeviceFilter { status: Some(st), ..Default::default() }),
                None,
                page
            )
        );
    }
    check!(
        "devices ?group&status",
        PAGE_BUDGET,
        store.list_devices_filtered(
            &devices(DeviceFilter {
                group: Some(i.group.clone()),
                status: Some(DeviceStatus::Enrolled),
                ..Default::default()
            }),
            None,
            page
        )
    );
    check!(
        "devices ?label",
        PAGE_BUDGET,
        store.list_devices_filtered(
            &devices(DeviceFilter { label: Some(i.label.clone()), ..Default::default() }),
            None,
            page
        )
    );
    check!(
        "devices ?label (no match)",
        10,
        store.list_devices_filtered(
            &devices(DeviceFilter { label: Some(("site".into(), "nowhere".into())), ..Default::default() }),
            None,
            page
        )
    );
    check!("device by id", 10, store.get_device(&i.device));
    check!("device metadata", 10, store.device_meta(&i.device));
    check!("device by token hash", 10, store.device_by_token_hash(&i.token_hash));
    // The batched reads of step 1 (the enrollments and renewals of one moment together).
    check!(
        "devices by token hashes (batch)",
        20,
        store.devices_by_token_hashes(&[i.token_hash.clone(), vec![0; 32]])
    );
    check!("challenges by nonce hashes (batch)", 10, store.get_challenges(&[vec![1; 32], vec![2; 32]]));
    // GET /v1/certificates and its filters.
    check!("certificates", PAGE_BUDGET, store.list_certificates_filtered(&CertFilter::default(), None, page));
    check!(
        "certificates after cursor",
        PAGE_BUDGET,
        store.list_certificates_filtered(&CertFilter::default(), Some(&i.serial_cursor), page)
    );
    for st in [CertStatus::Issued, CertStatus::Revoked, CertStatus::Pending] {
        check!(
            format!("certificates ?status={st:?}"),
            PAGE_BUDGET,
            store.list_certificates_filtered(
                &certs(CertFilter { status: Some(st), ..Default::default() }),
                None,
                page
            )
        );
    }
    check!(
        "certificates ?status=Revoked after cursor",
        PAGE_BUDGET,
        store.list_certificates_filtered(
            &certs(CertFilter { status: Some(CertStatus::Revoked), ..Default::default() }),
            Some(&i.serial_cursor),
            page
        )
    );
    check!(
        "certificates ?expiring_before=+1h",
        PAGE_BUDGET,
        store.list_certificates_filtered(
            &certs(CertFilter { expiring_before: Some(soon), ..Default::default() }),
            None,
            page
        )
    );
    check!(
        "certificates ?status=issued&expiring_before",
        PAGE_BUDGET,
        store.list_certificates_filtered(
            &certs(CertFilter {
                status: Some(CertStatus::Issued),
                expiring_before: Some(soon),
                ..Default::default()
            }),
            None,
            page
        )
    );
    check!(
        "certificates ?group",
        PAGE_BUDGET,
        store.list_certificates_filtered(
            &certs(CertFilter { group: Some(i.group.clone()), ..Default::default() }),
            None,
            page
        )
    );
    check!("certificates of a device", 20, store.list_certificates(Some(&i.device), None, page));
    check!("certificate by serial", 10, store.get_certificate(&i.serial));
    check!("certificate for (device, CSR)", 20, store.certificate_for_csr(&i.device, &i.csr));
    check!("device with its certificate for a CSR", 25, store.device_for_csr(&i.device, &i.csr));
    check!(
        "renewal: certificate, device, certificate for a CSR",
        30,
        store.renewal_context(&i.serial, &i.csr)
    );
    check!(
        "devices with their certificates for CSRs (batch)",
        50,
        store.device_for_csrs(&[(i.device.clone(), i.csr.clone()), (i.other_device.clone(), i.csr.clone())])
    );
    check!(
        "renewals: certificates, devices, certificates for CSRs (batch)",
        60,
        store.renewal_contexts(&[(i.serial.clone(), i.csr.clone()), (i.serial.clone(), vec![0; 32])])
    );
    out.extend(group_commit_cycle(store, &i.issuer, &i.group, &i.device, 0, report).await);
    // Revocation publishing: the CRL's streamed read, the change log.
    let mut sink = CountingSink(0);
    check!("CRL entries (rebuild_crl)", 2500, store.rebuild_crl(&i.issuer, 0, UnixTime(now()), &mut sink));
    check!("change log after seq", 1001, store.events_after(i.event_cursor, 1000));
    check!("change log head", 10, store.last_event_seq());
    // GET /v1/audit and `devid audit export`: after a sequence number.
    check!("audit entries after seq", 1001, store.audit_entries(i.seq_cursor, 1000));
    check!("audit head", 10, store.audit_head());
    // Revocation and quarantine by serial and by device; removing groups.
    let reason = devid_core::RevocationReason::Superseded;
    check!("revoke a certificate", 10, store.revoke(&i.serial, reason, UnixTime(now()), &audit));
    check!(
        "revoke a device's certificates",
        20,
        store.revoke_device_certificates(&i.device, reason, UnixTime(now()), &audit)
    );
    check!(
        "quarantine a device",
        20,
        store.quarantine_device(&i.other_device, reason, UnixTime(now()), &audit)
    );
    check!("release a device", 10, store.release_device(&i.other_device, UnixTime(now()), &audit));
    check!("remove a group in use", 10, store.delete_group(&i.group, &audit));
    let empty = group_record("plan-empty", &["token"], "required");
    store.put_group(&empty, true, &audit).await.unwrap();
    check!("remove an empty group", 10, store.delete_group("plan-empty", &audit));
    assert!(sink.0 > 0, "the CRL read streamed no entry");
    out
}

/// The group commit's two batched transactions (steps 4 and 6 of an issuance), checked as
/// [`run_checks`] checks, with devices, tokens, nonces and serials of round `k` (`renewing`:
/// a device that exists).
async fn group_commit_cycle(
    store: &PgStore,
    issuer: &devid_core::CaId,
    group: &str,
    renewing: &DeviceId,
    k: u8,
    report: &mut Vec<String>,
) -> Vec<(String, Outcome)> {
    let soon = UnixTime(now() + 3600);
    let audit =
        devid_store::AuditEvent::new(UnixTime(now()), "system", "test.plan", "x", serde_json::json!({}));
    let mut out = Vec::new();
    macro_rules! check {
        ($name:expr, $budget:expr, $call:expr) => {
            out.push(check_plans($name, $budget as f64, $call, report).await)
        };
    }
    // The issuance cycle's batched writes (the group commit's steps 4 and 6), on the big
    // store (or, made on an empty store, its plans): a new device redeems its token (and is enrolled by it), a challenge its nonce
    // for another new device (which step 6 enrolls), a known device renews (nothing to
    // redeem); then the three certificates are stored. Every statement of both transactions
    // must find its rows by index (a device update planned on a status index once scanned
    // every registered device per batch).
    let hash = |b: u8| {
        let mut h = vec![b; 32];
        h[0] = k;
        h
    };
    let new_device = |id: &str, token_hash: Option<Vec<u8>>| devid_store::DeviceRecord {
        id: DeviceId::new(id).unwrap(),
        status: DeviceStatus::Registered,
        token_hash,
        token_used_at: None,
        created_at: UnixTime(now()),
        updated_at: UnixTime(now()),
    };
    let fresh = new_device(&format!("plan-fresh-{k}"), Some(hash(0xa1)));
    let attested = new_device(&format!("plan-attested-{k}"), None);
    for d in [&fresh, &attested] {
        store.insert_device(d, &devid_store::DeviceMeta::default(), &audit).await.unwrap();
    }
    let challenge = |h: u8| devid_store::ChallengeRecord {
        nonce_hash: hash(h),
        group: group.to_string(),
        method: "x509".into(),
        state: None,
        expires_at: soon,
        redeemed_at: None,
    };
    store.insert_challenges(&[challenge(0xa2), challenge(0xa3)], Some(UnixTime(now()))).await.unwrap();
    let pending = |n: u8, device: &DeviceId| devid_store::PendingCert {
        serial: Serial::from_bytes(&[0x7f, 0xa0, k, n]).unwrap(),
        issuer: issuer.clone(),
        device: device.clone(),
        not_before: UnixTime(now()),
        not_after: soon,
        csr_sha256: hash(n),
        tbs_der: vec![n; 8],
        created_at: UnixTime(now()),
        predecessor: None,
    };
    // The fourth item registers a device the store does not know (optional registration).
    let unknown = DeviceId::new(format!("plan-unknown-{k}")).unwrap();
    let ps = [pending(1, &fresh.id), pending(2, &attested.id), pending(3, renewing), pending(4, &unknown)];
    let (token, nonce, nonce2) = (hash(0xa1), hash(0xa2), hash(0xa3));
    let meta = devid_store::DeviceMeta { group: Some(group.to_string()), ..Default::default() };
    let items = [
        devid_store::Intent::new(&ps[0], devid_store::Redeem::Token(&token)),
        devid_store::Intent::new(&ps[1], devid_store::Redeem::Nonce(&nonce)),
        devid_store::Intent::new(&ps[2], devid_store::Redeem::Nothing),
        devid_store::Intent {
            pending: &ps[3],
            redeem: devid_store::Redeem::Nonce(&nonce2),
            register: Some((&meta, &audit)),
        },
    ];
    check!("intents: redeem, probe, insert (batch)", 30, store.record_intents(&items, false));
    let status = |d: &DeviceId| {
        let d = d.clone();
        async move { store.get_device(&d).await.unwrap().unwrap().status }
    };
    assert_eq!(status(&fresh.id).await, DeviceStatus::Enrolled, "the token's redemption enrolls its device");
    assert_eq!(status(&attested.id).await, DeviceStatus::Registered);
    assert_eq!(
        status(&unknown).await,
        DeviceStatus::Enrolled,
        "a device registered with its intent is enrolled"
    );
    let completions: Vec<devid_store::Completion<'_>> = ps
        .iter()
        .map(|p| devid_store::Completion { serial: &p.serial, cert_der: b"der", audit: &audit })
        .collect();
    check!(
        "completions: intents to certificates (batch)",
        40,
        store.complete_issuances(&completions, UnixTime(now()))
    );
    let stored = store.get_certificate(&ps[0].serial).await.unwrap().unwrap();
    assert_eq!(stored.status, CertStatus::Issued, "the batched writes stored no certificate");
    assert_eq!(status(&attested.id).await, DeviceStatus::Enrolled, "step 6 enrolls a registered device");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_list_and_lookup_query_uses_an_index() {
    let install = Install::new(Backend::Postgres).await;
    let (ca, s) = init_and_seed(&install, &["--certificates", PLAN_CERTIFICATES]);
    assert_eq!(s["certificates"], 50000, "{s}");
    let issuer = devid_core::CaId::new(ca["issuing_id"].as_str().unwrap()).unwrap();
    // History: revocations outlive their certificates (nothing deletes them), so most of a
    // long-lived store's revocations are of expired certificates, which the CRL skips.
    let history = install.run_ok(&[
        "seed",
        "--certificates",
        "20000",
        "--devices",
        "2000",
        "--revoked",
        "1",
        "--expired",
        "1",
        "--groups",
        "0",
    ]);
    assert!(history.contains("seeded 20000 certificates (20000 revoked, 20000 expired)"), "{history}");

    // The audit log holds one entry per act; give it a realistic length (chain hashes are
    // not checked here) so that paging it is a real choice for the planner.
    let mut c = db(&install).await;
    sqlx::raw_sql(
        "INSERT INTO audit_log (seq, at, actor, action, subject, details, prev_hash, hash) \
         SELECT h.seq + g, 0, 'system', 'test.fill', 'x', '{}', '\\x00', '\\x00' \
         FROM audit_head h, generate_series(1, 50000) AS g; \
         UPDATE audit_head SET seq = seq + 50000; ANALYZE audit_log;",
    )
    .execute(&mut c)
    .await
    .unwrap();
    let i = inputs(&mut c, issuer).await;
    let _one_at_a_time = PLAN_TEST.lock().await;
    let store = explaining_store(&install.db.url, None).await;

    let mut report = Vec::new();
    let outcomes = run_checks(&store, &i, &mut report).await;
    let title = format!("plans of the store's queries ({PLAN_CERTIFICATES} + 20000 seeded certificates)");
    assert_plans(&title, &report, &outcomes);
    store.close().await;
    let _ = c.close().await;
    install.cleanup().await;
}

/// The batched reads of step 1 (the enrollments and renewals of one moment together), by
/// keys that exist (`device` with its certificate `serial` for the CSR hash `csr`) and keys
/// that do not; checked as [`run_checks`] checks.
async fn step_one_reads(
    store: &PgStore,
    device: &DeviceId,
    serial: &Serial,
    csr: &[u8],
    report: &mut Vec<String>,
) -> Vec<(String, Outcome)> {
    let (csr, other) = (csr.to_vec(), vec![0; 32]);
    let mut out = Vec::new();
    macro_rules! check {
        ($name:expr, $budget:expr, $call:expr) => {
            out.push(check_plans($name, $budget as f64, $call, report).await)
        };
    }
    check!(
        "devices by token hashes (batch)",
        20,
        store.devices_by_token_hashes(std::slice::from_ref(&other))
    );
    check!("challenges by nonce hashes (batch)", 10, store.get_challenges(std::slice::from_ref(&other)));
    check!(
        "devices with their certificates for CSRs (batch)",
        50,
        store.device_for_csrs(&[(device.clone(), csr.clone()), (device.clone(), other.clone())])
    );
    check!(
        "renewals: certificates, devices, certificates for CSRs (batch)",
        60,
        store.renewal_contexts(&[(serial.clone(), csr), (serial.clone(), other)])
    );
    out
}

/// A statement keeps the plan a connection first gave it: the group commit's statements run
/// with `plan_cache_mode = force_generic_plan`, and a plan is made anew only when the
/// statistics of its tables change (ANALYZE). On a fresh store that plan is made while the
/// tables are empty, and it must still find its rows by index once they hold many rows and
/// before any ANALYZE: a `NOT EXISTS` probe of `certificates` was made an anti-join whose
/// plan from the empty table read the whole primary key index on every batch (6 times the
/// statement's time at 20,000 certificates), and the test on a seeded, analyzed store did
/// not see it.
///
/// Here one store with `auto_explain` and a pool of two (one connection for the writes and
/// single-row reads, one for the batched reads by lists of keys: each keeps its plans) runs
/// six rounds of the cycle on an empty store; another fills it with 9,000 devices and
/// certificates through the same store calls; autovacuum is off for the tables, so that
/// no ANALYZE changes the plans meanwhile (9,000, fewer than the 10,000 deleted intents
/// after which the store vacuums `issuance_intents`: a VACUUM updates a table's statistics
/// too, so the statements on it would be planned anew, on the full tables, and the test
/// would not see the plans of the empty ones; a plan that reads a whole index reads 9,000
/// rows, against a budget of 30); then the first store runs the cycle again, and the
/// batched reads of step 1, and their plans are checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_made_on_an_empty_store_still_use_indexes_once_it_is_full() {
    let install = Install::new(Backend::Postgres).await;
    let ca: serde_json::Value =
        serde_json::from_str(install.run_ok(&["ca", "init", "--json"]).trim()).unwrap();
    let issuer = devid_core::CaId::new(ca["issuing_id"].as_str().unwrap()).unwrap();
    let mut c = db(&install).await;
    let tables = ["devices", "certificates", "cert_events", "audit_log", "issuance_intents", "challenges"];
    for t in tables {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("ALTER TABLE {t} SET (autovacuum_enabled = off)")))
            .execute(&mut c)
            .await
            .unwrap();
    }
    let audit = |action: &str| {
        devid_store::AuditEvent::new(UnixTime(now()), "system", action, "x", serde_json::json!({}))
    };
    let group = group_record("plan-group", &["token", "x509"], "optional");
    let _one_at_a_time = PLAN_TEST.lock().await;
    let store = explaining_store(&install.db.url, Some(2)).await;
    store.put_group(&group, false, &audit("test.group")).await.unwrap();
    let first = devid_store::DeviceRecord {
        id: DeviceId::new("plan-first").unwrap(),
        status: DeviceStatus::Registered,
        token_hash: None,
        token_used_at: None,
        created_at: UnixTime(now()),
        updated_at: UnixTime(now()),
    };
    store.insert_device(&first, &devid_store::DeviceMeta::default(), &audit("test.device")).await.unwrap();
    // Six rounds, with the batched reads: the plans are made (generic from the first
    // execution where forced, after five custom plans elsewhere).
    let mut warm_up = Vec::new();
    let mut renewing = first.id.clone();
    for k in 1..=6u8 {
        let _ = group_commit_cycle(&store, &issuer, &group.name, &renewing, k, &mut warm_up).await;
        renewing = DeviceId::new(format!("plan-attested-{k}")).unwrap();
        let serial = Serial::from_bytes(&[0x7f, 0xa0, k, 2]).unwrap();
        let _ = step_one_reads(&store, &renewing, &serial, &[k; 32], &mut warm_up).await;
    }

    // Fill: 9 batches of 1,000 new devices (optional registration) and their certificates,
    // on other connections.
    let filler = PgStore::connect(&install.db.url).await.unwrap();
    let meta = devid_store::DeviceMeta { group: Some(group.name.clone()), ..Default::default() };
    let (registered, issued) = (audit("test.register"), audit("test.issue"));
    for b in 0u16..9 {
        let pending: Vec<devid_store::PendingCert> = (0u16..1000)
            .map(|j| {
                let [b0, b1] = b.to_be_bytes();
                let [j0, j1] = j.to_be_bytes();
                devid_store::PendingCert {
                    serial: Serial::from_bytes(&[0x3c, b0, b1, j0, j1]).unwrap(),
                    issuer: issuer.clone(),
                    device: DeviceId::new(format!("fill-{b:02}-{j:04}")).unwrap(),
                    not_before: UnixTime(now()),
                    not_after: UnixTime(now() + 86_400),
                    csr_sha256: vec![b0, b1, j0, j1],
                    tbs_der: vec![0x30, 0x00],
                    created_at: UnixTime(now()),
                    predecessor: None,
                }
            })
            .collect();
        let items: Vec<devid_store::Intent<'_>> = pending
            .iter()
            .map(|p| devid_store::Intent {
                pending: p,
                redeem: devid_store::Redeem::Nothing,
                register: Some((&meta, &registered)),
            })
            .collect();
        let recorded = filler.record_intents(&items, false).await.unwrap();
        assert!(recorded.iter().all(Result::is_ok), "batch {b}: {:?}", recorded.iter().find(|r| r.is_err()));
        let completions: Vec<devid_store::Completion<'_>> = pending
            .iter()
            .map(|p| devid_store::Completion { serial: &p.serial, cert_der: b"der", audit: &issued })
            .collect();
        let done = filler.complete_issuances(&completions, UnixTime(now())).await.unwrap();
        assert!(done.iter().all(Result::is_ok), "batch {b}: {:?}", done.iter().find(|r| r.is_err()));
    }
    filler.close().await;
    assert!(count(&mut c, "SELECT count(*) FROM certificates").await >= 9_000);
    let vacuumed = count(
        &mut c,
        "SELECT coalesce(sum(vacuum_count), 0)::bigint FROM pg_stat_user_tables WHERE relname = 'issuance_intents'",
    )
    .await;
    assert_eq!(vacuumed, 0, "issuance_intents was vacuumed: the plans on it were made anew");
    let analyzed = count(
        &mut c,
        "SELECT count(*) FROM pg_stat_user_tables WHERE relname IN ('devices', 'certificates') \
         AND (last_analyze IS NOT NULL OR last_autoanalyze IS NOT NULL)",
    )
    .await;
    assert_eq!(analyzed, 0, "an ANALYZE ran: the plans of the empty store were replaced");

    let mut report = Vec::new();
    let mut outcomes = group_commit_cycle(&store, &issuer, &group.name, &renewing, 7, &mut report).await;
    // A device of the fill, its certificate and CSR hash.
    let (fill_device, fill_serial) =
        (DeviceId::new("fill-05-0500").unwrap(), Serial::from_bytes(&[0x3c, 0, 5, 1, 244]).unwrap());
    outcomes.extend(step_one_reads(&store, &fill_device, &fill_serial, &[0, 5, 1, 244], &mut report).await);
    assert_plans("plans made on the empty store, run on 9,000 certificates", &report, &outcomes);
    store.close().await;
    let _ = c.close().await;
    install.cleanup().await;
}
