//! A load tester for `magsd serve`, loopback only: `concurrency` clients each send one image to
//! `POST /api/v1/predict` after another until `requests` were sent or `max_time` passed, and the
//! answer is requests per second and latency percentiles (nearest rank).
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::is_loopback;
use crate::error::{Error, Result};

#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Base URL of the server, e.g. `http://127.0.0.1:8080`; must be a loopback address.
    pub url: String,
    /// The body of every request (an encoded image).
    pub image: Arc<Vec<u8>>,
    pub concurrency: usize,
    /// Requests in all (over all clients).
    pub requests: usize,
    /// Clients stop sending new requests after this long.
    pub max_time: Duration,
    pub token: Option<String>,
}

/// One load test's result (printed as a JSON line).
#[derive(Clone, Debug, Serialize)]
pub struct LoadReport {
    pub concurrency: usize,
    pub requests: usize,
    pub ok: usize,
    pub errors: usize,
    pub seconds: f64,
    pub requests_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// The host of an `http://host:port/...` URL.
fn host_of(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("http://")?;
    let authority = rest.split('/').next()?;
    Some(if authority.starts_with('[') { authority.split(']').next().map(|h| &h[1..])? } else { authority.rsplit_once(':').map_or(authority, |(h, _)| h) })
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// Runs one load test; refuses any address that is not loopback.
pub fn load_test(opts: &LoadOptions) -> Result<LoadReport> {
    let host = host_of(&opts.url).ok_or_else(|| Error::Config(format!("load test URL {}: use http://127.0.0.1:PORT", opts.url)))?;
    if !is_loopback(host) {
        return Err(Error::Config(format!("the load test only targets loopback addresses (127.0.0.0/8, ::1, localhost), not {host}")));
    }
    let target = format!("{}/api/v1/predict", opts.url.trim_end_matches('/'));
    let sent = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let clients: Vec<std::thread::JoinHandle<Vec<(bool, f64)>>> = (0..opts.concurrency.max(1))
        .map(|_| {
            let (sent, target, image, token) = (sent.clone(), target.clone(), opts.image.clone(), opts.token.clone());
            let (requests, max_time) = (opts.requests, opts.max_time);
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(60)))
                    .build()
                    .into();
                let mut out = Vec::new();
                while sent.fetch_add(1, Ordering::SeqCst) < requests && start.elapsed() < max_time {
                    let t = Instant::now();
                    let mut req = agent.post(&target).header("Content-Type", "application/octet-stream");
                    if let Some(tok) = &token {
                        req = req.header("Authorization", &format!("Bearer {tok}"));
                    }
                    let ok = match req.send(&image[..]) {
                        Ok(mut res) => {
                            let status = res.status().as_u16();
                            let _ = res.body_mut().read_to_vec();
                            status == 200
                        }
                        Err(_) => false,
                    };
                    out.push((ok, t.elapsed().as_secs_f64() * 1e3));
                }
                out
            })
        })
        .collect();
    let mut all = Vec::new();
    for c in clients {
        all.extend(c.join().map_err(|_| Error::Data("a load-test client thread panicked".into()))?);
    }
    let seconds = start.elapsed().as_secs_f64();
    let mut ms: Vec<f64> = all.iter().filter(|(ok, _)| *ok).map(|&(_, t)| t).collect();
    ms.sort_by(f64::total_cmp);
    let ok = ms.len();
    Ok(LoadReport {
        concurrency: opts.concurrency.max(1),
        requests: all.len(),
        ok,
        errors: all.len() - ok,
        seconds,
        requests_per_s: ok as f64 / seconds.max(1e-9),
        p50_ms: percentile(&ms, 50.0),
        p99_ms: percentile(&ms, 99.0),
        max_ms: ms.last().copied().unwrap_or(f64::NAN),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_hosts_are_targets() {
        assert_eq!(host_of("http://127.0.0.1:8080"), Some("127.0.0.1"));
        assert_eq!(host_of("http://[::1]:80/x"), Some("::1"));
        assert_eq!(host_of("http://localhost"), Some("localhost"));
        assert!(is_loopback("127.0.0.1") && is_loopback("::1") && is_loopback("localhost") && is_loopback("127.5.0.1"));
        assert!(!is_loopback("10.0.0.1") && !is_loopback("192.168.1.1") && !is_loopback("example.org"));
        let opts = LoadOptions {
            url: "http://10.1.2.3:8080".into(),
            image: Arc::new(Vec::new()),
            concurrency: 1,
            requests: 1,
            max_time: Duration::from_secs(1),
            token: None,
        };
        assert!(load_test(&opts).unwrap_err().to_string().contains("loopback"));
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }
}
