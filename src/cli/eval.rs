//! `magsd eval` (and `magsd localize`, which is eval with ground truth required), and the model
//! loading shared by the commands that run a model.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tch::Device;

use super::{DataArgs, DeviceArgs};
use crate::data::dataset::Dataset;
use crate::data::decode::DecodeLimits;
use crate::data::loader::{InputPipeline, Loader};
use crate::error::{Error, Result};
use crate::eval::evaluate::PredictOptions;
use crate::eval::reliability::{Reliability, predict_assessed};
use crate::eval::localize::{GroundTruth, Threshold};
use crate::eval::saliency::Method;
use crate::model::MapKind;
use crate::eval::metrics::fixed4_or_na;
use crate::runfolder::{self, RunSpec};
use crate::model::weights::{LoadedModel, load_model};
use crate::report::evaluation::{EvalOptions, write_evaluation};

/// Options shared by the commands that run a model.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelRun {
    /// A model file (.safetensors, or a checkpoint), or a run folder holding model.safetensors.
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Images per inference batch.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// bf16 autocast (CUDA).
    #[arg(long)]
    pub bf16: bool,
}

/// Refuses a PyTorch file (`torch.save`: a zip archive, or a bare pickle) with advice, before
/// it is read as safetensors.
fn refuse_pytorch_file(path: &Path) -> Result<()> {
    use std::io::Read;
    let mut head = [0u8; 4];
    let n = crate::files::open(path, crate::files::MAX_MODEL_BYTES, "model")?.read(&mut head).map_err(|e| Error::io(path, e))?;
    let zip = n >= 4 && head == *b"PK\x03\x04";
    let pickle = n >= 2 && head[0] == 0x80 && (2..=5).contains(&head[1]);
    if zip || pickle {
        return Err(Error::bad_file(
            path,
            "this is a PyTorch file (torch.save), not a magsd model: import its weights into a backbone with \
             `magsd train --pretrained FILE`, or look at it with `magsd model info --weights FILE`",
        ));
    }
    Ok(())
}

/// Sets up the device (and determinism) and loads the model `args` names.
pub(super) fn load(args: &ModelRun) -> Result<(LoadedModel, Device, PathBuf)> {
    let device = args.device.set_up()?;
    let path = runfolder::resolve_model(&args.model)?;
    refuse_pytorch_file(&path)?;
    let m = load_model(&path, device)?;
    if let Some(u) = crate::model::weights::unfinished(&m.metadata) {
        eprintln!("warning: {}: {u}", path.display());
    }
    Ok((m, device, path))
}

/// The console lines of an evaluation's calibration, unusual images and operating points.
fn trust_lines(t: &crate::eval::reliability::EvalReliability) -> Vec<String> {
    let c = &t.calibration;
    let mut out = vec![
        format!("probabilities: {}", t.probabilities),
        format!(
            "calibration on these images: ECE {:.4} → {:.4}, Brier {} → {} (raw softmax → T = {:.3})",
            c.before.ece,
            c.after.ece,
            fixed4_or_na(c.before.brier),
            fixed4_or_na(c.after.brier),
            c.temperature
        ),
        format!(
            "unusual: {} of {} images flagged ({} by the pixel screen, {} by the feature detector); checks: {}",
            t.unusual.flagged, t.unusual.images, t.unusual.by_pixel_screen, t.unusual.by_detector, t.unusual.checks
        ),
    ];
    for r in &t.operating_points {
        let ci = |c: &Option<crate::eval::stats::BootstrapCi>| c.as_ref().map(|c| format!(" [{:.3}, {:.3}]", c.low, c.high)).unwrap_or_default();
        out.push(format!(
            "operating point {} {} {:.2} (threshold {:.4}): sensitivity {}{}, specificity {}{} on {} images ({} positive)",
            r.point.class,
            r.point.target.name(),
            r.point.target.value(),
            r.point.threshold,
            fixed4_or_na(r.sensitivity),
            ci(&r.sensitivity_ci),
            fixed4_or_na(r.specificity),
            ci(&r.specificity_ci),
            r.images,
            r.positives
        ));
    }
    out
}

