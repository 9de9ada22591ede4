//! The factory and operator API: devices, certificates, credentials. Who may call what is
//! in [`crate::auth::ACCESS`].

use axum::extract::{Path, State};
use axum::http::StatusCode;
use devid_authority::auth::Role;
use devid_core::{DeviceId, RevocationReason, Serial};
use devid_store::{CertRecord, CertStatus, DeviceRecord, DeviceStatus};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::auth::Caller;
use crate::problem::{ApiError, ApiJson, ApiQuery, JsonOrEmpty, Problem};

fn device_id(id: &str) -> Result<DeviceId, ApiError> {
    DeviceId::new(id).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid-request", e.to_string()))
}

fn serial(s: &str) -> Result<Serial, ApiError> {
    Serial::from_hex(s).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid-request", e.to_string()))
}

fn reason(r: Option<&str>, default: RevocationReason) -> Result<RevocationReason, ApiError> {
    match r {
        None => Ok(default),
        Some(r) => {
            r.parse().map_err(|e: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid-request", e))
        }
    }
}

/// A device.
#[derive(Debug, Serialize, ToSchema)]
pub struct Device {
    /// The device id.
    pub id: String,
    /// `registered`, `enrolled` or `quarantined`.
    pub status: &'static str,
    /// Whether its one-time enrollment token was redeemed (`null`: it has none).
    pub token_used: Option<bool>,
    /// Registered at, RFC 3339.
    pub created_at: String,
    /// Last changed at, RFC 3339.
    pub updated_at: String,
}

impl From<DeviceRecord> for Device {
    fn from(d: DeviceRecord) -> Self {
        Device {
            id: d.id.to_string(),
            status: match d.status {
                DeviceStatus::Registered => "registered",
                DeviceStatus::Enrolled => "enrolled",
                DeviceStatus::Quarantined => "quarantined",
            },
            token_used: d.token_hash.as_ref().map(|_| d.token_used_at.is_some()),
            created_at: d.created_at.to_rfc3339(),
            updated_at: d.updated_at.to_rfc3339(),
        }
    }
}

/// A device to register.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDevice {
    /// The device id (1–128 of `A–Z a–z 0–9 . _ : -`).
    pub id: String,
    /// Give it a one-time enrollment token (default true).
    #[serde(default = "yes")]
    pub token: bool,
    /// Its enrollment group.
    pub group: Option<String>,
    /// Its own attestation method (`token`, `x509`, `tpm`, `symmetric`), which its group
    /// must allow.
    pub method: Option<String>,
    /// Its own derived key for the `symmetric` method: 32 to 64 bytes, base64url. Stored
    /// sealed; never shown again.
    pub secret: Option<String>,
}

fn yes() -> bool {
    true
}

/// A registered device, with its token (shown once).
#[derive(Debug, Serialize, ToSchema)]
pub struct RegisteredDevice {
    /// The device id.
    pub id: String,
    /// The one-time enrollment token, if one was asked for. Shown once.
    pub token: Option<String>,
}

/// A page of results.
#[derive(Debug, Serialize, ToSchema)]
pub struct DevicePage {
    /// The items.
    pub items: Vec<Device>,
    /// Pass as `cursor` for the next page; absent at the end.
    pub next: Option<String>,
}

/// Device listing filter and paging.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct Paging {
    /// Only devices of this enrollment group.
    pub group: Option<String>,
    /// Only devices in this state: `registered`, `enrolled`, `quarantined`.
    pub status: Option<String>,
    /// Only devices with this label, as `key=value`.
    pub label: Option<String>,
    /// Continue after this key (from `next`).
    pub cursor: Option<String>,
    /// At most this many (default 100; values outside 1–1000 are clamped).
    pub limit: Option<u32>,
}

fn bad_query(m: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid-request", m)
}

/// Certificate listing filter and paging.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CertQuery {
    /// Only this device's certificates.
    pub device: Option<String>,
    /// Only certificates in this state: `pending`, `issued`, `revoked`.
    pub status: Option<String>,
    /// Only certificates whose notAfter is before this time (RFC 3339), e.g. to find those
    /// due for renewal.
    pub expiring_before: Option<String>,
    /// Only certificates of devices of this enrollment group.
    pub group: Option<String>,
    /// Continue after this serial (from `next`).
    pub cursor: Option<String>,
    /// At most this many (default 100; values outside 1–1000 are clamped).
    pub limit: Option<u32>,
}

