//! Authentication and authorization of the HTTP API.
//!
//! Every route's access is declared here, in [`ACCESS`], and nowhere else: public, or the
//! roles that may call it with a bearer token (RFC 6750). A route missing from the table
//! is refused (default deny), and a test checks that every documented route is in it.
//! The OpenAPI document's security requirements are generated from the same table.
//!
//! Tokens come from `POST /v1/auth/token`, the OAuth 2.0 client-credentials grant
//! (RFC 6749 §4.4) with HTTP Basic client authentication (RFC 6749 §2.3.1).

use std::convert::Infallible;
use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use devid_authority::AuthorityError;
use devid_authority::auth::Role::{self, Admin, Auditor, Factory, Operator};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::problem::ApiError;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: devices (their evidence is checked by the use case), brokers (OCSP, CRL),
    /// probes, and the token endpoint (client authentication happens inside).
    Public,
    /// A bearer token of one of these roles.
    Roles(&'static [Role]),
    /// A device certificate from our issuing CA, presented on the mutual-TLS (renewal)
    /// listener; the handler checks it (403 `client-certificate-required` elsewhere).
    ClientCertificate,
}

/// The access table: (method, route template, access). HEAD follows GET.
pub const ACCESS: &[(&str, &str, Access)] = &[
    ("POST", "/v1/enroll", Access::Public),
    ("POST", "/v1/enroll/challenge", Access::Public),
    ("POST", "/v1/renew", Access::ClientCertificate),
    ("POST", "/v1/groups", Access::Roles(&[Admin])),
    ("GET", "/v1/groups", Access::Roles(&[Admin, Factory, Operator, Auditor])),
    ("GET", "/v1/groups/{name}", Access::Roles(&[Admin, Factory, Operator, Auditor])),
    ("DELETE", "/v1/groups/{name}", Access::Roles(&[Admin])),
    ("GET", "/v1/ca/chain", Access::Public),
    ("GET", "/v1/ca/{file}", Access::Public),
    ("GET", "/healthz", Access::Public),
    ("GET", "/readyz", Access::Public),
    ("GET", "/openapi.json", Access::Public),
    ("POST", "/ocsp", Access::Public),
    ("GET", "/ocsp/{*request}", Access::Public),
    ("GET", "/crl/{file}", Access::Public),
    ("POST", "/v1/auth/token", Access::Public),
    ("POST", "/v1/auth/revoke", Access::Public),
    ("POST", "/v1/devices", Access::Roles(&[Admin, Factory])),
    ("GET", "/v1/devices", Access::Roles(&[Admin, Factory, Operator, Auditor])),
    ("GET", "/v1/devices/{id}", Access::Roles(&[Admin, Factory, Operator, Auditor])),
    ("POST", "/v1/devices/{id}/revoke", Access::Roles(&[Admin, Operator])),
    ("POST", "/v1/devices/{id}/quarantine", Access::Roles(&[Admin, Operator])),
    ("POST", "/v1/devices/{id}/release", Access::Roles(&[Admin, Operator])),
    ("GET", "/v1/certificates", Access::Roles(&[Admin, Operator, Auditor])),
    ("GET", "/v1/certificates/{serial}", Access::Roles(&[Admin, Operator, Auditor])),
    ("POST", "/v1/certificates/{serial}/revoke", Access::Roles(&[Admin, Operator])),
    ("POST", "/v1/credentials", Access::Roles(&[Admin])),
    ("GET", "/v1/credentials", Access::Roles(&[Admin, Auditor])),
    ("DELETE", "/v1/credentials/{client_id}", Access::Roles(&[Admin])),
    ("GET", "/metrics", Access::Public),
    ("POST", "/v1/device-batches/{batch_id}", Access::Roles(&[Admin, Factory])),
    ("GET", "/v1/audit", Access::Roles(&[Admin, Auditor])),
];

/// The access of a route, by method and route template (as axum matched it).
pub fn access(method: &Method, route: &str) -> Option<Access> {
    let m = if method == Method::HEAD { "GET" } else { method.as_str() };
    ACCESS.iter().find(|(am, ar, _)| *am == m && *ar == route).map(|(_, _, a)| *a)
}

/// The OpenAPI path of a route template (`{*request}` is documented as `{request}`).
pub fn openapi_path(route: &str) -> String {
    route.replace("{*", "{")
}

/// The layer that enforces [`ACCESS`] (installed with `route_layer`, so the matched route
/// is known). A plain tower service rather than `axum::middleware::from_fn`, so that a
/// public route (enrollment, OCSP, CRLs) costs no boxed future and no clone of the route:
/// only a request that must show a bearer token goes through an async check.
#[derive(Clone)]
pub(crate) struct AuthorizeLayer {
    state: AppState,
}