fn describe(m: &LoadedModel, path: &Path) -> Vec<String> {
    let c = &m.model.config;
    vec![format!(
        "Model: {} ({}, {}×{} input, CLAHE {}, z-score {}).",
        path.display(),
        c.network_name(),
        c.image_size,
        c.image_size,
        if c.clahe { "on" } else { "off" },
        c.zscore
    )]
}

/// How `eval` and `localize` localise: the ground truth, the boxes' threshold and the map.
#[derive(clap::Args, Debug, Clone)]
pub struct LocalizationArgs {
    /// Manifest column with lesion mask paths (default: `mask`, where the manifest has one).
    #[arg(long)]
    pub masks_column: Option<String>,
    /// CSV of lesion boxes (path,x0,y0,x1,y1).
    #[arg(long, conflicts_with = "masks_column")]
    pub boxes: Option<PathBuf>,
    /// Attention threshold: rel:F (fraction of the map's maximum) or abs:V.
    #[arg(long, default_value = "rel:0.5")]
    pub threshold: String,
    /// The localisation map for the boxes, overlays and localization.json: evidence (the class's
    /// logit split over the finest attention grid), mean (the paper's), class (attention maps
    /// weighted by their share of the predicted class's logit), scale14/scale28 (one scale's maps
    /// before pooling), class14/class28. Default: evidence where the model has it (MA-Net with
    /// BAP), else mean.
    #[arg(long, value_enum)]
    pub map: Option<MapKind>,
}

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
  magsd eval --model runs/final --data ../shared/data/cxr-demo\n  \
  magsd eval --model runs/cv/fold-0/model.safetensors --data ../shared/data/cxr/manifest.csv --by source_repo\n  \
  magsd eval --model m.safetensors --data phantoms --masks-column mask --out eval-phantoms\n\n\
Writes metrics.json, predictions.csv, roc.png/svg, confusion.png/svg, overlays/ and report.md/html.\n\
Each image is evaluated once, never augmented. Missing or unreadable images are counted, listed\n\
(console, metrics.json, report) and skipped, and the exit status is 1; --strict refuses to report\n\
(exit 2) and also refuses images decoded with a warning, such as a truncated JPEG.")]
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
    /// Refuse to report when any image is missing, unreadable or decoded with a warning (e.g. a
    /// truncated JPEG): list them all and exit with an error.
    #[arg(long)]
    pub strict: bool,
    /// Attention overlays to draw.
    #[arg(long, default_value_t = 8)]
    pub overlays: usize,
    #[command(flatten)]
    pub localization: LocalizationArgs,
    /// Write into --out even if it holds metrics.json or is a training run's folder.
    #[arg(long)]
    pub force: bool,
    /// Saliency methods to compare (localize only).
    #[arg(skip)]
    pub methods: Vec<Method>,
}

/// Refuses an evaluation `--out` that would replace results: a training run's folder or a fold
/// of one (its held-out metrics), or any folder holding a metrics.json, unless `force`.
fn check_eval_out(out: &Path, force: bool) -> Result<()> {
    if force {
        return Ok(());
    }
    let run_files = [runfolder::RUN_FILE, runfolder::FOLD_RESULT_FILE, runfolder::MODEL_FILE, runfolder::LOG_FILE];
    if let Some(f) = run_files.iter().find(|f| out.join(f).exists()) {
        return Err(Error::Config(format!(
            "{} is a training run folder (it holds {f}); evaluating into it would replace its files. \
             Choose another --out, or add --force",
            out.display()
        )));
    }
    if out.join(runfolder::METRICS_FILE).exists() {
        return Err(Error::Config(format!(
            "{} already holds metrics.json; choose another --out, or add --force to replace it",
            out.display()
        )));
    }
    Ok(())
}

fn ground_truth(ds: &Dataset, masks_column: &Option<String>, boxes: &Option<PathBuf>) -> Result<Option<GroundTruth>> {
    Ok(match (masks_column, boxes) {
        (_, Some(b)) => Some(GroundTruth::read_boxes(b)?),
        (Some(c), None) => Some(GroundTruth::MaskColumn(c.clone())),
        // A manifest with a `mask` column (e.g. `magsd data synth`) is used automatically.
        (None, None) => ds.samples.first().filter(|s| s.meta.contains_key("mask")).map(|_| GroundTruth::MaskColumn("mask".into())),
    })
}