/// A revocation request.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// An RFC 5280 reason name (e.g. `keyCompromise`); default `unspecified`
    /// (`privilegeWithdrawn` for quarantine).
    pub reason: Option<String>,
}

/// Serials revoked by a call.
#[derive(Debug, Serialize, ToSchema)]
pub struct Revoked {
    /// The device.
    pub device: String,
    /// Serials revoked by this call (hex).
    pub revoked: Vec<String>,
}

/// The result of a release.
#[derive(Debug, Serialize, ToSchema)]
pub struct Released {
    /// The device.
    pub device: String,
    /// Whether it was quarantined.
    pub released: bool,
}

/// A certificate.
#[derive(Debug, Serialize, ToSchema)]
pub struct Certificate {
    /// Serial, hex.
    pub serial: String,
    /// The device.
    pub device: String,
    /// The issuing CA.
    pub issuer: String,
    /// `pending`, `issued` or `revoked`.
    pub status: &'static str,
    /// notBefore, RFC 3339.
    pub not_before: String,
    /// notAfter, RFC 3339.
    pub not_after: String,
    /// Revocation time, RFC 3339.
    pub revoked_at: Option<String>,
    /// Revocation reason (RFC 5280 name).
    pub reason: Option<String>,
    /// The certificate, PEM (absent while pending).
    pub certificate: Option<String>,
    /// The certificate this one renewed (lineage), hex serial.
    pub predecessor: Option<String>,
}

impl From<CertRecord> for Certificate {
    fn from(c: CertRecord) -> Self {
        Certificate {
            serial: c.serial.to_hex(),
            device: c.device.to_string(),
            issuer: c.issuer.to_string(),
            status: match c.status {
                CertStatus::Pending => "pending",
                CertStatus::Issued => "issued",
                CertStatus::Revoked => "revoked",
            },
            not_before: c.not_before.to_rfc3339(),
            not_after: c.not_after.to_rfc3339(),
            revoked_at: c.revocation.map(|(t, _)| t.to_rfc3339()),
            reason: c.revocation.map(|(_, r)| r.name().to_string()),
            certificate: c.cert_der.as_deref().map(|d| devid_ca::to_pem("CERTIFICATE", d)),
            predecessor: c.predecessor.as_ref().map(devid_core::Serial::to_hex),
        }
    }
}

/// A page of certificates.
#[derive(Debug, Serialize, ToSchema)]
pub struct CertificatePage {
    /// The items.
    pub items: Vec<Certificate>,
    /// Pass as `cursor` for the next page; absent at the end.
    pub next: Option<String>,
}

/// A credential to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCredentialRequest {
    /// `admin`, `factory`, `operator` or `auditor`.
    pub role: String,
    /// A label (e.g. the factory line).
    pub name: String,
    /// For a factory credential: the enrollment groups it is limited to (it registers
    /// devices into them only and sees only their devices).
    pub groups: Option<Vec<String>>,
}

/// A new credential: the secret is shown once.
#[derive(Debug, Serialize, ToSchema)]
pub struct NewCredentialResponse {
    /// The client id.
    pub client_id: String,
    /// The client secret (shown once; store it safely).
    pub client_secret: String,
    /// The role.
    pub role: String,
}

/// A credential (never its secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct Credential {
    /// The client id.
    pub client_id: String,
    /// The role.
    pub role: String,
    /// The label.
    pub name: String,
    /// Created at, RFC 3339.
    pub created_at: String,
    /// Revoked at, RFC 3339.
    pub revoked_at: Option<String>,
    /// The enrollment groups it is limited to (absent: all).
    pub groups: Option<Vec<String>>,
}

impl From<devid_store::CredentialRecord> for Credential {
    fn from(c: devid_store::CredentialRecord) -> Self {
        Credential {
            client_id: c.client_id,
            role: c.role,
            name: c.name,
            created_at: c.created_at.to_rfc3339(),
            revoked_at: c.revoked_at.map(|t| t.to_rfc3339()),
            groups: c.groups,
        }
    }
}

const P: &str = "application/problem+json";

/// Register a device.
#[utoipa::path(post, path = "/v1/devices", tag = "devices", request_body = NewDevice,
    responses(
        (status = 201, description = "Registered; the token is shown once.", body = RegisteredDevice),
        (status = 400, description = "Bad request.", body = Problem, content_type = P),
        (status = 401, description = "No or bad token.", body = Problem, content_type = P),
        (status = 403, description = "Role not allowed.", body = Problem, content_type = P),
        (status = 409, description = "The device exists.", body = Problem, content_type = P),
        (status = 413, description = "Request body too large.", body = Problem, content_type = P),
        (status = 415, description = "Content type is not application/json.", body = Problem, content_type = P)
    ))]
