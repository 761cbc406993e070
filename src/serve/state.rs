//! What the server shares between requests: the model card, the input pipeline (the same one
//! `magsd predict` uses), the batching queue, the metrics and the limits.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tch::Device;

use tokio::sync::Semaphore;

use super::batcher::{BatchOptions, BatchWorker, Batcher, queue};
use super::host::AllowedHosts;
use super::metrics::ServeCounters;
use crate::data::decode::DecodeLimits;
use crate::data::loader::InputPipeline;
use crate::error::{Error, Result};
use crate::eval::localize::Threshold;
use crate::eval::predictor::{Precision, Predictor, PredictorOptions};
use crate::eval::reliability::{Reliability, ReliabilitySummary};
use crate::model::NetworkConfig;
use crate::model::weights::{load_model, unfinished};
use crate::runfolder::{CvSummary, RunSpec, resolve_model, run_of_model};

/// The notice shown with every answer and on the page.
pub use crate::report::INTENDED_USE;

/// Limits a request must keep to.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_body_bytes: usize,
    /// Largest image (width × height).
    pub max_pixels: u64,
    /// Largest sum of width × height over a request's images; also the most pixels decoded at
    /// once over all requests (a request waits for room, within its timeout).
    pub max_request_pixels: u64,
    /// Most images in one request (multipart parts, or N of a KServe tensor).
    pub max_parts: usize,
    /// Per-request time limit, and the time a connection has to send a request's headers.
    pub timeout: Duration,
}

impl Default for Limits {
    /// `magsd serve`'s defaults.
    fn default() -> Self {
        Limits {
            max_body_bytes: 64 << 20,
            max_pixels: 64_000_000,
            max_request_pixels: 64_000_000,
            max_parts: 32,
            timeout: Duration::from_secs(30),
        }
    }
}

/// Everything `magsd serve` needs to start a server.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// A model file or a run folder holding `model.safetensors`.
    pub model: PathBuf,
    /// The model's name in the KServe v2 URLs (`/v2/models/{name}`).
    pub name: String,
    pub device: Device,
    /// When set, every API call needs `Authorization: Bearer <token>`; an empty token is refused.
    pub token: Option<String>,
    /// Host names accepted in the `Host` header besides loopback names and IP addresses
    /// (`--allow-host`; `*` accepts any).
    pub allow_hosts: Vec<String>,
    /// Show the model file's and the training run's paths and command on the model card to
    /// callers without a token (`--show-paths`); with a token they are always shown.
    pub show_paths: bool,
    pub max_batch: usize,
    pub max_wait: Duration,
    pub queue: usize,
    pub bf16: bool,
    pub limits: Limits,
    /// Attention threshold for the boxes (as `magsd predict --threshold`).
    pub threshold: Threshold,
    /// The map behind the heatmaps and boxes (`serve --map`, as `predict --map`); `None`: the
    /// model's default (`Network::default_map`).
    pub map: Option<crate::model::MapKind>,
}

/// How the server prepares an image, in words (for people and for clients that preprocess).
#[derive(Clone, Debug, Serialize)]
pub struct Preprocessing {
    pub decode: String,
    pub resize: String,
    pub clahe: Option<String>,
    pub zscore: String,
}

/// The training run the model came from, when its run folder is there.
#[derive(Clone, Debug, Serialize)]
pub struct Training {
    pub run: String,
    pub data: String,
    pub label_column: String,
    pub classes: Vec<String>,
    pub folds: usize,
    /// The training command; left out (null) unless the card shows paths.
    pub command: Option<String>,
    /// Per-fold and mean ± std held-out metrics of the run's cross-validation, when it had one.
    pub cross_validation: Option<CvSummary>,
}

/// `GET /api/v1/model`.
#[derive(Clone, Debug, Serialize)]
pub struct ModelCard {
    pub name: String,
    /// The model file: its absolute path when the card shows paths, else its file name.
    pub file: String,
    pub classes: Vec<String>,
    pub backbone: String,
    pub head: String,
    pub scales: String,
    pub attention_maps: i64,
    /// Side of the square `[N, 1, S, S]` FP32 input.
    pub input_size: usize,
    pub preprocessing: Preprocessing,
    pub training: Option<Training>,
    /// Set when the model file was saved before its training finished: how far it got.
    pub unfinished: Option<String>,
    pub device: String,
    /// How the probabilities are calibrated, what the `unusual` flag rests on, and the
    /// operating points, as the model file says.
    pub reliability: ReliabilitySummary,
    pub intended_use: &'static str,
}

/// Shared by every handler.
pub struct AppState {
    pub card: ModelCard,
    pub config: NetworkConfig,
    pub pipeline: InputPipeline,
    pub batcher: Batcher,
    /// How the batcher was set up (for the model configuration).
    pub batching: BatchOptions,
    pub metrics: Arc<ServeCounters>,
    pub token: Option<String>,
    pub hosts: Arc<AllowedHosts>,
    pub limits: Limits,
    /// Pixels that may be decoded at once over all requests (`limits.max_request_pixels`).
    pub decode_budget: Arc<Semaphore>,
    pub threshold: Threshold,
}

/// A loaded model whose batcher thread has not started yet: [`Loaded::start`] starts it. Until
/// then the server answers, reports not ready, and queues images.
pub struct Loaded {
    pub state: Arc<AppState>,
    worker: BatchWorker,
    predictor: Predictor,
}

