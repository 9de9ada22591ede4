//! `GET /v1/audit`: the audit log as JSON lines, for a SIEM.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::problem::{ApiError, ApiQuery, Problem};

const P: &str = "application/problem+json";
const PAGE: u32 = 1000;

/// Which entries to stream.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Entries after this sequence number (default 0: from the start). Pass the last `seq`
    /// you received to continue.
    pub after: Option<i64>,
    /// At most this many entries (default: all).
    pub limit: Option<u64>,
}

/// The audit log as JSON lines (`application/x-ndjson`), oldest first: one object per
/// entry with `seq`, `at`, `actor`, `action`, `subject`, `details`, `prev_hash` and `hash`
/// (hex; see `devid audit verify` for the chain). Streamed in pages, so any size is fine.
#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(AuditQuery),
    responses(
        (status = 200, description = "Audit entries, one JSON object per line.", body = String, content_type = "application/x-ndjson"),
        (status = 400, description = "Bad query.", body = Problem, content_type = P),
        (status = 401, description = "No or bad token.", body = Problem, content_type = P),
        (status = 403, description = "Role not allowed.", body = Problem, content_type = P)
    ))]
async fn audit(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Response, ApiError> {
    let after = q.after.unwrap_or(0);
    if after < 0 {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid-request", "after must be 0 or more"));
    }
    let mut remaining = q.limit.unwrap_or(u64::MAX);
    // The first page is read before answering, so a store failure is a problem document.
    let first = state.authority.audit_page(after, page_size(remaining)).await?;
    let authority = state.authority.clone();
    let stream = futures_util::stream::unfold(Some(first), move |pending| {
        let authority = authority.clone();
        async move {
            let page = pending?;
            if page.is_empty() || remaining == 0 {
                return None;
            }
            let page: Vec<_> =
                page.into_iter().take(usize::try_from(remaining).unwrap_or(usize::MAX)).collect();
            remaining -= page.len() as u64;
            let mut chunk = Vec::with_capacity(page.len() * 300);
            for r in &page {
                // A Value always serializes.
                if serde_json::to_writer(&mut chunk, &devid_authority::audit::to_json(r)).is_err() {
                    return Some((Err(std::io::Error::other("audit entry did not serialize")), None));
                }
                chunk.push(b'\n');
            }
            let last = page.last().map(|r| r.seq).unwrap_or(0);
            let next = if remaining == 0 || page.len() < PAGE as usize {
                Some(Vec::new())
            } else {
                match authority.audit_page(last, page_size(remaining)).await {
                    Ok(p) => Some(p),
                    Err(e) => {
                        tracing::error!(error = %e, "audit stream stopped");
                        return Some((Err(std::io::Error::other("store failed")), None));
                    }
                }
            };
            Some((Ok::<_, std::io::Error>(Bytes::from(chunk)), next))
        }
    });
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(stream)).into_response())
}

fn page_size(remaining: u64) -> u32 {
    u32::try_from(remaining.min(u64::from(PAGE))).unwrap_or(PAGE)
}

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(audit))
}
