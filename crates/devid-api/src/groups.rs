//! Enrollment groups over REST: define, list, show, delete.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use devid_authority::groups::{GroupSpec, GroupView, Method};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::auth::Caller;
use crate::enroll::unb64;
use crate::problem::{ApiError, ApiJson, Problem};

const P: &str = "application/problem+json";

/// A group definition (binary values base64url).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewGroup {
    /// 1–64 of `A–Z a–z 0–9 . _ -`.
    pub name: String,
    /// Allowed methods: `token`, `x509`, `tpm`, `symmetric`.
    pub methods: Vec<String>,
    /// `required` (default: devices must be registered in the group) or `optional`.
    pub registration: Option<String>,
    /// For x509: `subject-serial` (default), `subject-cn`, `san-uri:<prefix>`, `san-dns`.
    pub id_source: Option<String>,
    /// Maximum certificate lifetime in seconds.
    pub validity_secs: Option<i64>,
    /// Trust anchors (manufacturer or TPM vendor CA certificates), DER, base64url.
    #[serde(default)]
    pub trust_anchors: Vec<String>,
    /// Manufacturer CRLs, DER, base64url.
    #[serde(default)]
    pub crls: Vec<String>,
    /// The symmetric method's master key (32–64 bytes, base64url); generated and shown
    /// once when absent.
    pub master_key: Option<String>,
    /// Enrollments a minute for the whole group.
    pub rate_per_minute: Option<i64>,
}

/// A trust anchor.
#[derive(Debug, Serialize, ToSchema)]
pub struct Anchor {
    /// Its subject.
    pub subject: String,
    /// Its SHA-256 fingerprint.
    pub sha256: String,
}

/// A group.
#[derive(Debug, Serialize, ToSchema)]
pub struct Group {
    /// Its name.
    pub name: String,
    /// Allowed methods.
    pub methods: Vec<String>,
    /// `required` or `optional`.
    pub registration: String,
    /// How the device id is taken from the evidence.
    pub id_source: String,
    /// Maximum certificate lifetime in seconds.
    pub validity_secs: Option<i64>,
    /// Trust anchors.
    pub trust_anchors: Vec<Anchor>,
    /// Number of manufacturer CRLs.
    pub crls: usize,
    /// Whether it holds a master key (symmetric).
    pub has_master_key: bool,
    /// Enrollments a minute.
    pub rate_per_minute: Option<i64>,
    /// Created at, RFC 3339.
    pub created_at: String,
    /// Last changed at, RFC 3339.
    pub updated_at: String,
    /// The generated master key, base64url: only in the answer that created it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master_key: Option<String>,
}

impl From<GroupView> for Group {
    fn from(v: GroupView) -> Self {
        Group {
            name: v.record.name,
            methods: v.record.methods,
            registration: v.record.registration,
            id_source: v.record.id_source,
            validity_secs: v.record.validity_secs,
            trust_anchors: v
                .anchors
                .into_iter()
                .map(|(subject, sha256)| Anchor { subject, sha256 })
                .collect(),
            crls: v.record.crls.len(),
            has_master_key: v.has_master_key,
            rate_per_minute: v.record.rate_per_minute,
            created_at: v.record.created_at.to_rfc3339(),
            updated_at: v.record.updated_at.to_rfc3339(),
            master_key: None,
        }
    }
}

fn bad(m: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid-request", m)
}

/// Define an enrollment group.
#[utoipa::path(post, path = "/v1/groups", tag = "groups", request_body = NewGroup,
    responses(
        (status = 201, description = "The group (with its master key, once, when one was generated).", body = Group),
        (status = 400, description = "Bad definition.", body = Problem, content_type = P),
        (status = 401, description = "No or bad token.", body = Problem, content_type = P),
        (status = 403, description = "Role not allowed.", body = Problem, content_type = P),
        (status = 409, description = "The group exists.", body = Problem, content_type = P),
        (status = 413, description = "Request body too large.", body = Problem, content_type = P),
        (status = 415, description = "Content type is not application/json.", body = Problem, content_type = P)
    ))]
async fn create_group(
    State(state): State<AppState>,
    Caller(actor): Caller,
    ApiJson(req): ApiJson<NewGroup>,
) -> Result<(StatusCode, axum::Json<Group>), ApiError> {
    let methods =
        req.methods.iter().map(|m| m.parse::<Method>()).collect::<Result<Vec<_>, _>>().map_err(bad)?;
    let registration_required = match req.registration.as_deref() {
        None | Some("required") => true,
        Some("optional") => false,
        Some(other) => return Err(bad(format!("registration: {other:?} is not required or optional"))),
    };
    let decode = |what: &str, v: &[String]| {
        v.iter()
            .map(|s| unb64(s).ok_or_else(|| bad(format!("{what}: not base64url"))))
            .collect::<Result<Vec<_>, _>>()
    };
    let spec = GroupSpec {
        name: req.name,
        methods,
        registration_required,
        id_source: req.id_source,
        validity_secs: req.validity_secs,
        trust_anchors: decode("trust_anchors", &req.trust_anchors)?,
        crls: decode("crls", &req.crls)?,
        master_key: match &req.master_key {
            Some(k) => {
                Some(zeroize::Zeroizing::new(unb64(k).ok_or_else(|| bad("master_key: not base64url"))?))
            }
            None => None,
        },
        rate_per_minute: req.rate_per_minute,
    };
    let (view, generated) = state.authority.put_group(spec, false, &actor).await?;
    let mut g = Group::from(view);
    g.master_key = generated.map(|k| crate::enroll::b64_pub(&k));
    Ok((StatusCode::CREATED, axum::Json(g)))
}

/// Every enrollment group.
#[utoipa::path(get, path = "/v1/groups", tag = "groups",
    responses(
        (status = 200, description = "The groups, by name.", body = Vec<Group>),
        (status = 401, description = "No or bad token.", body = Problem, content_type = P),
        (status = 403, description = "Role not allowed.", body = Problem, content_type = P)
    ))]
async fn list_groups(
    State(state): State<AppState>,
    Caller(actor): Caller,
) -> Result<axum::Json<Vec<Group>>, ApiError> {
    Ok(axum::Json(state.authority.groups(&actor).await?.into_iter().map(Group::from).collect()))
}

/// An enrollment group.
#[utoipa::path(get, path = "/v1/groups/{name}", tag = "groups", params(("name" = String, Path, description = "Group name")),
    responses(
        (status = 200, description = "The group.", body = Group),
        (status = 401, description = "No or bad token.", body = Problem, content_type = P),
        (status = 403, description = "Role not allowed.", body = Problem, content_type = P),
        (status = 404, description = "No such group.", body = Problem, content_type = P)
    ))]
async fn get_group(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path(name): Path<String>,
) -> Result<axum::Json<Group>, ApiError> {
    Ok(axum::Json(state.authority.group(&name, &actor).await?.into()))
}

/// Delete an enrollment group no device belongs to.
#[utoipa::path(delete, path = "/v1/groups/{name}", tag = "groups", params(("name" = String, Path, description = "Group name")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 401, description = "No or bad token.", body = Problem, content_type = P),
        (status = 403, description = "Role not allowed.", body = Problem, content_type = P),
        (status = 404, description = "No such group.", body = Problem, content_type = P),
        (status = 409, description = "Devices belong to it.", body = Problem, content_type = P)
    ))]
async fn delete_group(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.authority.delete_group(&name, &actor).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create_group, list_groups)).routes(routes!(get_group, delete_group))
}
