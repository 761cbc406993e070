//! The v1 API: `POST /api/v1/predict` (one image as the body, or several as multipart files),
//! `GET /api/v1/model` and `GET /healthz`. Each image goes through the same library steps as
//! `magsd predict`: decode from bytes, `InputPipeline::eval_plane`, the model (here in a
//! dynamic batch), `Reliability::assess` (calibrated probabilities, the `unusual` verdict of the
//! pixel screen and the feature-space detector, operating-point decisions; a non-finite output
//! is a 500), and the attention boxes of `report::overlay`.
//!
//! Bounds on a request: at most `--max-parts` images; their pixels (read from the headers
//! before anything is decoded) at most `--max-request-pixels` in all, which is also the server's
//! budget of pixels decoded at once (a request waits for room within its timeout). When the
//! request times out or its client goes, the images not yet decoded are skipped, queued ones
//! never reach the model, and no heatmap is drawn.
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::batcher::{Inference, SubmitError};
use super::error::{ApiError, ErrorKind};
use super::state::{AppState, INTENDED_USE, Limits};
use crate::data::decode::{GrayImage, decode_bytes, dimensions};
use crate::data::input_stats::{ImageFeatures, features_of};
use crate::eval::localize::BBox;
use crate::eval::ood::OodVerdict;
use crate::eval::reliability::{Decision, UNUSUAL_BANNER};
use crate::report::overlay::attention_layers;

/// Longest accepted upload name (longer ones are cut).
const MAX_NAME: usize = 200;

#[derive(Debug, Default, Deserialize)]
pub struct PredictQuery {
    /// Add the heatmap and the display image as base64 PNGs.
    #[serde(default)]
    pub heatmap: bool,
    /// Name of a raw-body upload, used in messages (default "upload").
    pub filename: Option<String>,
}

/// Runs `f` on the rayon pool (CPU work stays off the async runtime's threads). A panic in `f`
/// (a decoder bug on a hostile file, say) becomes a 500 for this request; the server goes on.
pub async fn on_pool<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    rayon::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    match rx.await {
        Ok(Ok(v)) => Ok(v),
        _ => Err(ApiError::internal("internal error while processing this request")),
    }
}

/// An extractor's refusal as an API error; a body over the limit says which limit.
fn rejection(status: StatusCode, text: String, max_body: usize) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE { ApiError::too_large(max_body) } else { ApiError::new(status, ErrorKind::of_status(status), text) }
}

/// Set when the handler that owns it is dropped: the request timed out (the timeout layer drops
/// the handler's future) or the client went away. Work on the rayon pool checks it.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// The uploads of a request: multipart fields (each file) or the whole body; more than
/// `--max-parts` files are refused (413) without reading the rest.
async fn uploads(req: Request, filename: Option<String>, limits: &Limits) -> Result<Vec<(String, Bytes)>, ApiError> {
    let max_body = limits.max_body_bytes;
    let multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/form-data"));
    let cut = |s: &str| s.chars().take(MAX_NAME).collect::<String>();
    if multipart {
        let mut mp = Multipart::from_request(req, &()).await.map_err(|e| rejection(e.status(), e.body_text(), max_body))?;
        let mut out = Vec::new();
        while let Some(field) = mp.next_field().await.map_err(|e| rejection(e.status(), e.body_text(), max_body))? {
            if out.len() == limits.max_parts {
                return Err(ApiError::too_many(format!(
                    "more than {} images in one request; this server takes at most {} (--max-parts)",
                    limits.max_parts, limits.max_parts
                )));
            }
            let name = cut(field.file_name().or(field.name()).unwrap_or("upload"));
            let data = field.bytes().await.map_err(|e| rejection(e.status(), e.body_text(), max_body))?;
            out.push((name, data));
        }
        Ok(out)
    } else {
        let body = Bytes::from_request(req, &()).await.map_err(|e| rejection(e.status(), e.body_text(), max_body))?;
        Ok(if body.is_empty() { Vec::new() } else { vec![(cut(filename.as_deref().unwrap_or("upload")), body)] })
    }
}

#[derive(Debug, Serialize)]
struct Timings {
    /// Decode, resize, CLAHE, z-score.
    preprocess: f64,
    /// Wait in the batching queue.
    queue: f64,
    /// Model time of the batch.
    inference: f64,
    /// From the request's arrival to this answer, boxes and heatmap included.
    total: f64,
}

