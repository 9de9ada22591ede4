//! Bulk pre-registration: `POST /v1/device-batches/{batch_id}`. The handler only adapts
//! HTTP (media type, body, JSON answer); parsing and registration are
//! [`devid_authority::bulk`].

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use devid_authority::bulk::{BatchFormat, BatchReport, RowResult};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::problem::{ApiError, Problem};

/// The body limit of this route (the global limit is [`crate::MAX_BODY_BYTES`]): room for
/// 100,000 rows of about 300 bytes.
pub const MAX_BATCH_BODY_BYTES: usize = 32 * 1024 * 1024;

/// One row's result.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchRowResult {
    /// The line of the body where the row starts (1-based; a CSV header is line 1).
    pub line: u64,
    /// The device id as written (empty when the row has none).
    pub id: String,
    /// `created`, `present` (the device existed: no new token) or `rejected`.
    pub result: &'static str,
    /// Why the row was rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The one-time enrollment token of a created device. Shown once, in this answer only:
    /// a resubmission reports the device as `present`, without a token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// The result of a batch.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResult {
    /// The batch id.
    pub batch_id: String,
    /// Rows registered by this request.
    pub created: usize,
    /// Rows whose device existed already.
    pub present: usize,
    /// Rows rejected (see `reason`).
    pub rejected: usize,
    /// Every row, in body order.
    pub rows: Vec<BatchRowResult>,
}

impl From<BatchReport> for BatchResult {
    fn from(r: BatchReport) -> Self {
        BatchResult {
            batch_id: r.batch_id,
            created: r.created,
            present: r.present,
            rejected: r.rejected,
            rows: r
                .rows
                .into_iter()
                .map(|row| {
                    let (result, reason, token) = match row.result {
                        RowResult::Created(t) => {
                            ("created", None, t.as_ref().map(|t| t.reveal().to_string()))
                        }
                        RowResult::Present => ("present", None, None),
                        RowResult::Rejected(why) => ("rejected", Some(why), None),
                    };
                    BatchRowResult { line: row.line, id: row.id, result, reason, token }
                })
                .collect(),
        }
    }
}

const P: &str = "application/problem+json";

/// Pre-register a batch of up to 100,000 devices.
///
/// The body is JSON lines (`application/x-ndjson`: one `{"id", "method"?, "group"?,
/// "labels"?}` per line) or CSV (`text/csv`, with a header row naming the columns
/// `id,method,group,labels`; labels as `key=value;key=value`). Only the method `token` is
/// available, and `group` must be empty. Each row is created, present (the device exists:
/// nothing changes) or rejected with a reason; a bad row does not stop the others.
///
/// Idempotent: sending the batch again, or part of it, creates no duplicates, and resumes a
/// batch that failed midway (it is stored in transactions of 1,000 rows). Each created
/// device's one-time enrollment token is in this answer only (only its hash is stored);
/// a client that loses the answer must give those devices new tokens.
#[utoipa::path(post, path = "/v1/device-batches/{batch_id}", tag = "devices",
    params(("batch_id" = String, Path, description = "Client-chosen batch id: 1-64 of A-Z a-z 0-9 . _ -")),
    request_body(content(
        (String = "application/x-ndjson"),
        (String = "text/csv")
    ), description = "The rows: JSON lines, or CSV with a header row."),
    responses(
        (status = 200, description = "Every row's result; tokens of created devices (shown once).", body = BatchResult),
        (status = 400, description = "Bad batch id, or a body that is not a batch (not UTF-8, no CSV header, no JSON line, no rows, more than 100,000 rows).", body = Problem, content_type = P),
        (status = 401, description = "No or bad token.", body = Problem, content_type = P),
        (status = 403, description = "Role not allowed.", body = Problem, content_type = P),
        (status = 413, description = "Body over 32 MiB.", body = Problem, content_type = P),
        (status = 415, description = "Neither application/x-ndjson nor text/csv.", body = Problem, content_type = P)
    ))]
async fn import_batch(
    State(state): State<AppState>,
    crate::auth::Caller(actor): crate::auth::Caller,
    Path(batch_id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<BatchResult>, ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let Some(format) = BatchFormat::from_media_type(content_type) else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "send application/x-ndjson (JSON lines) or text/csv",
        ));
    };
    let body = body.map_err(|r| {
        let status = r.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE { "body-too-large" } else { "invalid-request" };
        ApiError::new(status, code, r.body_text())
    })?;
    let report = state.authority.import_device_batch(&batch_id, &body, format, &actor).await?;
    Ok(axum::Json(report.into()))
}

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(import_batch))
        // This route only: a batch is far larger than any other request.
        .layer(DefaultBodyLimit::max(MAX_BATCH_BODY_BYTES))
}
