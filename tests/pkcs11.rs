//! The CA ceremony with keys on a PKCS#11 token (SoftHSM2), and a device enrolled by the
//! service signing through that token; openssl verifies the chain, so every signature made
//! through PKCS#11 (root over issuing, issuing over leaf) is checked independently.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Backend, Install, enroll};
use devid_testkit::{hsm, pki};

on_both_backends!(ca_on_softhsm_issues_certificates_openssl_verifies);

async fn ca_on_softhsm_issues_certificates_openssl_verifies(backend: Backend) {
    let token = hsm::token();
    let mut install = Install::new(backend).await;
    install.env.push(("DEVID_KMS__PKCS11__MODULE".into(), token.module.display().to_string()));
    install.env.push(("DEVID_KMS__PKCS11__PIN".into(), token.pin.clone()));
    let report: serde_json::Value = serde_json::from_str(
        install.run_ok(&["ca", "init", "--kms", "pkcs11", "--token", &token.token, "--json"]).trim(),
    )
    .unwrap();
    let issuing_key = report["issuing_key"].as_str().unwrap();
    assert!(issuing_key.starts_with(&format!("pkcs11:token={};object=", token.token)), "{issuing_key}");
    // No software keys were made.
    let keys = install.data_dir().join("data/keys");
    assert!(!keys.exists() || std::fs::read_dir(&keys).unwrap().next().is_none());

    let server = install.serve();
    assert_eq!(server.root_fingerprint(), report["root_fingerprint_sha256"].as_str().unwrap());
    let dev_token = install.add_device("hsm-device-1");
    let (_k, csr) = pki::csr_p256("x");
    let (s, body, _) = enroll(&server, &dev_token, &csr).await;
    assert_eq!(s, 200, "{body}");
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = pki::openssl_verify(
        dir.path(),
        report["root_pem"].as_str().unwrap(),
        report["issuing_pem"].as_str().unwrap(),
        body["certificate"].as_str().unwrap(),
    );
    assert!(ok, "{out}");

    // Without the PIN the service cannot start, and says why.
    drop(server);
    install.env.retain(|(k, _)| k != "DEVID_KMS__PKCS11__PIN");
    install.env.push(("DEVID_KMS__PKCS11__PIN".into(), "000000".into()));
    let out = install.run(&["serve", "--listen", "127.0.0.1:0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.to_lowercase().contains("login") || err.contains("PIN"), "{err}");
    assert!(!err.contains("000000"), "the PIN must not be printed: {err}");
    install.cleanup().await;
}
