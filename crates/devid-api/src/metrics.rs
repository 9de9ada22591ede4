//! `GET /metrics` (Prometheus text format 0.0.4) and the middleware that counts requests by
//! matched route.
//!
//! HTTP metrics live in a fixed table: one row per route template of [`ACCESS`] (plus
//! `unmatched`), one column per method, and in each cell a request-duration histogram and a
//! few status-code slots claimed with a compare-and-swap on first use. Recording a request is
//! a short scan for its row and three relaxed atomic additions: no lock, no allocation (the
//! middleware is a plain tower service, not `from_fn`, whose future is boxed). The use
//! cases' metrics are in `devid_authority::metrics`; both record only after the binary
//! called `devid_authority::metrics::install`.

use std::future::Future;
use std::pin::Pin;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::{MatchedPath, State};
use axum::http::{HeaderValue, Method, Request, Response, header};
use axum::response::IntoResponse;
use devid_authority::metrics::{Histogram, enabled, family, sample};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::auth::ACCESS;

/// The media type of the Prometheus text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Methods with their own column; anything else counts under `other`.
const METHODS: [&str; 8] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other"];

/// Distinct status codes per (route, method); one more slot collects the rest as `other`.
const STATUS_SLOTS: usize = 11;

/// The route label of requests that matched no route.
const UNMATCHED: &str = "unmatched";

struct StatusSlot {
    /// 0: free; otherwise the status code.
    code: AtomicU32,
    count: AtomicU64,
}

struct Cell {
    statuses: [StatusSlot; STATUS_SLOTS + 1],
    duration: Histogram,
}

impl Cell {
    fn new() -> Cell {
        Cell {
            statuses: std::array::from_fn(|_| StatusSlot {
                code: AtomicU32::new(0),
                count: AtomicU64::new(0),
            }),
            duration: Histogram::new(),
        }
    }

    fn status(&self, code: u16) -> &StatusSlot {
        let want = u32::from(code);
        for s in &self.statuses[..STATUS_SLOTS] {
            match s.code.load(Relaxed) {
                c if c == want => return s,
                0 => match s.code.compare_exchange(0, want, Relaxed, Relaxed) {
                    Ok(_) => return s,
                    Err(c) if c == want => return s,
                    Err(_) => {}
                },
                _ => {}
            }
        }
        &self.statuses[STATUS_SLOTS]
    }

    fn record(&self, status: u16, started: Instant) {
        self.duration.observe_unchecked(started.elapsed());
        self.status(status).count.fetch_add(1, Relaxed);
    }
}

struct Row {
    route: &'static str,
    cells: [Cell; METHODS.len()],
}

struct HttpMetrics {
    /// One row per route template; the last is `unmatched`.
    rows: Vec<Row>,
}

impl HttpMetrics {
    fn new(routes: impl IntoIterator<Item = &'static str>) -> HttpMetrics {
        let mut rows: Vec<Row> = Vec::new();
        for route in routes.into_iter().chain([UNMATCHED]) {
            if !rows.iter().any(|r| r.route == route) {
                rows.push(Row { route, cells: std::array::from_fn(|_| Cell::new()) });
            }
        }
        HttpMetrics { rows }
    }

    /// The cell of a request: a route template not in the table counts as `unmatched`.
    fn cell(&self, route: Option<&str>, method: &Method) -> &Cell {
        let unmatched = self.rows.len() - 1;
        let row = route.and_then(|r| self.rows.iter().position(|row| row.route == r)).unwrap_or(unmatched);
        let m = METHODS.iter().position(|m| *m == method.as_str()).unwrap_or(METHODS.len() - 1);
        &self.rows[row].cells[m]
    }

    fn render(&self, out: &mut String) {
        let name = "devid_http_requests_total";
        family(out, name, "counter", "HTTP requests, by matched route template, method and status.");
        let mut code = String::new();
        for row in &self.rows {
            for (method, cell) in METHODS.iter().zip(&row.cells) {
                for (i, s) in cell.statuses.iter().enumerate() {
                    let (c, n) = (s.code.load(Relaxed), s.count.load(Relaxed));
                    if n == 0 {
                        continue;
                    }
                    code.clear();
                    if i == STATUS_SLOTS {
                        code.push_str("other");
                    } else {
                        code.push_str(&c.to_string());
                    }
                    sample(out, name, &[("route", row.route), ("method", method), ("status", &code)], n);
                }
            }
        }
        let name = "devid_http_request_duration_seconds";
        family(out, name, "histogram", "HTTP request duration until the response head, by route and method.");
        for row in &self.rows {
            for (method, cell) in METHODS.iter().zip(&row.cells) {
                if cell.duration.count() > 0 {
                    cell.duration.render(out, name, &[("route", row.route), ("method", method)]);
                }
            }
        }
    }
}

static HTTP: LazyLock<HttpMetrics> = LazyLock::new(|| HttpMetrics::new(ACCESS.iter().map(|(_, r, _)| *r)));

