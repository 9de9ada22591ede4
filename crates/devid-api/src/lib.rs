//! The devid HTTP API: one axum router per trust level, merged in [`router`]; one error
//! type ([`problem::ApiError`]) that turns error kinds into RFC 9457 problem documents;
//! the OpenAPI document generated from the handlers ([`openapi`]).
//!
//! Handlers are short: read → validate → call the authority → render. They never see keys
//! or SQL.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod admin;
mod audit;
pub mod auth;
mod bulk;
pub mod enroll;
mod groups;
mod metrics;
mod ops;
mod pki;
pub mod problem;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request};
use devid_authority::Authority;
use devid_authority::publish::Publisher;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

/// Largest request body accepted, in bytes. A CSR is at most 16 KiB of DER; PEM and JSON
/// add about a third.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The header carrying the request id, set on every response.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Shared state of every handler: one reference count for the whole state, since axum
/// clones it for every request (and the middleware once more).
#[derive(Clone)]
pub struct AppState(Arc<Services>);

/// What the handlers use, behind [`AppState`].
pub struct Services {
    /// The use cases.
    pub authority: Arc<Authority>,
    /// OCSP answers and CRLs.
    pub publisher: Arc<Publisher>,
    /// Access tokens.
    pub tokens: Arc<devid_authority::auth::TokenService>,
}

impl AppState {
    /// The state of a router over these services.
    pub fn new(services: Services) -> AppState {
        AppState(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;
    fn deref(&self) -> &Services {
        &self.0
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "devid",
        description = "Zero-touch device provisioning with its own PKI certificate authority.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    tags(
        (name = "enroll", description = "Device enrollment"),
        (name = "pki", description = "CA certificates, OCSP and CRLs"),
        (name = "ops", description = "Health and readiness"),
        (name = "auth", description = "Access tokens (OAuth 2.0 client credentials)"),
        (name = "devices", description = "Device registration, lookup, revocation and quarantine"),
        (name = "certificates", description = "Certificate lookup and revocation"),
        (name = "credentials", description = "API credentials"),
        (name = "audit", description = "The tamper-evident audit log"),
        (name = "groups", description = "Enrollment groups and their policy")
    )
)]
struct ApiDoc;

fn routes() -> OpenApiRouter<AppState> {
    let mut doc = ApiDoc::openapi();
    doc.merge(pki::WildcardDoc::openapi());
    OpenApiRouter::with_openapi(doc)
        .merge(enroll::routes())
        .merge(ops::routes())
        .merge(pki::routes())
        .merge(auth::routes())
        .merge(admin::routes())
        .merge(bulk::routes())
        .merge(metrics::routes())
        .merge(audit::routes())
        .merge(groups::routes())
}

/// The OpenAPI 3.1 document of every route, generated from the handlers.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, mut doc) = routes().split_for_parts();
    auth::document(&mut doc);
    doc
}

/// Request ids: a random 64-bit prefix per process and a counter, so ids are unique across
/// replicas and restarts without a call into the operating system's random source per
/// request (tower-http's UUID maker reads it every time).
#[derive(Clone)]
struct RequestIds {
    prefix: u64,
    next: Arc<std::sync::atomic::AtomicU64>,
}

impl RequestIds {
    fn new() -> Self {
        let mut b = [0u8; 8];
        devid_core::Entropy::fill(&devid_core::OsEntropy, &mut b);
        RequestIds { prefix: u64::from_be_bytes(b), next: Arc::new(std::sync::atomic::AtomicU64::new(1)) }
    }
}

impl MakeRequestId for RequestIds {
    fn make_request_id<B>(&mut self, _req: &Request<B>) -> Option<RequestId> {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // The formatted string becomes the header's bytes without another copy.
        let id = axum::body::Bytes::from(format!("{:016x}-{n:x}", self.prefix));
        axum::http::HeaderValue::from_maybe_shared(id).ok().map(RequestId::new)
    }
}

