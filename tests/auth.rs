//! API authentication and authorization, end to end against the real binary: every route
//! of the access table with every role and with bad tokens, the token endpoint (RFC 6749
//! §4.4), revocation (credentials, and single tokens per RFC 7009), the credentials API,
//! the devices and certificates REST API, and that no secret ever reaches the log.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use common::{Backend, Cred, Install, Server, assert_problem, cli_credential, enroll, http};
use devid_api::auth::{ACCESS, Access};
use devid_authority::auth::Role;
use devid_testkit::pki;
use serde_json::{Value, json};

on_both_backends!(
    access_sanity,
    revocation,
    credentials_api,
    devices_and_certificates_rest,
    client_certificate_authentication,
    factory_scoped_to_groups
);

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A response, read whole.
struct Resp {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
    json: Value,
}

impl Resp {
    async fn read(r: reqwest::Response) -> Resp {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp { status, headers, text, json }
    }

    fn header(&self, name: &str) -> String {
        common::header(&self.headers, name)
    }

    fn content_type(&self) -> String {
        self.header("content-type")
    }

    /// Assert an RFC 9457 problem of this status and type code.
    fn problem(&self, status: u16, code: &str, context: &str) {
        assert_eq!(self.status, status, "{context}: {}", self.text);
        assert_problem(self.status, &self.json, &self.content_type(), status, code);
    }

    /// Assert an RFC 6749 §5.2 error (with the problem members too).
    fn oauth_error(&self, status: u16, error: &str, context: &str) {
        assert_eq!(self.status, status, "{context}: {}", self.text);
        assert_eq!(self.json["error"], error, "{context}: {}", self.text);
        assert!(self.json["error_description"].is_string(), "{context}: {}", self.text);
        assert_eq!(
            self.json["type"],
            format!("urn:devid:problem:{}", error.replace('_', "-")),
            "{context}: {}",
            self.text
        );
        assert_eq!(self.json["status"], status, "{context}: {}", self.text);
        assert!(self.json["title"].is_string() && self.json["detail"].is_string(), "{context}");
        assert!(self.content_type().starts_with("application/json"), "{context}: {}", self.content_type());
        assert_eq!(self.header("cache-control"), "no-store", "{context}");
        if status == 401 {
            assert!(self.header("www-authenticate").starts_with("Basic"), "{context}: {:?}", self.headers);
        }
    }
}

/// A client whose connections come from `addr` (the whole of 127.0.0.0/8 is loopback), to
/// tell the per-address throttle from the per-client one.
fn http_from(addr: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::from(addr))
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// `POST /v1/auth/token`: HTTP Basic client authentication, `grant_type=client_credentials`.
async fn token_request(client: &reqwest::Client, server: &Server, id: &str, secret: &str) -> Resp {
    let r = client
        .post(server.url("/v1/auth/token"))
        .basic_auth(id, Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    Resp::read(r).await
}

/// An access token for a credential (which must succeed).
async fn token(server: &Server, c: &Cred) -> String {
    let r = token_request(&http(), server, &c.client_id, &c.secret).await;
    assert_eq!(r.status, 200, "token for {}: {}", c.client_id, r.text);
    r.json["access_token"].as_str().unwrap().to_string()
}

/// A call with an optional bearer token and an optional JSON body.
async fn call(server: &Server, method: &str, path: &str, bearer: Option<&str>, body: Option<Value>) -> Resp {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = http().request(m, server.url(path));
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    Resp::read(req.send().await.unwrap()).await
}

async fn get(server: &Server, path: &str, bearer: &str) -> Resp {
    call(server, "GET", path, Some(bearer), None).await
}

async fn post(server: &Server, path: &str, bearer: &str, body: Value) -> Resp {
    call(server, "POST", path, Some(bearer), Some(body)).await
}

/// `POST /v1/auth/revoke` (RFC 7009) with a client's credentials.
async fn revoke_token(server: &Server, c: &Cred, token: &str) -> Resp {
    let r = http()
        .post(server.url("/v1/auth/revoke"))
        .basic_auth(&c.client_id, Some(&c.secret))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    Resp::read(r).await
}

/// The decoded header and claims of a JWT, and its signature part (base64url).
fn jwt_parts(token: &str) -> (Value, Value, String) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "{token}");
    let dec = |p: &str| -> Value { serde_json::from_slice(&B64URL.decode(p).unwrap()).unwrap() };
    (dec(parts[0]), dec(parts[1]), parts[2].to_string())
}

fn b64json(v: &Value) -> String {
    B64URL.encode(v.to_string())
}

/// A fresh P-256 key, not known to the server.
fn fresh_key() -> p256::ecdsa::SigningKey {
    use p256::pkcs8::DecodePrivateKey;
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    p256::ecdsa::SigningKey::from(p256::SecretKey::from_pkcs8_der(&kp.serialize_der()).unwrap())
}

/// A JWS (compact) signed with ES256 by `key`: the signature is R || S (RFC 7518 §3.4).
/// Checked here with the key's public half, so a refusal by the server is about the key,
/// not about an encoding mistake of this test.
fn sign_es256(key: &p256::ecdsa::SigningKey, header: &Value, claims: &Value) -> String {
    use p256::ecdsa::signature::{Signer, Verifier};
    let input = format!("{}.{}", b64json(header), b64json(claims));
    let sig: p256::ecdsa::Signature = key.sign(input.as_bytes());
    let bytes = sig.to_bytes();
    assert_eq!(bytes.len(), 64);
    key.verifying_key().verify(input.as_bytes(), &sig).unwrap();
    format!("{input}.{}", B64URL.encode(bytes))
}

/// Tokens the server must refuse, made from a real one: (what, token, expected detail).
fn forged_tokens(real: &str) -> Vec<(&'static str, String, &'static str)> {
    let (header, claims, sig) = jwt_parts(real);
    let key = fresh_key();
    let same_header = json!({"alg": "ES256", "typ": "at+jwt", "kid": header["kid"]});
    let unknown_kid = json!({"alg": "ES256", "typ": "at+jwt", "kid": "tk-00000000deadbeef"});
    let none = json!({"alg": "none", "typ": "at+jwt", "kid": header["kid"]});
    let mut admin_claims = claims.clone();
    admin_claims["role"] = json!("admin");
    let real_header_part = real.split('.').next().unwrap();
    vec![
        ("signed by another key", sign_es256(&key, &same_header, &claims), "signature"),
        ("an unknown kid", sign_es256(&key, &unknown_kid, &claims), "unknown key"),
        ("alg none", format!("{}.{}.", b64json(&none), b64json(&claims)), "algorithm"),
        (
            "a tampered payload (role admin, original signature)",
            format!("{real_header_part}.{}.{sig}", b64json(&admin_claims)),
            "signature",
        ),
        ("not a JWT", "not-a-jwt".to_string(), "malformed"),
    ]
}

