//! The Open Inference Protocol (KServe v2, as Triton and MLServer speak it) over REST: health
//! (`/v2/health/live`, `/v2/health/ready`), server and model metadata, model readiness, and
//! `POST /v2/models/{name}[/versions/1]/infer` taking the preprocessed `[N, 1, S, S]` FP32 tensor
//! and answering `probabilities` `[N, K]` and the mean `attention` map `[N, 1, h, w]`.
//!
//! Extensions, as Triton defines them (`docs/protocol/extension_*.md` in its server repository):
//! * `binary_tensor_data`: an input's data may follow the JSON as raw little-endian bytes
//!   (`"parameters": {"binary_data_size": B}` on the input, `Inference-Header-Content-Length`
//!   giving the JSON's length), and outputs come back the same way when asked for
//!   (`"binary_data": true` on an output, or `"binary_data_output": true` on the request for every
//!   output that does not say; tritonclient asks for binary outputs by default).
//! * `statistics`: `GET /v2/models[/{name}[/versions/1]]/stats` in Triton's `model_stats` shape,
//!   from the server's own counters ([`super::metrics::ModelStats`]).
//! * `model_configuration`: `GET /v2/models/{name}[/versions/1]/config`, Triton's model
//!   configuration (inputs and outputs without the batch dimension, `max_batch_size`, the
//!   dynamic batcher's delay).
//!
//! Anything of another extension (model repository, shared memory, tracing, logging,
//! classification, generate) is answered 400 with the list of the extensions this server has.
//! Errors are `{"error": "..."}` with a 4xx/5xx status.
use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::{DeserializeSeed, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use super::batcher::SubmitError;
use super::error::{ApiError, ErrorKind};
use super::metrics::DurationStat;
use super::state::AppState;

/// Name of the one input tensor.
pub const INPUT: &str = "input";
/// Names of the output tensors.
pub const PROBABILITIES: &str = "probabilities";
pub const ATTENTION: &str = "attention";
/// The one version served.
pub const VERSION: &str = "1";
/// The extensions this server has, as listed in server metadata.
pub const EXTENSIONS: [&str; 3] = ["binary_tensor_data", "statistics", "model_configuration"];
/// Length of the JSON part of a body that carries binary tensors after it.
pub const INFER_HEADER: &str = "inference-header-content-length";

/// `GET /v2/health/live`: 200 while the process answers.
pub async fn live() -> Response {
    Json(json!({ "live": true })).into_response()
}

/// 200 with `body` when ready, else 503 (counted as `not_ready`, not as a full queue).
fn readiness(ready: bool, body: Value) -> Response {
    if ready {
        return Json(body).into_response();
    }
    let mut res = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    res.extensions_mut().insert(ErrorKind::NOT_READY);
    res
}

/// `GET /v2/health/ready`: 200 once the model thread runs, 503 before.
pub async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let ready = state.batcher.is_ready();
    readiness(ready, json!({ "ready": ready }))
}

/// `GET /v2`: server metadata.
pub async fn server_metadata() -> Response {
    Json(json!({ "name": "magsd", "version": env!("CARGO_PKG_VERSION"), "extensions": EXTENSIONS })).into_response()
}

/// The model and version a URL names (`{name}`, and `{version}` when the URL has one), checked
/// against the one model served here.
fn check_model(state: &AppState, p: &HashMap<String, String>) -> Result<(), ApiError> {
    let name = p.get("name").map(String::as_str).unwrap_or_default();
    if name != state.card.name {
        return Err(ApiError::not_found(format!("model '{name}' is not served here; this server serves '{}'", state.card.name)));
    }
    match p.get("version") {
        Some(v) if v != VERSION => Err(ApiError::not_found(format!(
            "model '{name}' has no version '{v}'; this server serves its version {VERSION} only"
        ))),
        _ => Ok(()),
    }
}

