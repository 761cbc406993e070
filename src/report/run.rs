//! The report of a training run folder (layout: `crate::runfolder`): settings, per-fold and
//! mean ± std metrics, pooled out-of-fold ROC and confusion figures, the shortcut audit (pooled
//! within-source figures and each fold's probes), training curves.
use std::path::{Path, PathBuf};

use super::document::Document;
use super::evaluation::{metric_header, metric_row};
use super::plots::{ConfusionFigure, CurvesFigure, RocFigure, save};
use crate::error::{IoContext, Result};
use crate::eval::metrics::compute;
use crate::data::dataset::{Dataset, DatasetOptions};
use crate::eval::evaluate::EvalReport;
use crate::eval::probe::SourceProbe;
use crate::eval::within_source::{self, Scored, within_source};
use crate::runfolder::{CONFIG_FILE, CvSummary, LOG_FILE, METRICS_FILE, PREDICTIONS_FILE, RunSpec, fold_dir, read_predictions};
use std::collections::HashMap;

/// Writes `RUN/report.md` and `RUN/report.html`; returns the HTML's path.
pub fn write_run_report(run: &Path) -> Result<PathBuf> {
    let spec = RunSpec::load(run)?;
    let config = std::fs::read_to_string(run.join(CONFIG_FILE)).at(run.join(CONFIG_FILE))?;
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
        shortcut_audit(&mut doc, run, &spec, &s, &names, &labels, &probs)?;
        doc.h(2, "Training curves");
        for f in &s.folds {
            let log = fold_dir(run, f.fold).join(LOG_FILE);
            let stem = fold_dir(run, f.fold).join("curves");
            save(&CurvesFigure::from_log(&format!("fold {}", f.fold), &log)?, &stem)?;
            doc.image(format!("fold-{}/curves.png", f.fold), format!("fold {}: loss and accuracy per epoch", f.fold));
        }
    } else if run.join(LOG_FILE).exists() {
        doc.h(1, "Final model (trained on all the data given)");
        save(&CurvesFigure::from_log("final model", &run.join(LOG_FILE))?, &run.join("curves"))?;
        doc.image("curves.png", "loss and accuracy per epoch");
    }
    doc.h(1, "Configuration");
    doc.code(config);
    let (_, html) = doc.write(run)?;
    Ok(html)
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
    let opts = DatasetOptions { label_column: spec.label_column.clone(), classes: Some(spec.classes.clone()), ..Default::default() };
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
