//! `magsd serve`: a web page and an HTTP API over one model, with dynamic batching.
//!
//! Layers, outermost first: metrics and JSON errors ([`track::track`]), the `Host` check
//! against DNS rebinding ([`host`]), the per-request timeout (408), the body limit (413), then
//! the routes; the API routes also need the bearer token when one is set ([`auth`]). Handlers
//! decode the request, call the library (the same steps as `magsd predict`) through the batching
//! queue ([`batcher`]), and encode the answer. [`serve`] runs the connections itself so that a
//! client must send each request's headers within the timeout too.
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::routing::{any, get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

pub mod api;
pub mod auth;
pub mod batcher;
pub mod error;
pub mod host;
pub mod kserve;
pub mod load;
pub mod metrics;
pub mod page;
pub mod state;
pub mod track;

pub use state::{AppState, Limits, Loaded, ServeOptions, load};

/// The whole HTTP interface.
pub fn router(state: Arc<AppState>) -> Router {
    let mut protected = Router::new()
        .route("/api/v1/predict", post(api::predict))
        .route("/api/v1/model", get(api::model))
        .route("/metrics", get(track::metrics))
        .route("/v2", get(kserve::server_metadata))
        .route("/v2/models/stats", get(kserve::stats));
    // Each model URL with and without `/versions/{version}`.
    for base in ["/v2/models/{name}", "/v2/models/{name}/versions/{version}"] {
        protected = protected
            .route(base, get(kserve::model_metadata))
            .route(&format!("{base}/ready"), get(kserve::model_ready))
            .route(&format!("{base}/infer"), post(kserve::infer))
            .route(&format!("{base}/config"), get(kserve::model_config))
            .route(&format!("{base}/stats"), get(kserve::stats))
            .route(&format!("{base}/generate"), any(kserve::other_extension))
            .route(&format!("{base}/generate_stream"), any(kserve::other_extension));
    }
    for other in [
        "/v2/repository/{*rest}",
        "/v2/systemsharedmemory/{*rest}",
        "/v2/cudasharedmemory/{*rest}",
        "/v2/trace/setting",
        "/v2/models/{name}/trace/setting",
        "/v2/logging",
    ] {
        protected = protected.route(other, any(kserve::other_extension));
    }
    let protected = protected.route_layer(from_fn_with_state(state.clone(), auth::require_token));
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
        .layer(from_fn_with_state(state.hosts.clone(), host::check_host))
        .layer(from_fn_with_state(state.clone(), track::track))
        .with_state(state)
}

/// Serves on `listener` until `shutdown` completes, then finishes the requests in flight.
///
/// Each connection is HTTP/1.1 with hyper's header read timeout set to `--timeout-s`: a client
/// that has not sent a whole request head within it (trickling headers, or idle between
/// requests) is disconnected. (`axum::serve` sets no timer, so it has no such timeout.)
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<AppState>, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    let app = router(state.clone());
    let header_timeout = state.limits.timeout;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // A connection that failed while being accepted, or no file descriptors left:
                // wait a little rather than spin.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        while connections.try_join_next().is_some() {}
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let mut stopped = stopped.clone();
        connections.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(header_timeout);
            let mut conn = std::pin::pin!(builder.serve_connection(TokioIo::new(stream), service));
            let mut stopping = false;
            loop {
                tokio::select! {
                    _ = conn.as_mut() => break,
                    _ = stopped.changed(), if !stopping => {
                        stopping = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        });
    }
    drop(listener);
    let _ = stop.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// True for 127.0.0.0/8, ::1 and "localhost".
pub fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost") || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}