/// Opens the data relabelled to the model's classes, saying which labels were left out and why.
fn open_for(m: &LoadedModel, data: &DataArgs) -> Result<Dataset> {
    let ds = data.open()?;
    for (label, n) in &ds.excluded {
        eprintln!("note: {n} image(s) labelled '{label}' left out: not among --classes");
    }
    let ds = if m.model.config.class_names.is_empty() { ds } else { ds.with_classes(&m.model.config.class_names) };
    if ds.samples.is_empty() {
        return Err(Error::Data(format!(
            "{}: no images of the model's classes ({})",
            data.path().display(),
            m.model.config.class_labels().join(", ")
        )));
    }
    let chosen = data.options();
    for (label, n) in &ds.excluded {
        let by_classes = chosen.classes.as_ref().is_some_and(|c| !c.contains(label));
        if !by_classes {
            eprintln!("note: {n} image(s) labelled '{label}' left out: not a class of this model");
        }
    }
    let counts = ds.class_counts();
    let absent: Vec<&str> = ds.classes.iter().zip(&counts).filter(|(_, n)| **n == 0).map(|(c, _)| c.as_str()).collect();
    if !absent.is_empty() {
        eprintln!(
            "note: no image of the model's class(es) {} in this data: they are left out of the macro means",
            absent.join(", ")
        );
    }
    Ok(ds)
}

/// The data options with the label column the model was trained on (from its run folder)
/// when `--label-column` is not given: a model trained on `label3` is evaluated on `label3`.
/// The second value describes that choice, for an error when the data lacks the column.
fn with_run_label_column(data: &DataArgs, model: &Path) -> (DataArgs, Option<String>) {
    let run = runfolder::run_of_model(model).and_then(|(run, _)| RunSpec::load(&run).ok().map(|s| (run, s)));
    match run {
        Some((run, spec)) if data.label_column.is_none() && spec.label_column != DataArgs::DEFAULT_LABEL_COLUMN => {
            eprintln!(
                "note: labels from column '{}', the column the model was trained on (run {}); --label-column chooses another",
                spec.label_column,
                run.display()
            );
            let why = format!(
                "the model was trained on label column '{}' (run {}), not '{}'; choose the data's column with --label-column",
                spec.label_column,
                run.display(),
                DataArgs::DEFAULT_LABEL_COLUMN
            );
            (DataArgs { label_column: Some(spec.label_column), ..data.clone() }, Some(why))
        }
        _ => (data.clone(), None),
    }
}

/// Every image of the data that was not used, as `path: reason` lines.
fn not_used(ds: &Dataset, p: &crate::eval::evaluate::Predictions, with_warnings: bool) -> Vec<String> {
    let listed = ds.skipped.iter().map(|s| format!("{}: {}", s.path, s.reason));
    let failed = p.failures.iter().map(|(_, e)| e.clone());
    let warned = p.warnings.iter().filter(|_| with_warnings).map(|(_, e)| e.clone());
    listed.chain(failed).chain(warned).collect()
}