async fn create_device(
    State(state): State<AppState>,
    Caller(actor): Caller,
    ApiJson(req): ApiJson<NewDevice>,
) -> Result<(StatusCode, axum::Json<RegisteredDevice>), ApiError> {
    let id = device_id(&req.id)?;
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid-request", m);
    let method = req.method.as_deref().map(str::parse).transpose().map_err(bad)?;
    let secret = match &req.secret {
        None => None,
        Some(s) => Some(zeroize::Zeroizing::new(
            crate::enroll::unb64(s).ok_or_else(|| bad("secret: not base64url".into()))?,
        )),
    };
    let opts =
        devid_authority::DeviceOptions { token: req.token, group: req.group, method, secret, labels: None };
    let (d, token) = state.authority.register_device(&id, &opts, &actor).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(RegisteredDevice { id: d.id.to_string(), token: token.map(|t| t.reveal().to_string()) }),
    ))
}

/// List devices, paged by id.
#[utoipa::path(get, path = "/v1/devices", tag = "devices", params(Paging),
    responses(
        (status = 200, description = "A page of devices.", body = DevicePage),
        (status = 400, description = "Bad request.", body = Problem, content_type = P),
        (status = 401, description = "No or bad token.", body = Problem, content_type = P),
        (status = 403, description = "Role not allowed.", body = Problem, content_type = P)
    ))]
async fn list_devices(
    State(state): State<AppState>,
    Caller(actor): Caller,
    ApiQuery(p): ApiQuery<Paging>,
) -> Result<axum::Json<DevicePage>, ApiError> {
    let status = match p.status.as_deref() {
        None => None,
        Some("registered") => Some(DeviceStatus::Registered),
        Some("enrolled") => Some(DeviceStatus::Enrolled),
        Some("quarantined") => Some(DeviceStatus::Quarantined),
        Some(other) => {
            return Err(bad_query(format!("status: {other:?} is not registered, enrolled or quarantined")));
        }
    };
    let label = match p.label.as_deref() {
        None => None,
        Some(l) => match l.split_once('=') {
            Some((k, v)) if !k.is_empty() => Some((k.to_string(), v.to_string())),
            _ => return Err(bad_query("label: give key=value")),
        },
    };
    let filter = devid_store::DeviceFilter { group: p.group, status, label };
    let page = state.authority.devices(&filter, p.cursor.as_deref(), p.limit.unwrap_or(100), &actor).await?;
    Ok(axum::Json(DevicePage { items: page.items.into_iter().map(Device::from).collect(), next: page.next }))
}

/// A device by id.
#[utoipa::path(get, path = "/v1/devices/{id}", tag = "devices", params(("id" = String, Path, description = "Device id")),
    responses(
        (status = 200, description = "The device.", body = Device),
        (status = 400, description = "Bad id.", body = Problem, content_type = P),
        (status = 401, description = "No or bad token.", body = Problem, content_type = P),
        (status = 403, description = "Role not allowed.", body = Problem, content_type = P),
        (status = 404, description = "No such device.", body = Problem, content_type = P)
    ))]
async fn get_device(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path(id): Path<String>,
) -> Result<axum::Json<Device>, ApiError> {
    Ok(axum::Json(state.authority.device(&device_id(&id)?, &actor).await?.into()))
}

/// Revoke every certificate of a device.
#[utoipa::path(post, path = "/v1/devices/{id}/revoke", tag = "devices", params(("id" = String, Path, description = "Device id")),
    request_body = RevokeRequest,
    responses(
        (status = 200, description = "The serials revoked by this call.", body = Revoked),
        (status = 400, description = "Bad id or reason.", body = Problem, content_type = P),
        (status = 401, description = "No or bad token.", body = Problem, content_type = P),
        (status = 403, description = "Role not allowed.", body = Problem, content_type = P),
        (status = 404, description = "No such device.", body = Problem, content_type = P)
    ))]
async fn revoke_device(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path(id): Path<String>,
    JsonOrEmpty(body): JsonOrEmpty<RevokeRequest>,
) -> Result<axum::Json<Revoked>, ApiError> {
    let id = device_id(&id)?;
    let r = reason(body.reason.as_deref(), RevocationReason::Unspecified)?;
    let serials = state.authority.revoke_device(&id, r, &actor).await?;
    Ok(axum::Json(Revoked { device: id.to_string(), revoked: serials.iter().map(Serial::to_hex).collect() }))
}

