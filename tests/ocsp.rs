//! The OCSP responder end to end, with `openssl ocsp` as the independent client: good,
//! revoked and unknown answers, POST and GET, with and without a nonce, SHA-1 and SHA-256
//! CertIDs, several certificates in one request, OCSP error statuses, HTTP caching of GET
//! answers, the delegated responder certificate, and two replicas on one PostgreSQL.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use base64::Engine;
use common::{Backend, Install, OpensslDir, enroll_device, get, header, http, max_age, poll_until};

on_both_backends!(statuses_over_post, get_answers_are_cacheable, errors_are_ocsp_error_statuses);

/// OCSP answers are valid for 4 h by default.
const OCSP_VALIDITY_SECS: i64 = 4 * 3600;

/// How long a revocation may take to reach the OCSP answers (one change-log poll, 200 ms,
/// plus signing): the bound under test.
const REVOKED_WITHIN: Duration = Duration::from_secs(1);

/// How long the tests wait for propagation before failing (longer than the bound, so that
/// a slow run reports the time it took instead of a timeout).
const PATIENCE: Duration = Duration::from_secs(5);

/// The DER OCSPResponse with only a responseStatus (RFC 6960 §4.2.1): malformedRequest (1).
const MALFORMED: [u8; 5] = [0x30, 0x03, 0x0a, 0x01, 0x01];
/// ... and unauthorized (6).
const UNAUTHORIZED: [u8; 5] = [0x30, 0x03, 0x0a, 0x01, 0x06];

/// The GET form of an OCSP request: base64, then URL-encoded (RFC 6960 A.1).
fn get_path(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let enc = b64.replace('+', "%2B").replace('/', "%2F").replace('=', "%3D");
    format!("/ocsp/{enc}")
}

/// Assert openssl verified the response and found no nonce problem.
fn assert_verified(ok: bool, out: &str) {
    assert!(ok, "openssl ocsp failed:\n{out}");
    assert!(out.contains("Response verify OK"), "{out}");
    assert!(!out.contains("WARNING: no nonce"), "{out}");
    assert!(!out.contains("Nonce Verify error"), "{out}");
}

/// GET an OCSP URL 300 ms after an answer was seen (more than one change-log poll, so the
/// node's pre-signing for the last issuance or revocation has run) and check it is the same
/// answer, byte for byte: the pre-signer and a request that signed on a miss never replace
/// each other's cached answer, so every client sees one answer until it is refreshed.
async fn stable_get(url: &str, seen: &[u8]) -> (reqwest::header::HeaderMap, Vec<u8>) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, h, body) = get(url, None).await;
    assert_eq!(status, 200, "{url}");
    assert!(body == seen, "the answer at {url} changed after it was first given");
    (h, body)
}

