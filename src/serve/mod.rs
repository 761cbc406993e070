//! `magsd serve`: a web page and an HTTP API over one model, with dynamic batching.
//!
//! Layers, outermost first: metrics and JSON errors ([`metrics::track`]), the per-request
//! timeout (408), the body limit (413), then the routes; the API routes also need the bearer
//! token when one is set ([`auth`]). Handlers decode the request, call the library (the same
//! steps as `magsd predict`) through the batching queue ([`batcher`]), and encode the answer.
use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

pub mod api;
pub mod auth;
pub mod batcher;
pub mod error;
pub mod kserve;
pub mod load;
pub mod metrics;
pub mod page;
pub mod state;

pub use state::{AppState, Limits, Loaded, ServeOptions, load};

/// The whole HTTP interface.
pub fn router(state: Arc<AppState>) -> Router {
    let protected = Router::new()
        .route("/api/v1/predict", post(api::predict))
        .route("/api/v1/model", get(api::model))
        .route("/metrics", get(metrics::metrics))
        .route("/v2", get(kserve::server_metadata))
        .route("/v2/models/{name}", get(kserve::model_metadata))
        .route("/v2/models/{name}/ready", get(kserve::model_ready))
        .route("/v2/models/{name}/infer", post(kserve::infer))
        .route_layer(from_fn_with_state(state.clone(), auth::require_token));
    let open = Router::new()
        .route("/", get(page::index))
        .route("/assets/app.js", get(page::app_js))
        .route("/assets/style.css", get(page::style_css))
        .route("/healthz", get(api::healthz))
        .route("/v2/health/live", get(kserve::live))
        .route("/v2/health/ready", get(kserve::ready));
    open.merge(protected)
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(state.limits.max_body_bytes))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, state.limits.timeout))
        .layer(from_fn_with_state(state.clone(), metrics::track))
        .with_state(state)
}

/// Serves on `listener` until `shutdown` completes, then finishes the requests in flight.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<AppState>, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}

/// True for 127.0.0.0/8, ::1 and "localhost".
pub fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost") || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}
