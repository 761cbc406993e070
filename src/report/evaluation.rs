//! Everything `magsd eval` writes for one model on one dataset: metrics.json, predictions.csv,
//! ROC and confusion figures, localisation (when ground truth is known), attention overlays and
//! report.md / report.html.
use std::path::{Path, PathBuf};

use super::document::Document;
use super::overlay::attention_overlay;
use super::plots::{ConfusionFigure, RocFigure, save};
use crate::data::dataset::Dataset;
use crate::data::decode::{DecodeLimits, decode_file};
use crate::error::{IoContext, Result};
use crate::eval::evaluate::{EvalReport, Predictions, write_predictions_csv};
use crate::eval::localize::{GroundTruth, LocalizationReport, Threshold, localize};
use crate::eval::metrics::{Metrics, argmax};

pub struct EvalOptions<'a> {
    pub title: String,
    /// Metadata columns for per-group metrics.
    pub by: Vec<String>,
    pub ground_truth: Option<&'a GroundTruth>,
    pub threshold: Threshold,
    /// Attention overlays to draw (spread over the classes).
    pub overlays: usize,
    /// Lines describing the model, for the report.
    pub model_description: Vec<String>,
    /// Blocks placed right after the title (a caller's summary, figures).
    pub intro: Vec<super::document::Block>,
}

pub struct EvalOutput {
    pub report: EvalReport,
    pub localization: Option<LocalizationReport>,
    pub html: PathBuf,
}

fn pct(v: f64) -> String {
    format!("{:.2}", 100.0 * v)
}

/// ACC/SEN/SPC/F1/AUC as a table row.
pub fn metric_row(name: &str, m: &Metrics) -> Vec<String> {
    vec![
        name.to_string(),
        m.n.to_string(),
        pct(m.accuracy),
        pct(m.sensitivity),
        pct(m.specificity),
        pct(m.f1),
        m.auc.map(pct).unwrap_or_else(|| "n/a".into()),
    ]
}

pub fn metric_header(first: &str) -> Vec<String> {
    [first, "images", "ACC %", "SEN %", "SPC %", "F1 %", "AUC %"].iter().map(|s| s.to_string()).collect()
}

/// Indices into `p` of up to `n` predictions, round-robin over the true classes.
fn overlay_rows(p: &Predictions, classes: usize, n: usize) -> Vec<usize> {
    let mut per_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (row, &y) in p.labels.iter().enumerate() {
        per_class[y].push(row);
    }
    let mut out = Vec::new();
    let mut k = 0;
    while out.len() < n && per_class.iter().any(|v| k < v.len()) {
        for v in &per_class {
            if out.len() < n && k < v.len() {
                out.push(v[k]);
            }
        }
        k += 1;
    }
    out
}