impl Loaded {
    /// Starts the batcher thread (which owns the model from now on).
    pub fn start(self) -> Result<Arc<AppState>> {
        self.worker.spawn(self.predictor).map_err(|e| Error::Model(format!("cannot start the batcher thread: {e}")))?;
        Ok(self.state)
    }
}

/// The last component of a path, for a card that does not show paths.
fn base_name(p: &Path) -> String {
    p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned())
}

fn training(run: &Path, show_paths: bool) -> Result<Training> {
    let spec = RunSpec::load(run)?;
    let cross_validation = CvSummary::load_if_present(run)?;
    let path = |p: &Path| if show_paths { p.display().to_string() } else { base_name(p) };
    Ok(Training {
        run: path(run),
        data: path(&spec.data),
        label_column: spec.label_column,
        classes: spec.classes,
        folds: spec.folds,
        command: show_paths.then_some(spec.command),
        cross_validation,
    })
}

fn preprocessing(c: &NetworkConfig) -> Preprocessing {
    let p = c.preprocess();
    Preprocessing {
        decode: "PNG, JPEG or DICOM recognised by content; colour to gray (BT.601); DICOM modality rescale, VOI window, MONOCHROME1 inverted".into(),
        resize: format!("bilinear to {0}×{0}, aspect ratio not kept", p.size),
        clahe: p.clahe.map(|k| format!("clip limit {}, {}×{} tiles", k.clip_limit, k.tiles_x, k.tiles_y)),
        zscore: serde_json::to_value(p.zscore).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default(),
    }
}

/// Refuses limits and options that cannot work, before the model is loaded.
fn check_options(opts: &ServeOptions) -> Result<()> {
    if opts.token.as_deref().is_some_and(|t| t.trim().is_empty()) {
        return Err(Error::Config(
            "the token is empty: an empty --token (or MAGSD_TOKEN) would let anyone in; give a real token, or none to serve without one".into(),
        ));
    }
    let l = &opts.limits;
    if l.max_parts == 0 || l.max_parts > opts.queue.max(1) {
        return Err(Error::Config(format!(
            "--max-parts {} must be between 1 and --queue ({}): a request of more images could never be queued whole",
            l.max_parts, opts.queue
        )));
    }
    if l.max_request_pixels == 0 || l.max_request_pixels > u64::from(u32::MAX) {
        return Err(Error::Config(format!("--max-request-pixels {} must be between 1 and {}", l.max_request_pixels, u32::MAX)));
    }
    Ok(())
}

/// Loads the model (on this thread) and builds the shared state around it.
pub fn load(opts: &ServeOptions) -> Result<Loaded> {
    check_options(opts)?;
    let hosts = AllowedHosts::new(&opts.allow_hosts)?;
    let file = resolve_model(&opts.model)?;
    let model = load_model(&file, opts.device)?;
    let reliability = Reliability::of(&model, &file)?;
    let config = model.model.config.clone();
    let map = opts.map.unwrap_or_else(|| model.model.default_map());
    let run = run_of_model(&file).map(|(run, _)| run);
    let unfinished = unfinished(&model.metadata);
    if let Some(u) = &unfinished {
        eprintln!("warning: {}: {u}", file.display());
    }
    // With a token only authenticated callers read the card, so it may show where things are.
    let show_paths = opts.show_paths || opts.token.is_some();
    let card = ModelCard {
        name: opts.name.clone(),
        file: if show_paths { file.display().to_string() } else { base_name(&file) },
        classes: config.class_labels(),
        backbone: config.backbone.clone(),
        head: config.head.to_string(),
        scales: config.scales.name().to_string(),
        attention_maps: config.num_maps,
        input_size: config.image_size as usize,
        preprocessing: preprocessing(&config),
        training: run.as_deref().map(|r| training(r, show_paths)).transpose()?,
        unfinished,
        device: crate::device::describe(opts.device),
        reliability: reliability.summary(),
        intended_use: INTENDED_USE,
    };
    let pipeline = InputPipeline {
        preprocess: config.preprocess(),
        limits: DecodeLimits { max_pixels: opts.limits.max_pixels },
        ..Default::default()
    };
    let metrics = Arc::new(ServeCounters::default());
    let batching = BatchOptions {
        max_batch: opts.max_batch.max(1),
        max_wait: opts.max_wait,
        queue: opts.queue.max(1),
        input_size: config.image_size as usize,
        bf16: opts.bf16,
        map,
    };
    let (batcher, worker) = queue(batching, metrics.clone());
    let state = Arc::new(AppState {
        card,
        config,
        pipeline,
        batcher,
        batching,
        metrics,
        token: opts.token.clone(),
        hosts: Arc::new(hosts),
        limits: opts.limits.clone(),
        decode_budget: Arc::new(Semaphore::new(opts.limits.max_request_pixels as usize)),
        threshold: opts.threshold,
    });
    // The fast path (BatchNorm folded; channels-last on the CPU), as `magsd predict` by default.
    let predictor_opts = PredictorOptions {
        device: opts.device,
        precision: Precision::Fast,
        bf16: opts.bf16,
        map,
        threshold: opts.threshold,
    };
    let predictor = Predictor::new(model, reliability, state.pipeline.clone(), predictor_opts);
    Ok(Loaded { state, worker, predictor })
}
