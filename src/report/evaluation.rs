//! Everything `magsd eval` writes for one model on one dataset: metrics.json, predictions.csv,
//! ROC and confusion figures, localisation (when ground truth is known), attention overlays and
//! report.md / report.html.
//!
//! Nothing is left out silently: images the data lists but that could not be evaluated are
//! counted and listed (in metrics.json and the report), images used despite a decoder warning
//! are listed, classes with no image in the data are marked as such (and kept out of the macro
//! means), and an evaluation on images that trained the model says so at the top.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::document::Document;
use super::overlay::{attention_overlay, with_caption};
use super::plots::{ConfusionFigure, RocFigure, save};
use super::reliability_plot::ReliabilityFigure;
use crate::data::dataset::Dataset;
use crate::data::decode::{DecodeLimits, decode_file};
use crate::error::{IoContext, Result};
use crate::eval::evaluate::Predictions;
use crate::eval::results::EvalReport;
use crate::runfolder::{METRICS_FILE, PREDICTIONS_FILE, write_predictions};
use crate::eval::localize::{GroundTruth, LocalizationReport, Threshold, localize};
use crate::eval::metrics::pct_or_na;
use crate::eval::metrics::{Metrics, argmax};
use crate::eval::saliency::SaliencyComparison;
use crate::model::MapKind;
use crate::eval::overlap::TrainingOverlap;
use crate::eval::reliability::{EvalReliability, UNUSUAL_BANNER};

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
    /// Evaluated images that also trained the model (see [`crate::eval::overlap`]).
    pub training_overlap: Option<TrainingOverlap>,
    /// Calibration, unusual images and operating points of these predictions.
    pub reliability: Option<EvalReliability>,
    /// The localisation map the predictions hold (`Predictions::attention`).
    pub map: MapKind,
    /// Saliency methods compared on these images (`magsd localize`).
    pub saliency: Option<SaliencyComparison>,
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
        pct_or_na((m.n > 0).then_some(m.accuracy)),
        pct_or_na(m.sensitivity),
        pct_or_na(m.specificity),
        pct_or_na(m.f1),
        pct_or_na(m.auc),
    ]
}

pub fn metric_header(first: &str) -> Vec<String> {
    [first, "images", "ACC %", "SEN %", "SPC %", "F1 %", "AUC %"].iter().map(|s| s.to_string()).collect()
}

/// "12.34 % [10.00, 15.00]" of a rate and its interval.
fn rate_ci(v: Option<f64>, ci: &Option<crate::eval::stats::BootstrapCi>) -> String {
    match (v, ci) {
        (Some(v), Some(c)) => format!("{} [{}, {}]", pct(v), pct(c.low), pct(c.high)),
        (v, _) => pct_or_na(v),
    }
}

/// The report's calibration, unusual-input and operating-point sections, and the reliability
/// diagram (`reliability.png`).
pub fn reliability_sections(doc: &mut Document, t: &EvalReliability, dir: &Path) -> Result<()> {
    let c = &t.calibration;
    doc.h(1, "Calibration");
    doc.p(format!("Probabilities: {}. The metrics above use them.", t.probabilities));
    doc.table(
        ["probabilities", "images", "ECE (15 bins)", "Brier"].iter().map(|s| s.to_string()).collect(),
        vec![
            vec!["raw softmax".into(), c.before.images.to_string(), format!("{:.4}", c.before.ece), crate::eval::metrics::fixed4_or_na(c.before.brier)],
            vec![format!("temperature T = {:.3}", c.temperature), c.after.images.to_string(), format!("{:.4}", c.after.ece), crate::eval::metrics::fixed4_or_na(c.after.brier)],
        ],
    );
    doc.p("ECE: expected calibration error, top-label, 15 equal-width confidence bins (Guo et al. 2017). Brier: mean over images of Σ_k (p_k − y_k)², from 0 (perfect) to 2.");
    save(&ReliabilityFigure { title: "Reliability diagram".into(), curves: reliability_curves(c) }, &dir.join("reliability"))?;
    doc.image("reliability.png", "Reliability diagram: accuracy against confidence per bin, before and after calibration");
    let u = &t.unusual;
    doc.h(1, "Unusual inputs");
    doc.p(format!(
        "{} of {} evaluated images were flagged as unusual ({} by the pixel screen, {} by the feature-space detector). Checks: {}. \
         For a flagged image magsd says: \"{UNUSUAL_BANNER}\". The metrics above include them.",
        u.flagged, u.images, u.by_pixel_screen, u.by_detector, u.checks
    ));
    if !u.flagged_images.is_empty() {
        const SHOWN: usize = 50;
        doc.table(
            vec!["file".into(), "why".into()],
            u.flagged_images.iter().take(SHOWN).map(|f| vec![f.path.clone(), f.reasons.join("; ")]).collect(),
        );
        if u.flagged_images.len() > SHOWN {
            doc.p(format!("… and {} more (all in metrics.json).", u.flagged_images.len() - SHOWN));
        }
    }
    if !t.operating_points.is_empty() {
        doc.h(1, "Operating points");
        doc.p("Each chosen on the validation split when the model was trained; here applied to these images. Intervals: 95 % patient-level bootstrap (1,000 resamples).");
        doc.table(
            ["class", "target", "threshold", "images (positive)", "SEN %", "SPC %"].iter().map(|s| s.to_string()).collect(),
            t.operating_points
                .iter()
                .map(|r| {
                    vec![
                        r.point.class.clone(),
                        format!("{} {:.2} (validation: SEN {}, SPC {})", r.point.target.name(), r.point.target.value(), pct_or_na(r.point.validation_sensitivity), pct_or_na(r.point.validation_specificity)),
                        format!("{:.4}", r.point.threshold),
                        format!("{} ({})", r.images, r.positives),
                        rate_ci(r.sensitivity, &r.sensitivity_ci),
                        rate_ci(r.specificity, &r.specificity_ci),
                    ]
                })
                .collect(),
        );
    }
    Ok(())
}