const BEARER_CHALLENGE: &str = "Bearer realm=\"devid\"";

/// 401 for a request without a token: a plain challenge (RFC 6750 §3.1: no error code).
fn assert_no_token(r: &Resp, context: &str) {
    r.problem(401, "unauthenticated", context);
    assert_eq!(r.header("www-authenticate"), BEARER_CHALLENGE, "{context}");
}

/// 401 for a bad token: `error="invalid_token"` (RFC 6750 §3.1), and the reason.
fn assert_invalid_token(r: &Resp, detail: &str, context: &str) {
    r.problem(401, "unauthenticated", context);
    let challenge = r.header("www-authenticate");
    assert!(
        challenge.starts_with("Bearer") && challenge.contains("error=\"invalid_token\""),
        "{context}: {challenge}"
    );
    let got = r.json["detail"].as_str().unwrap();
    assert!(got.contains(detail), "{context}: detail '{got}' should mention '{detail}'");
}

/// The route was matched: neither the unknown-route fallback nor a method mismatch.
fn assert_routed(r: &Resp, context: &str) {
    assert_ne!(r.status, 405, "{context} is not routed for this method: {}", r.text);
    assert!(
        !(r.status == 404 && r.json["detail"] == "no such route"),
        "{context} is in the access table but not routed"
    );
}

fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A server on the same installation whose tokens live 2 s, with the same public URL (the
/// token issuer) as `server`: its tokens are valid for `server` until they expire.
fn short_lived_server(install: &Install, server: &Server) -> Server {
    let cfg = install.dir.path().join("short-tokens.toml");
    std::fs::write(&cfg, "[auth]\ntoken_lifetime = \"2s\"\n").unwrap();
    install.serve_with(&["--public-url", &server.base, "--config", cfg.to_str().unwrap()])
}

/// Sleep until a token's `exp` has passed (bounded: the token must be short-lived).
async fn wait_until_expired(token: &str) {
    let (_, claims, _) = jwt_parts(token);
    let exp = claims["exp"].as_i64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while now_secs() <= exp {
        assert!(Instant::now() < deadline, "token exp {exp} is too far away");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A route template with its parameters filled with plausible values.
fn fill(route: &str, values: &HashMap<&str, String>) -> String {
    route
        .split('/')
        .map(|seg| match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            None => seg.to_string(),
            Some(name) => {
                let name = name.trim_start_matches('*');
                let key = if name == "file" && route.starts_with("/crl/") { "crl-file" } else { name };
                values.get(key).cloned().unwrap_or_else(|| "x".to_string())
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

// ---------------------------------------------------------------------------------------
// 1. Every route × every role, and bad tokens
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_every_role() {
    let install = Install::new(Backend::Sqlite).await;
    let creds: Vec<(Role, Cred)> =
        Role::ALL.iter().map(|r| (*r, cli_credential(&install, r.as_str()))).collect();
    let victim = cli_credential(&install, "auditor");
    let server = install.serve();
    let mut tokens = HashMap::new();
    for (role, c) in &creds {
        let t = token(&server, c).await;
        assert_eq!(jwt_parts(&t).1["role"], role.as_str());
        tokens.insert(*role, t);
    }
    let auditor = &creds.iter().find(|(r, _)| *r == Role::Auditor).unwrap().1;

    // An expired token: from a second node whose tokens live 2 s, valid here at first.
    let short = short_lived_server(&install, &server);
    let r = token_request(&http(), &short, &auditor.client_id, &auditor.secret).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["expires_in"], 2, "{}", r.text);
    let expiring = r.json["access_token"].as_str().unwrap().to_string();
    drop(short);
    let r = get(&server, "/v1/devices", &expiring).await;
    assert_eq!(r.status, 200, "the short-lived token works until it expires: {}", r.text);

    // Plausible path parameters: a registered and enrolled device, its serial, a client id.
    let enrolled = common::enroll_device(&install, &server, "matrix-dev").await;
    let mut values = HashMap::new();
    values.insert("id", "matrix-dev".to_string());
    values.insert("serial", enrolled.serial.clone());
    values.insert("client_id", victim.client_id.clone());
    values.insert("file", format!("{}.cer", server.issuing_ca()));
    values.insert("crl-file", format!("{}.crl", server.issuing_ca()));
    values.insert("request", "MAo%3D".to_string());

    let forged = forged_tokens(&tokens[&Role::Auditor]);
    wait_until_expired(&expiring).await;

    let mut protected = 0;
    for (method, route, access) in ACCESS {
        let path = fill(route, &values);
        let body = (*method == "POST").then(|| json!({}));
        match access {
            Access::Public => {
                let r = call(&server, method, &path, None, body).await;
                let ctx = format!("{method} {path} (public, no token)");
                assert_routed(&r, &ctx);
                assert!(r.status != 401 && r.status != 403, "{ctx}: {} {}", r.status, r.text);
                assert!(r.status < 500, "{ctx}: {} {}", r.status, r.text);
            }
            Access::ClientCertificate => {
                // Over plain HTTP there is no client certificate: refused, whatever token.
                let r = call(&server, method, &path, Some(&tokens[&Role::Admin]), body).await;
                r.problem(403, "client-certificate-required", &format!("{method} {path} over plain HTTP"));
            }
            Access::Roles(roles) => {
                protected += 1;
                for role in Role::ALL {
                    let r = call(&server, method, &path, Some(&tokens[&role]), body.clone()).await;
                    let ctx = format!("{method} {path} as {role}");
                    assert_routed(&r, &ctx);
                    if roles.contains(&role) {
                        assert!(
                            r.status != 401 && r.status != 403,
                            "{ctx} is allowed: {} {}",
                            r.status,
                            r.text
                        );
                        assert!(r.status < 500, "{ctx}: {} {}", r.status, r.text);
                    } else {
                        r.problem(403, "forbidden", &ctx);
                    }
                }
                let r = call(&server, method, &path, None, body.clone()).await;
                assert_no_token(&r, &format!("{method} {path} without a token"));
                let r = call(&server, method, &path, Some(&expiring), body.clone()).await;
                assert_invalid_token(&r, "expired", &format!("{method} {path} with an expired token"));
                for (what, t, detail) in &forged {
                    let r = call(&server, method, &path, Some(t), body.clone()).await;
                    assert_invalid_token(&r, detail, &format!("{method} {path} with {what}"));
                }
                // Another scheme is no bearer token at all.
                let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
                let r = http()
                    .request(m, server.url(&path))
                    .basic_auth(&auditor.client_id, Some(&auditor.secret))
                    .send()
                    .await
                    .unwrap();
                assert_no_token(&Resp::read(r).await, &format!("{method} {path} with Basic"));
                // HEAD follows GET.
                if *method == "GET" {
                    let r = http().head(server.url(&path)).send().await.unwrap();
                    assert_eq!(r.status(), 401, "HEAD {path} without a token");
                    let r = http()
                        .head(server.url(&path))
                        .bearer_auth(&tokens[&Role::Admin])
                        .send()
                        .await
                        .unwrap();
                    assert!(r.status() != 401 && r.status() != 403, "HEAD {path} as admin: {}", r.status());
                }
            }
        }
    }
    assert!(protected >= 12, "the table protects the operator API ({protected} routes)");
    // The allowed DELETE did revoke the victim credential.
    let r = token_request(&http(), &server, &victim.client_id, &victim.secret).await;
    r.oauth_error(401, "invalid_client", "the deleted credential");

    drop(server);
    install.cleanup().await;
}

/// A few of the matrix's checks on each backend.
async fn access_sanity(backend: Backend) {
    let install = Install::new(backend).await;
    let admin = cli_credential(&install, "admin");
    let factory = cli_credential(&install, "factory");
    let auditor = cli_credential(&install, "auditor");
    let server = install.serve();
    let (ta, tf, tu) =
        (token(&server, &admin).await, token(&server, &factory).await, token(&server, &auditor).await);

    let r = get(&server, "/v1/devices", &tu).await;
    assert_eq!(r.status, 200, "{}", r.text);
    post(&server, "/v1/devices", &tu, json!({"id": "s-1"})).await.problem(
        403,
        "forbidden",
        "auditor registers",
    );
    let r = post(&server, "/v1/devices", &tf, json!({"id": "s-1"})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    get(&server, "/v1/certificates", &tf).await.problem(403, "forbidden", "factory lists certificates");
    let r = get(&server, "/v1/credentials", &ta).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_no_token(&call(&server, "GET", "/v1/devices", None, None).await, "no token");
    for (what, t, detail) in forged_tokens(&tu) {
        assert_invalid_token(&get(&server, "/v1/devices", &t).await, detail, what);
    }
    install.run_ok(&["credential", "revoke", &auditor.client_id]);
    assert_invalid_token(&get(&server, "/v1/devices", &tu).await, "revoked", "revoked credential");
    drop(server);
    install.cleanup().await;
}

/// `DEVID_AUTH__TOKEN_LIFETIME` sets the token lifetime (every key can be set with a
/// `DEVID_*` variable), and an expired token is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_lifetime_from_the_environment() {
    let mut install = Install::new(Backend::Sqlite).await;
    install.env.push(("DEVID_AUTH__TOKEN_LIFETIME".into(), "2s".into()));
    let c = cli_credential(&install, "auditor");
    let server = install.serve();
    let r = token_request(&http(), &server, &c.client_id, &c.secret).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let t = r.json["access_token"].as_str().unwrap().to_string();
    let (_, claims, _) = jwt_parts(&t);
    assert_eq!(r.json["expires_in"], 2, "DEVID_AUTH__TOKEN_LIFETIME=2s is ignored (claims: {claims})");
    assert_eq!(get(&server, "/v1/devices", &t).await.status, 200);
    wait_until_expired(&t).await;
    assert_invalid_token(&get(&server, "/v1/devices", &t).await, "token expired", "expired");
    drop(server);
    install.cleanup().await;
}

// ---------------------------------------------------------------------------------------
// 2. The token endpoint (RFC 6749)
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint() {
    let install = Install::new(Backend::Sqlite).await;
    let admin = cli_credential(&install, "admin");
    let server = install.serve();
    let client = http();
    let url = server.url("/v1/auth/token");

    // Success (RFC 6749 §5.1).
    let before = now_secs();
    let r = token_request(&client, &server, &admin.client_id, &admin.secret).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("cache-control"), "no-store");
    assert!(r.content_type().starts_with("application/json"), "{}", r.content_type());
    assert_eq!(r.json["token_type"], "Bearer", "{}", r.text);
    let expires_in = r.json["expires_in"].as_i64().unwrap();
    assert!((1..=900).contains(&expires_in), "{expires_in}");
    let t = r.json["access_token"].as_str().unwrap().to_string();
    let (header, claims, sig) = jwt_parts(&t);
    assert_eq!(header["alg"], "ES256", "{header}");
    assert_eq!(header["typ"], "at+jwt", "{header}");
    assert!(header["kid"].as_str().is_some_and(|k| !k.is_empty()), "{header}");
    assert_eq!(B64URL.decode(&sig).unwrap().len(), 64, "ES256 signatures are R || S");
    assert_eq!(claims["sub"], admin.client_id.as_str(), "{claims}");
    assert_eq!(claims["role"], "admin", "{claims}");
    assert_eq!(claims["iss"], server.base.as_str(), "{claims}");
    assert!(claims["jti"].as_str().is_some_and(|j| !j.is_empty()), "{claims}");
    let (iat, exp) = (claims["iat"].as_i64().unwrap(), claims["exp"].as_i64().unwrap());
    assert_eq!(exp - iat, expires_in, "{claims}");
    assert!(iat >= before - 5 && iat <= now_secs() + 5, "{claims}");
    let t2 = token(&server, &admin).await;
    assert_ne!(jwt_parts(&t2).1["jti"], claims["jti"], "every token has its own id");

    // A wrong secret, and an unknown client: the same answer.
    let wrong = token_request(&client, &server, &admin.client_id, "devid_cs_wrong").await;
    wrong.oauth_error(401, "invalid_client", "wrong secret");
    let unknown = token_request(&client, &server, "devid_ci_0000000000000000", &admin.secret).await;
    unknown.oauth_error(401, "invalid_client", "unknown client");
    assert_eq!(wrong.json, unknown.json, "no difference between an unknown client and a wrong secret");
    for h in ["www-authenticate", "cache-control", "content-type"] {
        assert_eq!(wrong.header(h), unknown.header(h), "{h}");
    }

    // Other grants, missing parameters, other bodies.
    let r = client
        .post(&url)
        .basic_auth(&admin.client_id, Some(&admin.secret))
        .form(&[("grant_type", "password"), ("username", "a"), ("password", "b")])
        .send()
        .await
        .unwrap();
    Resp::read(r).await.oauth_error(400, "unsupported_grant_type", "grant_type=password");
    let r = client
        .post(&url)
        .basic_auth(&admin.client_id, Some(&admin.secret))
        .form(&[("scope", "admin")])
        .send()
        .await
        .unwrap();
    Resp::read(r).await.oauth_error(400, "invalid_request", "no grant_type");
    let r = client
        .post(&url)
        .basic_auth(&admin.client_id, Some(&admin.secret))
        .json(&json!({"grant_type": "client_credentials"}))
        .send()
        .await
        .unwrap();
    Resp::read(r).await.oauth_error(400, "invalid_request", "a JSON body");
    let r = client.post(&url).form(&[("grant_type", "client_credentials")]).send().await.unwrap();
    Resp::read(r).await.oauth_error(401, "invalid_client", "no Authorization");
    let r =
        client.post(&url).bearer_auth(&t).form(&[("grant_type", "client_credentials")]).send().await.unwrap();
    Resp::read(r).await.oauth_error(401, "invalid_client", "a bearer token instead of client credentials");
    // Credentials in the body are not accepted (HTTP Basic only).
    let r = client
        .post(&url)
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", admin.client_id.as_str()),
            ("client_secret", admin.secret.as_str()),
        ])
        .send()
        .await
        .unwrap();
    Resp::read(r).await.oauth_error(401, "invalid_client", "credentials in the body");
    let r = Resp::read(client.get(&url).send().await.unwrap()).await;
    assert_eq!(r.status, 405, "{}", r.text);

    // The token works.
    assert_eq!(get(&server, "/v1/credentials", &t).await.status, 200);
    drop(server);
    install.cleanup().await;
}

/// 10 failures in the window, per client id or per source address, then 429 + Retry-After,
/// even for the right secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_throttles_failures() {
    let install = Install::new(Backend::Sqlite).await;
    let x = cli_credential(&install, "operator");
    let y = cli_credential(&install, "operator");
    let server = install.serve();
    let here = http_from([127, 0, 0, 1]);
    let there = http_from([127, 0, 0, 2]);

    for i in 0..10 {
        let r = token_request(&here, &server, &x.client_id, &format!("devid_cs_wrong{i}")).await;
        r.oauth_error(401, "invalid_client", &format!("failure {i}"));
    }
    let check_429 = |r: &Resp, ctx: &str| {
        assert_eq!(r.status, 429, "{ctx}: {}", r.text);
        assert_eq!(r.json["error"], "invalid_client", "{ctx}: {}", r.text);
        assert_eq!(r.json["status"], 429, "{ctx}");
        assert_eq!(r.header("cache-control"), "no-store", "{ctx}");
        let retry: u64 = r.header("retry-after").parse().unwrap_or_else(|_| panic!("{ctx}: {:?}", r.headers));
        assert!((1..=300).contains(&retry), "{ctx}: Retry-After {retry}");
    };
    // The right secret is refused too, from this address ...
    check_429(&token_request(&here, &server, &x.client_id, &x.secret).await, "x, right secret");
    // ... and from another: the client id is throttled,
    check_429(&token_request(&there, &server, &x.client_id, &x.secret).await, "x from elsewhere");
    // and so is revocation with its credentials.
    let r = there
        .post(server.url("/v1/auth/revoke"))
        .basic_auth(&x.client_id, Some(&x.secret))
        .form(&[("token", "whatever")])
        .send()
        .await
        .unwrap();
    check_429(&Resp::read(r).await, "x revokes");
    // Another client from another address is not affected; from this address it is.
    let r = token_request(&there, &server, &y.client_id, &y.secret).await;
    assert_eq!(r.status, 200, "y from elsewhere: {}", r.text);
    check_429(&token_request(&here, &server, &y.client_id, &y.secret).await, "y from the throttled address");
    drop(server);
    install.cleanup().await;
}

/// An unknown (or revoked) client id takes as long to refuse as a wrong secret: otherwise
/// the response time tells which client ids exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_client_is_not_told_apart_by_timing() {
    let install = Install::new(Backend::Sqlite).await;
    let c = cli_credential(&install, "auditor");
    let revoked = cli_credential(&install, "auditor");
    install.run_ok(&["credential", "revoke", &revoked.client_id]);
    let server = install.serve();
    let client = http();
    // Warm up (connection, first Argon2 run): a success does not count as a failure.
    token(&server, &c).await;
    let mut best = HashMap::new();
    // 3 rounds × 3 failures: under the 10-failure throttle of this address.
    for round in 0..3 {
        let cases = [
            ("wrong secret", c.client_id.clone(), format!("devid_cs_wrong{round}")),
            ("unknown client", format!("devid_ci_00000000000000{round:02}"), c.secret.clone()),
            ("revoked client", revoked.client_id.clone(), revoked.secret.clone()),
        ];
        for (what, id, secret) in cases {
            let start = Instant::now();
            let r = token_request(&client, &server, &id, &secret).await;
            let took = start.elapsed();
            r.oauth_error(401, "invalid_client", what);
            let e = best.entry(what).or_insert(took);
            *e = (*e).min(took);
        }
    }
    let wrong = best["wrong secret"];
    for what in ["unknown client", "revoked client"] {
        assert!(
            best[what] * 4 >= wrong,
            "{what} is refused in {:?}, a wrong secret in {wrong:?}: the difference tells an attacker \
             which client ids exist",
            best[what]
        );
    }
    drop(server);
    install.cleanup().await;
}

