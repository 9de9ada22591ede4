//! Revocation status for brokers and gateways: the OCSP responder (RFC 6960; GET and
//! POST per RFC 6960 Appendix A and the RFC 5019 profile) and the CRLs (RFC 5280 §5).
//! Both answer from memory; see `devid_authority::publish`.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use devid_authority::publish::{Caching, OcspAnswer};
use devid_core::UnixTime;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::problem::{ApiError, Problem};

const OCSP_RESPONSE: &str = "application/ocsp-response";

/// OCSP over POST (RFC 6960 A.1.1): the body is a DER OCSPRequest.
#[utoipa::path(post, path = "/ocsp", tag = "pki",
    request_body(content = Vec<u8>, content_type = "application/ocsp-request", description = "DER OCSPRequest"),
    responses(
        (status = 200, description = "A DER OCSPResponse: good, revoked or unknown per certificate, or an OCSP error status (malformedRequest, unauthorized, tryLater).", body = Vec<u8>, content_type = "application/ocsp-response"),
        (status = 413, description = "Request body too large.", body = Problem, content_type = "application/problem+json")
    ))]
async fn ocsp_post(State(state): State<AppState>, body: Bytes) -> Response {
    let answer = state.publisher.ocsp(&body).await;
    // POST responses are not cacheable by HTTP caches (RFC 5019 §5: use GET for that).
    ocsp_response(answer.der)
}

/// A 200 with a DER OCSPResponse, its headers put straight into the response (a header
/// map of their own would be merged into it header by header).
fn ocsp_response(der: Bytes) -> Response {
    let mut r = Response::new(axum::body::Body::from(der));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(OCSP_RESPONSE));
    r
}

/// OCSP over GET (RFC 6960 A.1.1: `{url}/{url-encoding of base-64 encoding of the DER
/// encoding of the OCSPRequest}`), cacheable (RFC 5019 §6: Cache-Control max-age bounded by
/// nextUpdate, Last-Modified, Expires, ETag).
#[utoipa::path(get, path = "/ocsp/{request}", tag = "pki",
    params(("request" = String, Path, description = "The DER OCSPRequest, base64, URL-encoded")),
    responses(
        (status = 200, description = "A DER OCSPResponse, with HTTP caching headers when it has no nonce.", body = Vec<u8>, content_type = "application/ocsp-response"),
        (status = 304, description = "Not modified (If-None-Match matched the ETag).")
    ))]
async fn ocsp_get(
    State(state): State<AppState>,
    Path(request): Path<String>,
    // The request itself, not a `HeaderMap` (that extractor clones every header).
    req: axum::extract::Request,
) -> Response {
    let answer = match decode_b64(&request) {
        Some(der) => state.publisher.ocsp(&der).await,
        None => {
            devid_authority::metrics::OCSP_ERROR.inc();
            OcspAnswer { der: devid_ca_error(devid_ca::ocsp::ErrorStatus::MalformedRequest), caching: None }
        }
    };
    let now = state.authority.now();
    let matched = answer.caching.as_ref().is_some_and(|c| not_modified(req.headers(), c.etag()));
    let mut r = ocsp_response(if matched { Bytes::new() } else { answer.der });
    if matched {
        *r.status_mut() = StatusCode::NOT_MODIFIED;
    }
    match &answer.caching {
        Some(c) => cache_headers(r.headers_mut(), c, now),
        None => {
            r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache, no-store"));
        }
    }
    r
}

fn devid_ca_error(status: devid_ca::ocsp::ErrorStatus) -> axum::body::Bytes {
    devid_ca::ocsp::error_response(status).into()
}

/// Standard base64 with or without padding; also the URL-safe alphabet, which some clients
/// send.
fn decode_b64(s: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let s = s.trim();
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD].iter().find_map(|e| e.decode(s).ok())
}

