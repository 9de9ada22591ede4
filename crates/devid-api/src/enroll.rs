//! `POST /v1/enroll`: a device presents its evidence and a CSR and gets a certificate.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::problem::{ApiError, ApiJson, Problem};

/// An enrollment request: the method names the kind of evidence.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "method", rename_all = "lowercase", deny_unknown_fields)]
pub enum EnrollRequest {
    /// A one-time enrollment token from `devid device add`.
    Token {
        /// The token.
        token: String,
        /// A PKCS#10 CSR, PEM.
        csr: String,
    },
}

/// A freshly issued certificate.
#[derive(Debug, Serialize, ToSchema)]
pub struct EnrollResponse {
    /// The device certificate, PEM.
    pub certificate: String,
    /// The issuing CA certificate followed by the root, PEM.
    pub chain: String,
    /// The serial number, lowercase hex.
    pub serial: String,
    /// notAfter, RFC 3339.
    pub not_after: String,
}

/// Enroll a device.
#[utoipa::path(
    post,
    path = "/v1/enroll",
    tag = "enroll",
    request_body = EnrollRequest,
    responses(
        (status = 200, description = "The certificate and its chain; the certificate is already in the store.", body = EnrollResponse),
        (status = 400, description = "Malformed request or CSR.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Unknown enrollment token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The device is quarantined.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The token was already used for another CSR.", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Request body too large.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Content type is not application/json.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "No CA or the store is unavailable.", body = Problem, content_type = "application/problem+json")
    )
)]
async fn enroll(
    State(state): State<AppState>,
    req: Result<ApiJson<EnrollRequest>, ApiError>,
) -> Result<axum::Json<EnrollResponse>, ApiError> {
    // Every refusal, the malformed bodies too, counts by its problem code.
    enroll_inner(state, req)
        .await
        .inspect_err(|e| devid_authority::metrics::ENROLLMENT_FAILURES.inc(e.code()))
}

async fn enroll_inner(
    state: AppState,
    req: Result<ApiJson<EnrollRequest>, ApiError>,
) -> Result<axum::Json<EnrollResponse>, ApiError> {
    let ApiJson(req) = req?;
    let issued = match req {
        EnrollRequest::Token { token, csr } => {
            state.authority.enroll_with_token(&token, csr.as_bytes()).await?
        }
    };
    Ok(axum::Json(EnrollResponse {
        certificate: devid_ca_pem(&issued.cert_der),
        chain: issued.chain_pem,
        serial: issued.serial.to_hex(),
        not_after: issued.not_after.to_rfc3339(),
    }))
}

fn devid_ca_pem(der: &[u8]) -> String {
    devid_ca::to_pem("CERTIFICATE", der)
}

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(enroll))
}