pub fn eval(args: EvalArgs, require_truth: bool) -> Result<i32> {
    let (m, device, path) = load(&args.run)?;
    let name = args.data.path().file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "data".into());
    let out = args.out.clone().unwrap_or_else(|| path.parent().unwrap_or(Path::new(".")).join(format!("eval-{name}")));
    check_eval_out(&out, args.force)?;
    let (data, from_run) = with_run_label_column(&args.data, &path);
    let ds = Arc::new(open_for(&m, &data).map_err(|e| match &from_run {
        Some(why) => Error::Config(format!("{e}\n{why}")),
        None => e,
    })?);
    let gt = ground_truth(&ds, &args.localization.masks_column, &args.localization.boxes)?;
    if require_truth && gt.is_none() {
        return Err(Error::Config("localisation needs ground truth: --masks-column COLUMN or --boxes CSV".into()));
    }
    let threshold = Threshold::parse(&args.localization.threshold)?;
    let pipeline = InputPipeline {
        preprocess: m.model.config.preprocess(),
        augment: crate::data::augment::AugmentPolicy::None,
        limits: DecodeLimits::default(),
    };
    let loader = Loader::new(ds.clone(), pipeline, 0, false);
    let all: Vec<usize> = (0..ds.samples.len()).collect();
    // Every image is read before deciding, so that --strict can list all the bad ones at once.
    // Features for the source probe (`eval::probe`), kept whether or not the model has a detector.
    let map = args.localization.map.unwrap_or_else(|| m.model.default_map());
    let opts = PredictOptions {
        batch_size: args.run.batch_size,
        bf16: args.run.bf16,
        keep_attention: true,
        keep_features: true,
        strict: false,
        map,
        ..Default::default()
    };
    let reliability = Reliability::of(&m, &path)?;
    let (p, trust) = predict_assessed(&m.model, &reliability, &loader, &all, device, &opts)?;
    if args.strict {
        let bad = not_used(&ds, &p, true);
        if !bad.is_empty() {
            return Err(Error::Data(format!(
                "--strict: {} image(s) missing, unreadable or decoded with a warning; nothing was written:\n  {}",
                bad.len(),
                bad.join("\n  ")
            )));
        }
    }
    let overlap = runfolder::training_overlap(&path, &ds, &p.indices);
    if let Some(o) = &overlap {
        eprintln!("\nWARNING: {}.\n", o.message());
    }
    let by = if args.by.is_empty() { ds.default_breakdown() } else { args.by.clone() };
    // localize: every saliency method side by side on the same model and images.
    let saliency = match (&gt, require_truth) {
        (Some(gt), true) => {
            let methods = if args.methods.is_empty() { crate::eval::saliency::available(&m.model) } else { args.methods.clone() };
            eprintln!("comparing {} saliency methods on {} images ...", methods.len(), p.indices.len());
            let c = crate::eval::saliency::compare(&m.model, &loader, &ds, &p.indices, gt, &methods, threshold, device, args.run.batch_size)?;
            Some(c)
        }
        _ => None,
    };
    let o = write_evaluation(
        &out,
        &ds,
        &p,
        &EvalOptions {
            title: format!("MAG-SD evaluation on {}", args.data.path().display()),
            by,
            ground_truth: gt.as_ref(),
            threshold,
            overlays: args.overlays,
            model_description: describe(&m, &path),
            intro: Vec::new(),
            training_overlap: overlap,
            reliability: Some(trust),
            map,
            saliency,
        },
    )?;
    let r = &o.report.overall;
    println!(
        "{} images: accuracy {:.4}, macro sensitivity {}, specificity {}, F1 {}, AUC {}",
        r.n,
        r.accuracy,
        fixed4_or_na(r.sensitivity),
        fixed4_or_na(r.specificity),
        fixed4_or_na(r.f1),
        fixed4_or_na(r.auc)
    );
    for (_, w) in &p.warnings {
        eprintln!("warning: {w} (used; --strict refuses it)");
    }
    let skipped = not_used(&ds, &p, false);
    if !skipped.is_empty() {
        eprintln!("{} image(s) not evaluated (listed in metrics.json and the report):", skipped.len());
        for line in &skipped {
            eprintln!("  skipped: {line}");
        }
    }
    if let Some(t) = &o.report.reliability {
        println!("{}", trust_lines(t).join("\n"));
    }
    if let Some(l) = o.localization.as_ref().filter(|l| l.n == 0) {
        println!("localisation: n/a (no evaluated image has a lesion mask or box; threshold {})", l.threshold);
    } else if let Some(l) = &o.localization {
        println!(
            "localisation ({} images with ground truth, threshold {}): mean IoU {:.3}, IoU > 0.25: {:.1} %, IoU > 0.5: {:.1} %",
            l.n,
            l.threshold,
            l.mean_iou,
            100.0 * l.frac_iou_above_025,
            100.0 * l.frac_iou_above_05
        );
    }
    if let Some(c) = &o.report.saliency {
        println!(
            "saliency methods (maps for the predicted class; mean [95 % bootstrap interval over images]; threshold {}):",
            c.threshold
        );
        let rows = crate::eval::saliency::table(c);
        println!("  {}", crate::eval::saliency::TABLE_HEADER.join(" | "));
        for r in rows {
            println!("  {}", r.join(" | "));
        }
    }
    if let Some(o) = &o.report.training_overlap {
        eprintln!("WARNING: {}.", o.message());
    }
    println!("report: {}", o.html.display());
    Ok(if skipped.is_empty() { 0 } else { 1 })
}