// ---------------------------------------------------------------------------------------
// 3. Revocation
// ---------------------------------------------------------------------------------------

async fn revocation(backend: Backend) {
    let install = Install::new(backend).await;
    let admin = cli_credential(&install, "admin");
    let op = cli_credential(&install, "operator");
    let op2 = cli_credential(&install, "operator");
    let c = cli_credential(&install, "factory");
    let d = cli_credential(&install, "factory");
    let server = install.serve();
    let client = http();

    // `devid credential revoke`: the token stops working at once, no new one is issued.
    let t_op = token(&server, &op).await;
    assert_eq!(get(&server, "/v1/devices", &t_op).await.status, 200);
    install.run_ok(&["credential", "revoke", &op.client_id]);
    assert_invalid_token(&get(&server, "/v1/devices", &t_op).await, "revoked", "after CLI revoke");
    token_request(&client, &server, &op.client_id, &op.secret).await.oauth_error(
        401,
        "invalid_client",
        "new token after CLI revoke",
    );
    let listed: Value =
        serde_json::from_str(install.run_ok(&["credential", "list", "--json"]).trim()).unwrap();
    let row = listed.as_array().unwrap().iter().find(|r| r["client_id"] == op.client_id.as_str()).unwrap();
    assert!(row["revoked_at"].is_string(), "{row}");

    // DELETE /v1/credentials/{id} by an admin: the same.
    let t_admin = token(&server, &admin).await;
    let t_op2 = token(&server, &op2).await;
    assert_eq!(get(&server, "/v1/devices", &t_op2).await.status, 200);
    let r =
        call(&server, "DELETE", &format!("/v1/credentials/{}", op2.client_id), Some(&t_admin), None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["client_id"], op2.client_id.as_str(), "{}", r.text);
    assert_eq!(r.json["role"], "operator", "{}", r.text);
    assert!(r.json["revoked_at"].is_string(), "{}", r.text);
    assert_invalid_token(&get(&server, "/v1/devices", &t_op2).await, "revoked", "after DELETE");
    token_request(&client, &server, &op2.client_id, &op2.secret).await.oauth_error(
        401,
        "invalid_client",
        "new token after DELETE",
    );
    let r = call(&server, "DELETE", "/v1/credentials/devid_ci_0000000000000000", Some(&t_admin), None).await;
    r.problem(404, "not-found", "DELETE an unknown credential");

    // RFC 7009: one token revoked, the client's other token still works.
    let t1 = token(&server, &c).await;
    let t2 = token(&server, &c).await;
    let r = revoke_token(&server, &c, &t1).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_invalid_token(&get(&server, "/v1/devices", &t1).await, "revoked", "revoked token");
    assert_eq!(get(&server, "/v1/devices", &t2).await.status, 200, "the other token works");
    // Revoking it again, or revoking garbage, is still 200 (RFC 7009 §2.2).
    assert_eq!(revoke_token(&server, &c, &t1).await.status, 200);
    assert_eq!(revoke_token(&server, &c, "not-a-token").await.status, 200);
    // Another client's token cannot be revoked with your own credentials.
    let r = revoke_token(&server, &d, &t2).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(get(&server, "/v1/devices", &t2).await.status, 200, "c's token survives d's revocation");
    // Client authentication is required, and the token parameter.
    let wrong = Cred { client_id: c.client_id.clone(), secret: "devid_cs_wrong".into() };
    revoke_token(&server, &wrong, &t2).await.oauth_error(401, "invalid_client", "revoke with a wrong secret");
    assert_eq!(get(&server, "/v1/devices", &t2).await.status, 200);
    let r = client.post(server.url("/v1/auth/revoke")).form(&[("token", t2.as_str())]).send().await.unwrap();
    Resp::read(r).await.oauth_error(401, "invalid_client", "revoke without client authentication");
    let r = client
        .post(server.url("/v1/auth/revoke"))
        .basic_auth(&c.client_id, Some(&c.secret))
        .form(&[("token_type_hint", "access_token")])
        .send()
        .await
        .unwrap();
    Resp::read(r).await.oauth_error(400, "invalid_request", "revoke without a token");
    assert_eq!(get(&server, "/v1/devices", &t2).await.status, 200);

    drop(server);
    install.cleanup().await;
}

