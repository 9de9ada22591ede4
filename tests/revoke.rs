//! Revoke and quarantine from the command line, against a running server on the same
//! database: revoking is idempotent, unknown serials are refused, a quarantined device
//! cannot enroll until it is released, and quarantine revokes what the device holds.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Backend, Install, assert_problem, enroll};
use devid_testkit::pki;

on_both_backends!(revoke_quarantine_release);

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out.trim()).unwrap()
}

async fn revoke_quarantine_release(backend: Backend) {
    let install = Install::new(backend).await;
    let server = install.serve();
    let store = devid_store::connect(&install.db.url).await.unwrap();

    // Revoke one certificate by serial.
    let t1 = install.add_device("dev-1");
    let (_k, csr) = pki::csr_p256("x");
    let (s, body, _) = enroll(&server, &t1, &csr).await;
    assert_eq!(s, 200, "{body}");
    let serial = body["serial"].as_str().unwrap().to_string();
    let r = json(&install.run_ok(&["revoke", &serial, "--reason", "keyCompromise", "--json"]));
    assert_eq!(r["serial"], serial.as_str());
    assert_eq!(r["device"], "dev-1");
    assert_eq!(r["reason"], "keyCompromise");
    let rec = store.get_certificate(&devid_core::Serial::from_hex(&serial).unwrap()).await.unwrap().unwrap();
    assert_eq!(rec.status, devid_store::CertStatus::Revoked);
    // Idempotent: the first time and reason stand.
    let again = json(&install.run_ok(&["revoke", &serial, "--reason", "superseded", "--json"]));
    assert_eq!(again["revoked_at"], r["revoked_at"]);
    assert_eq!(again["reason"], "keyCompromise");

    // Bad input is a clear error, not a panic.
    for (args, needle) in [
        (vec!["revoke", "7f0102030405"], "not found"),
        (vec!["revoke", "zz"], "serial"),
        (vec!["revoke", &serial, "--reason", "bogus"], "keyCompromise"),
        (vec!["revoke"], "required"),
        (vec!["quarantine", "nobody"], "not found"),
        (vec!["release", "bad id!"], "device id"),
    ] {
        let out = install.run(&args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }

    // A quarantined device cannot enroll; released, it can.
    let t2 = install.add_device("dev-2");
    let q = json(&install.run_ok(&["quarantine", "dev-2", "--json"]));
    assert_eq!(q["revoked"].as_array().unwrap().len(), 0);
    let (_k2, csr2) = pki::csr_p256("y");
    let (s, body, ct) = enroll(&server, &t2, &csr2).await;
    assert_problem(s, &body, &ct, 403, "device-quarantined");
    install.run_ok(&["release", "dev-2"]);
    let (s, body, _) = enroll(&server, &t2, &csr2).await;
    assert_eq!(s, 200, "{body}");
    let serial2 = body["serial"].as_str().unwrap().to_string();

    // Quarantine revokes what the device holds, with the reason given.
    let q = json(&install.run_ok(&["quarantine", "dev-2", "--reason", "cessationOfOperation", "--json"]));
    assert_eq!(q["revoked"], serde_json::json!([serial2]));
    let rec = store.get_certificate(&devid_core::Serial::from_hex(&serial2).unwrap()).await.unwrap().unwrap();
    assert_eq!(rec.revocation.map(|r| r.1), Some(devid_core::RevocationReason::CessationOfOperation));
    // ... and a retry of the old enrollment does not hand the revoked certificate back as new.
    let (s, body, ct) = enroll(&server, &t2, &csr2).await;
    assert_problem(s, &body, &ct, 403, "device-quarantined");

    // Revoke every certificate of a device.
    let t3 = install.add_device("dev-3");
    let (_k3, csr3) = pki::csr_p256("z");
    let (s, body, _) = enroll(&server, &t3, &csr3).await;
    assert_eq!(s, 200, "{body}");
    let r = json(&install.run_ok(&["revoke", "--device", "dev-3", "--json"]));
    assert_eq!(r["revoked"], serde_json::json!([body["serial"]]));
    let r = json(&install.run_ok(&["revoke", "--device", "dev-3", "--json"]));
    assert_eq!(r["revoked"], serde_json::json!([]), "nothing left to revoke");

    drop(store);
    drop(server);
    install.cleanup().await;
}
