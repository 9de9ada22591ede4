//! CRLs end to end, with `openssl` as the independent client: the URL in the leaves'
//! cRLDistributionPoints serves a signed CRL with HTTP caching headers; `openssl verify
//! -crl_check` accepts good leaves and refuses revoked ones soon after `devid revoke` or
//! `devid quarantine`; `devid crl build` publishes a newer CRL that the server picks up; and
//! CRLs partitioned by serial (`crl.shards`) each carry their own issuingDistributionPoint.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{
    Backend, Enrolled, Install, OpensslDir, crl_number, enroll_device, get, header, max_age, poll_until,
};

on_both_backends!(crl_follows_revocations, sharded_crls);

/// CRLs are valid for 24 h by default.
const CRL_VALIDITY_SECS: i64 = 86400;

/// How long a revocation may take to reach the CRL: one change-log poll (0.2 s), the
/// debounce (0.5 s) and the build; the bound under test.
const ON_CRL_WITHIN: Duration = Duration::from_secs(2);

/// How long the tests wait before failing (longer than the bounds, so that a slow run
/// reports the time it took instead of a timeout).
const PATIENCE: Duration = Duration::from_secs(6);

/// The cRLDistributionPoints URI of a certificate, as openssl reads it.
fn crl_dp(d: &OpensslDir, cert_pem: &str) -> String {
    let text = devid_testkit::pki::openssl_text(d.path(), cert_pem);
    let mut lines = text.lines().skip_while(|l| !l.contains("X509v3 CRL Distribution Points"));
    lines
        .find_map(|l| l.trim().strip_prefix("URI:").map(str::to_string))
        .unwrap_or_else(|| panic!("no CRL distribution point:\n{text}"))
}

/// A serial as openssl prints it in a CRL (upper case; leading zeros dropped, so that
/// `contains` matches either way).
fn openssl_serial(serial_hex: &str) -> String {
    serial_hex.to_uppercase().trim_start_matches('0').to_string()
}

/// (month, day, H:M:S, year) of an HTTP date (`Mon, 23 Nov 2026 00:41:44 GMT`) ...
fn http_date(s: &str) -> (String, u32, String, String) {
    let p: Vec<&str> = s.split_whitespace().collect();
    assert_eq!(p.len(), 6, "{s}");
    (p[2].to_string(), p[1].parse().unwrap(), p[4].to_string(), p[3].to_string())
}

/// ... and of an openssl date (`Nov 23 00:41:44 2026 GMT`).
fn openssl_date(s: &str) -> (String, u32, String, String) {
    let p: Vec<&str> = s.split_whitespace().collect();
    assert_eq!(p.len(), 5, "{s}");
    (p[0].to_string(), p[1].parse().unwrap(), p[2].to_string(), p[3].to_string())
}

/// The value after `label` in `openssl crl -text`.
fn crl_field<'a>(text: &'a str, label: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label}:\n{text}"))
        .trim()
}

/// `openssl verify -crl_check -CAfile chain.pem -CRLfile CRL CERT`, with the DER CRL
/// converted to PEM first.
fn verify_with_crl(d: &OpensslDir, crl_der: &[u8], cert: &str) -> (bool, String) {
    d.write("check.crl", crl_der);
    let (ok, out) = d.openssl(&["crl", "-inform", "DER", "-in", "check.crl", "-out", "check.crl.pem"]);
    assert!(ok, "{out}");
    d.openssl(&["verify", "-crl_check", "-CAfile", "chain.pem", "-CRLfile", "check.crl.pem", cert])
}

/// Fetch a CRL that must be there: (headers, DER, openssl text).
async fn fetch_crl(d: &OpensslDir, url: &str) -> (reqwest::header::HeaderMap, Vec<u8>, String) {
    let (status, h, der) = get(url, None).await;
    assert_eq!(status, 200, "{url}: {}", String::from_utf8_lossy(&der));
    assert_eq!(header(&h, "content-type"), "application/pkix-crl", "{url}");
    let text = d.crl_text(&der);
    (h, der, text)
}