// ---------------------------------------------------------------------------------------
// 4. The credentials API
// ---------------------------------------------------------------------------------------

async fn credentials_api(backend: Backend) {
    let install = Install::new(backend).await;
    let admin = cli_credential(&install, "admin");
    let auditor = cli_credential(&install, "auditor");
    let server = install.serve();
    let (ta, tu) = (token(&server, &admin).await, token(&server, &auditor).await);

    let r = post(&server, "/v1/credentials", &ta, json!({"role": "factory", "name": "line 7"})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["role"], "factory", "{}", r.text);
    let made = Cred {
        client_id: r.json["client_id"].as_str().unwrap().to_string(),
        secret: r.json["client_secret"].as_str().unwrap().to_string(),
    };
    assert!(made.client_id.starts_with("devid_ci_") && made.secret.starts_with("devid_cs_"), "{}", r.text);
    assert!(made.secret.len() >= 40, "a 256-bit secret: {}", made.secret);
    let t = token(&server, &made).await;
    assert_eq!(jwt_parts(&t).1["role"], "factory");
    let r = post(&server, "/v1/devices", &t, json!({"id": "from-line-7"})).await;
    assert_eq!(r.status, 201, "the new credential works: {}", r.text);

    let secrets = [&admin.secret, &auditor.secret, &made.secret];
    for (who, bearer) in [("admin", &ta), ("auditor", &tu)] {
        let r = get(&server, "/v1/credentials", bearer).await;
        assert_eq!(r.status, 200, "{who}: {}", r.text);
        for needle in ["client_secret", "secret_hash", "$argon2", "devid_cs_"] {
            assert!(!r.text.contains(needle), "{who}: GET /v1/credentials shows {needle}: {}", r.text);
        }
        for s in secrets {
            assert!(!r.text.contains(s.as_str()), "{who}: a secret is listed");
        }
        let items = r.json.as_array().unwrap();
        assert_eq!(items.len(), 3, "{}", r.text);
        let row = items.iter().find(|i| i["client_id"] == made.client_id.as_str()).unwrap();
        assert_eq!(row["role"], "factory");
        assert_eq!(row["name"], "line 7");
        assert!(row["created_at"].is_string() && row["revoked_at"].is_null(), "{row}");
    }

    for (body, what) in [
        (json!({"role": "root", "name": "x"}), "bad role"),
        (json!({"role": "admin", "name": ""}), "empty name"),
        (json!({"role": "admin"}), "no name"),
        (json!({"role": "admin", "name": "x", "secret": "mine"}), "a chosen secret"),
    ] {
        post(&server, "/v1/credentials", &ta, body).await.problem(400, "invalid-request", what);
    }
    post(&server, "/v1/credentials", &tu, json!({"role": "admin", "name": "x"})).await.problem(
        403,
        "forbidden",
        "auditor creates",
    );
    let r = get(&server, "/v1/credentials", &ta).await;
    assert_eq!(r.json.as_array().unwrap().len(), 3, "the refused requests created nothing");
    drop(server);
    install.cleanup().await;
}

