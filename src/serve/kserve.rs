//! The Open Inference Protocol (KServe v2, as Triton and MLServer speak it), REST over JSON:
//! health (`/v2/health/live`, `/v2/health/ready`), server and model metadata, model readiness,
//! and `POST /v2/models/{name}/infer` taking the preprocessed `[N, 1, S, S]` FP32 tensor
//! (row-major `data`, flat or nested) and answering the calibrated `probabilities` `[N, K]`, the
//! mean `attention` map `[N, 1, h, w]`, and, when the model file has them, the feature-space
//! detector's `ood_score` `[N]` with its verdict `unusual` `[N]` (BOOL; the pixel screen needs a
//! decoded image, which a preprocessed tensor no longer is, so only the detector decides here) and
//! the operating points' `decisions` `[N, P]` (BOOL). Errors are `{"error": "..."}` with a 4xx/5xx
//! status; a non-finite model output is a 500.
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::batcher::SubmitError;
use super::error::{ApiError, ErrorKind};
use super::state::AppState;

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

#[derive(Debug, Deserialize)]
struct InferRequest {
    id: Option<String>,
    inputs: Vec<RequestInput>,
    outputs: Option<Vec<RequestOutput>>,
}

#[derive(Debug, Deserialize)]
struct RequestInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    data: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct RequestOutput {
    name: String,
}

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
    Json(json!({ "name": "magsd", "version": env!("CARGO_PKG_VERSION"), "extensions": [] })).into_response()
}

fn check_name(state: &AppState, name: &str) -> Result<(), ApiError> {
    if name == state.card.name {
        Ok(())
    } else {
        Err(ApiError::not_found(format!("model '{name}' is not served here; this server serves '{}'", state.card.name)))
    }
}

/// The outputs this model offers: probabilities and attention always, the detector's score and
/// verdict when its file has a detector, the decisions when it has operating points.
fn offered_outputs(state: &AppState) -> Vec<&'static str> {
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

