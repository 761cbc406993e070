//! The report of a training run folder (layout: `crate::runfolder`): settings, per-fold and
//! mean ± std metrics, pooled out-of-fold ROC and confusion figures, the shortcut audit (pooled
//! within-source figures and each fold's probes), training curves.
use std::path::{Path, PathBuf};

use super::document::Document;
use super::evaluation::{metric_header, metric_row};
use super::plots::{ConfusionFigure, CurvesFigure, RocFigure, save};
use crate::error::Result;
use super::evaluation::reliability_curves;
use super::reliability_plot::ReliabilityFigure;
use crate::data::dataset::{Dataset, DatasetOptions};
use crate::eval::calibration::CalibrationReport;
use crate::eval::results::EvalReport;
use crate::eval::metrics::{compute, fixed4_or_na};
use crate::eval::probe::SourceProbe;
use crate::eval::reliability::{CalibrationComparison, Reliability};
use crate::eval::within_source::{self, Scored, within_source};
use crate::model::weights::{load_tensors, split_variables, unfinished};
use crate::runfolder::{CONFIG_FILE, CvSummary, LOG_FILE, METRICS_FILE, MODEL_FILE, PREDICTIONS_FILE, RunSpec, fold_dir, read_predictions};
use std::collections::HashMap;

/// Writes `RUN/report.md` and `RUN/report.html`; returns the HTML's path.
pub fn write_run_report(run: &Path) -> Result<PathBuf> {
    let spec = RunSpec::load(run)?;
    let config = crate::files::read_to_string(&run.join(CONFIG_FILE), crate::files::MAX_TEXT_BYTES, "config")?;
    let classes = &spec.classes;
    // The network's name as the paper writes it (a run of `--arch resnet50` is no MAG-SD run).
    let network = toml::from_str::<crate::train::config::TrainConfig>(&config)
        .map(|c| c.model.arch.paper_name())
        .unwrap_or("MAG-SD");
    let mut doc = Document::new(format!("{network} training run {}", run.display()));
    doc.p(format!("Data: {} (label column '{}'; classes {}).", spec.data.display(), spec.label_column, classes.join(", ")));
    doc.p(format!("Command: {}", spec.command));

    if let Some(s) = CvSummary::load_if_present(run)? {
        let protocol = spec.grouping.describe(spec.folds);
        doc.h(1, format!("{}{}", protocol[..1].to_uppercase(), &protocol[1..]));
        let mut rows: Vec<Vec<String>> = s.folds.iter().map(|f| metric_row(&format!("fold {}", f.fold), &f.metrics)).collect();
        let ms = |k: &str| {
            s.mean_std.get(k).map(|v| format!("{:.2} ± {:.2}", 100.0 * v.mean, 100.0 * v.std)).unwrap_or_else(|| "n/a".into())
        };
        rows.push(vec!["mean ± std".into(), String::new(), ms("accuracy"), ms("sensitivity"), ms("specificity"), ms("f1"), ms("auc")]);
        doc.table(metric_header("held-out fold"), rows);
        for line in crate::train::cv::absent_class_notes(&s) {
            doc.p(line);
        }
        doc.p(if s.folds.iter().all(|f| f.best_epoch.is_some()) {
            "Each fold's model (best epoch on a patient-level validation split of its training folds) is evaluated once on its held-out fold. Std over folds uses n − 1."
        } else {
            "Each fold's model (its last epoch: this run had no validation split) is evaluated once on its held-out fold. Std over folds uses n − 1."
        });

        // Pooled out-of-fold predictions: every image predicted once, by the model that did not see it.
        let mut labels = Vec::new();
        let mut probs = Vec::new();
        let mut names = Vec::new();
        for f in &s.folds {
            for (name, y, p) in read_predictions(&fold_dir(run, f.fold).join(PREDICTIONS_FILE), classes)? {
                names.push(name);
                labels.push(y);
                probs.push(p);
            }
        }
        let pooled = compute(&labels, &probs, classes);
        doc.h(2, "Pooled out-of-fold predictions");
        doc.table(metric_header("set"), vec![metric_row("all folds", &pooled)]);
        save(&RocFigure { title: "ROC, pooled out-of-fold".into(), classes, labels: &labels, probs: &probs }, &run.join("roc"))?;
        save(&ConfusionFigure { title: "Confusion, pooled out-of-fold".into(), classes, confusion: &pooled.confusion }, &run.join("confusion"))?;
        doc.image("roc.png", "ROC curves per class, out-of-fold predictions of all folds");
        doc.image("confusion.png", "Confusion matrix (rows normalised), out-of-fold predictions of all folds");
        by_source(&mut doc, run, &s);
        shortcut_audit(&mut doc, run, &spec, &s, &names, &labels, &probs)?;
        calibration_section(&mut doc, run, &s)?;
        doc.h(2, "Training curves");
        for f in &s.folds {
            let log = fold_dir(run, f.fold).join(LOG_FILE);
            let stem = fold_dir(run, f.fold).join("curves");
            save(&CurvesFigure::from_log(&format!("fold {}", f.fold), &log)?, &stem)?;
            let rel = stem.strip_prefix(run).unwrap_or(&stem).with_extension("png");
            doc.image(rel.display().to_string(), format!("fold {}: loss and accuracy per epoch", f.fold));
        }
    } else if run.join(LOG_FILE).exists() {
        let model = run.join(MODEL_FILE);
        let meta = if model.is_file() { Some(load_tensors(&model)?) } else { None };
        match meta.as_ref().map(|(_, meta)| unfinished(meta)) {
            Some(None) => {
                doc.h(1, "Final model");
            }
            Some(Some(u)) => {
                doc.h(1, "Unfinished model");
                doc.p(format!("{MODEL_FILE}: {u}."));
            }
            None => {
                doc.h(1, "Unfinished run");
                doc.p(format!("No {MODEL_FILE} yet: training stopped before its first epoch ended (`magsd train --resume RUN` continues it)."));
            }
        }
        doc.p(final_split_text(&run.join(LOG_FILE)));
        save(&CurvesFigure::from_log("final model", &run.join(LOG_FILE))?, &run.join("curves"))?;
        doc.image("curves.png", "loss and accuracy per epoch");
        if let Some((tensors, meta)) = meta {
            let extra = split_variables(tensors).1;
            let r = Reliability::from_file_parts(&meta, &extra, &run.join(MODEL_FILE))?;
            doc.h(2, "Calibration, unusual inputs, operating points");
            for line in r.describe() {
                doc.p(line);
            }
        }
    }
    doc.h(1, "Configuration");
    doc.code(config);
    let (_, html) = doc.write(run)?;
    Ok(html)
}