// ---------------------------------------------------------------------------------------
// 5. Devices and certificates, end to end over REST
// ---------------------------------------------------------------------------------------

async fn register(server: &Server, factory: &str, id: &str) -> String {
    let r = post(server, "/v1/devices", factory, json!({"id": id})).await;
    assert_eq!(r.status, 201, "register {id}: {}", r.text);
    assert_eq!(r.json["id"], id);
    r.json["token"].as_str().unwrap().to_string()
}

async fn devices_and_certificates_rest(backend: Backend) {
    let install = Install::new(backend).await;
    let factory = cli_credential(&install, "factory");
    let operator = cli_credential(&install, "operator");
    let server = install.serve();
    let (tf, to) = (token(&server, &factory).await, token(&server, &operator).await);

    // The factory registers; the device enrolls with its token.
    let et1 = register(&server, &tf, "rest-1").await;
    post(&server, "/v1/devices", &tf, json!({"id": "rest-1"})).await.problem(409, "device-exists", "twice");
    post(&server, "/v1/devices", &tf, json!({"id": "bad id!"})).await.problem(
        400,
        "invalid-request",
        "bad id",
    );
    post(&server, "/v1/devices", &tf, json!({})).await.problem(400, "invalid-request", "no id");
    let r = post(&server, "/v1/devices", &tf, json!({"id": "rest-notoken", "token": false})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert!(r.json["token"].is_null(), "{}", r.text);
    let r = get(&server, "/v1/devices/rest-1", &tf).await;
    assert_eq!(
        (r.json["status"].as_str(), r.json["token_used"].as_bool()),
        (Some("registered"), Some(false))
    );
    let (_k1, csr1) = pki::csr_p256("rest-1");
    let (s, body, _) = enroll(&server, &et1, &csr1).await;
    assert_eq!(s, 200, "{body}");
    let serial1 = body["serial"].as_str().unwrap().to_string();
    let r = get(&server, "/v1/devices/rest-1", &to).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!((r.json["status"].as_str(), r.json["token_used"].as_bool()), (Some("enrolled"), Some(true)));
    get(&server, "/v1/devices/nobody", &to).await.problem(404, "not-found", "unknown device");

    // The operator looks it up.
    let r = get(&server, "/v1/certificates?device=rest-1", &to).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let items = r.json["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{}", r.text);
    assert_eq!(items[0]["serial"], serial1.as_str());
    assert_eq!(items[0]["device"], "rest-1");
    assert_eq!(items[0]["status"], "issued");
    assert_eq!(items[0]["certificate"], body["certificate"]);
    let r = get(&server, "/v1/certificates?device=rest-notoken", &to).await;
    assert_eq!(r.json["items"], json!([]), "{}", r.text);
    let r = get(&server, &format!("/v1/certificates/{serial1}"), &to).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        (r.json["serial"].as_str(), r.json["status"].as_str()),
        (Some(serial1.as_str()), Some("issued"))
    );

    // ... and revokes it.
    let path = format!("/v1/certificates/{serial1}/revoke");
    let r = post(&server, &path, &to, json!({"reason": "keyCompromise"})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["status"], "revoked", "{}", r.text);
    assert_eq!(r.json["reason"], "keyCompromise", "{}", r.text);
    assert!(r.json["revoked_at"].is_string(), "{}", r.text);
    let again = post(&server, &path, &to, json!({"reason": "superseded"})).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.json["reason"], "keyCompromise", "the first reason stands");
    assert_eq!(again.json["revoked_at"], r.json["revoked_at"], "the first time stands");
    assert_eq!(get(&server, &format!("/v1/certificates/{serial1}"), &to).await.json["status"], "revoked");
    post(&server, "/v1/certificates/7f0102030405/revoke", &to, json!({})).await.problem(
        404,
        "not-found",
        "unknown serial",
    );
    post(&server, "/v1/certificates/zz/revoke", &to, json!({})).await.problem(400, "invalid-request", "zz");
    get(&server, "/v1/certificates/zz", &to).await.problem(400, "invalid-request", "GET zz");
    get(&server, "/v1/certificates/7f0102030405", &to).await.problem(404, "not-found", "GET unknown");
    post(&server, &path, &to, json!({"reason": "bogus"})).await.problem(400, "invalid-request", "bad reason");

    // Quarantine: what the device holds is revoked, and it cannot enroll.
    let et2 = register(&server, &tf, "rest-2").await;
    let (_k2, csr2) = pki::csr_p256("rest-2");
    let (s, body2, _) = enroll(&server, &et2, &csr2).await;
    assert_eq!(s, 200, "{body2}");
    let serial2 = body2["serial"].as_str().unwrap().to_string();
    let r = post(&server, "/v1/devices/rest-2/quarantine", &to, json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json, json!({"device": "rest-2", "revoked": [serial2]}));
    let r = get(&server, &format!("/v1/certificates/{serial2}"), &to).await;
    assert_eq!(
        (r.json["status"].as_str(), r.json["reason"].as_str()),
        (Some("revoked"), Some("privilegeWithdrawn"))
    );
    assert_eq!(get(&server, "/v1/devices/rest-2", &to).await.json["status"], "quarantined");
    let (s, b, ct) = enroll(&server, &et2, &csr2).await;
    assert_problem(s, &b, &ct, 403, "device-quarantined");

    // Quarantined before its first enrollment; released, it enrolls.
    let et3 = register(&server, &tf, "rest-3").await;
    let r =
        post(&server, "/v1/devices/rest-3/quarantine", &to, json!({"reason": "cessationOfOperation"})).await;
    assert_eq!(r.json, json!({"device": "rest-3", "revoked": []}), "{}", r.text);
    let (_k3, csr3) = pki::csr_p256("rest-3");
    let (s, b, ct) = enroll(&server, &et3, &csr3).await;
    assert_problem(s, &b, &ct, 403, "device-quarantined");
    let r = call(&server, "POST", "/v1/devices/rest-3/release", Some(&to), None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json, json!({"device": "rest-3", "released": true}));
    let r = call(&server, "POST", "/v1/devices/rest-3/release", Some(&to), None).await;
    assert_eq!(r.json, json!({"device": "rest-3", "released": false}), "{}", r.text);
    let (s, b, _) = enroll(&server, &et3, &csr3).await;
    assert_eq!(s, 200, "{b}");
    post(&server, "/v1/devices/nobody/quarantine", &to, json!({})).await.problem(404, "not-found", "unknown");
    call(&server, "POST", "/v1/devices/nobody/release", Some(&to), None).await.problem(
        404,
        "not-found",
        "rel",
    );

    // Revoke everything a device holds.
    let r = post(&server, "/v1/devices/rest-3/revoke", &to, json!({"reason": "superseded"})).await;
    assert_eq!(r.json, json!({"device": "rest-3", "revoked": [b["serial"]]}), "{}", r.text);

    // Paging: 5 devices, 2 per page: 3 pages.
    register(&server, &tf, "rest-4").await;
    let mut ids = Vec::new();
    let mut pages = 0;
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            None => "/v1/devices?limit=2".to_string(),
            Some(c) => format!("/v1/devices?limit=2&cursor={c}"),
        };
        let r = get(&server, &path, &to).await;
        assert_eq!(r.status, 200, "{}", r.text);
        pages += 1;
        assert!(pages <= 5, "paging does not end");
        let items = r.json["items"].as_array().unwrap();
        assert!(items.len() <= 2, "{}", r.text);
        ids.extend(items.iter().map(|i| i["id"].as_str().unwrap().to_string()));
        match r.json["next"].as_str() {
            Some(n) => cursor = Some(n.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3, "{ids:?}");
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(ids, sorted, "in order, each once");
    // devid's own TLS server certificates are recorded under the device devid-tls-server.
    assert_eq!(ids, ["devid-tls-server", "rest-1", "rest-2", "rest-3", "rest-4", "rest-notoken"]);

    drop(server);
    install.cleanup().await;
}

