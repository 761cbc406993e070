//! `magsd eval`, `magsd localize`, `magsd predict` and `magsd report`.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tch::Device;

use super::DataArgs;
use crate::data::dataset::Dataset;
use crate::data::decode::DecodeLimits;
use crate::data::input_stats::image_features;
use crate::data::loader::{InputPipeline, Loader};
use crate::device::DeviceChoice;
use crate::error::{Error, Result};
use crate::eval::evaluate::{PredictOptions, forward_map, rows_f64};
use crate::eval::reliability::{Assessment, Reliability, UNUSUAL_BANNER, predict_assessed};
use crate::eval::localize::{GroundTruth, Threshold, predict_boxes};
use crate::eval::saliency::Method;
use crate::model::MapKind;
use crate::eval::metrics::fixed4_or_na;
use crate::runfolder::{self, RunSpec};
use crate::model::weights::{LoadedModel, load_model};
use crate::report::evaluation::{EvalOptions, write_evaluation};
use crate::report::overlay::{attention_overlay, with_caption};

/// Options shared by the commands that run a model.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelRun {
    /// A model file (.safetensors, or a checkpoint), or a run folder holding model.safetensors.
    #[arg(long)]
    pub model: PathBuf,
    /// cpu, cuda or auto.
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceChoice,
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

fn load(args: &ModelRun) -> Result<(LoadedModel, Device, PathBuf)> {
    let device = args.device.resolve()?;
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
    /// Manifest column with lesion mask paths, for localisation.
    #[arg(long)]
    pub masks_column: Option<String>,
    /// CSV of lesion boxes (path,x0,y0,x1,y1), for localisation.
    #[arg(long, conflicts_with = "masks_column")]
    pub boxes: Option<PathBuf>,
    /// Attention threshold: rel:F (fraction of the map's maximum) or abs:V.
    #[arg(long, default_value = "rel:0.5")]
    pub threshold: String,
    /// The localisation map for overlays and localisation: mean (the paper's), class (attention
    /// maps weighted by their share of the predicted class's logit), scale14/scale28 (one
    /// scale's maps before pooling), class14/class28.
    #[arg(long, value_enum, default_value = "mean")]
    pub map: MapKind,
    /// Write into --out even if it holds metrics.json or is a training run's folder.
    #[arg(long)]
    pub force: bool,
    /// Saliency methods to compare (localize only).
    #[arg(skip)]
    pub methods: Vec<Method>,
}

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
  magsd localize --model runs/final --data phantoms                      # the manifest's mask column\n  \
  magsd localize --model m.safetensors --data x.csv --masks-column lesion_mask --threshold abs:0.85\n  \
  magsd localize --model m.safetensors --data x.csv --boxes boxes.csv --out loc-x\n\n\
Upsamples each image's map (--map), thresholds it, turns 8-connected components into boxes\n\
and reports the IoU of their union with the lesion mask or boxes; also writes everything eval writes.\n\
Then compares saliency methods on the same model (--method; default every one the model has):\n\
box IoU, pointing game, energy pointing game, saliency AUROC, flip consistency and the deletion\n\
curve's area, each with a 95 % bootstrap interval over images, in metrics.json and the report.")]
pub struct LocalizeArgs {
    #[command(flatten)]
    pub run: ModelRun,
    #[command(flatten)]
    pub data: DataArgs,
    /// Manifest column with lesion mask paths (default: `mask`, where the manifest has one).
    #[arg(long)]
    pub masks_column: Option<String>,
    /// CSV of lesion boxes (path,x0,y0,x1,y1).
    #[arg(long, conflicts_with = "masks_column")]
    pub boxes: Option<PathBuf>,
    /// Attention threshold: rel:F (fraction of the map's maximum) or abs:V.
    #[arg(long, default_value = "rel:0.5")]
    pub threshold: String,
    /// Output folder (default: eval-<data name> beside the model).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Attention overlays to draw.
    #[arg(long, default_value_t = 8)]
    pub overlays: usize,
    /// The map for the boxes, overlays and localization.json (see eval --map).
    #[arg(long, value_enum, default_value = "mean")]
    pub map: MapKind,
    /// Comma-separated saliency methods to compare: mean, class, scale14, scale28, class14,
    /// class28, gradcam, gradcam-layer3, gradcam++, gradcam++-layer3, uniform, centre
    /// (default: every one this model has).
    #[arg(long)]
    pub method: Option<String>,
    /// Refuse to report when any image is missing, unreadable or decoded with a warning (e.g. a
    /// truncated JPEG): list them all and exit with an error.
    #[arg(long)]
    pub strict: bool,
    /// Write into --out even if it holds metrics.json or is a training run's folder.
    #[arg(long)]
    pub force: bool,
}