/// `GET /v2/models/{name}[/versions/1]`: model metadata.
pub async fn model_metadata(State(state): State<Arc<AppState>>, Path(p): Path<HashMap<String, String>>) -> Result<Response, ApiError> {
    check_model(&state, &p)?;
    let (s, k, h) = (state.card.input_size as i64, state.card.classes.len() as i64, state.config.feature_size());
    Ok(Json(json!({
        "name": state.card.name,
        "versions": [VERSION],
        "platform": "magsd_libtorch",
        "inputs": [{ "name": INPUT, "datatype": "FP32", "shape": [-1, 1, s, s] }],
        "outputs": [
            { "name": PROBABILITIES, "datatype": "FP32", "shape": [-1, k] },
            { "name": ATTENTION, "datatype": "FP32", "shape": [-1, 1, h, h] },
        ],
        "parameters": { "classes": state.card.classes, "preprocessing": state.card.preprocessing },
    }))
    .into_response())
}

/// `GET /v2/models/{name}[/versions/1]/ready`.
pub async fn model_ready(State(state): State<Arc<AppState>>, Path(p): Path<HashMap<String, String>>) -> Result<Response, ApiError> {
    check_model(&state, &p)?;
    let ready = state.batcher.is_ready();
    Ok(readiness(ready, json!({ "name": state.card.name, "ready": ready })))
}

/// `GET /v2/models/{name}[/versions/1]/config`: the model configuration extension, in the
/// shape of Triton's `ModelConfig` (dims without the batch dimension, since `max_batch_size > 0`).
pub async fn model_config(State(state): State<Arc<AppState>>, Path(p): Path<HashMap<String, String>>) -> Result<Response, ApiError> {
    check_model(&state, &p)?;
    let (s, k, h) = (state.card.input_size as i64, state.card.classes.len() as i64, state.config.feature_size());
    let kind = if state.card.device.starts_with("cuda") { "KIND_GPU" } else { "KIND_CPU" };
    Ok(Json(json!({
        "name": state.card.name,
        "platform": "magsd_libtorch",
        "backend": "magsd",
        "version_policy": { "specific": { "versions": [1] } },
        "max_batch_size": state.batching.max_batch,
        "input": [{ "name": INPUT, "data_type": "TYPE_FP32", "format": "FORMAT_NCHW", "dims": [1, s, s] }],
        "output": [
            { "name": PROBABILITIES, "data_type": "TYPE_FP32", "dims": [k] },
            { "name": ATTENTION, "data_type": "TYPE_FP32", "dims": [1, h, h] },
        ],
        "dynamic_batching": { "max_queue_delay_microseconds": state.batching.max_wait.as_micros() as u64 },
        "instance_group": [{ "kind": kind, "count": 1 }],
        "parameters": { "classes": { "string_value": state.card.classes.join(",") } },
    }))
    .into_response())
}

/// `GET /v2/models/stats` and `GET /v2/models/{name}[/versions/1]/stats`: the statistics
/// extension, Triton's `$stats_model_response`.
pub async fn stats(State(state): State<Arc<AppState>>, Path(p): Path<HashMap<String, String>>) -> Result<Response, ApiError> {
    if p.contains_key("name") {
        check_model(&state, &p)?;
    }
    let s = state.metrics.model_stats();
    let d = |d: DurationStat| json!({ "count": d.count, "ns": d.ns });
    let zero = d(DurationStat::default());
    let batch_stats: Vec<Value> = s
        .batches
        .iter()
        .map(|(size, [input, infer, output])| {
            json!({ "batch_size": size, "compute_input": d(*input), "compute_infer": d(*infer), "compute_output": d(*output) })
        })
        .collect();
    Ok(Json(json!({ "model_stats": [{
        "name": state.card.name,
        "version": VERSION,
        "last_inference": s.last_inference_ms,
        "inference_count": s.inference_count,
        "execution_count": s.execution_count,
        "inference_stats": {
            "success": d(s.success),
            "fail": d(s.fail),
            "queue": d(s.queue),
            "compute_input": d(s.compute_input),
            "compute_infer": d(s.compute_infer),
            "compute_output": d(s.compute_output),
            "cache_hit": zero,
            "cache_miss": zero,
        },
        "response_stats": {},
        "batch_stats": batch_stats,
        "memory_usage": [],
    }] }))
    .into_response())
}

