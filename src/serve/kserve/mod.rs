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
use serde_json::{Value, json};

use super::batcher::SubmitError;
use super::error::{ApiError, ErrorKind};
use super::metrics::DurationStat;
use super::state::AppState;

mod request;

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
    let parsed = super::api::on_pool(move || request::parse(&st, &headers, &body)).await??;
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
