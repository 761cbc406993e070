//! The report of a training run folder (layout: `crate::runfolder`): settings, per-fold and
//! mean ± std metrics, pooled out-of-fold ROC and confusion figures, training curves.
use std::path::{Path, PathBuf};

use super::document::Document;
use super::evaluation::{metric_header, metric_row};
use super::plots::{ConfusionFigure, CurvesFigure, RocFigure, save};
use crate::error::{IoContext, Result};
use crate::eval::metrics::compute;
use crate::runfolder::{CONFIG_FILE, CvSummary, LOG_FILE, PREDICTIONS_FILE, RunSpec, fold_dir, read_predictions};

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
        doc.h(1, format!("{}-fold patient-level cross-validation", s.folds.len()));
        let mut rows: Vec<Vec<String>> = s.folds.iter().map(|f| metric_row(&format!("fold {}", f.fold), &f.metrics)).collect();
        let ms = |k: &str| {
            s.mean_std.get(k).map(|v| format!("{:.2} ± {:.2}", 100.0 * v.mean, 100.0 * v.std)).unwrap_or_else(|| "n/a".into())
        };
        rows.push(vec!["mean ± std".into(), String::new(), ms("accuracy"), ms("sensitivity"), ms("specificity"), ms("f1"), ms("auc")]);
        doc.table(metric_header("held-out fold"), rows);
        doc.p(if s.folds.iter().all(|f| f.best_epoch.is_some()) {
            "Each fold's model (best epoch on a patient-level validation split of its training folds) is evaluated once on its held-out fold. Std over folds uses n − 1."
        } else {
            "Each fold's model (its last epoch: this run had no validation split) is evaluated once on its held-out fold. Std over folds uses n − 1."
        });

        // Pooled out-of-fold predictions: every image predicted once, by the model that did not see it.
        let mut labels = Vec::new();
        let mut probs = Vec::new();
        for f in &s.folds {
            for (_, y, p) in read_predictions(&fold_dir(run, f.fold).join(PREDICTIONS_FILE), classes)? {
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