/// Quarantine a device: revoke everything it holds and refuse its enrollment and renewal
/// until it is released.
#[utoipa::path(post, path = "/v1/devices/{id}/quarantine", tag = "devices", params(("id" = String, Path, description = "Device id")),
    request_body = RevokeRequest,
    responses(
        (status = 200, description = "Quarantined; the serials revoked by this call.", body = Revoked),
        (status = 400, description = "Bad id or reason.", body = Problem, content_type = P),
        (status = 401, description = "No or bad token.", body = Problem, content_type = P),
        (status = 403, description = "Role not allowed.", body = Problem, content_type = P),
        (status = 404, description = "No such device.", body = Problem, content_type = P)
    ))]
async fn quarantine(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path(id): Path<String>,
    JsonOrEmpty(body): JsonOrEmpty<RevokeRequest>,
) -> Result<axum::Json<Revoked>, ApiError> {
    let id = device_id(&id)?;
    let r = reason(body.reason.as_deref(), RevocationReason::PrivilegeWithdrawn)?;
    let serials = state.authority.quarantine(&id, r, &actor).await?;
    Ok(axum::Json(Revoked { device: id.to_string(), revoked: serials.iter().map(Serial::to_hex).collect() }))
}

/// Release a quarantined device (it must enroll again).
#[utoipa::path(post, path = "/v1/devices/{id}/release", tag = "devices", params(("id" = String, Path, description = "Device id")),
    responses(
        (status = 200, description = "Whether it was quarantined.", body = Released),
        (status = 400, description = "Bad id.", body = Problem, content_type = P),
        (status = 401, description = "No or bad token.", body = Problem, content_type = P),
        (status = 403, description = "Role not allowed.", body = Problem, content_type = P),
        (status = 404, description = "No such device.", body = Problem, content_type = P)
    ))]
async fn release(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path(id): Path<String>,
) -> Result<axum::Json<Released>, ApiError> {
    let id = device_id(&id)?;
    let released = state.authority.release(&id, &actor).await?;
    Ok(axum::Json(Released { device: id.to_string(), released }))
}

/// List certificates, paged by serial, optionally of one device.
#[utoipa::path(get, path = "/v1/certificates", tag = "certificates", params(CertQuery),
    responses(
        (status = 200, description = "A page of certificates.", body = CertificatePage),
        (status = 400, description = "Bad request.", body = Problem, content_type = P),
        (status = 401, description = "No or bad token.", body = Problem, content_type = P),
        (status = 403, description = "Role not allowed.", body = Problem, content_type = P)
    ))]
async fn list_certificates(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<CertQuery>,
) -> Result<axum::Json<CertificatePage>, ApiError> {
    let device = q.device.as_deref().map(device_id).transpose()?;
    let status = match q.status.as_deref() {
        None => None,
        Some("pending") => Some(CertStatus::Pending),
        Some("issued") => Some(CertStatus::Issued),
        Some("revoked") => Some(CertStatus::Revoked),
        Some(other) => return Err(bad_query(format!("status: {other:?} is not pending, issued or revoked"))),
    };
    let expiring_before =
        match q.expiring_before.as_deref() {
            None => None,
            Some(t) => Some(devid_core::UnixTime::parse_rfc3339(t).ok_or_else(|| {
                bad_query("expiring_before: give an RFC 3339 time, e.g. 2026-12-01T00:00:00Z")
            })?),
        };
    let filter = devid_store::CertFilter { device, status, expiring_before, group: q.group };
    let page = state.authority.certificates(&filter, q.cursor.as_deref(), q.limit.unwrap_or(100)).await?;
    Ok(axum::Json(CertificatePage {
        items: page.items.into_iter().map(Certificate::from).collect(),
        next: page.next,
    }))
}

/// A certificate by serial.
#[utoipa::path(get, path = "/v1/certificates/{serial}", tag = "certificates",
    params(("serial" = String, Path, description = "Serial number, hex")),
    responses(
        (status = 200, description = "The certificate.", body = Certificate),
        (status = 400, description = "Bad serial.", body = Problem, content_type = P),
        (status = 401, description = "No or bad token.", body = Problem, content_type = P),
        (status = 403, description = "Role not allowed.", body = Problem, content_type = P),
        (status = 404, description = "No such certificate.", body = Problem, content_type = P)
    ))]
