//! `GET /metrics` and the outermost layer that counts every request into the server's
//! counters (`serve::metrics`).
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, ErrorKind, json_error};
use super::state::AppState;

/// `GET /metrics`.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let b = &state.batcher;
    let body = state.metrics.render(b.queue_length(), b.capacity(), b.is_ready());
    ([(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"))], body).into_response()
}

/// The outermost layer: times every request, counts it by route and status, counts errors by
/// kind, and gives the layers' own plain answers (413 from the body limit, 408 from the
/// timeout, 404, ...) the JSON error shape every other error has.
pub async fn track(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "unmatched".into());
    let mut res = next.run(req).await;
    let status = res.status();
    if status.is_client_error() || status.is_server_error() {
        let kind = match res.extensions().get::<ErrorKind>() {
            Some(k) => *k,
            None => {
                let kind = ErrorKind::of_status(status);
                let is_json = res.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
                if !is_json {
                    res = json_error(status, kind, layer_message(status, &state));
                }
                kind
            }
        };
        state.metrics.error(kind.0);
    }
    state.metrics.request(&route, status.as_u16(), start.elapsed().as_secs_f64());
    res
}

/// What to say when a layer (not a handler) refused the request.
fn layer_message(status: StatusCode, state: &AppState) -> String {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large(state.limits.max_body_bytes).message,
        StatusCode::REQUEST_TIMEOUT => format!("request took longer than this server's limit of {} s (--timeout-s)", state.limits.timeout.as_secs_f64()),
        StatusCode::NOT_FOUND => "no such endpoint; see GET /api/v1/model and the README's `magsd serve` section".into(),
        StatusCode::METHOD_NOT_ALLOWED => "method not allowed on this endpoint".into(),
        s => s.canonical_reason().unwrap_or("error").to_string(),
    }
}
