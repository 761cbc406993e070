//! `magsd eval`, `magsd localize`, `magsd predict` and `magsd report`.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tch::Device;

use super::DataArgs;
use crate::data::dataset::Dataset;
use crate::data::decode::DecodeLimits;
use crate::data::loader::{InputPipeline, Loader};
use crate::device::DeviceChoice;
use crate::error::{Error, Result};
use crate::eval::evaluate::{PredictOptions, infer, predict};
use crate::eval::localize::{GroundTruth, Threshold};
use crate::eval::metrics::argmax;
use crate::model::weights::{LoadedModel, load_model};
use crate::report::evaluation::{EvalOptions, write_evaluation};
use crate::report::overlay::attention_overlay;

/// Options shared by the commands that run a model.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelRun {
    /// A model file (.safetensors, or a checkpoint), or a run folder holding model.safetensors.
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceChoice,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// bf16 autocast (CUDA).
    #[arg(long)]
    pub bf16: bool,
}

/// A run folder → its model file; a file → itself.
pub fn resolve_model(path: &Path) -> Result<PathBuf> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    let direct = path.join(crate::train::trainer::MODEL_FILE);
    if direct.is_file() {
        return Ok(direct);
    }
    let folds: Vec<String> = (0..100)
        .map(|k| path.join(format!("fold-{k}/{}", crate::train::trainer::MODEL_FILE)))
        .filter(|p| p.is_file())
        .map(|p| p.display().to_string())
        .collect();
    if !folds.is_empty() {
        return Err(Error::Config(format!(
            "{} is a cross-validation run with one model per fold; choose one ({}) or train a final \
             model with --folds 0",
            path.display(),
            folds.join(", ")
        )));
    }
    Err(Error::bad_file(path, "no model here: expected a .safetensors model or a run folder with model.safetensors"))
}

fn load(args: &ModelRun) -> Result<(LoadedModel, Device, PathBuf)> {
    let device = args.device.resolve()?;
    let path = resolve_model(&args.model)?;
    let m = load_model(&path, device)?;
    Ok((m, device, path))
}

fn describe(m: &LoadedModel, path: &Path) -> Vec<String> {
    let c = &m.model.config;
    vec![format!(
        "Model: {} ({}, {}×{} input, CLAHE {}, z-score {:?}).",
        path.display(),
        c.network_name(),
        c.image_size,
        c.image_size,
        if c.clahe { "on" } else { "off" },
        c.zscore
    )]
}

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
  magsd eval --model runs/final --data ../shared/data/cxr-demo\n  \
  magsd eval --model runs/cv/fold-0/model.safetensors --data ../shared/data/cxr/manifest.csv --by source_repo\n  \
  magsd eval --model m.safetensors --data phantoms --masks-column mask --out eval-phantoms\n\n\
Writes metrics.json, predictions.csv, roc.png/svg, confusion.png/svg, overlays/ and report.md/html.\n\
Each image is evaluated once, never augmented; unreadable images are reported and skipped (--strict fails).")]
pub struct EvalArgs {
    #[command(flatten)]
    pub run: ModelRun,
    #[command(flatten)]
    pub data: DataArgs,
    /// Output folder (default: eval-<data name> beside the model).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Metadata columns to break metrics down by (default: source_repo and dataset, where present).
    #[arg(long = "by")]
    pub by: Vec<String>,
    /// Stop at the first unreadable image.
    #[arg(long)]
    pub strict: bool,
    /// Attention overlays to draw.
    #[arg(long, default_value_t = 8)]
    pub overlays: usize,
    /// Manifest column with lesion mask paths, for localisation.
    #[arg(long)]
    pub masks_column: Option<String>,
    /// CSV of lesion boxes (path,x0,y0,x1,y1), for localisation.
    #[arg(long, conflicts_with = "masks_column")]
    pub boxes: Option<PathBuf>,
    /// Attention threshold: rel:F (fraction of the map's maximum) or abs:V.
    #[arg(long, default_value = "rel:0.5")]
    pub threshold: String,
}

fn ground_truth(ds: &Dataset, masks_column: &Option<String>, boxes: &Option<PathBuf>) -> Result<Option<GroundTruth>> {
    Ok(match (masks_column, boxes) {
        (_, Some(b)) => Some(GroundTruth::read_boxes(b)?),
        (Some(c), None) => Some(GroundTruth::MaskColumn(c.clone())),
        // A manifest with a `mask` column (e.g. `magsd data synth`) is used automatically.
        (None, None) => ds.samples.first().filter(|s| s.meta.contains_key("mask")).map(|_| GroundTruth::MaskColumn("mask".into())),
    })
}

/// Opens the data relabelled to the model's classes.
fn open_for(m: &LoadedModel, data: &DataArgs) -> Result<Dataset> {
    let ds = data.open()?;
    let ds = if m.model.config.class_names.is_empty() { ds } else { ds.with_classes(&m.model.config.class_names) };
    if ds.samples.is_empty() {
        return Err(Error::Data(format!(
            "{}: no images of the model's classes ({})",
            data.data.display(),
            m.model.config.class_labels().join(", ")
        )));
    }
    Ok(ds)
}

