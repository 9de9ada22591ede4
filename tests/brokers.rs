//! Interop with real brokers that check device certificates: nginx (client certificates
//! checked with OCSP against devid's responder) and Mosquitto (client certificates checked
//! against devid's CRL). Each broker runs as a child process of the test, on a free
//! loopback port, with its configuration in a temporary directory; the machine's own
//! services (a system nginx, the Mosquitto on 1883) are never touched.

#![allow(clippy::unwrap_used)]

mod common;

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Backend, Install, Server, enroll, http, run_bounded};
use devid_testkit::pki;

on_both_backends!(
    nginx_refuses_a_revoked_client_certificate_via_ocsp,
    mosquitto_refuses_a_revoked_client_certificate_via_the_crl
);

/// How long a revocation may take to reach an OCSP answer or the served CRL before the test
/// fails (the server aims at about 1 s and 1.5 s; the margin is for loaded CI machines).
const PROPAGATION: Duration = Duration::from_secs(10);

// --- helpers ---------------------------------------------------------------------------------

/// The path of a system tool; the test fails with the install line when it is missing.
/// `/usr/sbin` is searched too: it is not on a normal user's PATH on Debian.
fn tool(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = ["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from);
    std::env::split_paths(&path)
        .chain(extra)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found: install it with `apt-get install -y {package}`"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A broker process started by the test; killed (and reaped) when dropped.
struct Proc {
    child: Child,
    name: &'static str,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start a server process on a free loopback port and wait (at most 15 s) until it
/// accepts TCP connections. `make` builds the command for a port; its stdout and stderr go
/// to `log`. A port taken between choosing and binding it (another test, another
/// program) is retried with a new one; `also` names another log to read on failure.
fn start_listening(
    name: &'static str,
    log: &Path,
    also: Option<&Path>,
    make: impl Fn(u16) -> Command,
) -> (Proc, u16) {
    let logs = || {
        let mut s = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(p) = also {
            s.push_str(&std::fs::read_to_string(p).unwrap_or_default());
        }
        s
    };
    for _ in 0..5 {
        let port = free_port();
        let out = File::create(log).unwrap();
        let mut cmd = make(port);
        cmd.stdin(Stdio::null()).stdout(out.try_clone().unwrap()).stderr(out);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let mut proc = Proc { child, name };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = proc.child.try_wait().unwrap() {
                let text = logs();
                if text.contains("in use") {
                    break; // lost the port: try another
                }
                panic!("{} exited with {status} at start:\n{text}", proc.name);
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                // Still ours: a process that lost the port would have exited.
                std::thread::sleep(Duration::from_millis(50));
                if proc.child.try_wait().unwrap().is_none() {
                    return (proc, port);
                }
                continue;
            }
            assert!(Instant::now() < deadline, "{name} did not listen on {addr} within 15 s:\n{}", logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    panic!("{name}: no free port after 5 attempts:\n{}", logs());
}

/// A device enrolled through the API, with its files written into `dir`.
struct Device {
    serial: String,
    cert_pem: String,
    key_pem: String,
    cert: PathBuf,
    key: PathBuf,
}

/// Register `id`, enroll a fresh P-256 key for it, and write `<id>.pem` (the leaf),
/// `<id>.key` and `chain.pem` (issuing CA + root: what a broker trusts).
async fn enroll_device(install: &Install, server: &Server, dir: &Path, id: &str) -> Device {
    let token = install.add_device(id);
    let (key, csr) = pki::csr_p256(id);
    let (status, body, _) = enroll(server, &token, &csr).await;
    assert_eq!(status, 200, "{body}");
    let cert_pem = body["certificate"].as_str().unwrap().to_string();
    let key_pem = key.serialize_pem();
    let cert = dir.join(format!("{id}.pem"));
    let key_path = dir.join(format!("{id}.key"));
    std::fs::write(&cert, &cert_pem).unwrap();
    std::fs::write(&key_path, &key_pem).unwrap();
    std::fs::write(dir.join("chain.pem"), body["chain"].as_str().unwrap()).unwrap();
    Device { serial: body["serial"].as_str().unwrap().to_string(), cert_pem, key_pem, cert, key: key_path }
}

/// A small CA of the brokers' own (not devid's) and a server certificate it signed, for
/// `localhost` and 127.0.0.1: writes `server-ca.pem`, `server.pem` and `server.key`.
fn server_certificate(dir: &Path) {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name.push(rcgen::DnType::CommonName, "brokers test server CA");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let ca = rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().unwrap()).unwrap();
    let mut leaf =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    leaf.distinguished_name.push(rcgen::DnType::CommonName, "localhost");
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &ca).unwrap();
    std::fs::write(dir.join("server-ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
}

fn issuing_ca_id(server: &Server) -> String {
    server.banner.iter().find_map(|l| l.strip_prefix("issuing CA: ")).unwrap().trim().to_string()
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

// --- nginx + OCSP ----------------------------------------------------------------------------

/// GET https://127.0.0.1:port/ as a client with (or without) a device certificate; a new
/// client each time, so no TLS session is resumed and every request is a full handshake.
async fn nginx_get(port: u16, device: Option<&Device>) -> Result<(u16, String), String> {
    let mut b = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(15))
        .pool_max_idle_per_host(0);
    if let Some(d) = device {
        let pem = format!("{}{}", d.cert_pem, d.key_pem);
        b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
    }
    let client = b.build().unwrap();
    let resp = client.get(format!("https://127.0.0.1:{port}/")).send().await.map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    Ok((status, resp.text().await.map_err(|e| format!("{e:?}"))?))
}

/// nginx 1.22 with `ssl_verify_client on` and `ssl_ocsp leaf`, the responder set to devid's
/// `/ocsp` and no OCSP cache (`ssl_ocsp_cache` is `off` by default): every handshake asks
/// devid. A revoked device is refused within a second or so; nginx's log shows the OCSP
/// answers, so the test cannot pass for another reason.
async fn nginx_refuses_a_revoked_client_certificate_via_ocsp(backend: Backend) {
    let nginx = tool("nginx", "nginx");
    let install = Install::new(backend).await;
    let server = install.serve();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let device = enroll_device(&install, &server, d, "gateway-0001").await;
    server_certificate(d);
    for sub in ["prefix", "tmp"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    let error_log = d.join("error.log");
    let ocsp_url = server.url("/ocsp");
    // `master_process off`: one process, which never switches user. As root, nginx's worker
    // processes would otherwise run as `nobody`; running as an ordinary user, there is
    // nothing to switch. Temporary paths point into the test directory, away from
    // /var/lib/nginx. `debug` level: the Debian build has --with-debug, and its "ssl ocsp
    // response, good/revoked" lines prove that OCSP was asked.
    let conf = |port: u16| {
        format!(
            r#"master_process off;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log debug;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {dir}/server.pem;
        ssl_certificate_key {dir}/server.key;
        ssl_verify_client on;
        ssl_client_certificate {dir}/chain.pem;
        ssl_verify_depth 2;
        ssl_ocsp leaf;
        ssl_ocsp_responder {ocsp_url};
        ssl_ocsp_cache off;
        ssl_session_tickets off;
        location / {{ return 200 "ok"; }}
    }}
}}
"#,
            dir = path_str(d),
        )
    };
    let conf_path = d.join("nginx.conf");
    let (nginx_proc, port) = start_listening("nginx", &d.join("nginx.out"), Some(&error_log), |port| {
        std::fs::write(&conf_path, conf(port)).unwrap();
        let mut c = Command::new(&nginx);
        c.arg("-p").arg(d.join("prefix")).arg("-c").arg(&conf_path);
        c
    });
    let log = || std::fs::read_to_string(&error_log).unwrap_or_default();
    assert!(
        Command::new(&nginx)
            .arg("-V")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stderr).contains("--with-debug"))
            .unwrap_or(false),
        "this nginx is built without --with-debug: the test cannot see its OCSP requests"
    );

    // The device gets in, after nginx asked devid.
    let (status, body) = nginx_get(port, Some(&device)).await.unwrap();
    assert_eq!((status, body.as_str()), (200, "ok"), "{}", log());
    assert!(log().contains("ssl ocsp response, good"), "nginx did not ask OCSP:\n{}", log());
    // A second handshake asks again (no cache): the count of good answers grows.
    let goods = log().matches("ssl ocsp response, good").count();
    let (status, _) = nginx_get(port, Some(&device)).await.unwrap();
    assert_eq!(status, 200);
    assert!(log().matches("ssl ocsp response, good").count() > goods, "{}", log());

    // A client without a certificate is refused.
    let (status, body) = nginx_get(port, None).await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("No required SSL certificate was sent"), "{body}");

    // Revoke; the same client is refused within the propagation bound.
    let t0 = Instant::now();
    install.run_ok(&["revoke", &device.serial, "--reason", "keyCompromise"]);
    let t1 = Instant::now();
    let last = loop {
        let r = nginx_get(port, Some(&device)).await;
        if matches!(r, Ok((400, _))) {
            break r.unwrap();
        }
        assert!(matches!(r, Ok((200, _))), "neither admitted nor refused: {r:?}\n{}", log());
        assert!(
            t1.elapsed() < PROPAGATION,
            "still admitted {PROPAGATION:?} after the revocation:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "nginx ({backend:?}): refused {:?} after `devid revoke` returned ({:?} after it started)",
        t1.elapsed(),
        t0.elapsed()
    );
    assert!(last.1.contains("The SSL certificate error"), "{}", last.1);
    let text = log();
    assert!(text.contains("ssl ocsp response, revoked"), "{text}");
    assert!(text.contains("client SSL certificate verify error: certificate revoked"), "{text}");

    drop(nginx_proc);
    drop(server);
    install.cleanup().await;
}