impl AuthorizeLayer {
    pub(crate) fn new(state: AppState) -> AuthorizeLayer {
        AuthorizeLayer { state }
    }
}

impl<S> tower::Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Authorize<S> {
        Authorize { inner, state: self.state.clone() }
    }
}

/// See [`AuthorizeLayer`].
#[derive(Clone)]
pub(crate) struct Authorize<S> {
    inner: S,
    state: AppState,
}

type BoxedResponse =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response, Infallible>> + Send>>;

impl<S> tower::Service<Request> for Authorize<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = futures_util::future::Either<S::Future, BoxedResponse>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        use futures_util::future::Either;
        let refuse = |r: Response| -> Self::Future { Either::Right(Box::pin(std::future::ready(Ok(r)))) };
        // A clone of the matched path is a reference count, not a copy of the string.
        let Some(matched) = req.extensions().get::<MatchedPath>().cloned() else {
            return Either::Left(self.inner.call(req));
        };
        let route = matched.as_str();
        let access = access(req.method(), route);
        // Per-source limit of the routes devices call without credentials.
        if matches!(access, Some(Access::Public | Access::ClientCertificate))
            && (route.starts_with("/v1/enroll") || route == "/v1/renew")
        {
            let source = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_string());
            if let Err(e) = self.state.authority.admit_source(source.as_deref().unwrap_or("unknown")) {
                devid_authority::metrics::ENROLLMENT_FAILURES.inc("rate-limited");
                return refuse(ApiError::from(e).into_response());
            }
        }
        match access {
            Some(Access::Public | Access::ClientCertificate) => Either::Left(self.inner.call(req)),
            Some(Access::Roles(roles)) => {
                let Some(token) = bearer(req.headers()).map(str::to_owned) else {
                    return refuse(unauthenticated("a bearer token is required", false));
                };
                // The service that was polled ready goes into the future; a clone stays.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let state = self.state.clone();
                Either::Right(Box::pin(async move {
                    let mut req = req;
                    Ok(match state.tokens.verify(&token).await {
                        Ok(p) if roles.contains(&p.role) => {
                            if let Err(e) = state.authority.admit_credential(&p.client_id) {
                                return Ok(ApiError::from(e).into_response());
                            }
                            req.extensions_mut().insert(p);
                            return inner.call(req).await;
                        }
                        Ok(p) => {
                            let route = matched.as_str();
                            tracing::info!(client_id = %p.client_id, role = %p.role, route, "forbidden");
                            ApiError::new(
                                StatusCode::FORBIDDEN,
                                "forbidden",
                                format!("role {} may not call this route", p.role),
                            )
                            .into_response()
                        }
                        Err(AuthorityError::Unauthenticated(why)) => unauthenticated(&why, true),
                        Err(e) => ApiError::from(e).into_response(),
                    })
                }))
            }
            None => {
                // Default deny: a route without an entry is a bug, never an open door.
                tracing::error!(method = %req.method(), route, "route has no access entry; refusing");
                refuse(
                    ApiError::new(StatusCode::FORBIDDEN, "forbidden", "this route is not open to anyone")
                        .into_response(),
                )
            }
        }
    }
}

/// The authenticated caller of a role-protected route, as the audit log names it. The
/// [`AuthorizeLayer`] put its token's principal in the request.
pub(crate) struct Caller(pub devid_authority::Actor);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, Response> {
        match parts.extensions.get::<devid_authority::auth::Principal>() {
            Some(p) => Ok(Caller(devid_authority::Actor::Credential {
                client_id: p.client_id.clone(),
                role: p.role,
                groups: p.groups.clone(),
            })),
            None => Err(unauthenticated("a bearer token is required", false)),
        }
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

/// 401 with `WWW-Authenticate: Bearer` (RFC 6750 §3; `error="invalid_token"` when a token
/// was presented).
fn unauthenticated(why: &str, token_presented: bool) -> Response {
    let challenge = if token_presented {
        "Bearer realm=\"devid\", error=\"invalid_token\""
    } else {
        "Bearer realm=\"devid\""
    };
    let mut r = ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", why).into_response();
    r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    r
}

/// A successful token response (RFC 6749 §5.1).
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    /// The access token (a JWT, ES256).
    pub access_token: String,
    /// `Bearer`.
    pub token_type: &'static str,
    /// Lifetime in seconds (at most 900).
    pub expires_in: i64,
}

