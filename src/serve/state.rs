//! What the server shares between requests: the model card, the input pipeline (the same one
//! `magsd predict` uses), the batching queue, the metrics and the limits.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tch::Device;

use super::batcher::{BatchOptions, BatchWorker, Batcher, queue};
use super::metrics::Metrics;
use crate::cli::eval::resolve_model;
use crate::data::decode::DecodeLimits;
use crate::data::loader::InputPipeline;
use crate::error::{Error, IoContext, Result};
use crate::eval::localize::Threshold;
use crate::eval::reliability::{Reliability, ReliabilitySummary};
use crate::model::MagSdConfig;
use crate::model::weights::{LoadedModel, load_model};
use crate::runfolder::{CvSummary, RUN_FILE, RunSpec, SUMMARY_FILE};

/// The notice shown with every answer and on the page.
pub use crate::report::INTENDED_USE;

/// Limits a request must keep to.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_pixels: u64,
    pub timeout: Duration,
}

/// Everything `magsd serve` needs to start a server.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// A model file or a run folder holding `model.safetensors`.
    pub model: PathBuf,
    /// The model's name in the KServe v2 URLs (`/v2/models/{name}`).
    pub name: String,
    pub device: Device,
    /// When set, every API call needs `Authorization: Bearer <token>`.
    pub token: Option<String>,
    pub max_batch: usize,
    pub max_wait: Duration,
    pub queue: usize,
    pub bf16: bool,
    pub limits: Limits,
    /// Attention threshold for the boxes (as `magsd predict --threshold`).
    pub threshold: Threshold,
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
    pub command: String,
    /// Per-fold and mean ± std held-out metrics of the run's cross-validation, when it had one.
    pub cross_validation: Option<CvSummary>,
}

/// `GET /api/v1/model`.
#[derive(Clone, Debug, Serialize)]
pub struct ModelCard {
    pub name: String,
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
    pub device: String,
    /// How the probabilities are calibrated, what the `unusual` flag rests on, and the
    /// operating points, as the model file says.
    pub reliability: ReliabilitySummary,
    pub intended_use: &'static str,
}

/// Shared by every handler.
pub struct AppState {
    pub card: ModelCard,
    pub config: MagSdConfig,
    pub pipeline: InputPipeline,
    pub batcher: Batcher,
    pub metrics: Arc<Metrics>,
    pub token: Option<String>,
    pub limits: Limits,
    pub threshold: Threshold,
}

/// A loaded model whose batcher thread has not started yet: [`Loaded::start`] starts it. Until
/// then the server answers, reports not ready, and queues images.
pub struct Loaded {
    pub state: Arc<AppState>,
    worker: BatchWorker,
    model: LoadedModel,
    reliability: Reliability,
    device: Device,
}

impl Loaded {
    /// Starts the batcher thread (which owns the model from now on).
    pub fn start(self) -> Result<Arc<AppState>> {
        self.worker.spawn(self.model, self.reliability, self.device).map_err(|e| Error::Model(format!("cannot start the batcher thread: {e}")))?;
        Ok(self.state)
    }
}

/// The run folder a model file belongs to: its own folder (`--folds 0`) or the one above
/// (`fold-K/model.safetensors`), whichever holds `run.json`.
fn run_folder(model_arg: &Path, file: &Path) -> Option<PathBuf> {
    if model_arg.is_dir() {
        return Some(model_arg.to_path_buf()).filter(|d| d.join(RUN_FILE).is_file());
    }
    let parent = file.parent()?;
    [Some(parent), parent.parent()].into_iter().flatten().find(|d| d.join(RUN_FILE).is_file()).map(Path::to_path_buf)
}

fn training(run: &Path) -> Result<Training> {
    let spec = RunSpec::load(run)?;
    let summary = run.join(SUMMARY_FILE);
    let cross_validation = if summary.is_file() {
        Some(serde_json::from_slice(&std::fs::read(&summary).at(&summary)?).map_err(|e| Error::bad_file(&summary, e.to_string()))?)
    } else {
        None
    };
    Ok(Training {
        run: run.display().to_string(),
        data: spec.data.display().to_string(),
        label_column: spec.label_column,
        classes: spec.classes,
        folds: spec.folds,
        command: spec.command,
        cross_validation,
    })
}

fn preprocessing(c: &MagSdConfig) -> Preprocessing {
    let p = c.preprocess();
    Preprocessing {
        decode: "PNG, JPEG or DICOM recognised by content; colour to gray (BT.601); DICOM modality rescale, VOI window, MONOCHROME1 inverted".into(),
        resize: format!("bilinear to {0}×{0}, aspect ratio not kept", p.size),
        clahe: p.clahe.map(|k| format!("clip limit {}, {}×{} tiles", k.clip_limit, k.tiles_x, k.tiles_y)),
        zscore: serde_json::to_value(p.zscore).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default(),
    }
}

/// Loads the model (on this thread) and builds the shared state around it.
pub fn load(opts: &ServeOptions) -> Result<Loaded> {
    let file = resolve_model(&opts.model)?;
    let model = load_model(&file, opts.device)?;
    let reliability = Reliability::of(&model, &file)?;
    let config = model.model.config.clone();
    let run = run_folder(&opts.model, &file);
    let card = ModelCard {
        name: opts.name.clone(),
        file: file.display().to_string(),
        classes: config.class_labels(),
        backbone: config.backbone.clone(),
        head: config.head.to_string(),
        scales: config.scales.name().to_string(),
        attention_maps: config.num_maps,
        input_size: config.image_size as usize,
        preprocessing: preprocessing(&config),
        training: run.as_deref().map(training).transpose()?,
        device: crate::device::describe(opts.device),
        reliability: reliability.summary(),
        intended_use: INTENDED_USE,
    };
    let pipeline = InputPipeline {
        preprocess: config.preprocess(),
        limits: DecodeLimits { max_pixels: opts.limits.max_pixels },
        ..Default::default()
    };
    let metrics = Arc::new(Metrics::default());
    let (batcher, worker) = queue(
        BatchOptions {
            max_batch: opts.max_batch,
            max_wait: opts.max_wait,
            queue: opts.queue,
            input_size: config.image_size as usize,
            bf16: opts.bf16,
        },
        metrics.clone(),
    );
    let state = Arc::new(AppState {
        card,
        config,
        pipeline,
        batcher,
        metrics,
        token: opts.token.clone(),
        limits: opts.limits.clone(),
        threshold: opts.threshold,
    });
    Ok(Loaded { state, worker, model, reliability, device: opts.device })
}