/// The before/after curves of a reliability diagram.
pub fn reliability_curves(c: &crate::eval::reliability::CalibrationComparison) -> Vec<(String, &crate::eval::calibration::Reliability)> {
    vec![("raw softmax".into(), &c.before.reliability), (format!("T = {:.3}", c.temperature), &c.after.reliability)]
}

/// The metadata column overlays are spread over: the image's source collection, where known.
fn source_column(ds: &Dataset) -> Option<String> {
    ds.default_breakdown().into_iter().next()
}

/// Indices into `p` of up to `n` predictions, stratified and deterministic: the true classes
/// take turns; within a class, the strata (correct first, then wrong; then each source value
/// in sorted order) take turns; within a stratum, images come in data order. So a handful of
/// overlays shows every class, right and wrong predictions, and every source.
fn overlay_rows(p: &Predictions, ds: &Dataset, n: usize) -> Vec<usize> {
    let source = source_column(ds);
    // class → (wrong, source) → rows
    let mut strata: Vec<BTreeMap<(bool, String), Vec<usize>>> = vec![BTreeMap::new(); ds.classes.len()];
    for (row, &y) in p.labels.iter().enumerate() {
        let wrong = argmax(&p.probs[row]) != y;
        let src = source.as_ref().and_then(|c| ds.samples[p.indices[row]].meta.get(c).cloned()).unwrap_or_default();
        strata[y].entry((wrong, src)).or_default().push(row);
    }
    let mut queues: Vec<Vec<std::collections::VecDeque<usize>>> =
        strata.into_iter().map(|m| m.into_values().map(Into::into).collect()).collect();
    let mut turn = vec![0usize; queues.len()];
    let mut out = Vec::new();
    while out.len() < n && queues.iter().any(|q| q.iter().any(|s| !s.is_empty())) {
        for (c, q) in queues.iter_mut().enumerate() {
            if out.len() >= n {
                break;
            }
            let live: Vec<usize> = (0..q.len()).filter(|&k| !q[k].is_empty()).collect();
            if live.is_empty() {
                continue;
            }
            let k = live[turn[c] % live.len()];
            turn[c] += 1;
            out.extend(q[k].pop_front());
        }
    }
    out
}

/// The metrics per value of a metadata column (one `by` section of metrics.json), with how many
/// classes each group holds: `eval`'s report and the training report (per fold) both use it.
pub fn by_table<'a>(doc: &mut Document, col: &str, groups: impl Iterator<Item = (String, &'a Metrics)>) {
    doc.p("Watch for source confounding: a model can score well by recognising where an image came from.");
    let mut header = metric_header(col);
    header.push("classes present".into());
    let rows = groups
        .map(|(v, m)| {
            let mut row = metric_row(&v, m);
            let present = m.per_class.iter().filter(|c| c.support > 0).count();
            row.push(if present >= 2 { format!("{present} (mixed)") } else { present.to_string() });
            row
        })
        .collect();
    doc.table(header, rows);
}