/// `GET /v2/models/{name}`: model metadata.
pub async fn model_metadata(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> Result<Response, ApiError> {
    check_name(&state, &name)?;
    let (s, k, h) = (state.card.input_size as i64, state.card.classes.len() as i64, state.config.feature_size());
    let p = state.card.reliability.operating_points.len();
    let outputs: Vec<Value> = offered_outputs(&state)
        .into_iter()
        .map(|o| match o {
            PROBABILITIES => json!({ "name": PROBABILITIES, "datatype": "FP32", "shape": [-1, k] }),
            ATTENTION => json!({ "name": ATTENTION, "datatype": "FP32", "shape": [-1, 1, h, h] }),
            OOD_SCORE => json!({ "name": OOD_SCORE, "datatype": "FP32", "shape": [-1] }),
            UNUSUAL => json!({ "name": UNUSUAL, "datatype": "BOOL", "shape": [-1] }),
            _ => json!({ "name": DECISIONS, "datatype": "BOOL", "shape": [-1, p] }),
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

/// `GET /v2/models/{name}/ready`.
pub async fn model_ready(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> Result<Response, ApiError> {
    check_name(&state, &name)?;
    let ready = state.batcher.is_ready();
    Ok(readiness(ready, json!({ "name": name, "ready": ready })))
}

/// Row-major numbers of `data`, flat or nested arrays.
fn flatten(v: &Value, out: &mut Vec<f32>) -> Result<(), ApiError> {
    match v {
        Value::Array(items) => items.iter().try_for_each(|x| flatten(x, out)),
        Value::Number(n) => {
            out.push(n.as_f64().ok_or_else(|| ApiError::bad_request(format!("input data: {n} is not a number")))? as f32);
            Ok(())
        }
        other => Err(ApiError::bad_request(format!("input data: {other} is not a number (FP32 data holds numbers)"))),
    }
}

/// The model inputs of a request, one `S × S` plane per image.
fn input_planes(req: &InferRequest, size: usize) -> Result<Vec<Vec<f32>>, ApiError> {
    let [input] = req.inputs.as_slice() else {
        return Err(ApiError::bad_request(format!("expected exactly one input tensor ('{INPUT}'), got {}", req.inputs.len())));
    };
    if input.name != INPUT {
        return Err(ApiError::bad_request(format!("unknown input '{}': this model's input is '{INPUT}'", input.name)));
    }
    if input.datatype != "FP32" {
        return Err(ApiError::bad_request(format!("input '{INPUT}' has datatype {}; this model takes FP32", input.datatype)));
    }
    let s = size as i64;
    let n = match input.shape.as_slice() {
        &[n, 1, h, w] if n >= 1 && h == s && w == s => n as usize,
        other => {
            return Err(ApiError::bad_request(format!(
                "input '{INPUT}' has shape {other:?}; this model takes [N, 1, {s}, {s}] (N ≥ 1), preprocessed as GET /api/v1/model describes"
            )));
        }
    };
    let data = input.data.as_ref().ok_or_else(|| {
        ApiError::bad_request(format!("input '{INPUT}' has no data (the binary tensor extension is not supported: send JSON data)"))
    })?;
    let mut flat = Vec::with_capacity(n * size * size);
    flatten(data, &mut flat)?;
    if flat.len() != n * size * size {
        return Err(ApiError::bad_request(format!(
            "input '{INPUT}' has {} values; shape {:?} needs {}",
            flat.len(),
            input.shape,
            n * size * size
        )));
    }
    Ok(flat.chunks(size * size).map(<[f32]>::to_vec).collect())
}

/// The outputs asked for: all offered when the request names none.
fn wanted_outputs(req: &InferRequest, offered: &[&'static str]) -> Result<Vec<&'static str>, ApiError> {
    let Some(o) = req.outputs.as_ref().filter(|o| !o.is_empty()) else {
        return Ok(offered.to_vec());
    };
    o.iter()
        .map(|w| {
            offered.iter().find(|n| **n == w.name).copied().ok_or_else(|| {
                ApiError::bad_request(format!("unknown output '{}': this model has {}", w.name, offered.join(", ")))
            })
        })
        .collect()
}

/// `POST /v2/models/{name}/infer`.
pub async fn infer(State(state): State<Arc<AppState>>, Path(name): Path<String>, body: Bytes) -> Result<Response, ApiError> {
    check_name(&state, &name)?;
    let size = state.card.input_size;
    let offered = offered_outputs(&state);
    // Parsing a large JSON tensor is CPU work: on the rayon pool, off the runtime's threads.
    let (id, wanted, planes) = super::api::on_pool(move || -> Result<_, ApiError> {
        let req: InferRequest = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("not an inference request of the Open Inference Protocol: {e}")))?;
        let planes = input_planes(&req, size)?;
        Ok((req.id.clone(), wanted_outputs(&req, &offered)?, planes))
    })
    .await??;
    let n = planes.len();
    if n > state.batcher.capacity() {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::TOO_LARGE,
            format!("{n} images in one request; this server queues at most {} (--queue)", state.batcher.capacity()),
        ));
    }
    let mut waiting = Vec::with_capacity(n);
    for p in planes {
        match state.batcher.submit(p, None) {
            Ok(rx) => waiting.push(rx),
            Err(SubmitError::QueueFull) => return Err(ApiError::queue_full(state.batcher.capacity())),
            Err(SubmitError::Stopped) => return Err(ApiError::internal("the model thread has stopped")),
        }
    }
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
        side = inf.attention_side;
        scores.push(a.unusual.ood.as_ref().map_or(f32::NAN, |v| v.score as f32));
        unusual.push(a.unusual.unusual);
        decisions.extend(a.decisions.iter().map(|d| d.positive));
    }
    let k = state.card.classes.len();
    let p = state.card.reliability.operating_points.len();
    let outputs: Vec<Value> = wanted
        .iter()
        .map(|w| match *w {
            PROBABILITIES => json!({ "name": PROBABILITIES, "datatype": "FP32", "shape": [n, k], "data": probs }),
            ATTENTION => json!({ "name": ATTENTION, "datatype": "FP32", "shape": [n, 1, side, side], "data": att }),
            OOD_SCORE => json!({ "name": OOD_SCORE, "datatype": "FP32", "shape": [n], "data": scores }),
            UNUSUAL => json!({ "name": UNUSUAL, "datatype": "BOOL", "shape": [n], "data": unusual }),
            _ => json!({ "name": DECISIONS, "datatype": "BOOL", "shape": [n, p], "data": decisions }),
        })
        .collect();
    let mut res = json!({ "model_name": state.card.name, "model_version": VERSION, "outputs": outputs });
    if let Some(id) = id {
        res["id"] = json!(id);
    }
    Ok(Json(res).into_response())
}