/// One image's answer.
#[derive(Debug, Serialize)]
struct Prediction {
    file: String,
    format: String,
    width: usize,
    height: usize,
    predicted: String,
    /// Calibrated probabilities (see the top-level `probabilities_are`).
    probabilities: serde_json::Map<String, Value>,
    /// True when the image does not look like the X-rays the model was trained on; then
    /// `unusual_reasons` says why and `warning` says what it means.
    unusual: bool,
    unusual_reasons: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    warning: Option<&'static str>,
    /// The checks that ran ("pixel screen", "feature detector").
    checks: Vec<String>,
    /// The feature-space detector's score and threshold (`null`: the model file has no detector).
    ood: Option<OodVerdict>,
    /// The model's operating points, each a positive/negative decision.
    decisions: Vec<Decision>,
    /// Attention boxes in original-image pixels, end-exclusive.
    boxes: Vec<BBox>,
    /// Signs that the image may not be what the file meant (e.g. a truncated JPEG), as
    /// `magsd eval` reports them; empty when there are none.
    warnings: Vec<String>,
    batch_size: usize,
    timings_ms: Timings,
    #[serde(skip_serializing_if = "Option::is_none")]
    heatmap_png: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    image_png: Option<String>,
}

fn png_base64(img: image::DynamicImage) -> Result<String, ApiError> {
    let mut buf = Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Png).map_err(|e| ApiError::internal(format!("cannot encode PNG: {e}")))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(buf.into_inner()))
}

/// An upload after decoding and preprocessing: its name, the seconds it took, and the model
/// input with the decoded image and its pixel statistics, or why it failed.
type Prepared = (String, f64, crate::Result<(Vec<f32>, GrayImage, ImageFeatures)>);

/// An image on its way through the steps.
struct Item {
    name: String,
    image: Option<GrayImage>,
    preprocess_s: f64,
    outcome: Result<Inference, ApiError>,
}

/// The pixels each upload will decode to, from its header alone (0 for one that will be refused
/// without decoding: unreadable header, or over `--max-pixels`).
fn pixel_counts(files: &[(String, Bytes)], max_pixels: u64) -> Vec<u64> {
    files
        .iter()
        .map(|(name, bytes)| dimensions(Path::new(name), bytes).ok().map_or(0, |(w, h)| w.saturating_mul(h)))
        .map(|p| if p > max_pixels { 0 } else { p })
        .collect()
}

/// `POST /api/v1/predict`.
pub async fn predict(State(state): State<Arc<AppState>>, Query(q): Query<PredictQuery>, req: Request) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let guard = CancelOnDrop(Arc::new(AtomicBool::new(false)));
    let files = uploads(req, q.filename, &state.limits).await?;
    if files.is_empty() {
        return Err(ApiError::bad_request(
            "empty request: send a PNG, JPEG or DICOM image as the body, or files as multipart/form-data",
        ));
    }
    // The request's pixels, read from the headers, must fit the per-request limit; then wait
    // for room in the server's decode budget. The permit lives until the last step that holds
    // decoded images has finished, even if this handler is dropped before.
    let max_pixels = state.limits.max_pixels;
    let (files, counts) = on_pool(move || {
        let counts = pixel_counts(&files, max_pixels);
        (files, counts)
    })
    .await?;
    let pixels: u64 = counts.iter().sum();
    let limit = state.limits.max_request_pixels;
    if pixels > limit {
        return Err(ApiError::too_many(format!(
            "the images of this request have {pixels} pixels in all, above this server's limit of {limit} per request (--max-request-pixels)"
        )));
    }
    let permit = Arc::new(
        state.decode_budget.clone().acquire_many_owned(pixels as u32).await.map_err(|_| ApiError::internal("the decode budget was closed"))?,
    );
    // Decode and preprocess every upload in parallel on the rayon pool.
    let st = state.clone();
    let cancelled = guard.0.clone();
    let prepared: Vec<Prepared> = on_pool(move || {
        files
            .par_iter()
            .map(|(name, bytes)| {
                if cancelled.load(Ordering::SeqCst) {
                    return (name.clone(), 0.0, Err(crate::Error::bad_file(name, "not decoded: the request was cancelled")));
                }
                let t = Instant::now();
                let prepare = || {
                    decode_bytes(Path::new(name), bytes, &st.pipeline.limits).map(|img| {
                        let plane = st.pipeline.eval_plane(&img);
                        let stats = features_of(&img, &plane);
                        (plane.data, img, stats)
                    })
                };
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(prepare))
                    .unwrap_or_else(|_| Err(crate::Error::bad_file(name, "the decoder failed on this file")));
                (name.clone(), t.elapsed().as_secs_f64(), r)
            })
            .collect()
    })
    .await?;
    // Queue the decoded images together (all or none), then wait: the batcher can put them (and
    // other requests' images) in one batch.
    let mut planes = Vec::new();
    let mut items: Vec<(String, f64, Result<GrayImage, ApiError>)> = Vec::new();
    for (name, preprocess_s, r) in prepared {
        items.push(match r {
            Ok((plane, img, stats)) => {
                planes.push((plane, Some(stats)));
                (name, preprocess_s, Ok(img))
            }
            Err(e) => (name, preprocess_s, Err(ApiError::bad_image(e.to_string()))),
        });
    }
    let mut waiting = match state.batcher.submit_all(planes) {
        Ok(w) => w.into_iter(),
        Err(SubmitError::QueueFull) => return Err(ApiError::queue_full(state.batcher.capacity())),
        Err(SubmitError::Stopped) => return Err(ApiError::internal("the model thread has stopped")),
    };
    let mut done = Vec::new();
    for (name, preprocess_s, image) in items {
        let (image, outcome) = match image {
            Ok(img) => {
                let rx = waiting.next().expect("one receiver per decoded image");
                let outcome = match rx.await {
                    Ok(Ok(inf)) => Ok(inf),
                    Ok(Err(e)) => Err(ApiError::internal(e)),
                    Err(_) => Err(ApiError::internal("the model thread stopped before answering")),
                };
                (Some(img), outcome)
            }
            Err(e) => (None, Err(e)),
        };
        done.push(Item { name, image, preprocess_s, outcome });
    }
    // Boxes (and heatmaps) on the pool as well.
    let st = state.clone();
    let heatmap = q.heatmap;
    let cancelled = guard.0.clone();
    let results: Vec<Result<Prediction, (String, ApiError)>> = on_pool(move || {
        let _budget = permit;
        done.into_par_iter().map(|it| finish(&st, it, heatmap && !cancelled.load(Ordering::SeqCst), arrived)).collect()
    })
    .await?;
    if let [Err((_, e))] = results.as_slice() {
        return Err(e.clone());
    }
    let results: Vec<Value> = results
        .into_iter()
        .map(|r| match r {
            Ok(p) => serde_json::to_value(p).expect("prediction serialises"),
            Err((file, e)) => {
                state.metrics.error(e.kind.0);
                json!({ "file": file, "error": e.message, "status": e.status.as_u16() })
            }
        })
        .collect();
    Ok(Json(json!({
        "model": state.card.name,
        "intended_use": INTENDED_USE,
        "probabilities_are": state.card.reliability.probabilities,
        "results": results
    }))
    .into_response())
}