async fn statuses_over_post(backend: Backend) {
    let install = Install::new(backend).await;
    let server = install.serve();
    let a = enroll_device(&install, &server, "ocsp-a").await;
    let b = enroll_device(&install, &server, "ocsp-b").await;
    let d = OpensslDir::with_chain(&a);
    d.write("a.pem", &a.cert_pem);
    d.write("b.pem", &b.cert_pem);

    // The AIA of the leaf names this responder.
    let url = server.url("/ocsp");
    let (ok, out) = d.openssl(&["x509", "-noout", "-ocsp_uri", "-in", "a.pem"]);
    assert!(ok, "{out}");
    assert_eq!(out.trim(), url);

    // Good, with a nonce (openssl's default: the answer is signed afresh and echoes it) ...
    let (ok, out) = d.ocsp(&url, &["-cert", "a.pem"]);
    assert_verified(ok, &out);
    assert!(out.contains("a.pem: good"), "{out}");
    // ... and without (the pre-signed answer).
    let (ok, out) = d.ocsp(&url, &["-no_nonce", "-cert", "a.pem"]);
    assert_verified(ok, &out);
    assert!(out.contains("a.pem: good"), "{out}");
    // A SHA-256 CertID is answered with a SHA-256 CertID.
    let (ok, out) = d.ocsp(&url, &["-sha256", "-cert", "a.pem", "-respout", "a256.der"]);
    assert_verified(ok, &out);
    assert!(out.contains("a.pem: good"), "{out}");
    let (ok, text) = d.openssl(&["ocsp", "-respin", "a256.der", "-resp_text", "-noverify"]);
    assert!(ok, "{text}");
    assert!(text.contains("Hash Algorithm: sha256"), "{text}");
    // Both CertID forms of b are cached (no nonce) before b is revoked: the revocation must
    // replace every cached form.
    for args in [&["-no_nonce", "-cert", "b.pem"][..], &["-no_nonce", "-sha256", "-cert", "b.pem"][..]] {
        let (ok, out) = d.ocsp(&url, args);
        assert_verified(ok, &out);
        assert!(out.contains("b.pem: good"), "{out}");
    }

    // A serial devid never issued, under its issuer: unknown.
    let (ok, out) = d.ocsp(&url, &["-serial", "0x1234"]);
    assert_verified(ok, &out);
    assert!(out.contains("0x1234: unknown"), "{out}");
    let (ok, out) = d.ocsp(&url, &["-no_nonce", "-serial", "0x7f0102030405060708090a0b0c0d0e0f10111213"]);
    assert_verified(ok, &out);
    assert!(out.contains(": unknown"), "{out}");

    // The response is signed by a delegated responder, not by the issuing CA.
    let (ok, out) = d.ocsp(&url, &["-no_nonce", "-cert", "a.pem", "-respout", "a.der"]);
    assert_verified(ok, &out);
    let (ok, text) = d.openssl(&["ocsp", "-respin", "a.der", "-resp_text", "-noverify"]);
    assert!(ok, "{text}");
    let begin = text.find("-----BEGIN CERTIFICATE-----").unwrap_or_else(|| panic!("no certificate:\n{text}"));
    let responder = devid_testkit::pki::split_pem(&text[begin..]);
    assert_eq!(responder.len(), 1, "{text}");
    assert_ne!(responder[0].trim(), a.issuing_pem.trim(), "the issuing CA must not sign OCSP answers");
    let rtext = devid_testkit::pki::openssl_text(d.path(), &responder[0]);
    let itext = devid_testkit::pki::openssl_text(d.path(), &a.issuing_pem);
    for needle in ["OCSP Signing", "OCSP No Check", "CA:FALSE"] {
        assert!(rtext.contains(needle), "responder certificate lacks {needle}:\n{rtext}");
    }
    let subject = |t: &str| t.lines().find(|l| l.trim().starts_with("Subject:")).unwrap().trim().to_string();
    let issuer = |t: &str| t.lines().find(|l| l.trim().starts_with("Issuer:")).unwrap().trim().to_string();
    assert_ne!(subject(&rtext), subject(&itext));
    assert_eq!(issuer(&rtext).replace("Issuer:", ""), subject(&itext).replace("Subject:", ""));

    // Revoke b from the command line: every form of the question (SHA-1 and SHA-256
    // CertIDs, with and without a nonce) is answered "revoked" within a second of the CLI
    // returning. The no-nonce forms were cached as good above, and depend on the change
    // log. (Forms may flip at slightly different moments: pre-signing after an issuance
    // event can refresh the SHA-1 form before the revocation event evicts the others, so
    // each form is polled against the same deadline.)
    install.run_ok(&["revoke", &b.serial, "--reason", "keyCompromise"]);
    let t0 = std::time::Instant::now();
    let forms: [&[&str]; 4] = [
        &["-no_nonce", "-cert", "b.pem"],
        &["-no_nonce", "-sha256", "-cert", "b.pem"],
        &["-cert", "b.pem"],
        &["-sha256", "-cert", "b.pem"],
    ];
    let mut slowest = Duration::ZERO;
    for args in forms {
        let (out, _) = poll_until(PATIENCE, Duration::from_millis(20), async || {
            let (ok, out) = d.ocsp(&url, args);
            (ok && out.contains("b.pem: revoked")).then_some(out)
        })
        .await
        .unwrap_or_else(|| panic!("{args:?}: b is not revoked after {PATIENCE:?}"));
        let took = t0.elapsed();
        eprintln!("revocation → OCSP revoked ({args:?}): {took:?}");
        slowest = slowest.max(took);
        assert_verified(true, &out);
        assert!(out.contains("Reason: keyCompromise"), "{out}");
        assert!(out.contains("Revocation Time:"), "{out}");
    }
    assert!(slowest <= REVOKED_WITHIN, "revocation took {slowest:?} to reach OCSP");
    // a is untouched.
    let (ok, out) = d.ocsp(&url, &["-no_nonce", "-cert", "a.pem"]);
    assert_verified(ok, &out);
    assert!(out.contains("a.pem: good"), "{out}");

    // Two certificates in one request (with and without a nonce): one answer each.
    for nonce in [&[][..], &["-no_nonce"][..]] {
        let mut args = nonce.to_vec();
        args.extend_from_slice(&["-cert", "a.pem", "-cert", "b.pem"]);
        let (ok, out) = d.ocsp(&url, &args);
        assert_verified(ok, &out);
        assert!(out.contains("a.pem: good"), "{out}");
        assert!(out.contains("b.pem: revoked"), "{out}");
        assert!(out.contains("Reason: keyCompromise"), "{out}");
    }
    // ... and with an unknown serial among them.
    let (ok, out) = d.ocsp(&url, &["-cert", "a.pem", "-serial", "0x1234"]);
    assert_verified(ok, &out);
    assert!(out.contains("a.pem: good") && out.contains("0x1234: unknown"), "{out}");

    drop(server);
    install.cleanup().await;
}