/// Each held-out fold's metrics per source (the `by` sections of `fold-K/metrics.json`), as
/// `eval`'s report shows them: the sources are often confounded with the classes.
fn by_source(doc: &mut super::document::Document, run: &Path, s: &CvSummary) {
    let reports: Vec<(usize, EvalReport)> =
        s.folds.iter().filter_map(|f| EvalReport::load(&fold_dir(run, f.fold).join(METRICS_FILE)).ok().map(|r| (f.fold, r))).collect();
    let mut columns: Vec<&String> = reports.iter().flat_map(|(_, r)| r.by.keys()).collect();
    columns.sort();
    columns.dedup();
    for col in columns {
        doc.h(2, format!("By {col} (held-out folds)"));
        let groups = reports
            .iter()
            .flat_map(|(k, r)| r.by.get(col).into_iter().flatten().map(move |(v, m)| (format!("fold {k}: {v}"), m)));
        super::evaluation::by_table(doc, col, groups);
    }
}

/// Pooled within-source figures of the out-of-fold predictions (the images' sources and
/// patients come from the run's data; without it the section says so) and each fold's probes.
fn shortcut_audit(
    doc: &mut Document,
    run: &Path,
    spec: &RunSpec,
    s: &CvSummary,
    names: &[String],
    labels: &[usize],
    probs: &[Vec<f64>],
) -> Result<()> {
    doc.h(2, "Shortcut audit (pooled out-of-fold)");
    let opts = DatasetOptions { classes: Some(spec.classes.clone()), ..spec.dataset_options() };
    let ds = match Dataset::open(&spec.data, &opts) {
        Ok(ds) => ds,
        Err(e) => {
            doc.p(format!("Not computed: the run's data could not be read ({e}); the images' sources come from it."));
            return Ok(());
        }
    };
    let by_name: HashMap<&str, usize> = ds.samples.iter().enumerate().map(|(i, x)| (x.name.as_str(), i)).collect();
    let Some(rows) = names.iter().map(|n| by_name.get(n.as_str()).copied()).collect::<Option<Vec<usize>>>() else {
        doc.p(format!("Not computed: some predicted images are no longer in {}.", spec.data.display()));
        return Ok(());
    };
    let columns = ds.default_breakdown();
    if columns.is_empty() {
        doc.p("Not computed: the data has no source column (source_repo or dataset).");
        return Ok(());
    }
    doc.p(super::audit::DEFINITIONS);
    let patients: Vec<String> = rows.iter().map(|&i| ds.samples[i].patient_key()).collect();
    // A class absent from any fold's training part stays out of the pooled macro means.
    let counted: Vec<bool> = spec.classes.iter().map(|c| !s.folds.iter().any(|f| f.absent_from_training.contains(c))).collect();
    for col in &columns {
        let sources: Vec<String> = rows.iter().map(|&i| ds.samples[i].meta.get(col).filter(|v| !v.is_empty()).cloned().unwrap_or_else(|| "(empty)".into())).collect();
        let scored = Scored { labels, probs, sources: &sources, patients: &patients, classes: &spec.classes, counted: &counted };
        doc.h(3, format!("Within one {col}"));
        super::audit::within_source_section(doc, &within_source(col, &scored, within_source::RESAMPLES, 0));
        let probes: Vec<(usize, SourceProbe)> = s
            .folds
            .iter()
            .filter_map(|f| {
                let path = fold_dir(run, f.fold).join(METRICS_FILE);
                let report: EvalReport = crate::runfolder::read_json(&path).ok()?;
                report.probe.get(col).cloned().map(|p| (f.fold, p))
            })
            .collect();
        if !probes.is_empty() {
            let cell = |p: Option<&crate::eval::probe::ProbeScore>| {
                p.map(|p| format!("{:.1} (majority {:.1})", 100.0 * p.accuracy, 100.0 * p.majority_rate)).unwrap_or_else(|| "n/a".into())
            };
            doc.table(
                vec!["fold".into(), format!("{col} probe %"), format!("class within mixed {col}s %"), "shortcut signature".into()],
                probes
                    .iter()
                    .map(|(k, p)| {
                        vec![
                            k.to_string(),
                            cell(p.source.as_ref()),
                            cell(p.class_within_pooled.as_ref()),
                            if p.shortcut_signature { "yes".into() } else { "no".into() },
                        ]
                    })
                    .collect(),
            );
            let seen = probes.iter().filter(|(_, p)| p.shortcut_signature).count();
            doc.p(format!(
                "**{seen} of {} folds show the shortcut signature** (a source probe with skill ≥ {:.2} and a pooled within-{col} \
                 class probe with skill ≤ {:.2}). Probes per fold: linear probes on the features of that fold's model over its \
                 held-out images (each fold's model has its own features, so they are not pooled); details in \
                 fold-K/metrics.json.",
                probes.len(),
                crate::eval::probe::SOURCE_SKILL_HIGH,
                crate::eval::probe::CLASS_SKILL_LOW
            ));
        }
    }
    Ok(())
}

