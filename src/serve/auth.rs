//! The bearer token: when the server has one (`--token` or `MAGSD_TOKEN`), every API call must
//! send `Authorization: Bearer <token>`. The page, `/healthz` and `/v2/health/*` stay open so a
//! browser can load the page and Kubernetes probes need no secret.
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, ErrorKind};
use super::state::AppState;

/// Compares without stopping at the first difference, so timing does not reveal the token.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The credentials of an `Authorization` value with the `Bearer` scheme, which RFC 9110
/// (§11.1) makes case-insensitive, followed by one or more spaces.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

/// Layer over the protected routes.
pub async fn require_token(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(token) = &state.token else {
        return next.run(req).await;
    };
    let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(bearer);
    let refuse = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, ErrorKind::UNAUTHORIZED, m).into_response();
    match given {
        None => refuse("this server needs a token: send `Authorization: Bearer <token>` (the server's --token or MAGSD_TOKEN)"),
        Some(t) if same(t.as_bytes(), token.as_bytes()) => next.run(req).await,
        Some(_) => refuse("wrong token"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_compare_exactly() {
        assert!(super::same(b"abc", b"abc"));
        assert!(!super::same(b"abc", b"abd"));
        assert!(!super::same(b"abc", b"abcd"));
        assert!(!super::same(b"", b"a"));
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for v in ["Bearer abc", "bearer abc", "BEARER  abc", "bEaReR abc "] {
            assert_eq!(super::bearer(v), Some("abc"), "{v}");
        }
        assert_eq!(super::bearer("Basic abc"), None);
        assert_eq!(super::bearer("Bearerabc"), None);
    }
}
