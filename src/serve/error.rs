//! Errors of the HTTP layer: a status, a kind for the metrics, and a message, answered in the
//! shape the Open Inference Protocol uses for every error, `{"error": "..."}`.
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Seconds a client is asked to wait after a 503 (queue full or model not ready).
pub const RETRY_AFTER_S: u64 = 1;

/// The error's kind, as counted in `magsd_errors_total{kind}`; travels in the response's
/// extensions from the handler to the metrics layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorKind(pub &'static str);

impl ErrorKind {
    pub const BAD_REQUEST: ErrorKind = ErrorKind("bad_request");
    pub const BAD_IMAGE: ErrorKind = ErrorKind("bad_image");
    pub const UNAUTHORIZED: ErrorKind = ErrorKind("unauthorized");
    /// A `Host` header that names no host of this server (DNS rebinding guard).
    pub const FORBIDDEN_HOST: ErrorKind = ErrorKind("forbidden_host");
    pub const NOT_FOUND: ErrorKind = ErrorKind("not_found");
    pub const TOO_LARGE: ErrorKind = ErrorKind("too_large");
    pub const TIMEOUT: ErrorKind = ErrorKind("timeout");
    pub const QUEUE_FULL: ErrorKind = ErrorKind("queue_full");
    /// A readiness probe while the model thread is not running yet.
    pub const NOT_READY: ErrorKind = ErrorKind("not_ready");
    pub const INTERNAL: ErrorKind = ErrorKind("internal");

    /// The kind of an answer that no handler labelled (a layer's or the router's).
    pub fn of_status(s: StatusCode) -> ErrorKind {
        match s {
            StatusCode::UNAUTHORIZED => Self::UNAUTHORIZED,
            StatusCode::FORBIDDEN => Self::FORBIDDEN_HOST,
            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => Self::NOT_FOUND,
            StatusCode::PAYLOAD_TOO_LARGE => Self::TOO_LARGE,
            StatusCode::REQUEST_TIMEOUT => Self::TIMEOUT,
            StatusCode::SERVICE_UNAVAILABLE => Self::QUEUE_FULL,
            s if s.is_server_error() => Self::INTERNAL,
            _ => Self::BAD_REQUEST,
        }
    }
}

/// A failed request.
#[derive(Clone, Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError { status, kind, message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorKind::BAD_REQUEST, message)
    }

    /// An upload that is not a usable image (the library's decode error, naming the upload).
    pub fn bad_image(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorKind::BAD_IMAGE, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorKind::NOT_FOUND, message)
    }

    pub fn queue_full(capacity: usize) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::QUEUE_FULL,
            format!("server busy: the queue of {capacity} images is full (--queue); retry after {RETRY_AFTER_S} s"),
        )
    }

    /// A body over `--max-body-mb` (the body-limit layer's own 413 gets the same words).
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::TOO_LARGE,
            format!("request body larger than this server's limit of {limit} bytes (--max-body-mb)"),
        )
    }

    /// More images, or more pixels, in one request than this server takes.
    pub fn too_many(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, ErrorKind::TOO_LARGE, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, ErrorKind::INTERNAL, message)
    }
}

/// `{"error": message}` with the status, the kind in the extensions, and Retry-After on 503.
pub fn json_error(status: StatusCode, kind: ErrorKind, message: String) -> Response {
    let mut res = (status, Json(serde_json::json!({ "error": message }))).into_response();
    res.extensions_mut().insert(kind);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_S));
    }
    if status == StatusCode::UNAUTHORIZED {
        res.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    res
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_error(self.status, self.kind, self.message)
    }
}