pub fn eval(args: EvalArgs, require_truth: bool) -> Result<i32> {
    let (m, device, path) = load(&args.run)?;
    let ds = Arc::new(open_for(&m, &args.data)?);
    for (label, n) in &ds.excluded {
        eprintln!("note: {n} image(s) labelled '{label}' left out: not a class of this model");
    }
    let gt = ground_truth(&ds, &args.masks_column, &args.boxes)?;
    if require_truth && gt.is_none() {
        return Err(Error::Config("localisation needs ground truth: --masks-column COLUMN or --boxes CSV".into()));
    }
    let threshold = Threshold::parse(&args.threshold)?;
    let pipeline = InputPipeline {
        preprocess: m.model.config.preprocess(),
        augment: crate::data::augment::AugmentPolicy::None,
        limits: DecodeLimits::default(),
    };
    let loader = Loader::new(ds.clone(), pipeline, 0, false);
    let all: Vec<usize> = (0..ds.samples.len()).collect();
    let opts = PredictOptions { batch_size: args.run.batch_size, bf16: args.run.bf16, keep_attention: true, strict: args.strict, ..Default::default() };
    let p = predict(&m.model, &loader, &all, device, &opts)?;
    let name = args.data.data.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "data".into());
    let out = args.out.clone().unwrap_or_else(|| path.parent().unwrap_or(Path::new(".")).join(format!("eval-{name}")));
    let by = if args.by.is_empty() { ds.default_breakdown() } else { args.by.clone() };
    let o = write_evaluation(
        &out,
        &ds,
        &p,
        &EvalOptions {
            title: format!("MAG-SD evaluation on {}", args.data.data.display()),
            by,
            ground_truth: gt.as_ref(),
            threshold,
            overlays: args.overlays,
            model_description: describe(&m, &path),
            intro: Vec::new(),
        },
    )?;
    let r = &o.report.overall;
    println!(
        "{} images: accuracy {:.4}, macro sensitivity {:.4}, specificity {:.4}, F1 {:.4}, AUC {}",
        r.n,
        r.accuracy,
        r.sensitivity,
        r.specificity,
        r.f1,
        r.auc.map(|a| format!("{a:.4}")).unwrap_or_else(|| "n/a".into())
    );
    for (_, reason) in &p.failures {
        eprintln!("skipped: {reason}");
    }
    if let Some(l) = &o.localization {
        println!(
            "localisation ({} images with ground truth, threshold {:?}): mean IoU {:.3}, IoU > 0.25: {:.1} %, IoU > 0.5: {:.1} %",
            l.n,
            l.threshold,
            l.mean_iou,
            100.0 * l.frac_iou_above_025,
            100.0 * l.frac_iou_above_05
        );
    }
    println!("report: {}", o.html.display());
    Ok(if p.failures.is_empty() { 0 } else { 1 })
}

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
  magsd predict chest.png --model runs/final\n  \
  magsd predict scans/*.dcm --model m.safetensors --json\n  \
  magsd predict a.jpg b.jpg --model m.safetensors --heatmap heatmaps/")]
pub struct PredictArgs {
    /// PNG, JPEG or DICOM files.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    #[command(flatten)]
    pub run: ModelRun,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Write an attention overlay per image into this folder.
    #[arg(long)]
    pub heatmap: Option<PathBuf>,
    /// Attention threshold for the overlay's contour and boxes: rel:F or abs:V.
    #[arg(long, default_value = "rel:0.5")]
    pub threshold: String,
}

pub fn predict_images(args: PredictArgs) -> Result<i32> {
    let (m, device, _) = load(&args.run)?;
    let classes = m.model.config.class_labels();
    let pipeline = InputPipeline { preprocess: m.model.config.preprocess(), ..Default::default() };
    let threshold = Threshold::parse(&args.threshold)?;
    if let Some(dir) = &args.heatmap {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    if !args.json {
        println!("{:<40} {:<16} {}", "file", "predicted", classes.iter().map(|c| format!("{c:>12}")).collect::<String>());
    }
    let mut failed = 0;
    for path in &args.images {
        let result = (|| -> Result<()> {
            let (x, img) = pipeline.eval_tensor(path)?;
            let (probs, att) = infer(&m.model, &x, device, args.run.bf16, false);
            let probs: Vec<f64> = Vec::try_from(probs.to_device(Device::Cpu).to_kind(tch::Kind::Double).flatten(0, -1))?;
            let side = att.size()[2] as usize;
            let map: Vec<f32> = Vec::try_from(att.to_device(Device::Cpu).flatten(0, -1))?;
            let pred = argmax(&probs);
            let mut boxes = Vec::new();
            let mut heatmap = None;
            if let Some(dir) = &args.heatmap {
                let (panel, b) = attention_overlay(&img, &map, side, threshold, None);
                let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                let out = dir.join(format!("{stem}_attention.png"));
                panel.save(&out).map_err(|e| Error::Data(format!("{}: {e}", out.display())))?;
                boxes = b;
                heatmap = Some(out);
            }
            if args.json {
                let obj = serde_json::json!({
                    "file": path, "predicted": classes[pred],
                    "probabilities": classes.iter().zip(&probs).map(|(c, p)| (c.clone(), serde_json::json!(p))).collect::<serde_json::Map<_, _>>(),
                    "heatmap": heatmap, "boxes": boxes,
                });
                println!("{obj}");
            } else {
                let name = path.display().to_string();
                let chars = name.chars().count();
                println!(
                    "{:<40} {:<16} {}",
                    if chars > 40 { format!("…{}", name.chars().skip(chars - 39).collect::<String>()) } else { name },
                    classes[pred],
                    probs.iter().map(|p| format!("{:>12.4}", p)).collect::<String>()
                );
            }
            Ok(())
        })();
        if let Err(e) = result {
            failed += 1;
            if args.json {
                println!("{}", serde_json::json!({"file": path, "error": e.to_string()}));
            } else {
                eprintln!("error: {e}");
            }
        }
    }
    Ok(if failed > 0 { 1 } else { 0 })
}

pub fn report(run: &Path) -> Result<i32> {
    let html = crate::report::run::write_run_report(run)?;
    println!("report: {}", html.display());
    Ok(0)
}