// --- Mosquitto + CRL -------------------------------------------------------------------------

/// Whether the log read by `read` holds every one of `needles` within 5 s: a broker may write a
/// line after the client it concerns has already seen the outcome.
async fn eventually_logged(read: &dyn Fn() -> String, needles: &[&str]) -> bool {
    let t0 = Instant::now();
    loop {
        let text = read();
        if needles.iter().all(|n| text.contains(n)) {
            return true;
        }
        if t0.elapsed() > Duration::from_secs(5) {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The served CRL of the issuing CA, as PEM (openssl converts the DER); waits until it is
/// served (at most `PROPAGATION`).
async fn fetch_crl_pem(server: &Server, dir: &Path) -> String {
    let url = server.url(&format!("/crl/{}.crl", issuing_ca_id(server)));
    let deadline = Instant::now() + PROPAGATION;
    let der = loop {
        let r = http().get(&url).send().await.unwrap();
        if r.status() == 200 {
            assert_eq!(r.headers()["content-type"], "application/pkix-crl");
            break r.bytes().await.unwrap();
        }
        assert!(Instant::now() < deadline, "GET {url}: {}", r.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    std::fs::write(dir.join("fetched.crl"), &der).unwrap();
    let (ok, out) =
        pki::openssl(dir, &["crl", "-inform", "DER", "-in", "fetched.crl", "-out", "fetched-crl.pem"]);
    assert!(ok, "openssl crl: {out}");
    std::fs::read_to_string(dir.join("fetched-crl.pem")).unwrap()
}

/// The serials a PEM CRL lists (per `openssl crl -text`), upper-case hex without leading
/// zeros.
fn crl_serials(dir: &Path, crl_pem: &str) -> Vec<String> {
    std::fs::write(dir.join("text-crl.pem"), crl_pem).unwrap();
    let (ok, text) = pki::openssl(dir, &["crl", "-in", "text-crl.pem", "-noout", "-text"]);
    assert!(ok, "openssl crl -text: {text}");
    text.lines().filter_map(|l| l.trim().strip_prefix("Serial Number: ")).map(norm_serial).collect()
}

fn norm_serial(s: &str) -> String {
    s.trim().trim_start_matches('0').to_ascii_uppercase()
}

/// `mosquitto_pub` with QoS 1 (so success means the broker acknowledged the message);
/// returns (success, output).
fn mqtt_pub(port: u16, dir: &Path, device: Option<&Device>) -> (bool, String) {
    let mut c = Command::new(tool("mosquitto_pub", "mosquitto-clients"));
    c.args(["-h", "127.0.0.1", "-p", &port.to_string(), "--cafile"]).arg(dir.join("server-ca.pem")).args([
        "-t",
        "devid/test",
        "-m",
        "hi",
        "-q",
        "1",
        "-d",
    ]);
    if let Some(d) = device {
        c.arg("--cert").arg(&d.cert).arg("--key").arg(&d.key);
    }
    let out = run_bounded(c);
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Mosquitto 2.0 with `require_certificate`, devid's chain as `cafile` and devid's CRL as
/// `crlfile`. Mosquitto reads the CRL file only when it starts, so after the revocation the
/// test writes the new CRL and restarts the broker (a deployment would reload it the same
/// way). Afterwards the revoked device is refused (TLS alert 44, "certificate revoked"),
/// the other one still connects.
async fn mosquitto_refuses_a_revoked_client_certificate_via_the_crl(backend: Backend) {
    let mosquitto = tool("mosquitto", "mosquitto");
    tool("mosquitto_pub", "mosquitto-clients");
    let install = Install::new(backend).await;
    let server = install.serve();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a = enroll_device(&install, &server, d, "sensor-a").await;
    let b = enroll_device(&install, &server, d, "sensor-b").await;
    server_certificate(d);

    let crl = fetch_crl_pem(&server, d).await;
    assert!(!crl_serials(d, &crl).contains(&norm_serial(&a.serial)));
    std::fs::write(d.join("crl.pem"), &crl).unwrap();

    // `user root`: as root, Mosquitto would otherwise switch to the `mosquitto` user, which
    // cannot read the test's 0700 directory; as an ordinary user the line has no effect.
    let conf_path = d.join("mosquitto.conf");
    let start = |log: &str| {
        start_listening("mosquitto", &d.join(log), None, |port| {
            let conf = format!(
                "per_listener_settings false\nuser root\npersistence false\nlog_dest stderr\nlog_type all\n\
                 allow_anonymous false\n\
                 listener {port} 127.0.0.1\ncafile {dir}/chain.pem\ncertfile {dir}/server.pem\n\
                 keyfile {dir}/server.key\nrequire_certificate true\nuse_identity_as_username true\n\
                 crlfile {dir}/crl.pem\n",
                dir = path_str(d)
            );
            std::fs::write(&conf_path, conf).unwrap();
            let mut c = Command::new(&mosquitto);
            c.arg("-c").arg(&conf_path);
            c
        })
    };
    let (broker, port) = start("mosquitto-1.log");
    let log1 = || std::fs::read_to_string(d.join("mosquitto-1.log")).unwrap_or_default();

    // Both devices connect and publish; the broker takes the certificate's CN as username.
    for dev in [&a, &b] {
        let (ok, out) = mqtt_pub(port, d, Some(dev));
        assert!(ok, "{out}\n{}", log1());
    }
    assert!(eventually_logged(&log1, &["u'sensor-a'", "u'sensor-b'"]).await, "{}", log1());
    // Without a certificate: refused.
    let (ok, out) = mqtt_pub(port, d, None);
    assert!(!ok, "{out}");

    // Revoke A; wait until the served CRL lists it.
    install.run_ok(&["revoke", &a.serial, "--reason", "keyCompromise"]);
    let t1 = Instant::now();
    let crl = loop {
        let crl = fetch_crl_pem(&server, d).await;
        if crl_serials(d, &crl).contains(&norm_serial(&a.serial)) {
            break crl;
        }
        assert!(t1.elapsed() < PROPAGATION, "the CRL does not list {} after {PROPAGATION:?}", a.serial);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "mosquitto ({backend:?}): the CRL listed the revoked serial {:?} after `devid revoke`",
        t1.elapsed()
    );
    assert!(!crl_serials(d, &crl).contains(&norm_serial(&b.serial)));
    std::fs::write(d.join("crl.pem"), &crl).unwrap();

    // openssl agrees, independently of the broker.
    for (dev, want) in [(&a, false), (&b, true)] {
        let (ok, out) = pki::openssl(
            d,
            &["verify", "-crl_check", "-CRLfile", "crl.pem", "-CAfile", "chain.pem", path_str(&dev.cert)],
        );
        assert_eq!(ok, want, "{out}");
        if !want {
            assert!(out.contains("certificate revoked"), "{out}");
        }
    }

    // Restart the broker with the new CRL: A is refused, B still gets in.
    drop(broker);
    let (broker, port) = start("mosquitto-2.log");
    let log2 = || std::fs::read_to_string(d.join("mosquitto-2.log")).unwrap_or_default();
    let (ok, out) = mqtt_pub(port, d, Some(&a));
    assert!(!ok, "a revoked device published: {out}\n{}", log2());
    // The broker sends its alert before it logs the failed handshake, so the client may be gone
    // before the line is written.
    assert!(eventually_logged(&log2, &["certificate verify failed"]).await, "{}", log2());
    let (ok, out) = mqtt_pub(port, d, Some(&b));
    assert!(ok, "{out}\n{}", log2());
    // The reason, as the client sees it: the broker's TLS alert 44, certificate_revoked.
    let mut c = Command::new("openssl");
    c.current_dir(d).args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-CAfile", "server-ca.pem"]);
    c.arg("-cert").arg(&a.cert).arg("-key").arg(&a.key).arg("-quiet");
    let o = run_bounded(c);
    let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("alert certificate revoked"), "{out}");

    drop(broker);
    drop(server);
    install.cleanup().await;
}