/// An OAuth 2.0 error response (RFC 6749 §5.2), with the problem members (RFC 9457) too.
#[derive(Debug, Serialize, ToSchema)]
pub struct OAuthError {
    /// `invalid_request`, `invalid_client`, `unsupported_grant_type`.
    pub error: &'static str,
    /// Human-readable detail.
    pub error_description: String,
    /// Problem type URI.
    #[serde(rename = "type")]
    pub kind: String,
    /// Problem title.
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// Problem detail.
    pub detail: String,
}

fn oauth_error(status: StatusCode, error: &'static str, description: &str) -> Response {
    let body = OAuthError {
        error,
        error_description: description.to_string(),
        kind: format!("urn:devid:problem:{}", error.replace('_', "-")),
        title: status.canonical_reason().unwrap_or("Error").to_string(),
        status: status.as_u16(),
        detail: description.to_string(),
    };
    let mut r = (status, axum::Json(body)).into_response();
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == StatusCode::UNAUTHORIZED {
        h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"devid\""));
    }
    r
}

/// How a refused client authentication is answered (RFC 6749 §5.2), with `Retry-After`
/// when attempts are throttled.
fn client_refusal(e: AuthorityError) -> Response {
    match e {
        AuthorityError::InvalidClient => {
            oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "client authentication failed")
        }
        AuthorityError::RateLimited { retry_after_secs } => {
            let mut r = oauth_error(
                StatusCode::TOO_MANY_REQUESTS,
                "invalid_client",
                "too many failed attempts; retry later",
            );
            if let Ok(v) = HeaderValue::from_str(&retry_after_secs.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            r
        }
        e => ApiError::from(e).into_response(),
    }
}

/// HTTP Basic client credentials (RFC 6749 §2.3.1: id and secret are form-urlencoded,
/// then joined with `:` and base64-encoded).
fn basic_client(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, b64) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (id, secret) = raw.split_once(':')?;
    let unform = |s: &str| -> Option<String> {
        form_urlencoded::parse(format!("v={s}").as_bytes()).next().map(|(_, v)| v.into_owned())
    };
    Some((unform(id)?, unform(secret)?))
}

/// The form parameters of a token-endpoint request (RFC 6749 §4.4.2 and RFC 7009 §2.1 use
/// `application/x-www-form-urlencoded`); another content type is `invalid_request`.
fn form_params(headers: &HeaderMap, body: &[u8]) -> Result<Vec<(String, String)>, Box<Response>> {
    if !is_form(headers) {
        return Err(Box::new(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the body must be application/x-www-form-urlencoded",
        )));
    }
    Ok(form(body))
}

/// The client's HTTP Basic credentials, or the `invalid_client` answer.
fn client_credentials(headers: &HeaderMap) -> Result<(String, String), Box<Response>> {
    basic_client(headers).ok_or_else(|| {
        Box::new(oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "HTTP Basic client authentication is required",
        ))
    })
}

fn form(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

fn is_form(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| {
        v.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/x-www-form-urlencoded")
    })
}

/// Exchange client credentials for an access token (RFC 6749 §4.4.2: `grant_type=
/// client_credentials`), the client authenticated with HTTP Basic (id and secret) or, on
/// the mutual-TLS listener, with its client certificate and `client_id` in the form
/// (RFC 8705 §2.1).
#[utoipa::path(post, path = "/v1/auth/token", tag = "auth",
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "`grant_type=client_credentials`"),
    responses(
        (status = 200, description = "An access token.", body = TokenResponse),
        (status = 400, description = "invalid_request or unsupported_grant_type (RFC 6749 §5.2).", body = OAuthError),
        (status = 401, description = "invalid_client: unknown client, wrong secret or revoked credential.", body = OAuthError),
        (status = 429, description = "Too many failed attempts; see Retry-After.", body = OAuthError)
    ))]
async fn token(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    tls_client: Option<axum::Extension<crate::enroll::PeerCertificate>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = match form_params(&headers, &body) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    match params.iter().find(|(k, _)| k == "grant_type").map(|(_, v)| v.as_str()) {
        Some("client_credentials") => {}
        Some(_) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "only client_credentials is supported",
            );
        }
        None => return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "grant_type is required"),
    }
    // Mutual-TLS client authentication (RFC 8705 §2.1): on the renewal listener, with the
    // credential's client certificate, no Authorization header, and client_id in the form.
    let form_client = params.iter().find(|(k, _)| k == "client_id").map(|(_, v)| v.clone());
    let result = match (tls_client, headers.contains_key(header::AUTHORIZATION), form_client) {
        (Some(axum::Extension(cert)), false, Some(client_id)) => {
            state.tokens.exchange_with_certificate(&client_id, &cert.0, peer.ip()).await
        }
        _ => {
            let (client_id, secret) = match client_credentials(&headers) {
                Ok(c) => c,
                Err(r) => return *r,
            };
            state.tokens.exchange(&client_id, &secret, peer.ip()).await
        }
    };
    match result {
        Ok(t) => {
            let mut r = axum::Json(TokenResponse {
                access_token: t.access_token,
                token_type: "Bearer",
                expires_in: t.expires_in,
            })
            .into_response();
            r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r.headers_mut().insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
            r
        }
        Err(e) => client_refusal(e),
    }
}

