//! The server's counters: Prometheus text metrics (requests by route and status, errors by kind,
//! request latency, time spent in the batching queue, batch sizes and model time per batch, the
//! queue's current length) and the same events as the Open Inference Protocol's statistics
//! extension counts them ([`ModelStats`], served by `kserve::stats`). Kept in one mutex: a few
//! updates per request cost nothing next to a forward pass. The endpoint and the layer that
//! count requests are in `serve::track`.
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use serde::Serialize;

/// Upper bounds (seconds) of the latency and queue-time buckets.
const SECONDS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Upper bounds of the batch-size buckets.
const SIZES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

/// A cumulative histogram as Prometheus exposes it.
#[derive(Clone, Debug)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram { bounds, counts: vec![0; bounds.len()], sum: 0.0, count: 0 }
    }

    fn observe(&mut self, v: f64) {
        for (c, &b) in self.counts.iter_mut().zip(self.bounds) {
            if v <= b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    /// `name_bucket{labels,le="..."}` lines, then `_sum` and `_count`.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (c, b) in self.counts.iter().zip(self.bounds) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", self.count);
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// Triton's `$duration_stat`: how often something happened and its total time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DurationStat {
    pub count: u64,
    pub ns: u64,
}

impl DurationStat {
    fn add(&mut self, seconds: f64) {
        self.count += 1;
        self.ns += (seconds.max(0.0) * 1e9).round() as u64;
    }
}

/// The model's time in one batch, split as Triton's statistics split it.
#[derive(Clone, Copy, Debug, Default)]
pub struct BatchTimes {
    /// Gathering the inputs into one tensor.
    pub input_s: f64,
    /// The forward pass, from the copy to the device until the logits are on the host
    /// (`crate::eval::predictor::PredictTimes::forward_s`).
    pub infer_s: f64,
    /// Copying the other outputs back, the assessment of each image and splitting them per image.
    pub output_s: f64,
}

impl BatchTimes {
    pub fn total(&self) -> f64 {
        self.input_s + self.infer_s + self.output_s
    }
}

/// What the statistics extension reports for the model (Triton's `$model_stat`). An inference
/// request here is one image as the batcher sees it: a request of N images counts N.
#[derive(Clone, Debug, Default)]
pub struct ModelStats {
    /// When the model last answered, in milliseconds since the Unix epoch (0: never).
    pub last_inference_ms: u64,
    /// Images answered successfully.
    pub inference_count: u64,
    /// Batches run.
    pub execution_count: u64,
    /// Images answered, from entering the queue to the model's answer.
    pub success: DurationStat,
    /// Images whose batch failed.
    pub fail: DurationStat,
    /// Images' waits in the queue.
    pub queue: DurationStat,
    pub compute_input: DurationStat,
    pub compute_infer: DurationStat,
    pub compute_output: DurationStat,
    /// Per batch size: (input, infer, output) of the batches of that size.
    pub batches: BTreeMap<usize, [DurationStat; 3]>,
}

#[derive(Debug)]
struct Inner {
    requests: BTreeMap<(String, u16), u64>,
    errors: BTreeMap<String, u64>,
    latency: BTreeMap<String, Histogram>,
    queue: Histogram,
    batch_size: Histogram,
    inference: Histogram,
    images: u64,
    model: ModelStats,
}

/// The server's counters.
#[derive(Debug)]
pub struct ServeCounters {
    inner: Mutex<Inner>,
}

impl Default for ServeCounters {
    fn default() -> Self {
        ServeCounters {
            inner: Mutex::new(Inner {
                requests: BTreeMap::new(),
                errors: BTreeMap::new(),
                latency: BTreeMap::new(),
                queue: Histogram::new(SECONDS),
                batch_size: Histogram::new(SIZES),
                inference: Histogram::new(SECONDS),
                images: 0,
                model: ModelStats::default(),
            }),
        }
    }
}

impl ServeCounters {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        // A panic elsewhere while holding the lock leaves plain counters: keep using them.
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g)
    }

    /// One finished HTTP request.
    pub fn request(&self, route: &str, status: u16, seconds: f64) {
        self.with(|m| {
            *m.requests.entry((route.to_string(), status)).or_default() += 1;
            m.latency.entry(route.to_string()).or_insert_with(|| Histogram::new(SECONDS)).observe(seconds);
        });
    }

    /// One error of `kind` (a whole request, or one image of a several-image request).
    pub fn error(&self, kind: &str) {
        self.with(|m| *m.errors.entry(kind.to_string()).or_default() += 1);
    }

    /// One image's wait in the queue before the batcher took it.
    pub fn queued(&self, seconds: f64) {
        self.with(|m| {
            m.queue.observe(seconds);
            m.model.queue.add(seconds);
        });
    }

    /// One batch through the model (successful or not).
    pub fn batch(&self, size: usize, t: BatchTimes) {
        self.with(|m| {
            m.batch_size.observe(size as f64);
            m.inference.observe(t.total());
            m.images += size as u64;
            let s = &mut m.model;
            s.execution_count += 1;
            s.compute_input.add(t.input_s);
            s.compute_infer.add(t.infer_s);
            s.compute_output.add(t.output_s);
            let b = s.batches.entry(size).or_default();
            b[0].add(t.input_s);
            b[1].add(t.infer_s);
            b[2].add(t.output_s);
        });
    }

    /// One image answered by the model (`ok`) or failed with its batch, `seconds` after it
    /// entered the queue.
    pub fn answered(&self, ok: bool, seconds: f64) {
        let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        self.with(|m| {
            let s = &mut m.model;
            if ok {
                s.success.add(seconds);
                s.inference_count += 1;
                s.last_inference_ms = now_ms;
            } else {
                s.fail.add(seconds);
            }
        });
    }

    /// A copy of the model's statistics.
    pub fn model_stats(&self) -> ModelStats {
        self.with(|m| m.model.clone())
    }

    /// (batches, images) run through the model so far.
    pub fn batches(&self) -> (u64, u64) {
        self.with(|m| (m.batch_size.count, m.images))
    }

    /// Everything in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self, queue_length: usize, queue_capacity: usize, ready: bool) -> String {
        self.with(|m| {
            let mut o = String::new();
            o.push_str("# HELP magsd_requests_total HTTP requests answered, by route and status code.\n# TYPE magsd_requests_total counter\n");
            for ((route, status), n) in &m.requests {
                let _ = writeln!(o, "magsd_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}");
            }
            o.push_str("# HELP magsd_errors_total Errors by kind (bad_request, bad_image, unauthorized, forbidden_host, not_found, too_large, timeout, queue_full, not_ready, internal).\n# TYPE magsd_errors_total counter\n");
            for (kind, n) in &m.errors {
                let _ = writeln!(o, "magsd_errors_total{{kind=\"{kind}\"}} {n}");
            }
            o.push_str("# HELP magsd_request_duration_seconds Time from request to response, by route.\n# TYPE magsd_request_duration_seconds histogram\n");
            for (route, h) in &m.latency {
                h.render(&mut o, "magsd_request_duration_seconds", &format!("route=\"{route}\""));
            }
            o.push_str("# HELP magsd_queue_seconds Time an image waited in the batching queue.\n# TYPE magsd_queue_seconds histogram\n");
            m.queue.render(&mut o, "magsd_queue_seconds", "");
            o.push_str("# HELP magsd_batch_size Images per batch run on the model (dynamic batching).\n# TYPE magsd_batch_size histogram\n");
            m.batch_size.render(&mut o, "magsd_batch_size", "");
            o.push_str("# HELP magsd_inference_seconds Model time per batch.\n# TYPE magsd_inference_seconds histogram\n");
            m.inference.render(&mut o, "magsd_inference_seconds", "");
            let _ = writeln!(o, "# HELP magsd_images_total Images run through the model.\n# TYPE magsd_images_total counter\nmagsd_images_total {}", m.images);
            let _ = writeln!(o, "# HELP magsd_queue_length Images waiting for the batcher now.\n# TYPE magsd_queue_length gauge\nmagsd_queue_length {queue_length}");
            let _ = writeln!(o, "# HELP magsd_queue_capacity Images the queue holds before answering 503.\n# TYPE magsd_queue_capacity gauge\nmagsd_queue_capacity {queue_capacity}");
            let _ = writeln!(o, "# HELP magsd_ready 1 when the model is loaded and the batcher runs.\n# TYPE magsd_ready gauge\nmagsd_ready {}", ready as u8);
            o
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_render_in_prometheus_form() {
        let m = ServeCounters::default();
        m.batch(3, BatchTimes { input_s: 0.0, infer_s: 0.02, output_s: 0.0 });
        m.batch(8, BatchTimes { input_s: 0.05, infer_s: 0.1, output_s: 0.05 });
        m.request("/api/v1/predict", 200, 0.03);
        m.error("bad_image");
        let text = m.render(2, 64, true);
        assert!(text.contains("magsd_batch_size_bucket{le=\"2\"} 0\n"), "{text}");
        assert!(text.contains("magsd_batch_size_bucket{le=\"4\"} 1\n"));
        assert!(text.contains("magsd_batch_size_bucket{le=\"8\"} 2\n"));
        assert!(text.contains("magsd_batch_size_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("magsd_batch_size_sum 11\n"));
        assert!(text.contains("magsd_images_total 11\n"));
        assert!(text.contains("magsd_requests_total{route=\"/api/v1/predict\",status=\"200\"} 1\n"));
        assert!(text.contains("magsd_request_duration_seconds_bucket{route=\"/api/v1/predict\",le=\"0.05\"} 1\n"));
        assert!(text.contains("magsd_errors_total{kind=\"bad_image\"} 1\n"));
        assert!(text.contains("magsd_queue_length 2\n") && text.contains("magsd_queue_capacity 64\n"));
        assert!(text.contains("magsd_ready 1\n"));
        // The same batches in the statistics extension's terms.
        let s = m.model_stats();
        assert_eq!(s.execution_count, 2);
        assert_eq!(s.compute_infer, DurationStat { count: 2, ns: 120_000_000 });
        assert_eq!(s.batches[&8][2], DurationStat { count: 1, ns: 50_000_000 });
        m.answered(true, 0.5);
        m.answered(false, 0.25);
        let s = m.model_stats();
        assert_eq!((s.inference_count, s.success.count, s.fail.ns), (1, 1, 250_000_000));
        assert!(s.last_inference_ms > 1_600_000_000_000);
    }
}