pub fn write_evaluation(dir: &Path, ds: &Dataset, p: &Predictions, opts: &EvalOptions) -> Result<EvalOutput> {
    std::fs::create_dir_all(dir).at(dir)?;
    let mut report = EvalReport::new(ds, p, &opts.by)?;
    report.add_dataset_skips(ds);
    report.training_overlap = opts.training_overlap.clone();
    report.reliability = opts.reliability.clone();
    report.map = opts.map;
    report.saliency = opts.saliency.clone();
    report.save(&dir.join(METRICS_FILE))?;
    write_predictions(&dir.join(PREDICTIONS_FILE), ds, p)?;
    save(&RocFigure { title: "ROC curves (one-vs-rest)".into(), classes: &ds.classes, labels: &p.labels, probs: &p.probs }, &dir.join("roc"))?;
    save(&ConfusionFigure { title: "Confusion matrix (rows normalised)".into(), classes: &ds.classes, confusion: &report.overall.confusion }, &dir.join("confusion"))?;

    let localization = match (opts.ground_truth, p.attention.is_empty()) {
        (Some(gt), false) => {
            let l = localize(ds, &p.indices, &p.attention, p.attention_grid, gt, opts.threshold)?;
            l.save(&dir.join("localization.json"))?;
            Some(l)
        }
        _ => None,
    };

    let mut doc = Document::new(&opts.title);
    if let Some(o) = &report.training_overlap {
        doc.p(format!("WARNING: {}. Examples: {}.", o.message(), o.examples.join(", ")));
    }
    doc.blocks.extend(opts.intro.iter().cloned());
    doc.p(format!(
        "Data: {} ({} images evaluated, each once, without augmentation; {} image(s) of the data not evaluated{}).",
        report.data,
        p.indices.len(),
        report.skipped,
        if report.skipped > 0 { ", listed at the end" } else { "" }
    ));
    for line in &opts.model_description {
        doc.p(line.clone());
    }
    doc.h(1, "Metrics");
    doc.table(metric_header("set"), vec![metric_row("all", &report.overall)]);
    let absent: Vec<&str> = report.overall.per_class.iter().filter(|c| c.support == 0).map(|c| c.class.as_str()).collect();
    doc.p(format!(
        "SEN, SPC and F1 are unweighted means over the classes present in the data, AUC over those with \
         positives and negatives; one-vs-rest; SPC = TN/(TN+FP).{}",
        if absent.is_empty() {
            String::new()
        } else {
            format!(
                " The model's class(es) {} have no image in this data: they are not in the means or the table below, \
                 but images predicted as them count as errors.",
                absent.join(", ")
            )
        }
    ));
    doc.table(
        ["class", "images", "SEN %", "SPC %", "precision %", "F1 %", "AUC %"].iter().map(|s| s.to_string()).collect(),
        report
            .overall
            .per_class
            .iter()
            .filter(|c| c.support > 0)
            .map(|c| {
                vec![
                    c.class.clone(),
                    c.support.to_string(),
                    pct_or_na(c.sensitivity),
                    pct_or_na(c.specificity),
                    pct_or_na(c.precision),
                    pct_or_na(c.f1),
                    pct_or_na(c.auc),
                ]
            })
            .collect(),
    );
    if !report.absent_from_training.is_empty() {
        doc.p(format!(
            "The model was trained without any image of {}: those classes are left out of the macro means, and their \
             figures only measure that absence.",
            report.absent_from_training.join(", ")
        ));
    }
    for (col, groups) in &report.by {
        doc.h(2, format!("By {col}"));
        by_table(&mut doc, col, groups.iter().map(|(v, m)| (v.clone(), m)));
    }
    if !report.within_source.is_empty() {
        doc.h(1, "Shortcut audit");
        doc.p(super::audit::DEFINITIONS);
        for (col, w) in &report.within_source {
            doc.h(2, format!("Within one {col}"));
            super::audit::within_source_section(&mut doc, w);
            if let Some(p) = report.probe.get(col) {
                super::audit::probe_section(&mut doc, p);
            }
        }
    }
    if let Some(t) = &report.reliability {
        reliability_sections(&mut doc, t, dir)?;
    }
    doc.h(1, "Figures");
    doc.image("roc.png", "ROC curves per class with their AUC");
    doc.image("confusion.png", "Confusion matrix: rows are true classes, normalised; counts in brackets");
    if localization.as_ref().is_some_and(|l| l.n == 0) {
        doc.h(1, "Localisation");
        doc.p("n/a: no evaluated image has a lesion mask or box.");
    } else if let Some(l) = &localization {
        doc.h(1, "Localisation");
        doc.p(format!(
            "{} images with ground truth; threshold {}. Mean IoU {:.3}; IoU > 0.25: {:.1} %; IoU > 0.5: {:.1} %.",
            l.n,
            l.threshold,
            l.mean_iou,
            100.0 * l.frac_iou_above_025,
            100.0 * l.frac_iou_above_05
        ));
    }
    if let Some(c) = &report.saliency {
        doc.h(2, "Saliency methods compared");
        doc.p(format!(
            "Each method's map on the same model and images, drawn for the predicted class, upsampled bilinearly to \
             the image from its cells' centres (a ResNet's at their receptive fields' centres). Box IoU: the union of the boxes of the map thresholded at {} against the lesion; pointing \
             game: the map's maximum inside the lesion (ties shared); energy pointing game: share of the map's mass \
             inside the lesion; saliency AUROC: the map as a pixel classifier of the lesion (0.5 = chance); flip \
             consistency: correlation between the map of the mirrored image and the mirrored map (1 = the map \
             follows the image; n/a for a constant map); deletion AUC: the predicted class's probability as the \
             most salient pixels are replaced by the image's mean in {} steps (lower = more faithful). Mean over \
             images [95 % bootstrap interval, {} resamples]; n/a where undefined.",
            c.threshold,
            crate::eval::saliency::DELETION_STEPS,
            c.bootstrap_resamples
        ));
        doc.table(
            crate::eval::saliency::TABLE_HEADER.iter().map(|s| s.to_string()).collect(),
            crate::eval::saliency::table(c),
        );
    }
    if opts.overlays > 0 && !p.attention.is_empty() {
        doc.h(1, "Attention");
        doc.p(format!(
            "Chosen to show every class, right and wrong predictions{}. Left: the X-ray. Right: the {} ({}×{} map, \
             upsampled bilinearly from its cells' centres; a ResNet's at their receptive fields' centres), coloured on a fixed scale (0 = none, 1 = the map's maximum; the threshold {} is \
             the black tick on the colour bar), threshold contour (white), predicted boxes (green), ground truth \
             (magenta).",
            source_column(ds).map(|c| format!(" and every {c}")).unwrap_or_default(),
            opts.map.describe(),
            p.attention_grid.side,
            p.attention_grid.side,
            opts.threshold
        ));
        std::fs::create_dir_all(dir.join("overlays")).at(dir.join("overlays"))?;
        let base = ds.base_dir();
        for row in overlay_rows(p, ds, opts.overlays) {
            let s = &ds.samples[p.indices[row]];
            let img = decode_file(&s.path, &DecodeLimits::default())?;
            let truth = match opts.ground_truth {
                Some(gt) => gt.mask(s, &base, img.width, img.height)?,
                None => None,
            };
            let (panel, _) = attention_overlay(&img, &p.attention[row], p.attention_grid, opts.threshold, truth.as_deref());
            let pred = argmax(&p.probs[row]);
            let iou = localization
                .as_ref()
                .and_then(|l| l.images.iter().find(|i| i.path == s.name))
                .map(|i| format!(", IoU {:.2}", i.iou))
                .unwrap_or_default();
            let verdict = format!(
                "true {}, predicted {} ({:.1} %){iou}",
                ds.classes[p.labels[row]],
                ds.classes[pred],
                100.0 * p.probs[row][pred]
            );
            let native = format!("{0}×{0} {1} map, upsampled; colours 0..1 of its maximum", p.attention_grid.side, opts.map);
            let panel = with_caption(&panel, &[verdict.clone(), native, s.name.clone()]);
            let stem = s.path.file_stem().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let rel = PathBuf::from("overlays").join(format!("{row:04}_{stem}.png"));
            panel.save(dir.join(&rel)).map_err(|e| crate::Error::Data(format!("{}: {e}", dir.join(&rel).display())))?;
            doc.image(rel, format!("{}: {verdict}", s.name));
        }
    }
    if !report.unreadable.is_empty() {
        doc.h(1, format!("Images not evaluated ({})", report.unreadable.len()));
        doc.p("These images of the data are in no metric above.");
        doc.table(
            vec!["file".into(), "problem".into()],
            report.unreadable.iter().map(|u| vec![u.path.clone(), u.reason.clone()]).collect(),
        );
    }
    if !report.warnings.is_empty() {
        doc.h(1, format!("Images evaluated despite a warning ({})", report.warnings.len()));
        doc.p("These images were used; `--strict` refuses them.");
        doc.table(
            vec!["file".into(), "warning".into()],
            report.warnings.iter().map(|u| vec![u.path.clone(), u.reason.clone()]).collect(),
        );
    }
    let (_, html) = doc.write(dir)?;
    Ok(EvalOutput { report, localization, html })
}