/// The answer to any endpoint of an extension this server does not have.
pub fn unsupported_extension(extension: &str, what: &str, model: &str) -> ApiError {
    ApiError::bad_request(format!(
        "{what} belongs to the Open Inference Protocol's '{extension}' extension, which this server does not have; \
         its extensions are {} (GET /v2). It serves one model, '{model}', version {VERSION}",
        EXTENSIONS.join(", ")
    ))
}

/// Routes of the model repository, shared memory, trace, logging and generate extensions.
pub async fn other_extension(State(state): State<Arc<AppState>>, uri: Uri) -> ApiError {
    let path = uri.path();
    let extension = if path.starts_with("/v2/repository") {
        "model_repository"
    } else if path.starts_with("/v2/systemsharedmemory") {
        "system_shared_memory"
    } else if path.starts_with("/v2/cudasharedmemory") {
        "cuda_shared_memory"
    } else if path.ends_with("/trace/setting") {
        "trace"
    } else if path.starts_with("/v2/logging") {
        "logging"
    } else {
        "generate"
    };
    unsupported_extension(extension, path, &state.card.name)
}

#[derive(Debug, Deserialize)]
struct InferRequest<'a> {
    id: Option<String>,
    #[serde(borrow)]
    inputs: Vec<RequestInput<'a>>,
    outputs: Option<Vec<RequestOutput>>,
    #[serde(default)]
    parameters: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
struct RequestInput<'a> {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    /// Kept as text and read by [`read_data`], which bounds what it collects.
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    parameters: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
struct RequestOutput {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

/// A boolean parameter (absent: `None`).
fn bool_param(params: &Map<String, Value>, key: &str, of: &str) -> Result<Option<bool>, ApiError> {
    match params.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(ApiError::bad_request(format!("{of}: parameter '{key}' must be true or false, not {other}"))),
    }
}

/// Refuses the parameters of extensions this server does not have.
fn refuse_other_extensions(params: &Map<String, Value>, of: &str, model: &str) -> Result<(), ApiError> {
    for (key, extension) in [("shared_memory_region", "system_shared_memory"), ("classification", "classification")] {
        if params.contains_key(key) {
            return Err(unsupported_extension(extension, &format!("{of}: parameter '{key}'"), model));
        }
    }
    Ok(())
}

/// The request's JSON and the binary data after it, split at `Inference-Header-Content-Length`.
fn split_body<'a>(headers: &HeaderMap, body: &'a [u8]) -> Result<(&'a [u8], &'a [u8]), ApiError> {
    if let Some(enc) = headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()) {
        if !enc.trim().eq_ignore_ascii_case("identity") {
            return Err(ApiError::bad_request(format!("Content-Encoding '{enc}' is not supported here: send the request uncompressed")));
        }
    }
    let Some(v) = headers.get(INFER_HEADER) else {
        return Ok((body, &[]));
    };
    let n: usize = v
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| ApiError::bad_request(format!("Inference-Header-Content-Length is not a byte count: {v:?}")))?;
    if n > body.len() {
        return Err(ApiError::bad_request(format!(
            "Inference-Header-Content-Length is {n}, longer than the whole body ({} bytes)",
            body.len()
        )));
    }
    Ok(body.split_at(n))
}

/// The number of values a shape holds, or why it holds none that fit.
fn element_count(shape: &[i64]) -> Result<u64, ApiError> {
    shape.iter().try_fold(1u64, |acc, &d| {
        let d = u64::try_from(d).map_err(|_| ApiError::bad_request(format!("input '{INPUT}' has shape {shape:?}: a dimension is negative")))?;
        acc.checked_mul(d)
            .ok_or_else(|| ApiError::bad_request(format!("input '{INPUT}' has shape {shape:?}, whose element count does not fit in 64 bits")))
    })
}

/// Numbers of a JSON `data` array, row-major, flat or nested; nested arrays must be
/// rectangular (every array at one depth as long as the others, every number at one depth),
/// and at most `cap` numbers are collected.
struct Collect {
    values: Vec<f32>,
    cap: usize,
    /// Length of the arrays at each depth, as first seen.
    lengths: Vec<Option<usize>>,
    leaf_depth: Option<usize>,
}