/// "Trained on N images; M held out ..." from the log's start record.
fn final_split_text(log: &Path) -> String {
    let start = crate::files::read_to_string(log, crate::files::MAX_TEXT_BYTES, "training log")
        .ok()
        .and_then(|t| t.lines().next().and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok()));
    let n = |k: &str| start.as_ref().and_then(|v| v[k].as_u64());
    match (n("train_images"), n("val_images")) {
        (Some(t), Some(0)) => format!("Trained on all {t} images given (no validation split: the last epoch's model is kept, probabilities are not calibrated, and the detector's threshold comes from the training images)."),
        (Some(t), Some(v)) => format!("Trained on {t} images; a patient-level {v} were held out to pick the best epoch and to fit the calibration, the detector's threshold and the operating points."),
        _ => "Training images: see train.jsonl.".into(),
    }
}

/// Per-fold and pooled calibration (ECE, Brier before and after), unusual images and operating
/// points, from each fold's metrics.json; the pooled reliability diagram as `reliability.png`.
fn calibration_section(doc: &mut super::document::Document, run: &Path, s: &CvSummary) -> Result<()> {
    let mut folds = Vec::new();
    for f in &s.folds {
        let path = fold_dir(run, f.fold).join(METRICS_FILE);
        if let Some(t) = EvalReport::load(&path).ok().and_then(|r| r.reliability) {
            folds.push((f.fold, t));
        }
    }
    if folds.is_empty() {
        return Ok(());
    }
    doc.h(2, "Calibration and unusual inputs, per fold and pooled");
    doc.p(format!("Probabilities: {} (fold {}; each fold fits its own).", folds[0].1.probabilities, folds[0].0));
    let row = |name: String, c: &CalibrationComparison, flagged: String| {
        vec![
            name,
            c.after.images.to_string(),
            if c.temperature == 1.0 { "1 (none)".into() } else { format!("{:.3}", c.temperature) },
            format!("{:.4}", c.before.ece),
            format!("{:.4}", c.after.ece),
            fixed4_or_na(c.before.brier),
            fixed4_or_na(c.after.brier),
            flagged,
        ]
    };
    let mut rows: Vec<Vec<String>> = folds
        .iter()
        .map(|(k, t)| row(format!("fold {k}"), &t.calibration, format!("{} of {}", t.unusual.flagged, t.unusual.images)))
        .collect();
    let before: Vec<&CalibrationReport> = folds.iter().map(|(_, t)| &t.calibration.before).collect();
    let after: Vec<&CalibrationReport> = folds.iter().map(|(_, t)| &t.calibration.after).collect();
    let pooled = CalibrationComparison { temperature: f64::NAN, before: CalibrationReport::pool(&before), after: CalibrationReport::pool(&after) };
    let flagged: usize = folds.iter().map(|(_, t)| t.unusual.flagged).sum();
    let mut pooled_row = row("pooled".into(), &pooled, format!("{flagged} of {}", pooled.after.images));
    pooled_row[2] = "each fold's".into();
    rows.push(pooled_row);
    doc.table(
        ["held-out fold", "images", "T", "ECE raw", "ECE calibrated", "Brier raw", "Brier calibrated", "flagged unusual"].iter().map(|s| s.to_string()).collect(),
        rows,
    );
    doc.p("ECE: expected calibration error, top-label, 15 equal-width bins; pooled: the bins of all folds merged. Brier: mean Σ_k (p_k − y_k)², 0 to 2.");
    let mut curves = reliability_curves(&pooled);
    curves[1].0 = "each fold's temperature".into();
    save(&ReliabilityFigure { title: "Reliability, pooled out-of-fold".into(), curves }, &run.join("reliability"))?;
    doc.image("reliability.png", "Reliability diagram of the pooled out-of-fold predictions, before and after calibration");
    let ops: Vec<Vec<String>> = folds
        .iter()
        .flat_map(|(k, t)| {
            t.operating_points.iter().map(move |r| {
                vec![
                    format!("fold {k}"),
                    format!("{} {} {:.2}", r.point.class, r.point.target.name(), r.point.target.value()),
                    format!("{:.4}", r.point.threshold),
                    crate::eval::metrics::pct_or_na(r.sensitivity),
                    crate::eval::metrics::pct_or_na(r.specificity),
                ]
            })
        })
        .collect();
    if !ops.is_empty() {
        doc.h(2, "Operating points on the held-out folds");
        doc.table(["fold", "point", "threshold", "SEN %", "SPC %"].iter().map(|s| s.to_string()).collect(), ops);
    }
    Ok(())
}