async fn get_certificate(
    State(state): State<AppState>,
    Path(s): Path<String>,
) -> Result<axum::Json<Certificate>, ApiError> {
    Ok(axum::Json(state.authority.certificate(&serial(&s)?).await?.into()))
}

/// Revoke a certificate (idempotent: a revoked certificate keeps its first time and reason).
#[utoipa::path(post, path = "/v1/certificates/{serial}/revoke", tag = "certificates",
    params(("serial" = String, Path, description = "Serial number, hex")),
    request_body = RevokeRequest,
    responses(
        (status = 200, description = "The certificate, revoked.", body = Certificate),
        (status = 400, description = "Bad serial or reason, or not issued yet.", body = Problem, content_type = P),
        (status = 401, description = "No or bad token.", body = Problem, content_type = P),
        (status = 403, description = "Role not allowed.", body = Problem, content_type = P),
        (status = 404, description = "No such certificate.", body = Problem, content_type = P)
    ))]
async fn revoke_certificate(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path(s): Path<String>,
    JsonOrEmpty(body): JsonOrEmpty<RevokeRequest>,
) -> Result<axum::Json<Certificate>, ApiError> {
    let r = reason(body.reason.as_deref(), RevocationReason::Unspecified)?;
    Ok(axum::Json(state.authority.revoke(&serial(&s)?, r, &actor).await?.into()))
}

/// Create an API credential.
#[utoipa::path(post, path = "/v1/credentials", tag = "credentials", request_body = NewCredentialRequest,
    responses(
        (status = 201, description = "Created; the secret is shown once.", body = NewCredentialResponse),
        (status = 400, description = "Bad role or name.", body = Problem, content_type = P),
        (status = 401, description = "No or bad token.", body = Problem, content_type = P),
        (status = 403, description = "Role not allowed.", body = Problem, content_type = P),
        (status = 413, description = "Request body too large.", body = Problem, content_type = P),
        (status = 415, description = "Content type is not application/json.", body = Problem, content_type = P)
    ))]
async fn create_credential(
    State(state): State<AppState>,
    Caller(actor): Caller,
    ApiJson(req): ApiJson<NewCredentialRequest>,
) -> Result<(StatusCode, axum::Json<NewCredentialResponse>), ApiError> {
    let role: Role =
        req.role.parse().map_err(|e: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid-request", e))?;
    let c = state.authority.create_credential(role, &req.name, req.groups, &actor).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(NewCredentialResponse {
            client_id: c.record.client_id.clone(),
            client_secret: c.client_secret,
            role: c.record.role.clone(),
        }),
    ))
}

/// List credentials (never their secrets).
#[utoipa::path(get, path = "/v1/credentials", tag = "credentials",
    responses(
        (status = 200, description = "Every credential.", body = Vec<Credential>),
        (status = 401, description = "No or bad token.", body = Problem, content_type = P),
        (status = 403, description = "Role not allowed.", body = Problem, content_type = P)
    ))]
async fn list_credentials(State(state): State<AppState>) -> Result<axum::Json<Vec<Credential>>, ApiError> {
    Ok(axum::Json(state.authority.credentials().await?.into_iter().map(Credential::from).collect()))
}

/// Revoke a credential: its tokens stop working at once.
#[utoipa::path(delete, path = "/v1/credentials/{client_id}", tag = "credentials",
    params(("client_id" = String, Path, description = "Client id")),
    responses(
        (status = 200, description = "Revoked.", body = Credential),
        (status = 401, description = "No or bad token.", body = Problem, content_type = P),
        (status = 403, description = "Role not allowed.", body = Problem, content_type = P),
        (status = 404, description = "No such credential.", body = Problem, content_type = P)
    ))]
async fn revoke_credential(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path(client_id): Path<String>,
) -> Result<axum::Json<Credential>, ApiError> {
    Ok(axum::Json(state.authority.revoke_credential(&client_id, &actor).await?.into()))
}

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_device, list_devices))
        .routes(routes!(get_device))
        .routes(routes!(revoke_device))
        .routes(routes!(quarantine))
        .routes(routes!(release))
        .routes(routes!(list_certificates))
        .routes(routes!(get_certificate))
        .routes(routes!(revoke_certificate))
        .routes(routes!(create_credential, list_credentials))
        .routes(routes!(revoke_credential))
}
