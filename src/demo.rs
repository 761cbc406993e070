//! `magsd demo`: the whole method on data that needs no download. Generates chest-radiograph
//! phantoms with known lesions (or takes the user's data), trains the tiny preset with all three
//! attention-guided augmentations and the soft-distance loss, evaluates a patient-level
//! held-out 20 %, localises lesions from attention against the true masks (next to what a
//! uniform attention map would score), and writes a report folder.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tch::Device;

use crate::data::dataset::{Dataset, DatasetOptions};
use crate::data::loader::Loader;
use crate::data::split::{check_split, holdout_split};
use crate::error::{Error, Result};
use crate::eval::evaluate::PredictOptions;
use crate::eval::localize::{GroundTruth, Threshold, localize};
use crate::model::weights::load_model;
use crate::report::document::Block;
use crate::report::evaluation::{EvalOptions, write_evaluation};
use crate::report::plots::{CurvesFigure, save};
use crate::train::config::TrainConfig;
use crate::train::cv::input_pipeline;
use crate::train::trainer::{Finish, LOG_FILE, MODEL_FILE, TrainJob, train};

pub struct DemoOptions {
    pub out: PathBuf,
    /// The user's data instead of phantoms.
    pub data: Option<PathBuf>,
    pub dataset: DatasetOptions,
    pub per_class: usize,
    pub phantom_size: usize,
    /// Where the phantoms' lesions sit (`demo --lesion-sites`).
    pub lesion_sites: crate::data::synth::LesionSites,
    pub config: TrainConfig,
    pub device: Device,
    pub verbose: bool,
}

impl DemoOptions {
    /// Settings the demo adds to the tiny preset: 6 epochs on 160-px inputs (5×5 attention maps,
    /// 10×10 from layer3; smaller inputs localise worse, BENCHMARKS.md), and no image-level
    /// augmentation (the authors' rotations of up to 120° and crops kept the tiny model near
    /// chance in the demo's budget).
    pub fn default_overrides() -> Vec<String> {
        vec!["epochs=6".into(), "model.image_size=160".into(), "data.augment=\"none\"".into()]
    }