/// Wait until the CRL at `url` satisfies `done`; returns its DER and text, and how long
/// it took.
async fn wait_for_crl(
    d: &OpensslDir,
    url: &str,
    what: &str,
    done: impl Fn(&str) -> bool,
) -> (Vec<u8>, String, Duration) {
    let ((der, text), took) = poll_until(PATIENCE, Duration::from_millis(50), async || {
        let (status, _, der) = get(url, None).await;
        if status != 200 {
            return None;
        }
        let text = d.crl_text(&der);
        done(&text).then_some((der, text))
    })
    .await
    .unwrap_or_else(|| panic!("{what}: not on {url} after {PATIENCE:?}"));
    (der, text, took)
}

async fn crl_follows_revocations(backend: Backend) {
    let install = Install::new(backend).await;
    let server = install.serve();
    let issuing = server.issuing_ca();
    let a = enroll_device(&install, &server, "crl-a").await;
    let b = enroll_device(&install, &server, "crl-b").await;
    let c = enroll_device(&install, &server, "crl-c").await;
    let d = OpensslDir::with_chain(&a);
    for (name, e) in [("a.pem", &a), ("b.pem", &b), ("c.pem", &c)] {
        d.write(name, &e.cert_pem);
    }

    // The URL in the leaf is the one the banner names, and it serves the CRL.
    let url = crl_dp(&d, &a.cert_pem);
    assert_eq!(url, server.url(&format!("/crl/{issuing}.crl")));
    assert!(server.banner.iter().any(|l| l.ends_with(&format!("CRL: {url}"))), "{:?}", server.banner);
    let (h, der, text) = fetch_crl(&d, &url).await;
    assert!(text.contains("No Revoked Certificates"), "{text}");
    let n1 = crl_number(&text);
    assert!(n1 >= 1, "{text}");
    assert!(text.contains("Issuer: O = devid, CN = devid Development Issuing CA"), "{text}");
    assert!(!text.contains("Issuing Distribution Point"), "an unsharded CRL is complete: {text}");
    // Caching: max-age bounded by nextUpdate, which is also Expires; thisUpdate is
    // Last-Modified.
    let cc = header(&h, "cache-control");
    let age = max_age(&cc).unwrap_or_else(|| panic!("no max-age: {cc}"));
    assert!(age > 0 && age <= CRL_VALIDITY_SECS, "{cc}");
    assert!(cc.split(',').any(|d| d.trim() == "public"), "{cc}");
    assert_eq!(http_date(&header(&h, "expires")), openssl_date(crl_field(&text, "Next Update:")));
    assert_eq!(http_date(&header(&h, "last-modified")), openssl_date(crl_field(&text, "Last Update:")));
    let etag = header(&h, "etag");
    assert!(etag.len() > 2, "{h:?}");
    let (status, h304, body) = get(&url, Some(&etag)).await;
    assert_eq!(status, 304);
    assert!(body.is_empty());
    assert_eq!(header(&h304, "etag"), etag);

    // openssl checks good leaves against it.
    for leaf in ["a.pem", "b.pem", "c.pem"] {
        let (ok, out) = verify_with_crl(&d, &der, leaf);
        assert!(ok && out.contains(&format!("{leaf}: OK")), "{leaf}: {out}");
    }

    // Revoke a: within 2 s the CRL has a higher number and lists it.
    install.run_ok(&["revoke", &a.serial, "--reason", "keyCompromise"]);
    let sa = openssl_serial(&a.serial);
    let (der, text, took) =
        wait_for_crl(&d, &url, "revoked a", |t| crl_number(t) > n1 && t.contains(&sa)).await;
    eprintln!("revocation → on the CRL: {took:?}");
    assert!(took <= ON_CRL_WITHIN, "revocation took {took:?} to reach the CRL");
    let n2 = crl_number(&text);
    assert!(text.contains("Key Compromise"), "{text}");
    let (ok, out) = verify_with_crl(&d, &der, "a.pem");
    assert!(!ok && out.contains("certificate revoked"), "{out}");
    for leaf in ["b.pem", "c.pem"] {
        let (ok, out) = verify_with_crl(&d, &der, leaf);
        assert!(ok && out.contains(&format!("{leaf}: OK")), "{leaf}: {out}");
    }
    // The old ETag no longer matches.
    let (status, h2, _) = get(&url, Some(&etag)).await;
    assert_eq!(status, 200);
    assert_ne!(header(&h2, "etag"), etag);

    // Quarantine c: what it holds is revoked and listed.
    install.run_ok(&["quarantine", "crl-c"]);
    let sc = openssl_serial(&c.serial);
    let (der, text, took) =
        wait_for_crl(&d, &url, "quarantined c", |t| crl_number(t) > n2 && t.contains(&sc)).await;
    eprintln!("quarantine → on the CRL: {took:?}");
    assert!(took <= ON_CRL_WITHIN, "quarantine took {took:?} to reach the CRL");
    assert!(text.contains(&sa), "a stays listed: {text}");
    let (ok, out) = verify_with_crl(&d, &der, "c.pem");
    assert!(!ok && out.contains("certificate revoked"), "{out}");
    let (ok, out) = verify_with_crl(&d, &der, "b.pem");
    assert!(ok, "{out}");
    let n3 = crl_number(&text);

    // `devid crl build` makes a newer CRL; the server serves it soon.
    let rows: serde_json::Value =
        serde_json::from_str(install.run_ok(&["crl", "build", "--json"]).trim()).unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["issuer"] == issuing.as_str())
        .unwrap_or_else(|| panic!("{rows}"));
    assert_eq!(row["shard"], 0, "{rows}");
    let built = row["crl_number"].as_u64().unwrap();
    assert!(built > n3, "{built} after {n3}");
    let (_, text, took) = wait_for_crl(&d, &url, "the CLI-built CRL", |t| crl_number(t) >= built).await;
    eprintln!("devid crl build → served: {took:?}");
    // The server reloads stored CRLs about once a second.
    assert!(took <= Duration::from_millis(1500), "the built CRL took {took:?} to be served");
    assert!(text.contains(&sa) && text.contains(&sc), "{text}");
    let (ok, out) = verify_with_crl(&d, &d.read("fetched.crl"), "b.pem");
    assert!(ok, "{out}");

    drop(server);
    install.cleanup().await;
}