async fn get_answers_are_cacheable(backend: Backend) {
    let install = Install::new(backend).await;
    let server = install.serve();
    let a = enroll_device(&install, &server, "get-a").await;
    let d = OpensslDir::with_chain(&a);
    d.write("a.pem", &a.cert_pem);

    // A request without a nonce, sent with GET.
    let (ok, out) =
        d.openssl(&["ocsp", "-issuer", "issuing.pem", "-cert", "a.pem", "-no_nonce", "-reqout", "req.der"]);
    assert!(ok, "{out}");
    let req = d.read("req.der");
    let get_url = server.url(&get_path(&req));
    let (status, h, first) = get(&get_url, None).await;
    assert_eq!(status, 200);
    assert_eq!(header(&h, "content-type"), "application/ocsp-response");
    let (h, body) = stable_get(&get_url, &first).await;
    d.write("resp.der", &body);
    let verify = |resp: &str| {
        d.openssl(&[
            "ocsp",
            "-respin",
            resp,
            "-issuer",
            "issuing.pem",
            "-cert",
            "a.pem",
            "-no_nonce",
            "-CAfile",
            "root.pem",
            "-verify_other",
            "issuing.pem",
        ])
    };
    let (ok, out) = verify("resp.der");
    assert_verified(ok, &out);
    assert!(out.contains("a.pem: good"), "{out}");

    // RFC 5019 §6 caching headers.
    let cc = header(&h, "cache-control");
    let age = max_age(&cc).unwrap_or_else(|| panic!("no max-age: {cc}"));
    assert!(age > 0 && age <= OCSP_VALIDITY_SECS, "{cc}");
    assert!(cc.split(',').any(|d| d.trim() == "public"), "{cc}");
    for name in ["last-modified", "expires", "etag"] {
        assert!(header(&h, name).len() > 2, "{name} missing: {h:?}");
    }
    assert!(header(&h, "expires").ends_with(" GMT"), "{h:?}");
    let etag = header(&h, "etag");

    // A conditional GET: 304, no body.
    let (status, h304, body304) = get(&get_url, Some(&etag)).await;
    assert_eq!(status, 304, "{h304:?}");
    assert!(body304.is_empty());
    assert_eq!(header(&h304, "etag"), etag);
    // Another tag: the full answer.
    let (status, _, again) = get(&get_url, Some("\"something-else\"")).await;
    assert_eq!(status, 200);
    assert_eq!(again, body, "the same pre-signed answer");
    // The base64 not URL-encoded ('/' and '+' as they are) is accepted too.
    let raw = format!("/ocsp/{}", base64::engine::general_purpose::STANDARD.encode(&req));
    let (status, _, raw_body) = get(&server.url(&raw), None).await;
    assert_eq!(status, 200);
    assert_eq!(raw_body, body);

    // With a nonce, over GET: echoed, and not cacheable.
    let (ok, out) = d.openssl(&["ocsp", "-issuer", "issuing.pem", "-cert", "a.pem", "-reqout", "reqn.der"]);
    assert!(ok, "{out}");
    let (status, hn, bodyn) = get(&server.url(&get_path(&d.read("reqn.der"))), None).await;
    assert_eq!(status, 200);
    let ccn = header(&hn, "cache-control");
    assert!(ccn.contains("no-store") && max_age(&ccn).is_none(), "{ccn}");
    assert!(hn.get("etag").is_none(), "{hn:?}");
    d.write("respn.der", &bodyn);
    // -reqin: openssl compares the response's nonce with the request's (-no_nonce: do not
    // add another one to the request read from the file).
    let (ok, out) = d.openssl(&[
        "ocsp",
        "-respin",
        "respn.der",
        "-reqin",
        "reqn.der",
        "-no_nonce",
        "-CAfile",
        "root.pem",
        "-verify_other",
        "issuing.pem",
        "-resp_text",
    ]);
    assert_verified(ok, &out);
    assert!(out.contains("OCSP Nonce"), "{out}");
    assert!(out.contains("Cert Status: good"), "{out}");

    // After a revocation, the GET answer says revoked within a second, under another ETag.
    install.run_ok(&["revoke", &a.serial, "--reason", "keyCompromise"]);
    let (revoked, took) = poll_until(PATIENCE, Duration::from_millis(20), async || {
        let (status, h, body) = get(&get_url, None).await;
        if status != 200 || header(&h, "etag") == etag {
            return None;
        }
        d.write("resp2.der", &body);
        let (ok, out) = verify("resp2.der");
        (ok && out.contains("a.pem: revoked")).then_some(body)
    })
    .await
    .unwrap_or_else(|| panic!("the GET answer is not revoked within {PATIENCE:?}"));
    eprintln!("revocation → revoked over GET: {took:?}");
    assert!(took <= REVOKED_WITHIN, "revocation took {took:?} to reach OCSP over GET");
    let (h2, body2) = stable_get(&get_url, &revoked).await;
    d.write("resp2.der", &body2);
    let (ok, out) = verify("resp2.der");
    assert_verified(ok, &out);
    assert!(out.contains("a.pem: revoked") && out.contains("Reason: keyCompromise"), "{out}");
    let etag2 = header(&h2, "etag");
    assert!(etag2.len() > 2 && etag2 != etag, "{etag} → {etag2}");
    let age = max_age(&header(&h2, "cache-control")).unwrap();
    assert!(age > 0 && age <= OCSP_VALIDITY_SECS, "{h2:?}");
    // A cache holding the old answer revalidates and gets the new one, not a 304.
    let (status, _, body3) = get(&get_url, Some(&etag)).await;
    assert_eq!(status, 200);
    assert_eq!(body3, body2);
    let (status, _, body4) = get(&get_url, Some(&etag2)).await;
    assert_eq!(status, 304);
    assert!(body4.is_empty());

    drop(server);
    install.cleanup().await;
}