/// Revoke an access token (RFC 7009): `token=<access token>`, the client authenticated
/// with HTTP Basic as at the token endpoint. Answers 200 whether or not the token was valid
/// (RFC 7009 §2.2).
#[utoipa::path(post, path = "/v1/auth/revoke", tag = "auth",
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "`token=<access token>`"),
    responses(
        (status = 200, description = "Revoked (or it was not a valid token of this client)."),
        (status = 400, description = "invalid_request.", body = OAuthError),
        (status = 401, description = "invalid_client.", body = OAuthError),
        (status = 429, description = "Too many failed attempts; see Retry-After.", body = OAuthError)
    ))]
async fn revoke(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = match form_params(&headers, &body) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let Some(token) = params.iter().find(|(k, _)| k == "token").map(|(_, v)| v.clone()) else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "token is required");
    };
    let (client_id, secret) = match client_credentials(&headers) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let result = match state.tokens.authenticate(&client_id, &secret, peer.ip()).await {
        Ok(_) => state.tokens.revoke(&client_id, &token).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => client_refusal(e),
    }
}

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(token)).routes(routes!(revoke))
}

/// Put the access table into the OpenAPI document: a `bearer` security scheme, each
/// protected operation's security requirement, its roles (`x-devid-roles`) and a line in
/// its description.
pub(crate) fn document(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .description(Some("An access token from POST /v1/auth/token (RFC 6749 §4.4)."))
                .build(),
        ),
    );
    components.add_security_scheme(
        "deviceCertificate",
        SecurityScheme::MutualTls {
            description: Some(
                "Mutual TLS on the renewal listener with the device's current certificate (issued by devid)."
                    .to_string(),
            ),
            extensions: None,
        },
    );
    components.add_security_scheme(
        "client",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Basic)
                .description(Some("Client id and secret (RFC 6749 §2.3.1)."))
                .build(),
        ),
    );
    for (method, route, access) in ACCESS {
        let path = openapi_path(route);
        let Some(item) = doc.paths.paths.get_mut(&path) else { continue };
        let op = match *method {
            "GET" => item.get.as_mut(),
            "POST" => item.post.as_mut(),
            "DELETE" => item.delete.as_mut(),
            "PUT" => item.put.as_mut(),
            _ => None,
        };
        let Some(op) = op else { continue };
        let roles: Vec<&str> = match access {
            Access::Public | Access::ClientCertificate => Vec::new(),
            Access::Roles(r) => r.iter().map(|r| r.as_str()).collect(),
        };
        match access {
            Access::Public if route.starts_with("/v1/auth/") => {
                op.security = Some(vec![SecurityRequirement::new("client", Vec::<String>::new())]);
            }
            Access::Public => {}
            Access::ClientCertificate => {
                op.security = Some(vec![SecurityRequirement::new("deviceCertificate", Vec::<String>::new())]);
            }
            Access::Roles(_) => {
                op.security = Some(vec![SecurityRequirement::new("bearer", Vec::<String>::new())]);
                let line = format!("Roles: {}.", roles.join(", "));
                op.description = Some(match op.description.take() {
                    Some(d) if !d.is_empty() => format!("{d}\n\n{line}"),
                    _ => line,
                });
            }
        }
        let ext = op.extensions.get_or_insert_with(Default::default);
        ext.insert("x-devid-roles".to_string(), serde_json::json!(roles));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_decoded() {
        let mut h = HeaderMap::new();
        let v = base64::engine::general_purpose::STANDARD.encode("my%20id:se%3Acret+x");
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(&format!("Basic {v}")).expect("header"));
        assert_eq!(basic_client(&h), Some(("my id".to_string(), "se:cret x".to_string())));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert_eq!(basic_client(&h), None);
    }

    #[test]
    fn bearer_tokens() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("bearer  abc "));
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn head_follows_get_and_unknown_routes_have_no_entry() {
        assert_eq!(access(&Method::HEAD, "/v1/devices"), access(&Method::GET, "/v1/devices"));
        assert_eq!(access(&Method::PATCH, "/v1/devices"), None);
        assert_eq!(access(&Method::GET, "/v1/secret"), None);
    }
}
