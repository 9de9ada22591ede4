//! The HTTP side: the enrollment server (PROTOCOL.md §1–2) and the mutual-TLS renewal
//! listener (§3). TLS is rustls with the aws-lc-rs provider.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{AgentError, ErrorKind, Problem};
use crate::keys::pem_certificates;
use crate::schedule::parse_retry_after;

/// How long one request may take, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The user agent the agent sends (RFC 9110 §10.1.5).
pub const USER_AGENT: &str = concat!("devid-agent/", env!("CARGO_PKG_VERSION"));

/// `base` (an `http://` or `https://` URL, possibly with a path) joined with an absolute
/// API path such as `/v1/enroll`.
pub fn endpoint(base: &str, path: &str) -> Result<String, AgentError> {
    let u = url::Url::parse(base).map_err(|e| AgentError::usage(format!("{base:?} is not a URL: {e}")))?;
    if !matches!(u.scheme(), "http" | "https") || u.host().is_none() {
        return Err(AgentError::usage(format!("{base:?} must be an http:// or https:// URL with a host")));
    }
    if u.query().is_some() || u.fragment().is_some() {
        return Err(AgentError::usage(format!("{base:?} must not have a query or fragment")));
    }
    Ok(format!("{}{path}", u.as_str().trim_end_matches('/')))
}

/// Read the certificates of a PEM file (trust anchors given with `--ca`).
pub fn read_pem_certificates(path: &Path) -> Result<Vec<Vec<u8>>, AgentError> {
    let text = crate::files::read_text(path)?;
    let certs = pem_certificates(&text)?;
    if certs.is_empty() {
        return Err(AgentError::crypto(format!("{} holds no PEM certificate", path.display())));
    }
    Ok(certs)
}

/// The start of a rustls client configuration (aws-lc-rs, TLS 1.2 and 1.3) trusting
/// exactly `roots`; the caller chooses the client authentication.
pub(crate) fn tls_builder(
    roots: &[Vec<u8>],
) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>, AgentError> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store
            .add(CertificateDer::from(r.clone()))
            .map_err(|e| AgentError::crypto(format!("a trust anchor is not usable: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| AgentError::crypto(format!("TLS set-up: {e}")))?
        .with_root_certificates(store))
}

/// A rustls client configuration trusting exactly `roots`, with a client certificate when
/// `identity` is given (the chain, leaf first, and the PKCS#8 key, DER).
pub fn tls_config(
    roots: &[Vec<u8>],
    identity: Option<(Vec<Vec<u8>>, Vec<u8>)>,
) -> Result<rustls::ClientConfig, AgentError> {
    let builder = tls_builder(roots)?;
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some((chain, key)) => {
            let chain = chain.into_iter().map(CertificateDer::from).collect();
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key));
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| AgentError::crypto(format!("the client certificate or key is not usable: {e}")))
        }
    }
}

/// An HTTP client. With `roots`, TLS trusts exactly those certificates; without, the
/// built-in web PKI roots.
pub fn http_client(roots: Option<&[Vec<u8>]>) -> Result<reqwest::Client, AgentError> {
    let b = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).user_agent(USER_AGENT);
    let b = match roots {
        Some(r) => b.use_preconfigured_tls(tls_config(r, None)?),
        None => b,
    };
    b.build().map_err(|e| AgentError::crypto(format!("HTTP client set-up: {e}")))
}

/// An HTTP client for the mutual-TLS renewal listener: trusts exactly `roots` and presents
/// `chain` (leaf first) with `key_pkcs8_der`.
pub fn mtls_client(
    roots: &[Vec<u8>],
    chain: Vec<Vec<u8>>,
    key_pkcs8_der: Vec<u8>,
) -> Result<reqwest::Client, AgentError> {
    client_with_tls(tls_config(roots, Some((chain, key_pkcs8_der)))?)
}

/// An HTTP client using exactly this rustls configuration (reqwest's
/// `use_preconfigured_tls`; the rustls versions of both must be the same).
pub fn client_with_tls(cfg: rustls::ClientConfig) -> Result<reqwest::Client, AgentError> {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .user_agent(USER_AGENT)
        .use_preconfigured_tls(cfg)
        .build()
        .map_err(|e| AgentError::crypto(format!("HTTP client set-up: {e}")))
}

/// POST `body` as JSON to `url` and read a JSON answer. Failures are classified: no
/// answer, 408, 429 and 5xx are [`ErrorKind::Unavailable`] (retryable), other 4xx
/// [`ErrorKind::Refused`] with the server's problem document (RFC 9457) and any
/// `Retry-After` (RFC 9110 §10.2.3).
pub async fn post_json<B: Serialize + ?Sized, R: DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
    body: &B,
    what: &str,
) -> Result<R, AgentError> {
    let resp = http.post(url).json(body).send().await.map_err(|e| {
        AgentError::new(ErrorKind::Unavailable, format!("{what}: cannot reach {url}: {}", error_chain(&e)))
    })?;
    let status = resp.status();
    if status.is_success() {
        return resp.json::<R>().await.map_err(|e| {
            AgentError::new(
                ErrorKind::Protocol,
                format!("{what}: the answer of {url} is not the protocol: {e}"),
            )
        });
    }
    let now = devid_core::Clock::now(&devid_core::SystemClock);
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, now));
    let bytes = resp.bytes().await.unwrap_or_default();
    let problem =
        serde_json::from_slice::<Problem>(&bytes).ok().filter(|p| !p.title.is_empty() || !p.kind.is_empty());
    let code = status.as_u16();
    let kind = if code == 408 || code == 429 || status.is_server_error() {
        ErrorKind::Unavailable
    } else {
        ErrorKind::Refused
    };
    let mut e = AgentError::new(kind, format!("{what} failed"));
    e.status = Some(code);
    e.retry_after = retry_after;
    e.problem = problem.map(Box::new).or_else(|| {
        Some(Box::new(Problem {
            kind: String::new(),
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: code,
            detail: String::new(),
        }))
    });
    Err(e)
}

/// A reqwest error with its causes (the TLS reason is in a source, not in the message).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            endpoint("http://127.0.0.1:8080", "/v1/enroll").ok(),
            Some("http://127.0.0.1:8080/v1/enroll".into())
        );
        assert_eq!(
            endpoint("https://ca.example/devid/", "/v1/renew").ok(),
            Some("https://ca.example/devid/v1/renew".into())
        );
        assert!(endpoint("ftp://x", "/v1").is_err());
        assert!(endpoint("not a url", "/v1").is_err());
        assert!(endpoint("http://x/?a=b", "/v1").is_err());
    }
}
