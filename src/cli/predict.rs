//! `magsd predict`: new images through the library's one prediction path
//! ([`crate::eval::predictor::Predictor`]), formatted as a table, JSON lines or a CSV file, with
//! optional attention overlays.
use std::path::{Path, PathBuf};

use super::eval::{ModelRun, load};
use crate::data::decode::has_image_content;
use crate::error::{Error, Result};
use crate::eval::localize::Threshold;
use crate::eval::predictor::{ImagePrediction, Precision, Predictor, PredictorOptions, Prepared, prepare};
use crate::eval::reliability::{Reliability, UNUSUAL_BANNER};
use crate::data::loader::InputPipeline;
use crate::model::MapKind;
use crate::report::overlay::{attention_overlay, with_caption};

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
    /// The map behind the boxes and the heatmap (see eval --map; default: evidence where the
    /// model has it, else mean).
    #[arg(long, value_enum)]
    pub map: Option<MapKind>,
    /// Refuse images that do not look like the model's training X-rays (no prediction for them,
    /// exit status 1) instead of predicting them with a warning.
    #[arg(long)]
    pub strict: bool,
    /// The network exactly as trained (float32, eager, BatchNorm unfolded): bit-comparable with
    /// `magsd eval`. By default BatchNorm is folded into the convolutions, which changes
    /// probabilities by float32 rounding only.
    #[arg(long)]
    pub exact: bool,
}

/// Extensions taken from folders without looking at the content.
const IMAGE_EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "dcm", "dicom"];

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
                if ext.is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str())) || has_image_content(&p) {
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

/// One predicted image, as this command shows it.
struct Prediction {
    result: ImagePrediction,
    heatmap: Option<PathBuf>,
    /// The decoder's warnings (e.g. a truncated JPEG).
    warnings: Vec<String>,
}

pub fn predict_images(args: PredictArgs) -> Result<i32> {
    if let Some(out) = &args.out {
        crate::files::check_writable(out, args.force)?;
    }
    let (m, device, model_path) = load(&args.run)?;
    let reliability = Reliability::of(&m, &model_path)?;
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
    let pipeline = InputPipeline { preprocess: m.model.config.preprocess(), ..Default::default() };
    let precision = if args.exact { Precision::Exact } else { Precision::Fast };
    let map = args.map.unwrap_or_else(|| m.model.default_map());
    let opts = PredictorOptions { device, precision, bf16: args.run.bf16, map, threshold };
    let predictor = Predictor::new(m, reliability, pipeline, opts);
    let classes = predictor.classes().to_vec();
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
    // Decoding and preprocessing run on their own thread, one image ahead of the network.
    std::thread::scope(|scope| -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Prepared>>(1);
        let pipeline = predictor.pipeline().clone();
        let paths = &images;
        scope.spawn(move || {
            for path in paths {
                if tx.send(prepare(&pipeline, path)).is_err() {
                    break;
                }
            }
        });
        for ((path, heat_name), prepared) in images.iter().zip(&names).zip(rx) {
            let result = prepared.and_then(|p| predict_one(&predictor, &args, &p, path, &dir_name(&args, heat_name), threshold));
            match result {
                Ok(p) => {
                    let a = &p.result.assessment;
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
                            "decisions": a.decisions, "heatmap": p.heatmap, "boxes": p.result.boxes, "warnings": p.warnings,
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
        Ok(())
    })?;
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

/// The overlay's path in `--heatmap`, when one is asked for.
fn dir_name(args: &PredictArgs, name: &str) -> Option<PathBuf> {
    args.heatmap.as_ref().map(|dir| dir.join(name))
}

/// One prepared image through the predictor; `--strict` refuses an unusual one; the overlay is
/// drawn into `heatmap` when given.
fn predict_one(predictor: &Predictor, args: &PredictArgs, p: &Prepared, path: &Path, heatmap: &Option<PathBuf>, threshold: Threshold) -> Result<Prediction> {
    let result = predictor.predict_prepared(p)?;
    let a = &result.assessment;
    if args.strict && a.unusual.unusual {
        return Err(Error::Data(format!("{}: refused (--strict): {}: {}", path.display(), UNUSUAL_BANNER, a.unusual.reasons.join("; "))));
    }
    let mut out = Prediction { heatmap: None, warnings: p.image.source.warnings.clone(), result };
    if let Some(file) = heatmap {
        let r = &out.result;
        let (panel, _) = attention_overlay(&p.image, &r.attention, r.attention_grid, threshold, None);
        let classes = predictor.classes();
        let a = &r.assessment;
        let panel = with_caption(
            &panel,
            &[
                format!("predicted {} ({:.1} %)", classes[a.predicted], 100.0 * a.probabilities[a.predicted]),
                format!("{side}×{side} {} map, upsampled; colours 0..1 of its maximum; contour {threshold}", predictor.map(), side = r.attention_grid.side),
            ],
        );
        let mut png = std::io::Cursor::new(Vec::new());
        panel.write_to(&mut png, image::ImageFormat::Png).map_err(|e| Error::bad_file(file, format!("cannot encode PNG: {e}")))?;
        crate::files::write_new(file, png.get_ref(), args.force)?;
        out.heatmap = Some(file.clone());
    }
    Ok(out)
}
