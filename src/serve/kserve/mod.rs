//! The Open Inference Protocol (KServe v2, as Triton and MLServer speak it) over REST: health
//! (`/v2/health/live`, `/v2/health/ready`), server and model metadata, model readiness, and
//! `POST /v2/models/{name}[/versions/1]/infer` taking the preprocessed `[N, 1, S, S]` FP32 tensor
//! and answering the calibrated `probabilities` `[N, K]`, the mean `attention` map `[N, 1, h, w]`,
//! and, when the model file has them, the feature-space detector's `ood_score` `[N]` (FP32) with
//! its verdict `unusual` `[N]` (BOOL; a preprocessed tensor has no decoded image left for the
//! pixel screen, so only the detector decides here) and the operating points' `decisions`
//! `[N, P]` (BOOL). A non-finite model output is a 500.
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
pub const OOD_SCORE: &str = "ood_score";
pub const UNUSUAL: &str = "unusual";
pub const DECISIONS: &str = "decisions";
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

/// The outputs this model offers: probabilities and attention always, the detector's score and
/// verdict when its file has a detector, the decisions when it has operating points.
pub fn offered_outputs(state: &AppState) -> Vec<&'static str> {
    let r = &state.card.reliability;
    let mut out = vec![PROBABILITIES, ATTENTION];
    if r.ood.is_some() {
        out.extend([OOD_SCORE, UNUSUAL]);
    }
    if !r.operating_points.is_empty() {
        out.push(DECISIONS);
    }
    out
}

/// Each offered output's datatype and shape without the batch dimension.
fn output_shapes(state: &AppState) -> Vec<(&'static str, &'static str, Vec<i64>)> {
    let (k, h) = (state.card.classes.len() as i64, state.config.feature_size());
    let p = state.card.reliability.operating_points.len() as i64;
    offered_outputs(state)
        .into_iter()
        .map(|o| match o {
            PROBABILITIES => (o, "FP32", vec![k]),
            ATTENTION => (o, "FP32", vec![1, h, h]),
            OOD_SCORE => (o, "FP32", vec![]),
            UNUSUAL => (o, "BOOL", vec![]),
            _ => (o, "BOOL", vec![p]),
        })
        .collect()
}

/// `GET /v2/models/{name}[/versions/1]`: model metadata.
pub async fn model_metadata(State(state): State<Arc<AppState>>, Path(p): Path<HashMap<String, String>>) -> Result<Response, ApiError> {
    check_model(&state, &p)?;
    let s = state.card.input_size as i64;
    let outputs: Vec<Value> = output_shapes(&state)
        .into_iter()
        .map(|(name, datatype, dims)| {
            let shape: Vec<i64> = std::iter::once(-1).chain(dims).collect();
            json!({ "name": name, "datatype": datatype, "shape": shape })
        })
        .collect();
    Ok(Json(json!({
        "name": state.card.name,
        "versions": [VERSION],
        "platform": "magsd_libtorch",
        "inputs": [{ "name": INPUT, "datatype": "FP32", "shape": [-1, 1, s, s] }],
        "outputs": outputs,
        "parameters": { "classes": state.card.classes, "preprocessing": state.card.preprocessing, "reliability": state.card.reliability },
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
    let s = state.card.input_size as i64;
    let kind = if state.card.device.starts_with("cuda") { "KIND_GPU" } else { "KIND_CPU" };
    let output: Vec<Value> = output_shapes(&state)
        .into_iter()
        .map(|(name, datatype, dims)| {
            // Triton writes a per-image scalar as dims [1].
            let dims = if dims.is_empty() { vec![1] } else { dims };
            json!({ "name": name, "data_type": format!("TYPE_{datatype}"), "dims": dims })
        })
        .collect();
    Ok(Json(json!({
        "name": state.card.name,
        "platform": "magsd_libtorch",
        "backend": "magsd",
        "version_policy": { "specific": { "versions": [1] } },
        "max_batch_size": state.batching.max_batch,
        "input": [{ "name": INPUT, "data_type": "TYPE_FP32", "format": "FORMAT_NCHW", "dims": [1, s, s] }],
        "output": output,
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
    let (mut scores, mut unusual, mut decisions) = (Vec::new(), Vec::new(), Vec::new());
    for rx in waiting {
        let inf = rx
            .await
            .map_err(|_| ApiError::internal("the model thread stopped before answering"))?
            .map_err(ApiError::internal)?;
        let a = &inf.assessment;
        probs.extend(a.probabilities.iter().map(|&p| p as f32));
        att.extend_from_slice(&inf.attention);
        side = inf.attention_grid.side;
        scores.push(a.unusual.ood.as_ref().map_or(f32::NAN, |v| v.score as f32));
        unusual.push(a.unusual.unusual);
        decisions.extend(a.decisions.iter().map(|d| d.positive));
    }
    let k = state.card.classes.len();
    let p = state.card.reliability.operating_points.len();
    let mut tail: Vec<u8> = Vec::new();
    let outputs: Vec<Value> = parsed
        .outputs
        .iter()
        .map(|&(name, binary)| {
            let (datatype, shape, bytes, data): (&str, Value, Vec<u8>, Value) = match name {
                PROBABILITIES => ("FP32", json!([n, k]), probs.iter().flat_map(|v| v.to_le_bytes()).collect(), json!(probs)),
                ATTENTION => ("FP32", json!([n, 1, side, side]), att.iter().flat_map(|v| v.to_le_bytes()).collect(), json!(att)),
                OOD_SCORE => ("FP32", json!([n]), scores.iter().flat_map(|v| v.to_le_bytes()).collect(), json!(scores)),
                UNUSUAL => ("BOOL", json!([n]), unusual.iter().map(|&b| u8::from(b)).collect(), json!(unusual)),
                _ => ("BOOL", json!([n, p]), decisions.iter().map(|&b| u8::from(b)).collect(), json!(decisions)),
            };
            if binary {
                let size = bytes.len();
                tail.extend(bytes);
                json!({ "name": name, "datatype": datatype, "shape": shape, "parameters": { "binary_data_size": size } })
            } else {
                json!({ "name": name, "datatype": datatype, "shape": shape, "data": data })
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