    /// The defaults `magsd demo` runs with: 4 × 600 v3 phantoms of 160 px (lesions at random
    /// places, told apart by their texture alone; `crate::data::synth`) and
    /// [`Self::default_overrides`].
    pub fn new(out: PathBuf) -> Result<Self> {
        let config = TrainConfig::resolve(Some("tiny"), None, &Self::default_overrides())?;
        Ok(DemoOptions {
            out,
            data: None,
            dataset: DatasetOptions::default(),
            per_class: 600,
            phantom_size: 160,
            lesion_sites: crate::data::synth::LesionSites::Random,
            config,
            device: Device::Cpu,
            verbose: true,
        })
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct DemoSummary {
    pub classes: Vec<String>,
    pub train_images: usize,
    pub test_images: usize,
    pub accuracy: f64,
    pub chance_accuracy: f64,
    pub f1: Option<f64>,
    pub auc: Option<f64>,
    /// The localisation map behind the boxes (the model's default, `Network::default_map`).
    pub map: String,
    /// Mean IoU of the map's boxes with the lesion masks, and of a uniform map (whole image).
    pub mean_iou: Option<f64>,
    pub uniform_iou: Option<f64>,
    pub frac_iou_above_025: Option<f64>,
    pub seconds: f64,
    pub report: PathBuf,
}

pub fn run(o: &DemoOptions) -> Result<DemoSummary> {
    let t0 = Instant::now();
    let cfg = &o.config;
    std::fs::create_dir_all(&o.out).map_err(|e| Error::io(&o.out, e))?;
    let data = match &o.data {
        Some(d) => d.clone(),
        None => {
            let dir = o.out.join("data");
            let synth = crate::data::synth::SynthOptions {
                lesion_sites: o.lesion_sites,
                ..crate::data::synth::SynthOptions::new(o.per_class, o.phantom_size, cfg.seed)
            };
            let s = crate::data::synth::write_dataset_with(&dir, &synth)?;
            if o.verbose {
                eprintln!("demo: generated {} phantoms in {}", s.images, dir.display());
            }
            s.manifest
        }
    };
    let ds = Arc::new(Dataset::open(&data, &o.dataset)?);
    let all: Vec<usize> = (0..ds.samples.len()).collect();
    let (train_idx, test_idx) = holdout_split(&ds, &all, 0.2, cfg.seed)?;
    check_split(&ds, &[train_idx.clone(), test_idx.clone()])?;

    let model_config = cfg.model_config_for(&ds.classes)?;
    let loader = Loader::new(ds.clone(), input_pipeline(cfg)?, cfg.seed, cfg.performance.cache);
    let train_dir = o.out.join("train");
    crate::error::write_atomic(&o.out.join(crate::runfolder::CONFIG_FILE), cfg.to_toml().as_bytes())?;
    if o.verbose {
        eprintln!(
            "demo: training the {} preset on {} images ({} classes), {} epochs, augmentations {}, loss {}",
            cfg.preset,
            train_idx.len(),
            ds.classes.len(),
            cfg.epochs,
            crate::train::attention_aug::augmentation_list(&cfg.method.augmentations),
            cfg.method.loss.variant
        );
    }
    let outcome = train(&TrainJob {
        config: cfg.clone(),
        model_config,
        loader: loader.clone(),
        train_idx: train_idx.clone(),
        val_idx: Vec::new(),
        out_dir: train_dir.clone(),
        device: o.device,
        resume: false,
        stop_after_steps: None,
        label: "demo".into(),
        verbose: o.verbose,
    })?;
    if outcome.finish == Finish::Stopped {
        return Err(Error::Interrupted);
    }

    // No validation split here: the detector's threshold comes from the training images and the
    // probabilities stay raw softmax (the report says so).
    crate::train::reliability::fit_and_store(&train_dir.join(MODEL_FILE), &loader, &train_idx, &[], cfg, o.device)?;
    let m = load_model(&train_dir.join(MODEL_FILE), o.device)?;
    let reliability = crate::eval::reliability::Reliability::of(&m, &train_dir.join(MODEL_FILE))?;
    let popts = PredictOptions { batch_size: cfg.batch_size, keep_attention: true, map: m.model.default_map(), ..Default::default() };
    let (p, trust) = crate::eval::reliability::predict_assessed(&m.model, &reliability, &loader, &test_idx, o.device, &popts)?;
    let gt = ds.samples.first().filter(|s| s.meta.contains_key("mask")).map(|_| GroundTruth::MaskColumn("mask".into()));
    let threshold = Threshold::default();
    // The baseline a map without information gets: uniform attention selects the whole image.
    let uniform = match &gt {
        Some(gt) => {
            let side = p.attention_grid.side;
            let flat = vec![vec![1.0f32; side * side]; p.indices.len()];
            Some(localize(&ds, &p.indices, &flat, crate::model::MapGrid::plain(side), gt, threshold)?)
        }
        None => None,
    };
    // Every saliency method side by side on the held-out images (the report's "Saliency methods
    // compared"): MA-Net's maps, Grad-CAM on the same model, and two priors.
    let saliency = match &gt {
        Some(gt) => {
            let methods = crate::eval::saliency::available(&m.model);
            Some(crate::eval::saliency::compare(&m.model, &loader, &ds, &p.indices, gt, &methods, threshold, o.device, cfg.batch_size)?)
        }
        None => None,
    };
    save(&CurvesFigure::from_log("demo training", &train_dir.join(LOG_FILE))?, &o.out.join("curves"))?;

    let chance = 1.0 / ds.classes.len() as f64;
    let mut intro = vec![Block::Paragraph(format!(
        "{} {} images, {} classes; a patient-level held-out 20 % ({} images) was never seen in training. \
         The tiny MAG-SD preset ({}×{} input, {} maps, scales {}) was trained {} epochs with attention mix-up, \
         dimming and patching and the soft-distance loss (image-level augmentation: {}).",
        if o.data.is_some() { "Data:" } else { "Synthetic chest-radiograph phantoms:" },
        ds.samples.len(),
        ds.classes.len(),
        test_idx.len(),
        cfg.model.image_size,
        cfg.model.image_size,
        cfg.model.maps,
        cfg.model.scales.name(),
        cfg.epochs,
        cfg.data.augment
    ))];
    intro.push(Block::Image { path: "curves.png".into(), caption: "Training loss and accuracy per epoch".into() });
    let o_eval = write_evaluation(
        &o.out,
        &ds,
        &p,
        &EvalOptions {
            title: "magsd demo: MAG-SD end to end".into(),
            by: Vec::new(),
            ground_truth: gt.as_ref(),
            threshold,
            overlays: 8,
            model_description: vec![format!("Model: {}", train_dir.join(MODEL_FILE).display())],
            intro,
            training_overlap: None,
            reliability: Some(trust),
            map: popts.map,
            saliency,
        },
    )?;
    let summary = DemoSummary {
        classes: ds.classes.clone(),
        train_images: train_idx.len(),
        test_images: p.indices.len(),
        accuracy: o_eval.report.overall.accuracy,
        chance_accuracy: chance,
        f1: o_eval.report.overall.f1,
        auc: o_eval.report.overall.auc,
        map: popts.map.name().to_string(),
        mean_iou: o_eval.localization.as_ref().map(|l| l.mean_iou),
        uniform_iou: uniform.as_ref().map(|u| u.mean_iou),
        frac_iou_above_025: o_eval.localization.as_ref().map(|l| l.frac_iou_above_025),
        seconds: t0.elapsed().as_secs_f64(),
        report: o_eval.html.clone(),
    };
    crate::error::write_atomic(&o.out.join("summary.json"), &serde_json::to_vec_pretty(&summary).expect("serialises"))?;
    Ok(summary)
}

/// The summary table `magsd demo` prints.
pub fn summary_table(s: &DemoSummary) -> String {
    let opt = |v: Option<f64>| v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "n/a".into());
    let mut t = format!(
        "\n| result | value |\n|---|---|\n| held-out images | {} |\n| accuracy | {:.3} (chance {:.3}) |\n| macro F1 | {} |\n| macro AUC | {} |\n",
        s.test_images,
        s.accuracy,
        s.chance_accuracy,
        opt(s.f1),
        opt(s.auc)
    );
    if s.mean_iou.is_some() {
        t += &format!(
            "| lesion IoU of {} map boxes | {} (uniform map: {}) |\n| IoU > 0.25 | {} |\n",
            s.map,
            opt(s.mean_iou),
            opt(s.uniform_iou),
            s.frac_iou_above_025.map(|f| format!("{:.1} %", 100.0 * f)).unwrap_or_default()
        );
    }
    t += &format!("| wall time | {:.0} s |\n", s.seconds);
    t
}

/// Default demo folder: `runs/demo-<timestamp>`.
pub fn default_out() -> PathBuf {
    let d = crate::train::cv::default_run_dir();
    let name = d.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Path::new("runs").join(format!("demo-{name}"))
}