// ---------------------------------------------------------------------------------------
// 6. No secrets in the log
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secrets_in_the_debug_log() {
    let install = Install::new(Backend::Sqlite).await;
    let admin = cli_credential(&install, "admin");
    let mut cmd = install.command(&["serve", "--listen", "127.0.0.1:0"]);
    cmd.env_remove("RUST_LOG").env("DEVID_LOG__LEVEL", "debug");
    let server = common::start_server(cmd);
    let client = http();

    let mut secrets: Vec<(String, String)> = vec![("admin secret".into(), admin.secret.clone())];
    let basic =
        |c: &Cred| base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.client_id, c.secret));
    secrets.push(("admin Basic credentials".into(), basic(&admin)));
    let mut tokens = Vec::new();

    let ta = token(&server, &admin).await;
    tokens.push(ta.clone());
    // A credential made over REST, its tokens, one revoked (RFC 7009).
    let r = post(&server, "/v1/credentials", &ta, json!({"role": "factory", "name": "line 1"})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let f = Cred {
        client_id: r.json["client_id"].as_str().unwrap().to_string(),
        secret: r.json["client_secret"].as_str().unwrap().to_string(),
    };
    secrets.push(("factory secret".into(), f.secret.clone()));
    secrets.push(("factory Basic credentials".into(), basic(&f)));
    let tf = token(&server, &f).await;
    let tf2 = token(&server, &f).await;
    tokens.extend([tf.clone(), tf2.clone()]);
    // Near misses: a wrong secret and a forged token are not logged either.
    let near = format!("{}x", &admin.secret[..admin.secret.len() - 1]);
    token_request(&client, &server, &admin.client_id, &near).await.oauth_error(401, "invalid_client", "near");
    secrets.push(("a wrong secret".into(), near));
    let forged = forged_tokens(&tf).remove(0).1;
    assert_eq!(get(&server, "/v1/devices", &forged).await.status, 401);
    tokens.push(forged);
    // Devices registered with tokens; one enrolls.
    let mut enrollment = Vec::new();
    for i in 0..3 {
        enrollment.push(register(&server, &tf, &format!("log-{i}")).await);
    }
    let (_k, csr) = pki::csr_p256("log-0");
    let (s, b, _) = enroll(&server, &enrollment[0], &csr).await;
    assert_eq!(s, 200, "{b}");
    let (s, _, _) = enroll(&server, "devid_et_not-a-real-token", &csr).await;
    assert_eq!(s, 401);
    assert_eq!(get(&server, "/v1/devices", &tf).await.status, 200);
    assert_eq!(revoke_token(&server, &f, &tf).await.status, 200);
    assert_eq!(get(&server, "/v1/devices", &tf).await.status, 401);
    assert_eq!(get(&server, "/v1/certificates", &ta).await.status, 200);
    install.run_ok(&["credential", "revoke", &f.client_id]);
    assert_eq!(get(&server, "/v1/devices", &tf2).await.status, 401);

    let log = server.stop();
    // The log is at debug level and saw the session (the test is not vacuous).
    assert!(log.contains("DEBUG"), "the server logs at debug level:\n{log}");
    assert!(log.contains(&f.client_id), "client ids are logged:\n{log}");
    for (what, s) in &secrets {
        assert!(!log.contains(s.as_str()), "{what} is in the log");
    }
    for t in &tokens {
        let sig = t.rsplit('.').next().unwrap();
        assert!(!log.contains(t.as_str()), "an access token is in the log");
        assert!(!log.contains(sig), "an access token's signature is in the log");
    }
    for t in &enrollment {
        assert!(!log.contains(t.as_str()), "an enrollment token is in the log");
    }
    assert!(!log.contains("devid_cs_"), "something that looks like a client secret is in the log");
    assert!(!log.contains("$argon2"), "a secret hash is in the log");
    install.cleanup().await;
}

