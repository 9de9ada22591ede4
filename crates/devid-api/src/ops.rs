//! Health, readiness, and the CA certificates.

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::problem::{ApiError, Problem};

/// A health answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: &'static str,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "ops",
    responses((status = 200, description = "The process is alive.", body = Health)))]
async fn healthz() -> axum::Json<Health> {
    axum::Json(Health { status: "ok" })
}

/// Readiness: the store answers.
#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses(
        (status = 200, description = "Ready to serve.", body = Health),
        (status = 503, description = "The store is not reachable.", body = Problem, content_type = "application/problem+json")
    ))]
async fn readyz(State(state): State<AppState>) -> Result<axum::Json<Health>, ApiError> {
    state.authority.ready().await?;
    Ok(axum::Json(Health { status: "ok" }))
}

/// The chain a device needs to trust devid: the issuing CA then the root (RFC 8555 §9.1
/// media type `application/pem-certificate-chain`).
#[utoipa::path(get, path = "/v1/ca/chain", tag = "pki",
    responses((status = 200, description = "Issuing CA then root, PEM.", body = String, content_type = "application/pem-certificate-chain")))]
async fn chain(State(state): State<AppState>) -> impl IntoResponse {
    let issuer = state.authority.issuer().await;
    ([(header::CONTENT_TYPE, "application/pem-certificate-chain")], issuer.chain_pem.clone())
}

/// A CA certificate by id, DER (the authorityInfoAccess caIssuers URL, RFC 5280 §4.2.2.1:
/// "a single DER encoded certificate" served as `application/pkix-cert`).
#[utoipa::path(get, path = "/v1/ca/{file}", tag = "pki",
    params(("file" = String, Path, description = "`<ca id>.cer`")),
    responses(
        (status = 200, description = "The CA certificate, DER.", body = Vec<u8>, content_type = "application/pkix-cert"),
        (status = 404, description = "No such CA.", body = Problem, content_type = "application/problem+json")
    ))]
async fn ca_cert(
    State(state): State<AppState>,
    Path(file): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = file.strip_suffix(".cer").ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "not-found", "CA certificates are at /v1/ca/<id>.cer")
    })?;
    let der = state.authority.ca_certificate(id).await?;
    Ok(([(header::CONTENT_TYPE, "application/pkix-cert")], der))
}

/// This API's OpenAPI 3.1 document (the same as `openapi/devid.json` in the repository).
#[utoipa::path(get, path = "/openapi.json", tag = "ops",
    responses((status = 200, description = "The OpenAPI document.", body = Object, content_type = "application/json")))]
async fn openapi_doc() -> impl IntoResponse {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let json = DOC.get_or_init(|| crate::openapi().to_json().unwrap_or_default());
    ([(header::CONTENT_TYPE, "application/json")], json.as_str())
}

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    public_routes().routes(routes!(openapi_doc))
}

/// Health, readiness and the CA certificates: the part the responder listener serves too.
pub(crate) fn public_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(chain))
        .routes(routes!(ca_cert))
}