async fn errors_are_ocsp_error_statuses(backend: Backend) {
    let install = Install::new(backend).await;
    let server = install.serve();
    let a = enroll_device(&install, &server, "err-a").await;
    let d = OpensslDir::with_chain(&a);
    d.write("a.pem", &a.cert_pem);
    let client = http();
    let url = server.url("/ocsp");

    let status_text = |der: &[u8]| {
        d.write("err.der", der);
        d.openssl(&["ocsp", "-respin", "err.der", "-resp_text", "-noverify"]).1
    };

    // Garbage and empty POST bodies: HTTP 200 carrying malformedRequest.
    for body in [b"hello, responder".to_vec(), Vec::new(), vec![0x30, 0x82, 0xff, 0xff, 0x00]] {
        let r = client
            .post(&url)
            .header("content-type", "application/ocsp-request")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{body:?}");
        assert_eq!(r.headers()["content-type"], "application/ocsp-response");
        let der = r.bytes().await.unwrap();
        assert_eq!(der.as_ref(), MALFORMED, "{body:?}");
    }
    assert!(status_text(&MALFORMED).contains("malformedrequest"));

    // Garbage GET paths: not base64, and base64 of something else.
    for path in ["/ocsp/garbage!!", "/ocsp/AAAA", "/ocsp/%2F%2F%2F"] {
        let (status, h, der) = get(&server.url(path), None).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(header(&h, "content-type"), "application/ocsp-response", "{path}");
        assert_eq!(der, MALFORMED, "{path}");
        assert!(h.get("etag").is_none(), "an error is not cacheable: {path}: {h:?}");
    }

    // Another issuer (an unrelated CA made with openssl): unauthorized.
    let (ok, out) = d.openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "other.key",
        "-subj",
        "/CN=Some Other CA",
        "-days",
        "2",
        "-out",
        "other.pem",
    ]);
    assert!(ok, "{out}");
    let (ok, out) = d.openssl(&[
        "ocsp",
        "-issuer",
        "other.pem",
        "-serial",
        "0x1234",
        "-url",
        &url,
        "-respout",
        "un.der",
        "-timeout",
        "20",
    ]);
    assert!(!ok, "{out}");
    assert!(out.contains("unauthorized"), "{out}");
    assert_eq!(d.read("un.der"), UNAUTHORIZED);
    // Over GET too.
    let (ok, out) = d.openssl(&["ocsp", "-issuer", "other.pem", "-serial", "0x1234", "-reqout", "unreq.der"]);
    assert!(ok, "{out}");
    let (status, _, der) = get(&server.url(&get_path(&d.read("unreq.der"))), None).await;
    assert_eq!(status, 200);
    assert_eq!(der, UNAUTHORIZED);
    // One request mixing a certificate of ours and one of the other issuer: one responder
    // cannot answer for both.
    let (ok, out) = d.openssl(&[
        "ocsp",
        "-issuer",
        "issuing.pem",
        "-cert",
        "a.pem",
        "-issuer",
        "other.pem",
        "-serial",
        "0x99",
        "-url",
        &url,
        "-respout",
        "mixed.der",
        "-timeout",
        "20",
    ]);
    assert!(!ok, "{out}");
    assert_eq!(d.read("mixed.der"), UNAUTHORIZED, "{out}");
    assert!(status_text(&UNAUTHORIZED).contains("unauthorized"));

    // The responder still answers properly afterwards.
    let (ok, out) = d.ocsp(&url, &["-cert", "a.pem"]);
    assert_verified(ok, &out);
    assert!(out.contains("a.pem: good"), "{out}");

    drop(server);
    install.cleanup().await;
}