fn cache_headers(h: &mut HeaderMap, c: &Caching, now: UnixTime) {
    let max_age = (c.next_update.0 - now.0).max(0);
    let cache_control = Bytes::from(format!("max-age={max_age}, public, no-transform, must-revalidate"));
    // The other values were formatted when the answer was made; these are reference counts.
    for (name, value) in [
        (header::CACHE_CONTROL, cache_control),
        (header::LAST_MODIFIED, c.last_modified_value()),
        (header::EXPIRES, c.expires_value()),
        (header::ETAG, c.etag_value()),
    ] {
        if let Ok(v) = HeaderValue::from_maybe_shared(value) {
            h.insert(name, v);
        }
    }
}

fn not_modified(req: &HeaderMap, etag: &str) -> bool {
    req.get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().trim_start_matches("W/").trim_matches('"') == etag)
}

/// A CRL, DER (RFC 5280 §5; served as `application/pkix-crl`, RFC 5280 §4.2.1.13): the URL
/// in the cRLDistributionPoints of the certificates issued by that CA, `{ca id}.crl`, or
/// `{ca id}-{shard}.crl` when CRLs are partitioned.
#[utoipa::path(get, path = "/crl/{file}", tag = "pki",
    params(("file" = String, Path, description = "`<ca id>.crl` or `<ca id>-<shard>.crl`")),
    responses(
        (status = 200, description = "The newest CRL, DER, with HTTP caching headers.", body = Vec<u8>, content_type = "application/pkix-crl"),
        (status = 304, description = "Not modified (If-None-Match matched the ETag)."),
        (status = 404, description = "No such CRL.", body = Problem, content_type = "application/problem+json")
    ))]
async fn crl(
    State(state): State<AppState>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let missing = || ApiError::new(StatusCode::NOT_FOUND, "not-found", "no such CRL");
    let stem = file.strip_suffix(".crl").ok_or_else(missing)?;
    let shards = state.publisher.crl_shards();
    let (issuer, shard) = if shards <= 1 {
        (stem, 0)
    } else {
        let (issuer, shard) = stem.rsplit_once('-').ok_or_else(missing)?;
        let shard: u16 = shard.parse().map_err(|_| missing())?;
        if shard >= shards {
            return Err(missing());
        }
        (issuer, shard)
    };
    let crl = state.publisher.crl(issuer, shard).ok_or_else(missing)?;
    let now = state.authority.now();
    let caching = Caching::new(
        crl.this_update,
        crl.next_update,
        &format!("{}-{}-{}", crl.issuer, crl.shard, crl.crl_number),
    );
    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/pkix-crl"));
    cache_headers(&mut h, &caching, now);
    if not_modified(&headers, caching.etag()) {
        return Ok((StatusCode::NOT_MODIFIED, h).into_response());
    }
    Ok((h, crl.der.clone()).into_response())
}

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(ocsp_post)).routes(routes!(crl))
}

/// The GET form is routed by hand: the base64 request may contain `/`, which a `{request}`
/// segment would not match, so the route is a wildcard. Its OpenAPI entry is `ocsp_get`'s.
pub(crate) fn wildcard_routes() -> axum::Router<AppState> {
    axum::Router::new().route("/ocsp/{*request}", axum::routing::get(ocsp_get))
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(ocsp_get))]
pub(crate) struct WildcardDoc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_forms() {
        let der = vec![0xfb, 0xff, 0x01];
        for s in ["+/8B", "-_8B", "+/8B", "-_8B"] {
            assert_eq!(decode_b64(s), Some(der.clone()), "{s}");
        }
        assert_eq!(decode_b64("MAo="), Some(vec![0x30, 0x0a]));
        assert_eq!(decode_b64("MAo"), Some(vec![0x30, 0x0a]));
        assert_eq!(decode_b64("!!"), None);
    }

    #[test]
    fn etags_match_with_and_without_quotes_and_weak_prefix() {
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"x\", W/\"abc\""));
        assert!(not_modified(&h, "abc"));
        assert!(!not_modified(&h, "ab"));
    }
}