struct Level<'c> {
    c: &'c mut Collect,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Level<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl Level<'_> {
    fn number<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        if *self.c.leaf_depth.get_or_insert(self.depth) != self.depth {
            return Err(E::custom("ragged: numbers at different depths of the nested arrays"));
        }
        let x = v as f32;
        if !x.is_finite() {
            return Err(E::custom(format!("{v} is not a finite FP32 number")));
        }
        if self.c.values.len() == self.c.cap {
            return Err(E::custom(format!("more than the {} values the shape holds", self.c.cap)));
        }
        self.c.values.push(x);
        Ok(())
    }
}

impl<'de> Visitor<'de> for Level<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("numbers (FP32 data holds numbers), in flat or nested arrays")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let depth = self.depth;
        let mut n = 0usize;
        while seq.next_element_seed(Level { c: &mut *self.c, depth: depth + 1 })?.is_some() {
            n += 1;
        }
        if self.c.lengths.len() <= depth {
            self.c.lengths.resize(depth + 1, None);
        }
        match self.c.lengths[depth] {
            None => self.c.lengths[depth] = Some(n),
            Some(m) if m != n => {
                return Err(serde::de::Error::custom(format!("ragged: arrays of {m} and of {n} values at depth {depth}")));
            }
            Some(_) => {}
        }
        Ok(())
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        self.number(v)
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.number(v as f64)
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.number(v as f64)
    }
}

/// The FP32 values of a JSON `data` field: exactly `count` of them.
fn read_data(raw: &RawValue, count: usize) -> Result<Vec<f32>, ApiError> {
    let mut c = Collect { values: Vec::with_capacity(count), cap: count, lengths: Vec::new(), leaf_depth: None };
    let mut de = serde_json::Deserializer::from_str(raw.get());
    Level { c: &mut c, depth: 0 }
        .deserialize(&mut de)
        .map_err(|e| ApiError::bad_request(format!("input '{INPUT}' data: {e}")))?;
    if c.leaf_depth == Some(0) {
        return Err(ApiError::bad_request(format!("input '{INPUT}' data: a single number, not an array")));
    }
    if c.values.len() != count {
        return Err(ApiError::bad_request(format!("input '{INPUT}' has {} values; its shape needs {count}", c.values.len())));
    }
    Ok(c.values)
}

/// The FP32 values of a binary input: `count` little-endian floats.
fn read_binary(bytes: &[u8], count: usize) -> Result<Vec<f32>, ApiError> {
    let values: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    debug_assert_eq!(values.len(), count);
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(ApiError::bad_request(format!("input '{INPUT}' binary data: value {i} is {}, not a finite number", values[i])));
    }
    Ok(values)
}

