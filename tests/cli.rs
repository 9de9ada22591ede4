//! The command line: configuration errors name their key, the CA ceremony refuses to
//! overwrite without --force and can keep the root offline, a wrong passphrase is a clear
//! error, and bad device ids are refused.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Backend, Install, devid_bin, enroll};
use devid_testkit::pki;

on_both_backends!(
    ca_init_refuses_to_overwrite_and_force_replaces,
    offline_root_keeps_the_root_key_out_of_the_service,
    wrong_passphrase_is_a_clear_error,
    device_add_refuses_bad_and_duplicate_ids,
);

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_configuration_fails_at_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = dir.path().join("devid.toml");
    std::fs::write(&cfg, "listen = '127.0.0.1:0'\n[issuance]\nvalidty = '1h'\n").unwrap();
    type Case<'a> = (Vec<String>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (vec!["serve".into(), "--listen".into(), "nope".into()], vec![], "listen"),
        (vec!["serve".into(), "--public-url".into(), "ftp://x".into()], vec![], "public_url"),
        (vec!["serve".into(), "--database-url".into(), "mysql://x".into()], vec![], "database_url"),
        (vec!["serve".into()], vec![("DEVID_ISSUANCE__VALIDITY", "forever")], "issuance.validity"),
        (vec!["serve".into()], vec![("DEVID_LOG__FORMAT", "xml")], "log.format"),
        (vec!["serve".into()], vec![("DEVID_WORKERS", "0")], "workers"),
        (vec!["serve".into()], vec![("DEVID_WORKERS", "two")], "workers"),
        (vec!["serve".into()], vec![("DEVID_DATABASE_POOL_SIZE", "0")], "database_pool_size"),
        (vec!["serve".into()], vec![("DEVID_DATABASE_POOL_SIZE", "few")], "database_pool_size"),
        (vec!["serve".into(), "--config".into(), cfg.display().to_string()], vec![], "validty"),
        (vec!["serve".into(), "--config".into(), "/does/not/exist.toml".into()], vec![], "does not exist"),
    ];
    for (args, env, key) in cases {
        let mut c = std::process::Command::new(devid_bin());
        c.args(&args).arg("--data-dir").arg(&data).stdin(std::process::Stdio::null());
        for (k, v) in &env {
            c.env(k, v);
        }
        let out = common::run_bounded(c);
        assert!(!out.status.success(), "{args:?} {env:?} should fail");
        assert_eq!(out.status.code(), Some(1));
        let err = stderr(&out);
        assert!(err.contains(key), "{args:?} {env:?}: message must name {key}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    assert!(!data.exists(), "a bad configuration must not create anything");
}

async fn ca_init_refuses_to_overwrite_and_force_replaces(backend: Backend) {
    let install = Install::new(backend).await;
    let first: serde_json::Value =
        serde_json::from_str(install.run_ok(&["ca", "init", "--json"]).trim()).unwrap();
    let out = install.run(&["ca", "init"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));

    let server = install.serve();
    assert_eq!(server.root_fingerprint(), first["root_fingerprint_sha256"].as_str().unwrap());
    assert!(!server.banner.iter().any(|l| l.contains("development CA")));
    drop(server);

    let second: serde_json::Value = serde_json::from_str(
        install.run_ok(&["ca", "init", "--force", "--json", "--root-cn", "Second Root"]).trim(),
    )
    .unwrap();
    assert_ne!(first["root_fingerprint_sha256"], second["root_fingerprint_sha256"]);
    let cas: serde_json::Value =
        serde_json::from_str(install.run_ok(&["ca", "show", "--json"]).trim()).unwrap();
    let cas = cas.as_array().unwrap();
    assert_eq!(cas.len(), 4, "old CAs are kept: {cas:?}");
    assert_eq!(cas.iter().filter(|c| c["active"] == true).count(), 2);

    // The service now issues from the new hierarchy, and the chain verifies against it.
    let server = install.serve();
    assert_eq!(server.root_fingerprint(), second["root_fingerprint_sha256"].as_str().unwrap());
    let token = install.add_device("after-force");
    let (_k, csr) = pki::csr_p256("x");
    let (s, body, _) = enroll(&server, &token, &csr).await;
    assert_eq!(s, 200, "{body}");
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = pki::openssl_verify(
        dir.path(),
        second["root_pem"].as_str().unwrap(),
        second["issuing_pem"].as_str().unwrap(),
        body["certificate"].as_str().unwrap(),
    );
    assert!(ok, "{out}");
    drop(server);
    install.cleanup().await;
}

async fn offline_root_keeps_the_root_key_out_of_the_service(backend: Backend) {
    let install = Install::new(backend).await;
    let offline = tempfile::tempdir().unwrap();
    let offline_dir = offline.path().join("usb");
    let report: serde_json::Value = serde_json::from_str(
        install
            .run_ok(&[
                "ca",
                "init",
                "--offline-root",
                "--root-keystore",
                offline_dir.to_str().unwrap(),
                "--json",
            ])
            .trim(),
    )
    .unwrap();
    assert_eq!(report["offline_root"], true);
    let root_key = report["root_key"].as_str().unwrap().strip_prefix("soft:").unwrap().to_string();
    assert!(offline_dir.join(format!("{root_key}.key")).is_file(), "root key is in the offline key store");
    let keys = install.data_dir().join("data/keys");
    assert!(!keys.join(format!("{root_key}.key")).exists(), "root key is not in the service's key store");

    let cas: serde_json::Value =
        serde_json::from_str(install.run_ok(&["ca", "show", "--json"]).trim()).unwrap();
    let root = cas.as_array().unwrap().iter().find(|c| c["kind"] == "root").unwrap().clone();
    assert_eq!(root["key"], "offline");

    // The running service needs only the issuing key.
    let server = install.serve();
    let token = install.add_device("offline-root-device");
    let (_k, csr) = pki::csr_p256("x");
    let (s, body, _) = enroll(&server, &token, &csr).await;
    assert_eq!(s, 200, "{body}");
    drop(server);
    install.cleanup().await;
}

async fn wrong_passphrase_is_a_clear_error(backend: Backend) {
    let mut install = Install::new(backend).await;
    install.env.push(("DEVID_KMS__PASSPHRASE".into(), "correct horse battery staple".into()));
    install.run_ok(&["ca", "init"]);
    // No generated key-encryption key file when a passphrase is configured.
    assert!(!install.data_dir().join("data/kek").exists());
    let key_files: Vec<_> = std::fs::read_dir(install.data_dir().join("data/keys")).unwrap().collect();
    assert_eq!(key_files.len(), 2);

    install.env[0].1 = "incorrect horse battery staple".into();
    let out = install.run(&["serve", "--listen", "127.0.0.1:0"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("cannot decrypt key"), "{err}");
    assert!(err.contains("wrong passphrase"), "{err}");
    assert!(!err.contains("incorrect horse"), "the passphrase must not be printed: {err}");

    install.env[0].1 = "short".into();
    let out = install.run(&["serve", "--listen", "127.0.0.1:0"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("kms.passphrase"), "{}", stderr(&out));
    install.cleanup().await;
}

async fn device_add_refuses_bad_and_duplicate_ids(backend: Backend) {
    let install = Install::new(backend).await;
    for bad in ["", "has space", "../etc", "-dash-first", &"x".repeat(129)] {
        let out = install.run(&["device", "add", &format!("--id={bad}")]);
        assert!(!out.status.success(), "{bad:?} accepted");
        assert!(stderr(&out).contains("device id"), "{}", stderr(&out));
    }
    let text = install.run_ok(&["device", "add", "--id", "dup-1"]);
    assert!(text.contains("devid_et_"), "{text}");
    let out = install.run(&["device", "add", "--id", "dup-1"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    install.cleanup().await;
}

#[test]
fn example_production_configuration_parses() {
    let dir = tempfile::tempdir().unwrap();
    let pin = dir.path().join("pin");
    std::fs::write(&pin, "0123\n").unwrap();
    let cfg = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/devid.production.toml");
    let mut c = std::process::Command::new(devid_bin());
    // `openapi` reads the configuration but touches neither the database nor the HSM.
    c.args(["--config", cfg, "openapi"])
        .env("DEVID_KMS__PKCS11__PIN_FILE", &pin)
        .env("DEVID_KMS__PKCS11__MODULE", devid_testkit::hsm::token().module);
    let out = common::run_bounded(c);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// The OCSP cache's size is logged at start: the configured one, or without one the
/// figure sized from this host's memory (10,000 to 1,000,000 answers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_logs_the_ocsp_cache_capacity() {
    let capacity = |log: &str| -> u64 {
        let line = log.lines().find(|l| l.contains("OCSP cache capacity")).expect("logged");
        let at = line.find("responses=").expect("the figure") + "responses=".len();
        line[at..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
    };
    let mut install = Install::new(Backend::Sqlite).await;
    install.env.push(("RUST_LOG".into(), "info".into()));
    let sized = capacity(&install.serve().stop());
    assert!((10_000..=1_000_000).contains(&sized), "{sized}");
    install.env.push(("DEVID_OCSP__CACHE_CAPACITY".into(), "2500".into()));
    assert_eq!(capacity(&install.serve().stop()), 2500);
    install.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_crl_build_needs_the_public_url() {
    let mut install = Install::new(Backend::Sqlite).await;
    install.run_ok(&["ca", "init"]);
    install.env.push(("DEVID_CRL__SHARDS".into(), "4".into()));
    let out = install.run(&["crl", "build"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("public_url"), "{}", stderr(&out));
    install.env.push(("DEVID_PUBLIC_URL".into(), "https://pki.example.net".into()));
    let built: serde_json::Value =
        serde_json::from_str(install.run_ok(&["crl", "build", "--json"]).trim()).unwrap();
    assert_eq!(built.as_array().unwrap().len(), 4, "one CRL per shard: {built}");
    install.cleanup().await;
}

/// `database_pool_size` bounds the server's connections to PostgreSQL: with 2, a burst of 32
/// concurrent enrollments all succeed, and 32 concurrent device reads held up by a table lock
/// wait on at most 2 connections; with the default (16), the same held-up reads open more
/// than 2 (so the bound is the setting's doing, not the burst's). The reads are held up on
/// purpose: enrollments are group-committed, and a fast machine may serve a whole burst
/// of them over 2 connections whatever the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_size_bounds_postgresql_connections() {
    async fn peak_connections(pool_size: Option<&str>) -> i64 {
        let mut install = Install::new(Backend::Postgres).await;
        if let Some(n) = pool_size {
            install.env.push(("DEVID_DATABASE_POOL_SIZE".into(), n.into()));
        }
        install.env.push(("DEVID_LIMITS__PER_SOURCE".into(), "0".into()));
        let tokens: Vec<String> = (0..32).map(|i| install.add_device(&format!("pool-{i}"))).collect();
        let cred = common::cli_credential(&install, "auditor");
        // The server's connections carry a name of their own, so that a CLI backend still
        // closing is not counted.
        let admin_url = install.db.url.clone();
        let sep = if admin_url.contains('?') { '&' } else { '?' };
        install.db.url = format!("{admin_url}{sep}application_name=devid-pool-test");
        let server = install.serve();
        let mut burst = tokio::task::JoinSet::new();
        for (i, token) in tokens.into_iter().enumerate() {
            let url = server.url("/v1/enroll");
            burst.spawn(async move {
                let (_key, csr) = pki::csr_p256(&format!("pool-{i}"));
                let body = serde_json::json!({ "method": "token", "token": token, "csr": csr });
                let resp = common::http().post(url).json(&body).send().await.unwrap();
                (resp.status().as_u16(), resp.text().await.unwrap_or_default())
            });
        }
        while let Some(done) = burst.join_next().await {
            let (status, body) = done.unwrap();
            assert_eq!(status, 200, "{body}");
        }
        let bearer = common::access_token(&server, &cred).await;
        // Hold an exclusive lock on `devices`, so that every device read waits, on a
        // connection of its own, until it is released.
        let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url).await.unwrap();
        sqlx::query("BEGIN").execute(&mut admin).await.unwrap();
        sqlx::query("LOCK TABLE devices IN ACCESS EXCLUSIVE MODE").execute(&mut admin).await.unwrap();
        let mut reads = tokio::task::JoinSet::new();
        for i in 0..32 {
            let url = server.url(&format!("/v1/devices/pool-{i}"));
            let bearer = bearer.clone();
            reads.spawn(async move {
                let resp = common::http().get(url).bearer_auth(bearer).send().await.unwrap();
                (resp.status().as_u16(), resp.text().await.unwrap_or_default())
            });
        }
        // Wait until the reads stop opening connections (the pool's bound, or all 32).
        let count = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND application_name = 'devid-pool-test'";
        let (mut open, mut steady_since) = (0_i64, std::time::Instant::now());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::time::Instant::now() < deadline
            && steady_since.elapsed() < std::time::Duration::from_secs(2)
        {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let now: i64 = sqlx::query_scalar(count).fetch_one(&mut admin).await.unwrap();
            if now != open {
                (open, steady_since) = (now, std::time::Instant::now());
            }
        }
        sqlx::query("COMMIT").execute(&mut admin).await.unwrap();
        while let Some(done) = reads.join_next().await {
            let (status, body) = done.unwrap();
            assert_eq!(status, 200, "{body}");
        }
        drop(admin);
        drop(server);
        install.cleanup().await;
        open
    }
    let bounded = peak_connections(Some("2")).await;
    assert!((1..=2).contains(&bounded), "pool size 2 opened {bounded} connections");
    let default = peak_connections(None).await;
    assert!(default > 2, "the default pool opened only {default} connections for 32 held-up device reads");
}