/// An HTTPS client for the renewal listener with `identity` (PEM key + certificates),
/// trusting `root_pem`.
fn mtls_client(identity_pem: &str, root_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(root_pem.as_bytes()).unwrap())
        .identity(reqwest::Identity::from_pem(identity_pem.as_bytes()).unwrap())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// RFC 8705 §2.1 (tls_client_auth): a credential's client certificate, issued by devid,
/// gets tokens on the mutual-TLS listener without the secret; the wrong client id, a
/// device's certificate and a revoked credential do not.
async fn client_certificate_authentication(backend: Backend) {
    let install = Install::new(backend).await;
    let server = install.serve();
    let dir = install.dir.path().join("client-cert");
    let out = install.run_ok(&[
        "credential",
        "create",
        "--role",
        "operator",
        "--name",
        "line 9",
        "--client-cert-out",
        dir.to_str().unwrap(),
        "--json",
    ]);
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    let client_id = v["client_id"].as_str().unwrap().to_string();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(dir.join("key.pem")).unwrap().permissions().mode() & 0o777, 0o600);
    let read = |n: &str| std::fs::read_to_string(dir.join(n)).unwrap();
    let chain = devid_testkit::pki::split_pem(&read("chain.pem"));
    let identity = format!("{}{}{}", read("key.pem"), read("cert.pem"), chain[0]);
    let client = mtls_client(&identity, &chain[1]);
    let token_url = format!("{}/v1/auth/token", server.renew_base());
    let ask = |client: reqwest::Client, id: String| {
        let url = token_url.clone();
        async move {
            let r = client
                .post(url)
                .form(&[("grant_type", "client_credentials"), ("client_id", id.as_str())])
                .send()
                .await
                .unwrap();
            Resp::read(r).await
        }
    };
    let r = ask(client.clone(), client_id.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let token = r.json["access_token"].as_str().unwrap().to_string();
    assert_eq!(get(&server, "/v1/devices", &token).await.status, 200);

    // Another client id with this certificate: refused.
    let other = cli_credential(&install, "admin");
    ask(client.clone(), other.client_id.clone()).await.oauth_error(
        401,
        "invalid_client",
        "another client's id",
    );
    // A device's certificate for the credential's id: refused.
    let dev = common::enroll_device_with_key(&install, &server, "not-a-client").await;
    let dev_client =
        mtls_client(&format!("{}{}{}", dev.key_pem, dev.cert_pem, dev.issuing_pem), &dev.root_pem);
    ask(dev_client, client_id.clone()).await.oauth_error(401, "invalid_client", "a device certificate");
    // Revoked credential: refused.
    install.run_ok(&["credential", "revoke", &client_id]);
    ask(client, client_id.clone()).await.oauth_error(401, "invalid_client", "a revoked credential");
    drop(server);
    install.cleanup().await;
}

/// A factory credential limited to groups registers devices into them only and sees only
/// their devices and groups; other groups' devices are "not found" to it.
async fn factory_scoped_to_groups(backend: Backend) {
    let install = Install::new(backend).await;
    let server = install.serve();
    install.run_ok(&["group", "add", "g1", "--method", "token"]);
    install.run_ok(&["group", "add", "g2", "--method", "token"]);
    let out = install.run_ok(&["credential", "create", "--role", "factory", "--group", "g1", "--json"]);
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    let scoped = Cred {
        client_id: v["client_id"].as_str().unwrap().to_string(),
        secret: v["client_secret"].as_str().unwrap().to_string(),
    };
    let bad = install.run(&["credential", "create", "--role", "operator", "--group", "g1"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("only factory"));
    let tf = token(&server, &scoped).await;
    let admin = cli_credential(&install, "admin");
    let ta = token(&server, &admin).await;

    let r = call(&server, "POST", "/v1/devices", Some(&tf), Some(json!({"id": "s-1", "group": "g1"}))).await;
    assert_eq!(r.status, 201, "{}", r.text);
    call(&server, "POST", "/v1/devices", Some(&tf), Some(json!({"id": "s-2", "group": "g2"}))).await.problem(
        403,
        "forbidden",
        "another group",
    );
    call(&server, "POST", "/v1/devices", Some(&tf), Some(json!({"id": "s-3"}))).await.problem(
        403,
        "forbidden",
        "no group",
    );
    let r = call(&server, "POST", "/v1/devices", Some(&ta), Some(json!({"id": "o-1", "group": "g2"}))).await;
    assert_eq!(r.status, 201, "{}", r.text);

    let r = get(&server, "/v1/devices", &tf).await;
    let ids: Vec<&str> =
        r.json["items"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["s-1"], "{}", r.text);
    get(&server, "/v1/devices/o-1", &tf).await.problem(404, "not-found", "another group's device");
    assert_eq!(get(&server, "/v1/devices/s-1", &tf).await.status, 200);
    get(&server, "/v1/devices?group=g2", &tf).await.problem(403, "forbidden", "another group's list");
    let r = get(&server, "/v1/groups", &tf).await;
    let names: Vec<&str> = r.json.as_array().unwrap().iter().map(|g| g["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["g1"]);
    get(&server, "/v1/groups/g2", &tf).await.problem(404, "not-found", "another group");
    let r = get(&server, "/v1/credentials", &ta).await;
    let listed = r
        .json
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["client_id"] == scoped.client_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(listed["groups"], json!(["g1"]));

    let rows = "{\"id\":\"b-1\",\"group\":\"g1\"}\n{\"id\":\"b-2\",\"group\":\"g2\"}\n{\"id\":\"b-3\"}\n";
    let r = http()
        .post(server.url("/v1/device-batches/scoped"))
        .bearer_auth(&tf)
        .header("content-type", "application/x-ndjson")
        .body(rows)
        .send()
        .await
        .unwrap();
    let r = Resp::read(r).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["rows"][0]["result"], "created", "{}", r.text);
    assert_eq!(r.json["rows"][1]["reason"], "outside this credential's groups", "{}", r.text);
    assert_eq!(r.json["rows"][2]["reason"], "outside this credential's groups", "{}", r.text);
    drop(server);
    install.cleanup().await;
}