const SHARDS: u16 = 4;

/// The shard of a serial: its low 32 bits mod the number of shards.
fn shard_of(serial_hex: &str) -> u16 {
    (u32::from_str_radix(&serial_hex[serial_hex.len() - 8..], 16).unwrap() % u32::from(SHARDS)) as u16
}

async fn sharded_crls(backend: Backend) {
    let mut install = Install::new(backend).await;
    install.env.push(("DEVID_CRL__SHARDS".into(), SHARDS.to_string()));
    let server = install.serve();
    let issuing = server.issuing_ca();
    let shard_url = |n: u16| server.url(&format!("/crl/{issuing}-{n}.crl"));

    let mut leaves: Vec<Enrolled> = Vec::new();
    for i in 0..12 {
        leaves.push(enroll_device(&install, &server, &format!("shard-dev-{i:02}")).await);
    }
    let d = OpensslDir::with_chain(&leaves[0]);
    for (i, e) in leaves.iter().enumerate() {
        d.write(&format!("leaf{i}.pem"), &e.cert_pem);
        assert_eq!(crl_dp(&d, &e.cert_pem), shard_url(shard_of(&e.serial)), "leaf {i} ({})", e.serial);
    }

    // Every shard serves a CRL whose issuingDistributionPoint is its own URL.
    let mut numbers = Vec::new();
    for n in 0..SHARDS {
        let (h, der, text) = fetch_crl(&d, &shard_url(n)).await;
        assert!(text.contains("Issuing Distribution Point: critical"), "shard {n}: {text}");
        let idp = text
            .lines()
            .skip_while(|l| !l.contains("Issuing Distribution Point"))
            .find_map(|l| l.trim().strip_prefix("URI:"))
            .and_then(|u| u.split_whitespace().next())
            .unwrap_or_else(|| panic!("shard {n}: no IDP URI:\n{text}"));
        assert_eq!(idp, shard_url(n), "shard {n}");
        assert!(text.contains("No Revoked Certificates"), "shard {n}: {text}");
        assert!(header(&h, "etag").len() > 2);
        // Each leaf verifies against its own shard's CRL.
        for (i, e) in leaves.iter().enumerate().filter(|(_, e)| shard_of(&e.serial) == n) {
            let (ok, out) = verify_with_crl(&d, &der, &format!("leaf{i}.pem"));
            assert!(ok, "leaf {i} ({}) with shard {n}: {out}", e.serial);
        }
        numbers.push(crl_number(&text));
    }

    // Revoke one leaf: it appears on its shard's CRL only.
    let victim = 0;
    let vs = shard_of(&leaves[victim].serial);
    let serial = openssl_serial(&leaves[victim].serial);
    install.run_ok(&["revoke", &leaves[victim].serial, "--reason", "keyCompromise"]);
    let (der, _, took) = wait_for_crl(&d, &shard_url(vs), "the revoked leaf", |t| {
        crl_number(t) > numbers[vs as usize] && t.contains(&serial)
    })
    .await;
    eprintln!("revocation → on shard {vs}: {took:?}");
    assert!(took <= ON_CRL_WITHIN, "revocation took {took:?} to reach shard {vs}");
    let (ok, out) = verify_with_crl(&d, &der, &format!("leaf{victim}.pem"));
    assert!(!ok && out.contains("certificate revoked"), "{out}");
    for (i, e) in leaves.iter().enumerate().skip(1).filter(|(_, e)| shard_of(&e.serial) == vs) {
        let (ok, out) = verify_with_crl(&d, &der, &format!("leaf{i}.pem"));
        assert!(ok, "leaf {i} ({}) on the victim's shard: {out}", e.serial);
    }
    for n in (0..SHARDS).filter(|n| *n != vs) {
        let (_, der, text) = fetch_crl(&d, &shard_url(n)).await;
        assert!(!text.contains(&serial), "shard {n} must not list a serial of shard {vs}: {text}");
        for (i, _) in leaves.iter().enumerate().filter(|(_, e)| shard_of(&e.serial) == n) {
            let (ok, out) = verify_with_crl(&d, &der, &format!("leaf{i}.pem"));
            assert!(ok, "leaf {i} with shard {n}: {out}");
        }
    }
    // A leaf of another shard is not covered by the victim's shard CRL: its
    // issuingDistributionPoint names another URL than the leaf's distribution point.
    let (_, vder, _) = fetch_crl(&d, &shard_url(vs)).await;
    if let Some((i, _)) = leaves.iter().enumerate().find(|(_, e)| shard_of(&e.serial) != vs) {
        let (ok, out) = verify_with_crl(&d, &vder, &format!("leaf{i}.pem"));
        assert!(!ok && out.contains("different CRL scope"), "leaf {i} against shard {vs}: {out}");
    }

    // The unsharded name and shards out of range are not CRLs here.
    for path in [
        format!("/crl/{issuing}.crl"),
        format!("/crl/{issuing}-{SHARDS}.crl"),
        format!("/crl/{issuing}-65535.crl"),
        format!("/crl/{issuing}-x.crl"),
        format!("/crl/{issuing}-0"),
        "/crl/nobody-0.crl".to_string(),
    ] {
        let (status, h, body) = get(&server.url(&path), None).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(header(&h, "content-type"), "application/problem+json", "{path}");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["type"], "urn:devid:problem:not-found", "{path}: {v}");
    }

    drop(server);
    install.cleanup().await;
}