/// The span of a request: its method, path and id, on every event logged while it is served.
///
/// At level `info` for every route but the public revocation routes (`/ocsp`, `/ocsp/…`,
/// `/crl/…`), whose span is at `debug`. Brokers ask those for every connection they accept;
/// at the default level, making, entering and closing an info span (the fields formatted
/// once, the subscriber's registry on every poll) cost 4.5–6.5 µs of a cached OCSP answer's
/// 24–32 µs on the twelfth benchmark machine, about a sixth of the responder's throughput,
/// and 1–1.5 µs of 12 on the thirteenth (bench/RESULTS.md). Their failures are still logged
/// at `warn`/`error`, with the issuer and serial they concern, and counted by route in the
/// metrics; `DEVID_LOG__LEVEL=debug` gives them their span back.
fn request_span<B>(req: &Request<B>) -> tracing::Span {
    let path = req.uri().path();
    let id = req.headers().get(REQUEST_ID_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("-");
    if path == "/ocsp" || path.starts_with("/ocsp/") || path.starts_with("/crl/") {
        tracing::debug_span!("request", method = %req.method(), path = %path, request_id = %id)
    } else {
        tracing::info_span!("request", method = %req.method(), path = %path, request_id = %id)
    }
}

/// The whole HTTP application.
pub fn router(state: AppState) -> Router {
    let (router, _) = routes().split_for_parts();
    finish(router.merge(pki::wildcard_routes()), state)
}

/// The responder listener's application (`ocsp.listen`): OCSP (RFC 6960 Appendix A.1, GET
/// and POST), the CRLs, the CA certificates, health and readiness; nothing that needs a
/// credential. The same handlers, access table and middleware as in [`router`], so an
/// answer is the same on either listener.
///
/// The listener's event loops are single-threaded runtimes of their own, and a database
/// connection is driven by the runtime that opened it. So the routes that read the store
/// (readiness, a CA certificate) run on `home`, the server's shared runtime; OCSP and the
/// CRLs answer from memory on the loop, and the publisher takes an OCSP cache miss's store
/// lookup home itself.
pub fn responder_router(state: AppState, home: tokio::runtime::Handle) -> Router {
    let (router, _) = OpenApiRouter::<AppState>::new().merge(pki::routes()).split_for_parts();
    let (public, doc) = OpenApiRouter::<AppState>::new().merge(ops::public_routes()).split_for_parts();
    let on_home = OnRuntime {
        home,
        inner: public
            .fallback(problem::not_found)
            .method_not_allowed_fallback(problem::method_not_allowed)
            .with_state(state.clone()),
    };
    let mut router = router.merge(pki::wildcard_routes());
    // Routed by method here too, so that another method gets the same 405 as on the API's
    // listener.
    for (path, item) in &doc.paths.paths {
        let mut methods = axum::routing::MethodRouter::new();
        if item.get.is_some() {
            methods = methods.get_service(on_home.clone());
        }
        if item.post.is_some() {
            methods = methods.post_service(on_home.clone());
        }
        router = router.route(path, methods);
    }
    finish(router, state)
}

/// A router whose requests run as tasks of another runtime ([`responder_router`]).
#[derive(Clone)]
struct OnRuntime {
    home: tokio::runtime::Handle,
    inner: Router,
}

impl tower::Service<Request<axum::body::Body>> for OnRuntime {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>,
    >;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<axum::body::Body>) -> Self::Future {
        // The inner router matches the path again; the outer one's path parameters would
        // be counted twice by `Path`. What a handler may read of the connection stays.
        let peer = req.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().cloned();
        let id = req.extensions().get::<RequestId>().cloned();
        req.extensions_mut().clear();
        if let Some(p) = peer {
            req.extensions_mut().insert(p);
        }
        if let Some(id) = id {
            req.extensions_mut().insert(id);
        }
        // In the request's span (the trace layer calls this inside it), as on the loop.
        let answer = tracing::Instrument::instrument(
            tower::ServiceExt::oneshot(self.inner.clone(), req),
            tracing::Span::current(),
        );
        let task = self.home.spawn(answer);
        Box::pin(async move {
            match task.await {
                Ok(answer) => answer,
                Err(e) => {
                    tracing::error!(error = %e, "a request's task on the shared runtime failed");
                    Ok(axum::response::IntoResponse::into_response(problem::ApiError::new(
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        "internal error; see the server log",
                    )))
                }
            }
        })
    }
}

/// The middleware every route gets, the problem+json fallbacks and the state.
fn finish(router: axum::Router<AppState>, state: AppState) -> Router {
    let router = router.route_layer(auth::AuthorizeLayer::new(state.clone()));
    let x_request_id = HeaderName::from_static(REQUEST_ID_HEADER);
    // One `Router::layer` with the whole stack: axum wraps every route once in it, so a
    // request clones one boxed service and boxes one future and one body. Seven `layer`
    // calls wrapped each route seven times over, each with its own box: a cached OCSP
    // answer took 12.3 µs of CPU then and takes 10.8 µs now (bench/README.md). The order is
    // unchanged; the first listed is the outermost.
    let layers = tower::ServiceBuilder::new()
        .layer(SetRequestIdLayer::new(x_request_id.clone(), RequestIds::new()))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .layer(PropagateRequestIdLayer::new(x_request_id))
        // Outside the panic and timeout layers, so that their 500 and 408 are counted too;
        // inside the router (a per-route layer), so that it knows the matched route.
        .layer(metrics::HttpMetricsLayer)
        .layer(CatchPanicLayer::custom(problem::panic_response))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(30),
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES));
    router
        .fallback(problem::not_found)
        .method_not_allowed_fallback(problem::method_not_allowed)
        .with_state(state)
        .layer(layers)
}