pub fn write_evaluation(dir: &Path, ds: &Dataset, p: &Predictions, opts: &EvalOptions) -> Result<EvalOutput> {
    std::fs::create_dir_all(dir).at(dir)?;
    let report = EvalReport::new(ds, p, &opts.by);
    report.save(&dir.join("metrics.json"))?;
    write_predictions_csv(&dir.join("predictions.csv"), ds, p)?;
    save(&RocFigure { title: "ROC curves (one-vs-rest)".into(), classes: &ds.classes, labels: &p.labels, probs: &p.probs }, &dir.join("roc"))?;
    save(&ConfusionFigure { title: "Confusion matrix (rows normalised)".into(), classes: &ds.classes, confusion: &report.overall.confusion }, &dir.join("confusion"))?;

    let localization = match (opts.ground_truth, p.attention.is_empty()) {
        (Some(gt), false) => {
            let l = localize(ds, &p.indices, &p.attention, p.attention_side, gt, opts.threshold)?;
            l.save(&dir.join("localization.json"))?;
            Some(l)
        }
        _ => None,
    };

    let mut doc = Document::new(&opts.title);
    doc.blocks.extend(opts.intro.iter().cloned());
    doc.p(format!("Data: {} ({} images evaluated, each once, without augmentation).", report.data, p.indices.len()));
    for line in &opts.model_description {
        doc.p(line.clone());
    }
    doc.h(1, "Metrics");
    doc.table(metric_header("set"), vec![metric_row("all", &report.overall)]);
    doc.p("SEN, SPC, F1 and AUC are unweighted means over classes, one-vs-rest; SPC = TN/(TN+FP).");
    doc.table(
        ["class", "images", "SEN %", "SPC %", "precision %", "F1 %", "AUC %"].iter().map(|s| s.to_string()).collect(),
        report
            .overall
            .per_class
            .iter()
            .map(|c| {
                vec![
                    c.class.clone(),
                    c.support.to_string(),
                    pct(c.sensitivity),
                    pct(c.specificity),
                    pct(c.precision),
                    pct(c.f1),
                    c.auc.map(pct).unwrap_or_else(|| "n/a".into()),
                ]
            })
            .collect(),
    );
    for (col, groups) in &report.by {
        doc.h(2, format!("By {col}"));
        doc.p("Watch for source confounding: a model can score well by recognising where an image came from.");
        doc.table(metric_header(col), groups.iter().map(|(v, m)| metric_row(v, m)).collect());
    }
    doc.h(1, "Figures");
    doc.image("roc.png", "ROC curves per class with their AUC");
    doc.image("confusion.png", "Confusion matrix: rows are true classes, normalised; counts in brackets");
    if let Some(l) = &localization {
        doc.h(1, "Localisation");
        doc.p(format!(
            "{} images with ground truth; threshold {:?}. Mean IoU {:.3}; IoU > 0.25: {:.1} %; IoU > 0.5: {:.1} %.",
            l.n,
            l.threshold,
            l.mean_iou,
            100.0 * l.frac_iou_above_025,
            100.0 * l.frac_iou_above_05
        ));
    }
    if opts.overlays > 0 && !p.attention.is_empty() {
        doc.h(1, "Attention");
        doc.p("Left: the X-ray. Right: mean attention map, threshold contour (white), predicted boxes (green), ground truth (magenta).");
        std::fs::create_dir_all(dir.join("overlays")).at(dir.join("overlays"))?;
        let base = ds.base_dir();
        for row in overlay_rows(p, ds.classes.len(), opts.overlays) {
            let s = &ds.samples[p.indices[row]];
            let img = decode_file(&s.path, &DecodeLimits::default())?;
            let truth = match opts.ground_truth {
                Some(gt) => gt.mask(s, &base, img.width, img.height)?,
                None => None,
            };
            let (panel, _) = attention_overlay(&img, &p.attention[row], p.attention_side, opts.threshold, truth.as_deref());
            let stem = s.path.file_stem().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let rel = PathBuf::from("overlays").join(format!("{row:04}_{stem}.png"));
            panel.save(dir.join(&rel)).map_err(|e| crate::Error::Data(format!("{}: {e}", dir.join(&rel).display())))?;
            let pred = argmax(&p.probs[row]);
            let iou = localization
                .as_ref()
                .and_then(|l| l.images.iter().find(|i| i.path == s.name))
                .map(|i| format!(", IoU {:.2}", i.iou))
                .unwrap_or_default();
            doc.image(
                rel,
                format!("{}: true {}, predicted {} ({:.1} %){iou}", s.name, ds.classes[p.labels[row]], ds.classes[pred], 100.0 * p.probs[row][pred]),
            );
        }
    }
    if !report.unreadable.is_empty() {
        doc.h(1, "Unreadable images (skipped)");
        doc.table(
            vec!["file".into(), "problem".into()],
            report.unreadable.iter().map(|u| vec![u.path.clone(), u.reason.clone()]).collect(),
        );
    }
    let (_, html) = doc.write(dir)?;
    Ok(EvalOutput { report, localization, html })
}