fn finish(state: &AppState, it: Item, heatmap: bool, arrived: Instant) -> Result<Prediction, (String, ApiError)> {
    let name = it.name;
    let inf = it.outcome.map_err(|e| (name.clone(), e))?;
    let img = it.image.expect("a queued image was decoded");
    let layers = attention_layers(&img, &inf.attention, inf.attention_grid, state.threshold);
    let (heatmap_png, image_png) = if heatmap {
        let enc = |i| png_base64(i).map_err(|e| (name.clone(), e));
        (Some(enc(image::DynamicImage::ImageRgb8(layers.heat))?), Some(enc(image::DynamicImage::ImageLuma8(layers.gray))?))
    } else {
        (None, None)
    };
    let classes = &state.card.classes;
    let ms = |s: f64| (s * 1e6).round() / 1e3;
    let a = inf.assessment;
    Ok(Prediction {
        file: name,
        format: img.source.format.clone(),
        width: img.width,
        height: img.height,
        predicted: classes[a.predicted].clone(),
        probabilities: classes.iter().zip(&a.probabilities).map(|(c, p)| (c.clone(), json!(p))).collect(),
        unusual: a.unusual.unusual,
        unusual_reasons: a.unusual.reasons,
        warning: a.unusual.unusual.then_some(UNUSUAL_BANNER),
        checks: a.unusual.checks,
        ood: a.unusual.ood,
        decisions: a.decisions,
        boxes: layers.boxes,
        warnings: img.source.warnings.clone(),
        batch_size: inf.batch_size,
        timings_ms: Timings {
            preprocess: ms(it.preprocess_s),
            queue: ms(inf.queue_s),
            inference: ms(inf.inference_s),
            total: ms(arrived.elapsed().as_secs_f64()),
        },
        heatmap_png,
        image_png,
    })
}

/// `GET /api/v1/model`: the model card.
pub async fn model(State(state): State<Arc<AppState>>) -> Response {
    Json(&state.card).into_response()
}

/// `GET /healthz`: the process answers (200); `ready` says whether the model thread runs.
pub async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    let b = &state.batcher;
    Json(json!({ "status": "ok", "ready": b.is_ready(), "queue_length": b.queue_length(), "queue_capacity": b.capacity() }))
        .into_response()
}