/// Two `devid serve` replicas with their own data directories (holding copies of the same
/// CA keys) on one PostgreSQL database: a revocation made with the CLI reaches the OCSP
/// answers of both within a second, and the CRL of both shortly after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_one_postgres_agree() {
    let install = Install::new(Backend::Postgres).await;
    install.run_ok(&["ca", "init", "--kms", "soft"]);
    // The second replica's data directory: a copy of the first (soft keys and the KEK).
    let second = tempfile::tempdir().unwrap();
    let second_data = second.path().join("data");
    common::copy_dir(&install.data_path(), &second_data);
    let ra = install.serve();
    let rb = install.serve_in(&second_data);
    assert_eq!(ra.issuing_ca(), rb.issuing_ca());
    assert_eq!(ra.root_fingerprint(), rb.root_fingerprint());
    let issuing = ra.issuing_ca();

    // Enroll through replica A.
    let x = enroll_device(&install, &ra, "replica-x").await;
    let y = enroll_device(&install, &ra, "replica-y").await;
    let d = OpensslDir::with_chain(&x);
    d.write("x.pem", &x.cert_pem);
    d.write("y.pem", &y.cert_pem);
    let urls = [ra.url("/ocsp"), rb.url("/ocsp")];
    for url in &urls {
        for nonce in [&[][..], &["-no_nonce"][..]] {
            let mut args = nonce.to_vec();
            args.extend_from_slice(&["-cert", "x.pem", "-cert", "y.pem"]);
            let (ok, out) = d.ocsp(url, &args);
            assert_verified(ok, &out);
            assert!(out.contains("x.pem: good") && out.contains("y.pem: good"), "{url}: {out}");
        }
        // The cacheable single-certificate form, so that the revocation must replace it.
        let (ok, out) = d.ocsp(url, &["-no_nonce", "-cert", "x.pem"]);
        assert_verified(ok, &out);
        assert!(out.contains("x.pem: good"), "{url}: {out}");
    }
    let crl_urls = [ra.url(&format!("/crl/{issuing}.crl")), rb.url(&format!("/crl/{issuing}.crl"))];
    let serial_hex = x.serial.to_uppercase();
    let serial_hex = serial_hex.trim_start_matches('0').to_string();
    for u in &crl_urls {
        let (status, _, der) = get(u, None).await;
        assert_eq!(status, 200, "{u}");
        assert!(!d.crl_text(&der).contains(&serial_hex));
    }

    // Revoke with the CLI (straight into the database), then watch both replicas.
    install.run_ok(&["revoke", &x.serial, "--reason", "keyCompromise"]);
    let started = std::time::Instant::now();
    let mut took: [Option<Duration>; 2] = [None, None];
    while took.iter().any(Option::is_none) && started.elapsed() < PATIENCE {
        for (i, url) in urls.iter().enumerate() {
            if took[i].is_none() {
                let (ok, out) = d.ocsp(url, &["-no_nonce", "-cert", "x.pem"]);
                if ok && out.contains("x.pem: revoked") {
                    assert_verified(ok, &out);
                    assert!(out.contains("Reason: keyCompromise"), "{out}");
                    took[i] = Some(started.elapsed());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("revocation → OCSP revoked: replica A {:?}, replica B {:?}", took[0], took[1]);
    for (i, t) in took.iter().enumerate() {
        let t = t.unwrap_or_else(|| panic!("replica {i} did not answer revoked within {PATIENCE:?}"));
        assert!(t <= REVOKED_WITHIN, "replica {i} took {t:?}");
    }
    for url in &urls {
        let (ok, out) = d.ocsp(url, &["-cert", "x.pem", "-cert", "y.pem"]);
        assert_verified(ok, &out);
        assert!(out.contains("x.pem: revoked") && out.contains("y.pem: good"), "{url}: {out}");
    }

    // The CRL: rebuilt by one node (debounced 0.5 s), picked up by the other (polled every
    // second).
    for (i, u) in crl_urls.iter().enumerate() {
        poll_until(PATIENCE, Duration::from_millis(50), async || {
            let (status, _, der) = get(u, None).await;
            (status == 200 && d.crl_text(&der).contains(&serial_hex)).then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("the CRL of replica {i} lacks the serial after {PATIENCE:?}"));
        let t = started.elapsed();
        eprintln!("revocation → on the CRL of replica {i}: {t:?}");
        // 0.2 s poll + 0.5 s debounce + build, and up to 1 s for the other node's reload.
        assert!(t <= Duration::from_millis(2500), "replica {i}: {t:?}");
    }

    drop(ra);
    drop(rb);
    install.cleanup().await;
}

/// The responder listener (`ocsp.listen`), with openssl as the client: good over POST (with
/// and without a nonce) and GET, a revocation seen there, the CRL with the serial on it and
/// the CA certificate; no route that needs a credential, and no enrollment. Certificates
/// name `ocsp.public_url` as their OCSP responder, and the server stops gracefully.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_responder_listener_answers_ocsp_and_publishes_nothing_else() {
    let mut install = Install::new(Backend::Postgres).await;
    install.env.push(("DEVID_OCSP__PUBLIC_URL".into(), "http://ocsp.example.net:8081/".into()));
    install.env.push(("DEVID_WORKERS".into(), "3".into()));
    install.env.push(("RUST_LOG".into(), "info".into()));
    // A bad address, and one that is taken, are refused at start, naming the key.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    for (addr, why) in [("8081", "is not an address"), (taken.as_str(), "cannot listen on")] {
        let out = install.run(&["serve", "--listen", "127.0.0.1:0", "--ocsp-listen", addr]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("ocsp.listen") && err.contains(why), "{addr}: {err}");
    }
    // Without the flag (or `ocsp.listen`), there is no responder listener.
    let plain = install.serve();
    assert!(!plain.banner.iter().any(|l| l.starts_with("responder listener")), "{:?}", plain.banner);
    plain.stop();
    let server = install.serve_with(&["--ocsp-listen", "127.0.0.1:0"]);
    let (base, loops) = server.responder();
    assert_eq!(loops, 3, "one event loop per worker");
    assert_ne!(base, server.url(""), "a listener of its own");
    let a = enroll_device(&install, &server, "resp-a").await;
    let b = enroll_device(&install, &server, "resp-b").await;
    let d = OpensslDir::with_chain(&a);
    d.write("a.pem", &a.cert_pem);
    d.write("b.pem", &b.cert_pem);

    // The certificates name ocsp.public_url; the CRL stays at public_url.
    let (ok, out) = d.openssl(&["x509", "-noout", "-ocsp_uri", "-in", "a.pem"]);
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "http://ocsp.example.net:8081/ocsp");
    let (ok, out) = d.openssl(&["x509", "-noout", "-ext", "crlDistributionPoints", "-in", "a.pem"]);
    assert!(ok && out.contains(&server.url("/crl/")), "{out}");

    // OCSP: POST with and without a nonce, and GET; the same answer as the main listener's.
    let url = format!("{base}/ocsp");
    let (ok, out) = d.ocsp(&url, &["-cert", "a.pem", "-cert", "b.pem"]);
    assert_verified(ok, &out);
    assert!(out.contains("a.pem: good") && out.contains("b.pem: good"), "{out}");
    let (ok, out) = d.ocsp(&url, &["-no_nonce", "-cert", "a.pem"]);
    assert_verified(ok, &out);
    assert!(out.contains("a.pem: good"), "{out}");
    let (ok, out) =
        d.openssl(&["ocsp", "-issuer", "issuing.pem", "-cert", "a.pem", "-no_nonce", "-reqout", "req.der"]);
    assert!(ok, "{out}");
    let path = get_path(&d.read("req.der"));
    let (status, h, here) = get(&format!("{base}{path}"), None).await;
    assert_eq!(status, 200);
    assert_eq!(header(&h, "content-type"), "application/ocsp-response");
    let (status, _, there) = get(&server.url(&path), None).await;
    assert_eq!((status, &here), (200, &there), "the same cached answer on both listeners");

    // A serial that is not cached (never issued): the store's answer, unknown.
    let (ok, out) = d.ocsp(&url, &["-no_nonce", "-serial", "0x7f0102030405060708090a0b0c0d0e0f10111213"]);
    assert_verified(ok, &out);
    assert!(out.contains(": unknown"), "{out}");

    // A revocation reaches the responder listener.
    install.run_ok(&["revoke", &b.serial, "--reason", "keyCompromise"]);
    poll_until(PATIENCE, Duration::from_millis(20), async || {
        let (ok, out) = d.ocsp(&url, &["-no_nonce", "-cert", "b.pem"]);
        (ok && out.contains("b.pem: revoked")).then_some(())
    })
    .await
    .expect("b is revoked at the responder listener");

    // The CRL (with b on it, once rebuilt) and the CA certificates are published there too.
    let issuing = server.issuing_ca();
    let serial = b.serial.to_uppercase().trim_start_matches('0').to_string();
    poll_until(PATIENCE, Duration::from_millis(50), async || {
        let (status, _, der) = get(&format!("{base}/crl/{issuing}.crl"), None).await;
        (status == 200 && d.crl_text(&der).contains(&serial)).then_some(())
    })
    .await
    .expect("the CRL at the responder listener lists b");
    let (status, _, der) = get(&format!("{base}/v1/ca/{issuing}.cer"), None).await;
    assert_eq!(status, 200);
    d.write("issuing.der", &der);
    let (ok, out) = d.openssl(&["x509", "-inform", "DER", "-in", "issuing.der", "-noout", "-subject"]);
    assert!(ok && out.contains("Issuing CA"), "{out}");
    for path in ["/healthz", "/readyz", "/v1/ca/chain"] {
        assert_eq!(get(&format!("{base}{path}"), None).await.0, 200, "{path}");
    }
    // Those routes' errors are problems too, as on the API's listener.
    let resp = http().get(format!("{base}/v1/ca/nope.cer")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    assert_eq!(header(resp.headers(), "content-type"), "application/problem+json");
    let resp = http().post(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    assert_eq!(header(resp.headers(), "content-type"), "application/problem+json");

    // Nothing else: the API, enrollment and the metrics are not routes here.
    for path in ["/v1/devices", "/metrics", "/openapi.json"] {
        let resp = http().get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 404, "{path}");
        assert_eq!(header(resp.headers(), "content-type"), "application/problem+json", "{path}");
    }
    let resp = http().post(format!("{base}/v1/enroll")).json(&serde_json::json!({})).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 404);

    // A graceful stop ends every event loop (the last line comes after they are joined).
    let log = server.stop();
    assert!(log.lines().any(|l| l.contains("INFO") && l.ends_with("stopped")), "{log}");
    install.cleanup().await;
}