impl TryFrom<LocalizeArgs> for EvalArgs {
    type Error = Error;
    fn try_from(a: LocalizeArgs) -> Result<Self> {
        let methods = match &a.method {
            Some(list) => Method::parse_list(list)?,
            None => Vec::new(),
        };
        Ok(EvalArgs {
            run: a.run,
            data: a.data,
            out: a.out,
            by: Vec::new(),
            strict: a.strict,
            overlays: a.overlays,
            masks_column: a.masks_column,
            boxes: a.boxes,
            threshold: a.threshold,
            map: a.map,
            force: a.force,
            methods,
        })
    }
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
    // Every image is read before deciding, so that --strict can list all the bad ones at once.
    // Features for the source probe (`eval::probe`), kept whether or not the model has a detector.
    let opts = PredictOptions {
        batch_size: args.run.batch_size,
        bf16: args.run.bf16,
        keep_attention: true,
        keep_features: true,
        strict: false,
        map: args.map,
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
            map: args.map,
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

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
  magsd predict chest.png --model runs/final\n  \
  magsd predict scans/ --model m.safetensors --out predictions.csv     # a folder, recursively\n  \
  magsd predict scans/*.dcm --model m.safetensors --json\n  \
  magsd predict a.jpg b.jpg --model m.safetensors --heatmap heatmaps/\n\n\
Folders are searched recursively for PNG, JPEG and DICOM files (by extension or by content).\n\
Probabilities are calibrated when the model file has a temperature (it says so first). An image\n\
that does not look like the model's training X-rays is marked UNUSUAL with the reason (its pixel\n\
statistics, or its features far from the training images'); --strict refuses it. Decisions at the\n\
model's operating points are printed under each image. A non-finite output is an error (exit 1).")]
pub struct PredictArgs {
    /// PNG, JPEG or DICOM files, or folders holding them.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    #[command(flatten)]
    pub run: ModelRun,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also write the predictions as a CSV file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Overwrite --out and the overlays in --heatmap if they exist (a symbolic link is never
    /// written through).
    #[arg(long)]
    pub force: bool,
    /// Write an attention overlay per image into this folder.
    #[arg(long)]
    pub heatmap: Option<PathBuf>,
    /// Attention threshold for the overlay's contour and boxes: rel:F or abs:V.
    #[arg(long, default_value = "rel:0.5")]
    pub threshold: String,
    /// The map behind the boxes and the heatmap (see eval --map).
    #[arg(long, value_enum, default_value = "mean")]
    pub map: MapKind,
    /// Refuse images that do not look like the model's training X-rays (no prediction for them,
    /// exit status 1) instead of predicting them with a warning.
    #[arg(long)]
    pub strict: bool,
}

/// Extensions taken from folders without looking at the content.
const IMAGE_EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "dcm", "dicom"];

/// True when a file starts like a PNG, JPEG or DICOM file.
fn looks_like_image(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 132];
    let Ok(n) = std::fs::File::open(path).and_then(|mut f| f.read(&mut head)) else {
        return false;
    };
    let h = &head[..n];
    h.starts_with(b"\x89PNG\r\n\x1a\n") || h.starts_with(&[0xFF, 0xD8, 0xFF]) || h.starts_with(b"DICM") || (n == 132 && &h[128..132] == b"DICM")
}

/// What a folder walk left out: symbolic links to folders (never followed, so a link loop such
/// as `dir/self -> dir` cannot make the walk endless) and links to a file already taken.
#[derive(Default)]
struct WalkSkips {
    folder_links: Vec<PathBuf>,
    repeated_files: Vec<PathBuf>,
}

/// The inputs: files as given; folders searched recursively (hidden entries skipped) for files
/// with an image extension or image content, in name order. Inside folders, symbolic links to
/// folders are not followed and a link to a regular file is taken once (a second name for a
/// file already taken is left out); what was left out is counted in a warning.
pub(crate) fn expand_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>, seen: &mut std::collections::HashSet<PathBuf>, skips: &mut WalkSkips) -> Result<()> {
        let mut entries: Vec<(PathBuf, std::fs::FileType)> = Vec::new();
        for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?.flatten() {
            if let Ok(t) = e.file_type() {
                entries.push((e.path(), t));
            }
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        for (p, kind) in entries {
            if p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')) {
                continue;
            }
            if kind.is_dir() {
                walk(&p, out, seen, skips)?;
            } else if kind.is_symlink() && p.is_dir() {
                skips.folder_links.push(p);
            } else if p.is_file() {
                let ext = p.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
                if ext.is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str())) || looks_like_image(&p) {
                    if !seen.insert(std::fs::canonicalize(&p).unwrap_or_else(|_| p.clone())) {
                        skips.repeated_files.push(p);
                        continue;
                    }
                    out.push(p);
                }
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for p in inputs {
        if p.is_dir() {
            let before = out.len();
            let (mut seen, mut skips) = (std::collections::HashSet::new(), WalkSkips::default());
            walk(p, &mut out, &mut seen, &mut skips)?;
            if !skips.folder_links.is_empty() {
                eprintln!(
                    "warning: {}: {} symbolic link(s) to folders not followed (e.g. {})",
                    p.display(),
                    skips.folder_links.len(),
                    skips.folder_links[0].display()
                );
            }
            if !skips.repeated_files.is_empty() {
                eprintln!(
                    "warning: {}: {} link(s) to an image already taken left out (e.g. {})",
                    p.display(),
                    skips.repeated_files.len(),
                    skips.repeated_files[0].display()
                );
            }
            if out.len() == before {
                eprintln!("warning: {}: no PNG, JPEG or DICOM files in this folder", p.display());
            }
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// Heatmap file names: `<stem>_attention.png`, and where two inputs share a stem,
/// `<stem>_<8 hex digits of a hash of the path>_attention.png` for each of them.
fn heatmap_names(paths: &[PathBuf]) -> Vec<String> {
    let stem = |p: &PathBuf| p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into());
    let mut count = std::collections::HashMap::new();
    for p in paths {
        *count.entry(stem(p)).or_insert(0usize) += 1;
    }
    paths
        .iter()
        .map(|p| {
            let s = stem(p);
            if count[&s] > 1 {
                // FNV-1a of the path as given: stable across runs and platforms.
                let h = p.to_string_lossy().bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
                format!("{s}_{:08x}_attention.png", h as u32)
            } else {
                format!("{s}_attention.png")
            }
        })
        .collect()
}

/// One predicted image.
struct Prediction {
    assessment: Assessment,
    heatmap: Option<PathBuf>,
    boxes: Vec<crate::eval::localize::BBox>,
    /// The decoder's warnings (e.g. a truncated JPEG).
    warnings: Vec<String>,
}

pub fn predict_images(args: PredictArgs) -> Result<i32> {
    if let Some(out) = &args.out {
        crate::files::check_writable(out, args.force)?;
    }
    let (m, device, model_path) = load(&args.run)?;
    let reliability = Reliability::of(&m, &model_path)?;
    let classes = m.model.config.class_labels();
    let pipeline = InputPipeline { preprocess: m.model.config.preprocess(), ..Default::default() };
    let threshold = Threshold::parse(&args.threshold)?;
    let images = expand_inputs(&args.images)?;
    if images.is_empty() {
        return Err(Error::Config("no images to predict".into()));
    }
    for line in reliability.describe() {
        eprintln!("{line}");
    }
    let names = heatmap_names(&images);
    if let Some(dir) = &args.heatmap {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        // Every overlay is checked before any image is predicted, so that a refusal leaves
        // nothing half done.
        for name in &names {
            crate::files::check_writable(&dir.join(name), args.force)?;
        }
    }
    let mut csv = match &args.out {
        Some(out) => {
            let mut w = csv::Writer::from_writer(Vec::new());
            // The column names of predictions.csv (this file used to say `file,predicted`).
            let mut header = vec![crate::runfolder::PATH_COLUMN.to_string(), crate::runfolder::PREDICTED_COLUMN.to_string()];
            header.extend(classes.iter().map(|c| format!("prob_{c}")));
            header.extend(["unusual", "unusual_reasons", "ood_score", "decisions", "heatmap", "warnings"].map(String::from));
            w.write_record(&header).map_err(|e| Error::Data(format!("{}: {e}", out.display())))?;
            Some(w)
        }
        None => None,
    };
    if !args.json {
        println!("{:<40} {:<16} {}", "file", "predicted", classes.iter().map(|c| format!("{c:>12}")).collect::<String>());
    }
    let (mut failed, mut unusual, mut heatmaps) = (0, 0, 0);
    for (path, heat_name) in images.iter().zip(&names) {
        let result = (|| -> Result<Prediction> {
            let (x, img) = pipeline.eval_tensor(path)?;
            let f = forward_map(&m.model, &x, device, args.run.bf16, false, args.map)?;
            let logits = rows_f64(&f.logits)?.remove(0);
            let features = f.features.to_device(Device::Cpu).get(0);
            let assessment = reliability.assess(&logits, Some(&features), Some(&image_features(&img, &pipeline)), &classes)?;
            if args.strict && assessment.unusual.unusual {
                return Err(Error::Data(format!(
                    "{}: refused (--strict): {}: {}",
                    path.display(),
                    UNUSUAL_BANNER,
                    assessment.unusual.reasons.join("; ")
                )));
            }
            let att = f.attention;
            let side = att.size()[2] as usize;
            let map: Vec<f32> = Vec::try_from(att.to_device(Device::Cpu).flatten(0, -1))?;
            // The boxes at the image's own size, whether or not a heatmap is drawn.
            let boxes = predict_boxes(&map, side, img.width, img.height, threshold);
            let mut p = Prediction { assessment, heatmap: None, boxes, warnings: img.source.warnings.clone() };
            if let Some(dir) = &args.heatmap {
                let (panel, _) = attention_overlay(&img, &map, side, threshold, None);
                let a = &p.assessment;
                let panel = with_caption(
                    &panel,
                    &[
                        format!("predicted {} ({:.1} %)", classes[a.predicted], 100.0 * a.probabilities[a.predicted]),
                        format!("{side}×{side} {} map, upsampled; colours 0..1 of its maximum; contour {threshold}", args.map),
                    ],
                );
                let out = dir.join(heat_name);
                let mut png = std::io::Cursor::new(Vec::new());
                panel.write_to(&mut png, image::ImageFormat::Png).map_err(|e| Error::bad_file(&out, format!("cannot encode PNG: {e}")))?;
                crate::files::write_new(&out, png.get_ref(), args.force)?;
                p.heatmap = Some(out);
            }
            Ok(p)
        })();
        match result {
            Ok(p) => {
                let a = &p.assessment;
                let predicted = classes[a.predicted].clone();
                if a.unusual.unusual {
                    unusual += 1;
                    eprintln!("warning: {}: {UNUSUAL_BANNER}: {}", path.display(), a.unusual.reasons.join("; "));
                }
                heatmaps += usize::from(p.heatmap.is_some());
                for w in &p.warnings {
                    eprintln!("warning: {}: {w}", path.display());
                }
                if args.json {
                    let obj = serde_json::json!({
                        "file": path, "predicted": predicted,
                        "probabilities": classes.iter().zip(&a.probabilities).map(|(c, p)| (c.clone(), serde_json::json!(p))).collect::<serde_json::Map<_, _>>(),
                        "unusual": a.unusual.unusual, "unusual_reasons": a.unusual.reasons, "checks": a.unusual.checks, "ood": a.unusual.ood,
                        "decisions": a.decisions, "heatmap": p.heatmap, "boxes": p.boxes, "warnings": p.warnings,
                    });
                    println!("{obj}");
                } else {
                    let name = path.display().to_string();
                    let chars = name.chars().count();
                    println!(
                        "{:<40} {:<16} {}{}",
                        if chars > 40 { format!("…{}", name.chars().skip(chars - 39).collect::<String>()) } else { name },
                        predicted,
                        a.probabilities.iter().map(|p| format!("{:>12.4}", p)).collect::<String>(),
                        if a.unusual.unusual { "   UNUSUAL" } else { "" }
                    );
                    for d in &a.decisions {
                        println!("    {}", d.text);
                    }
                }
                if let Some(w) = csv.as_mut() {
                    // Text cells through `csv_cell` (no spreadsheet formula from a file name).
                    let cell = |s: String| crate::files::csv_cell(&s).into_owned();
                    let mut row = vec![cell(path.display().to_string()), cell(predicted)];
                    row.extend(a.probabilities.iter().map(|x| format!("{x}")));
                    row.push(a.unusual.unusual.to_string());
                    row.push(cell(a.unusual.reasons.join("; ")));
                    row.push(a.unusual.ood.as_ref().map(|v| format!("{}", v.score)).unwrap_or_else(|| "n/a".into()));
                    row.push(cell(a.decisions.iter().map(|d| d.text.clone()).collect::<Vec<_>>().join("; ")));
                    row.push(cell(p.heatmap.as_ref().map(|h| h.display().to_string()).unwrap_or_default()));
                    row.push(cell(p.warnings.join("; ")));
                    w.write_record(&row).map_err(|e| Error::Data(format!("predictions CSV: {e}")))?;
                }
            }
            Err(e) => {
                failed += 1;
                if args.json {
                    println!("{}", serde_json::json!({"file": path, "error": e.to_string()}));
                } else {
                    eprintln!("error: {e}");
                }
            }
        }
    }
    if let (Some(out), Some(w)) = (&args.out, csv) {
        let bytes = w.into_inner().map_err(|e| Error::Data(format!("{}: {e}", out.display())))?;
        crate::files::write_new(out, &bytes, args.force)?;
        eprintln!("predictions: {} ({} images)", out.display(), images.len() - failed);
    }
    if let Some(dir) = &args.heatmap {
        eprintln!("heatmaps: {heatmaps} written to {}", dir.display());
    }
    if unusual > 0 {
        eprintln!(
            "warning: {unusual} of {} images look unlike the model's training images; their predictions are not meaningful",
            images.len()
        );
    }
    Ok(if failed > 0 { 1 } else { 0 })
}

pub fn report(run: &Path) -> Result<i32> {
    if !run.join(runfolder::RUN_FILE).is_file() {
        return Err(Error::Config(runfolder::not_a_run(run)));
    }
    let html = crate::report::run::write_run_report(run)?;
    println!("report: {}", html.display());
    Ok(0)
}