/// The layer that counts and times every request by matched route (add it with
/// `Router::layer`, which wraps each route and the fallback, so `MatchedPath` is known).
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpMetricsLayer;

impl<S> tower::Layer<S> for HttpMetricsLayer {
    type Service = HttpMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpMetricsService { inner }
    }
}

/// See [`HttpMetricsLayer`].
#[derive(Debug, Clone)]
pub struct HttpMetricsService<S> {
    inner: S,
}

impl<S, B, R> tower::Service<Request<B>> for HttpMetricsService<S>
where
    S: tower::Service<Request<B>, Response = Response<R>>,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let track = enabled().then(|| {
            let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str());
            (HTTP.cell(route, req.method()), Instant::now())
        });
        ResponseFuture { inner: self.inner.call(req), track }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`HttpMetricsService`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        track: Option<(&'static Cell, Instant)>,
    }
}

impl<F, R, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        if let Some((cell, started)) = this.track.take() {
            // An error never reaches axum's client (its services are infallible); count it as 500.
            let status = out.as_ref().map(|r| r.status().as_u16()).unwrap_or(500);
            cell.record(status, started);
        }
        Poll::Ready(out)
    }
}

/// Everything, in the Prometheus text format.
fn render(state: &AppState) -> String {
    let mut out = String::with_capacity(32 * 1024);
    HTTP.render(&mut out);
    devid_authority::metrics::render(&mut out);
    let name = "devid_ocsp_cache_entries";
    family(&mut out, name, "gauge", "Pre-signed OCSP responses held in memory.");
    sample(&mut out, name, &[], state.publisher.ocsp_cache_len());
    out
}

/// Metrics in the Prometheus text format (exposition format 0.0.4): HTTP requests by route,
/// certificates issued and revoked, enrollment failures, OCSP answers by source, CA key
/// signing time, CRL builds. Public: keep it on an internal network.
#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses((status = 200, description = "The metrics, Prometheus text format 0.0.4.", body = String, content_type = "text/plain; version=0.0.4")))]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))], render(&state))
}

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(metrics))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_labelled_by_route_template_method_and_status() {
        let m = HttpMetrics::new(["/v1/devices/{id}", "/ocsp", "/v1/devices/{id}"]);
        assert_eq!(m.rows.len(), 3, "templates are deduplicated, plus unmatched");
        let t = Instant::now();
        m.cell(Some("/v1/devices/{id}"), &Method::GET).record(200, t);
        m.cell(Some("/v1/devices/{id}"), &Method::GET).record(200, t);
        m.cell(Some("/v1/devices/{id}"), &Method::GET).record(404, t);
        m.cell(Some("/ocsp"), &Method::POST).record(200, t);
        m.cell(None, &Method::GET).record(404, t);
        m.cell(Some("/not/in/the/table"), &Method::from_bytes(b"BREW").expect("method")).record(404, t);
        let mut out = String::new();
        m.render(&mut out);
        for line in [
            "devid_http_requests_total{route=\"/v1/devices/{id}\",method=\"GET\",status=\"200\"} 2\n",
            "devid_http_requests_total{route=\"/v1/devices/{id}\",method=\"GET\",status=\"404\"} 1\n",
            "devid_http_requests_total{route=\"/ocsp\",method=\"POST\",status=\"200\"} 1\n",
            "devid_http_requests_total{route=\"unmatched\",method=\"GET\",status=\"404\"} 1\n",
            "devid_http_requests_total{route=\"unmatched\",method=\"other\",status=\"404\"} 1\n",
            "devid_http_request_duration_seconds_count{route=\"/v1/devices/{id}\",method=\"GET\"} 3\n",
            "# TYPE devid_http_request_duration_seconds histogram\n",
        ] {
            assert!(out.contains(line), "missing {line:?} in:\n{out}");
        }
        assert!(!out.contains("method=\"PUT\""), "empty cells are not rendered:\n{out}");
    }

    #[test]
    fn status_codes_beyond_the_slots_count_as_other() {
        let c = Cell::new();
        let t = Instant::now();
        for code in 200..(200 + STATUS_SLOTS as u16 + 3) {
            c.record(code, t);
        }
        c.record(200, t);
        assert_eq!(c.statuses[0].count.load(Relaxed), 2);
        assert_eq!(c.statuses[STATUS_SLOTS].count.load(Relaxed), 3);
        assert_eq!(c.duration.count(), STATUS_SLOTS as u64 + 4);
    }

    #[test]
    fn every_access_entry_has_its_own_row() {
        for (_, route, _) in ACCESS {
            assert_eq!(
                HTTP.rows[HTTP.rows.iter().position(|r| r.route == *route).expect("row")].route,
                *route
            );
        }
        assert_eq!(HTTP.rows.last().map(|r| r.route), Some(UNMATCHED));
    }
}
