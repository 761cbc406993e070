//! The `Host` header check against DNS rebinding: a web page on another site can make its
//! visitor's browser send requests to a name that the attacker's DNS points at 127.0.0.1, and the
//! browser then lets the page read the answers. Such requests carry the attacker's host *name*
//! in `Host`, so the server answers only names it was told are its own: `localhost`, and each
//! `--allow-host NAME`. IP addresses are accepted (a rebinding attack cannot put one in `Host`:
//! the browser sends the name the page used), and so is a request without `Host` (browsers always
//! send one; any other client can reach the server directly anyway). `--allow-host '*'` turns
//! the check off, e.g. behind a proxy that checks names itself.
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, ErrorKind};
use crate::error::{Error, Result};

/// The host names this server answers to.
#[derive(Clone, Debug)]
pub struct AllowedHosts {
    /// Lower-case names besides `localhost`.
    names: Vec<String>,
    any: bool,
}

/// The host of a `Host` value (`name`, `name:port`, `1.2.3.4:80`, `[::1]:80`), lower-cased and
/// without a trailing dot.
fn host_part(value: &str) -> String {
    let v = value.trim();
    let host = if let Some(rest) = v.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        match v.rsplit_once(':') {
            Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
            _ => v,
        }
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

impl AllowedHosts {
    /// `localhost`, IP addresses, and `extra` (host names, any case; `*` for any host).
    pub fn new(extra: &[String]) -> Result<Self> {
        let mut names = Vec::new();
        for e in extra {
            let h = host_part(e);
            let valid = h == "*" || (!h.is_empty() && h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'));
            if !valid {
                return Err(Error::Config(format!("--allow-host {e:?}: give a host name such as xray.example.org (or '*' for any)")));
            }
            names.push(h);
        }
        Ok(AllowedHosts { any: names.iter().any(|n| n == "*"), names })
    }

    /// Whether a request with this `Host` value may be answered.
    pub fn allows(&self, value: &str) -> bool {
        let h = host_part(value);
        self.any || h == "localhost" || h.parse::<std::net::IpAddr>().is_ok() || self.names.contains(&h)
    }
}

/// Layer over every route: refuses a request whose `Host` names no host of this server (403).
pub async fn check_host(State(hosts): State<Arc<AllowedHosts>>, req: Request, next: Next) -> Response {
    let host = match req.headers().get(header::HOST) {
        Some(v) => match v.to_str() {
            Ok(s) => Some(s.to_string()),
            Err(_) => return ApiError::bad_request("the Host header is not text").into_response(),
        },
        None => req.uri().authority().map(|a| a.as_str().to_string()),
    };
    match host {
        Some(h) if !hosts.allows(&h) => ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorKind::FORBIDDEN_HOST,
            format!(
                "Host '{}' is not a name of this server, which answers localhost, IP addresses and the names given with --allow-host \
                 (a guard against DNS rebinding); start it with --allow-host {} to answer this name",
                h.chars().take(100).collect::<String>(),
                host_part(&h).chars().take(100).collect::<String>()
            ),
        )
        .into_response(),
        _ => next.run(req).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_ip_addresses_and_allowed_names_pass() {
        let h = AllowedHosts::new(&["XRay.Example.org".into()]).unwrap();
        for ok in ["localhost", "LOCALHOST:8080", "127.0.0.1:8080", "[::1]:80", "10.1.2.3", "xray.example.org:443", "xray.example.org."] {
            assert!(h.allows(ok), "{ok}");
        }
        for bad in ["evil.example", "evil.example:8080", "localhost.evil.example", "127.0.0.1.nip.io", "", "xray.example.org.evil"] {
            assert!(!h.allows(bad), "{bad}");
        }
        assert!(AllowedHosts::new(&["*".into()]).unwrap().allows("anything.example"));
        assert!(AllowedHosts::new(&["bad host".into()]).is_err());
    }
}