/// A parsed and checked inference request.
struct Parsed {
    id: Option<String>,
    /// One `S × S` plane per image.
    planes: Vec<Vec<f32>>,
    /// Outputs to send, each as binary or JSON.
    outputs: Vec<(&'static str, bool)>,
}

/// Reads an inference request: its JSON, and the binary input data after it.
fn parse(state: &AppState, headers: &HeaderMap, body: &[u8]) -> Result<Parsed, ApiError> {
    let (json_part, mut binary) = split_body(headers, body)?;
    let req: InferRequest = serde_json::from_slice(json_part)
        .map_err(|e| ApiError::bad_request(format!("not an inference request of the Open Inference Protocol: {e}")))?;
    let model = &state.card.name;
    let [input] = req.inputs.as_slice() else {
        return Err(ApiError::bad_request(format!("expected exactly one input tensor ('{INPUT}'), got {}", req.inputs.len())));
    };
    if input.name != INPUT {
        return Err(ApiError::bad_request(format!("unknown input '{}': this model's input is '{INPUT}'", input.name)));
    }
    if input.datatype != "FP32" {
        return Err(ApiError::bad_request(format!("input '{INPUT}' has datatype {}; this model takes FP32", input.datatype)));
    }
    refuse_other_extensions(&input.parameters, &format!("input '{INPUT}'"), model)?;
    let size = state.card.input_size;
    let s = size as i64;
    let total = element_count(&input.shape)?;
    let n = match input.shape.as_slice() {
        &[n, 1, h, w] if n >= 1 && h == s && w == s => n as u64,
        other => {
            return Err(ApiError::bad_request(format!(
                "input '{INPUT}' has shape {other:?}; this model takes [N, 1, {s}, {s}] (N ≥ 1), preprocessed as GET /api/v1/model describes"
            )));
        }
    };
    let max_parts = state.limits.max_parts;
    if n > max_parts as u64 {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::TOO_LARGE,
            format!("{n} images in one request; this server takes at most {max_parts} (--max-parts)"),
        ));
    }
    let count = total as usize; // ≤ max_parts × S², which fits
    let binary_size = match input.parameters.get("binary_data_size") {
        None => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            ApiError::bad_request(format!("input '{INPUT}': parameter 'binary_data_size' must be a byte count, not {v}"))
        })?),
    };
    let values = match (&input.data, binary_size) {
        (Some(raw), None) => read_data(raw, count)?,
        (None, Some(b)) => {
            if !headers.contains_key(INFER_HEADER) {
                return Err(ApiError::bad_request(format!(
                    "input '{INPUT}' is binary (binary_data_size) but the request has no Inference-Header-Content-Length header giving the length of its JSON"
                )));
            }
            let need = count as u64 * 4;
            if b != need {
                return Err(ApiError::bad_request(format!(
                    "input '{INPUT}' has binary_data_size {b}; shape {:?} of FP32 needs {need} bytes",
                    input.shape
                )));
            }
            if (binary.len() as u64) < b {
                return Err(ApiError::bad_request(format!(
                    "input '{INPUT}' needs {b} bytes of binary data after the JSON; the body has {}",
                    binary.len()
                )));
            }
            let (mine, rest) = binary.split_at(b as usize);
            binary = rest;
            read_binary(mine, count)?
        }
        (has_data, _) => {
            let set = if has_data.is_some() { "set both 'data' and 'binary_data_size'" } else { "set neither" };
            return Err(ApiError::bad_request(format!(
                "input '{INPUT}' must set exactly one of 'data' and 'parameters.binary_data_size' (the binary tensor extension), but {set}"
            )));
        }
    };
    if !binary.is_empty() {
        return Err(ApiError::bad_request(format!("{} bytes of binary data after the inputs' data belong to no input", binary.len())));
    }
    let default_binary = bool_param(&req.parameters, "binary_data_output", "the request")?.unwrap_or(false);
    let outputs = match &req.outputs {
        Some(o) if !o.is_empty() => o
            .iter()
            .map(|o| {
                let name = match o.name.as_str() {
                    PROBABILITIES => PROBABILITIES,
                    ATTENTION => ATTENTION,
                    bad => {
                        return Err(ApiError::bad_request(format!("unknown output '{bad}': this model has '{PROBABILITIES}' and '{ATTENTION}'")));
                    }
                };
                let of = format!("output '{name}'");
                refuse_other_extensions(&o.parameters, &of, model)?;
                Ok((name, bool_param(&o.parameters, "binary_data", &of)?.unwrap_or(default_binary)))
            })
            .collect::<Result<_, _>>()?,
        _ => vec![(PROBABILITIES, default_binary), (ATTENTION, default_binary)],
    };
    Ok(Parsed { id: req.id, planes: values.chunks(size * size).map(<[f32]>::to_vec).collect(), outputs })
}

/// `POST /v2/models/{name}[/versions/1]/infer`.
pub async fn infer(
    State(state): State<Arc<AppState>>,
    Path(p): Path<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_model(&state, &p)?;
    // Parsing a large JSON tensor is CPU work: on the rayon pool, off the runtime's threads.
    let st = state.clone();
    let parsed = super::api::on_pool(move || parse(&st, &headers, &body)).await??;
    let n = parsed.planes.len();
    let waiting = match state.batcher.submit_all(parsed.planes) {
        Ok(w) => w,
        Err(SubmitError::QueueFull) => return Err(ApiError::queue_full(state.batcher.capacity())),
        Err(SubmitError::Stopped) => return Err(ApiError::internal("the model thread has stopped")),
    };
    let (mut probs, mut att, mut side) = (Vec::new(), Vec::new(), 0);
    for rx in waiting {
        let inf = rx
            .await
            .map_err(|_| ApiError::internal("the model thread stopped before answering"))?
            .map_err(ApiError::internal)?;
        probs.extend(inf.probs.iter().map(|&p| p as f32));
        att.extend_from_slice(&inf.attention);
        side = inf.attention_side;
    }
    let k = state.card.classes.len();
    let mut tail: Vec<u8> = Vec::new();
    let outputs: Vec<Value> = parsed
        .outputs
        .iter()
        .map(|&(name, binary)| {
            let (shape, data) = if name == PROBABILITIES { (json!([n, k]), &probs) } else { (json!([n, 1, side, side]), &att) };
            if binary {
                tail.extend(data.iter().flat_map(|v| v.to_le_bytes()));
                json!({ "name": name, "datatype": "FP32", "shape": shape, "parameters": { "binary_data_size": data.len() * 4 } })
            } else {
                json!({ "name": name, "datatype": "FP32", "shape": shape, "data": data })
            }
        })
        .collect();
    let mut res = json!({ "model_name": state.card.name, "model_version": VERSION, "outputs": outputs });
    if let Some(id) = parsed.id {
        res["id"] = json!(id);
    }
    let head = serde_json::to_vec(&res).map_err(|e| ApiError::internal(format!("cannot write the answer: {e}")))?;
    if tail.is_empty() {
        return Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], head).into_response());
    }
    let json_len = head.len();
    let mut body = head;
    body.extend_from_slice(&tail);
    Ok((
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream")), (header::HeaderName::from_static(INFER_HEADER), HeaderValue::from(json_len))],
        body,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(text: &str, count: usize) -> Result<Vec<f32>, String> {
        read_data(&serde_json::from_str::<Box<RawValue>>(text).unwrap(), count).map_err(|e| e.message)
    }

    #[test]
    fn data_is_flat_or_rectangular_and_exactly_as_long_as_the_shape() {
        assert_eq!(data("[1, 2.5, -3, 4]", 4).unwrap(), vec![1.0, 2.5, -3.0, 4.0]);
        assert_eq!(data("[[1, 2], [3, 4]]", 4).unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(data("[[[1], [2]], [[3], [4]]]", 4).unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
        assert!(data("[[1, 2, 3], [4]]", 4).unwrap_err().contains("ragged: arrays of 3 and of 1"));
        assert!(data("[[1, 2], 3, 4]", 4).unwrap_err().contains("ragged: numbers at different depths"));
        assert!(data("[1, 2, 3]", 4).unwrap_err().contains("has 3 values; its shape needs 4"));
        assert!(data("[1, 2, 3, 4, 5]", 4).unwrap_err().contains("more than the 4 values"));
        assert!(data("[1, \"a\", 3, 4]", 4).unwrap_err().contains("invalid type: string"));
        assert!(data("[1, 1e39, 3, 4]", 4).unwrap_err().contains("not a finite FP32 number"));
        assert!(data("7", 1).unwrap_err().contains("not an array"));
    }

    #[test]
    fn shapes_whose_element_count_overflows_are_refused() {
        assert_eq!(element_count(&[2, 1, 3, 3]).unwrap(), 18);
        assert!(element_count(&[(1 << 54) + 1, 1, 96, 96]).unwrap_err().message.contains("does not fit in 64 bits"));
        assert!(element_count(&[-1, 1, 4, 4]).unwrap_err().message.contains("negative"));
    }

    #[test]
    fn the_json_part_ends_where_the_header_says() {
        let mut h = HeaderMap::new();
        assert_eq!(split_body(&h, b"{}abc").unwrap(), (&b"{}abc"[..], &b""[..]));
        h.insert(INFER_HEADER, HeaderValue::from_static("2"));
        assert_eq!(split_body(&h, b"{}abc").unwrap(), (&b"{}"[..], &b"abc"[..]));
        h.insert(INFER_HEADER, HeaderValue::from_static("9"));
        assert!(split_body(&h, b"{}abc").unwrap_err().message.contains("longer than the whole body"));
        h.insert(INFER_HEADER, HeaderValue::from_static("-1"));
        assert!(split_body(&h, b"{}abc").unwrap_err().message.contains("not a byte count"));
    }
}
