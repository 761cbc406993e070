//! The run folder as a file format: its layout, file names and schemas, with the only read and
//! write functions for them. Training writes through this module; report, reproduce and serve
//! read through it.
//!
//! ```text
//! RUN/run.json            what was run (RunSpec): format_version, data, classes, folds, command
//! RUN/config.toml         the resolved training config
//! RUN/split.json          the patient-level folds (k ≥ 2)
//! RUN/fold-K/             per fold: train.jsonl, checkpoint-last/best.safetensors,
//!                         model.safetensors, metrics.json, predictions.csv (held-out fold),
//!                         fold.json (FoldResult; written last, so it marks a finished fold)
//! RUN/cv-summary.json     per-fold metrics and mean ± std (k ≥ 2); cv-summary.md the same as a table
//! RUN/train.jsonl, RUN/model.safetensors, ...   (k = 0: the final model; a validation.fraction of the
//!                         images held out to pick its epoch and fit its calibration, no test data)
//! ```
//!
//! A row of a `magsd reproduce` grid is a run folder whose folds share the grid's `split.json`,
//! one folder up ([`split_file`]). An evaluation folder (`magsd eval --out`) holds the same
//! `metrics.json` and `predictions.csv` as a fold.
//!
//! Format versions: 2 writes `predictions.csv` probabilities at full precision (1 rounded them
//! to 6 decimals) and marks a model file saved before its training finished (see
//! `model::weights::UNFINISHED_KEY`); both versions read the same way.
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde::de::DeserializeOwned;

use crate::data::dataset::{Dataset, DatasetOptions};
use crate::data::split::{Grouping, SplitFile};
use crate::error::{Error, Result, write_atomic};
use crate::eval::evaluate::Predictions;
use crate::eval::overlap::TrainingOverlap;
use crate::eval::metrics::{MeanStd, Metrics, argmax};

/// The layout version written into `run.json`. Runs written before the field existed have
/// the same layout and read as version 1; version 1 and 2 folders read the same way.
pub const FORMAT_VERSION: u32 = 2;

pub const RUN_FILE: &str = "run.json";
pub const CONFIG_FILE: &str = "config.toml";
pub const SPLIT_FILE: &str = "split.json";
pub const SUMMARY_FILE: &str = "cv-summary.json";
pub const SUMMARY_MARKDOWN: &str = "cv-summary.md";
/// Per fold: the fold's result; its presence means the fold is finished.
pub const FOLD_RESULT_FILE: &str = "fold.json";
/// Per fold: the held-out evaluation (`EvalReport`).
pub const METRICS_FILE: &str = "metrics.json";
/// Per fold: held-out predictions (path, true label, one probability per class, predicted).
pub const PREDICTIONS_FILE: &str = "predictions.csv";
/// The training log: one JSON record per logged step and per epoch.
pub const LOG_FILE: &str = "train.jsonl";
pub const LAST_CHECKPOINT: &str = "checkpoint-last.safetensors";
pub const BEST_CHECKPOINT: &str = "checkpoint-best.safetensors";
/// The selected model (best epoch, or the last without validation).
pub const MODEL_FILE: &str = "model.safetensors";

/// The folder of fold `k` (0-based) inside a run folder.
pub fn fold_dir(run: &Path, k: usize) -> PathBuf {
    run.join(format!("fold-{k}"))
}

/// The fold number of a folder named as [`fold_dir`] names it.
pub fn fold_of_dir(dir: &Path) -> Option<usize> {
    dir.file_name()?.to_str()?.strip_prefix("fold-")?.parse().ok()
}

/// The folds of a run folder that hold a model file, in order (at most `limit` folds looked at).
pub fn fold_models(run: &Path, limit: usize) -> Vec<PathBuf> {
    (0..limit).map(|k| fold_dir(run, k).join(MODEL_FILE)).filter(|p| p.is_file()).collect()
}

/// The split of a run's folds: its own `split.json`, or for a row of a `magsd reproduce` grid
/// (which has none) the grid's, one folder up.
pub fn split_file(run: &Path) -> PathBuf {
    let own = run.join(SPLIT_FILE);
    match run.parent().map(|p| p.join(SPLIT_FILE)) {
        Some(grid) if !own.exists() && grid.is_file() => grid,
        _ => own,
    }
}

/// A model argument → its model file: a file is itself, a run folder (or a fold folder) its
/// `model.safetensors`; a cross-validation run folder is refused with its fold models named.
pub fn resolve_model(path: &Path) -> Result<PathBuf> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    let direct = path.join(MODEL_FILE);
    if direct.is_file() {
        return Ok(direct);
    }
    let folds: Vec<String> = fold_models(path, 100).iter().map(|p| p.display().to_string()).collect();
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

/// The run folder a model file belongs to and, for a cross-validation fold, the fold number:
/// its own folder (`--folds 0`) or, for `fold-K/model.safetensors`, the one above, whichever
/// holds `run.json`.
pub fn run_of_model(model: &Path) -> Option<(PathBuf, Option<usize>)> {
    let dir = model.parent()?;
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    if dir.join(RUN_FILE).is_file() {
        return Some((dir.to_path_buf(), None));
    }
    let fold = fold_of_dir(dir)?;
    let run = dir.parent()?;
    run.join(RUN_FILE).is_file().then(|| (run.to_path_buf(), Some(fold)))
}

fn default_version() -> u32 {
    1
}

/// What a run folder was made from (`run.json`), enough to resume it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunSpec {
    #[serde(default = "default_version")]
    pub format_version: u32,
    pub data: PathBuf,
    pub label_column: String,
    pub classes: Vec<String>,
    pub folds: usize,
    pub command: String,
    /// How the folds were made (runs written before grouped folds existed are patient-level).
    #[serde(default, skip_serializing_if = "Grouping::is_patient")]
    pub grouping: Grouping,
    /// `--allow-outside-root`: the manifest's paths may lead outside its folder (runs written
    /// before this field existed had it off).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_outside_root: bool,
}

impl RunSpec {
    /// How to open the run's data again: its label column, classes in the run's order, and
    /// whether its manifest may lead outside its folder.
    pub fn dataset_options(&self) -> DatasetOptions {
        DatasetOptions {
            label_column: self.label_column.clone(),
            classes: (!self.classes.is_empty()).then(|| self.classes.clone()),
            allow_outside_root: self.allow_outside_root,
        }
    }

    /// Reads `dir/run.json`; a newer format version than this build knows is an error.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(RUN_FILE);
        let spec: RunSpec = serde_json::from_slice(&crate::files::read(&path, crate::files::MAX_TEXT_BYTES, "run-folder file")?)
            .map_err(|e| Error::bad_file(&path, format!("not a magsd run: {e}")))?;
        if spec.format_version > FORMAT_VERSION {
            return Err(Error::bad_file(
                &path,
                format!("run folder format {} is newer than this magsd reads ({FORMAT_VERSION})", spec.format_version),
            ));
        }
        Ok(spec)
    }

    /// Writes `dir/run.json`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        write_json(&dir.join(RUN_FILE), self)
    }
}

/// One finished fold (`fold-K/fold.json`): sizes, the selected epoch and held-out metrics.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FoldResult {
    pub fold: usize,
    pub train_images: usize,
    pub val_images: usize,
    pub test_images: usize,
    pub best_epoch: Option<usize>,
    /// Macro means over the classes present in both parts (see `train::cv`).
    pub metrics: Metrics,
    /// Classes with no image in the training part (possible with grouped folds).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub absent_from_training: Vec<String>,
    /// Classes with no image in the held-out part.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub absent_from_test: Vec<String>,
}

impl FoldResult {
    /// Reads `fold_dir/fold.json`, or `None` when the fold has not finished.
    pub fn load_if_done(fold_dir: &Path) -> Result<Option<Self>> {
        let path = fold_dir.join(FOLD_RESULT_FILE);
        if !path.exists() {
            return Ok(None);
        }
        read_json(&path).map(Some)
    }

    pub fn save(&self, fold_dir: &Path) -> Result<()> {
        write_json(&fold_dir.join(FOLD_RESULT_FILE), self)
    }
}

/// Per-fold results and their mean ± std (`cv-summary.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CvSummary {
    pub folds: Vec<FoldResult>,
    pub mean_std: BTreeMap<String, MeanStd>,
}

impl CvSummary {
    /// Reads `run/cv-summary.json`, or `None` when the run has none (a final-model run, or
    /// cross-validation not finished).
    pub fn load_if_present(run: &Path) -> Result<Option<Self>> {
        let path = run.join(SUMMARY_FILE);
        if !path.exists() {
            return Ok(None);
        }
        read_json(&path).map(Some)
    }

    pub fn save(&self, run: &Path) -> Result<()> {
        write_json(&run.join(SUMMARY_FILE), self)
    }
}

/// The files that trained the model at `model`, resolved; `None` when the model has no run
/// folder, or its training data can no longer be read.
pub fn training_files(model: &Path) -> Option<(PathBuf, HashSet<PathBuf>)> {
    let (run, fold) = run_of_model(model)?;
    let spec = RunSpec::load(&run).ok()?;
    // The run accepted these paths when it was trained.
    let opts = DatasetOptions { allow_outside_root: true, ..spec.dataset_options() };
    let data = if spec.data.is_relative() && !spec.data.exists() { run.join(&spec.data) } else { spec.data.clone() };
    let ds = Dataset::open(&data, &opts).ok()?;
    let held_out: HashSet<String> = match fold {
        None => HashSet::new(),
        Some(k) => {
            let split = SplitFile::load(&split_file(&run)).ok()?;
            split.folds.get(k)?.iter().cloned().collect()
        }
    };
    let files = ds
        .samples
        .iter()
        .filter(|s| !held_out.contains(&s.name))
        .filter_map(|s| s.path.canonicalize().ok())
        .collect();
    Some((run, files))
}

/// The evaluated images of `ds` (at `indices`) that trained the model at `model`.
pub fn training_overlap(model: &Path, ds: &Dataset, indices: &[usize]) -> Option<TrainingOverlap> {
    let (run, trained) = training_files(model)?;
    let hits: Vec<String> = indices
        .iter()
        .map(|&i| &ds.samples[i])
        .filter(|s| s.path.canonicalize().is_ok_and(|p| trained.contains(&p)))
        .map(|s| s.name.clone())
        .collect();
    (!hits.is_empty()).then(|| TrainingOverlap {
        run: run.display().to_string(),
        images: hits.len(),
        of: indices.len(),
        examples: hits.into_iter().take(5).collect(),
    })
}

/// What a folder without `run.json` is, and what to do instead, for `magsd report` (which
/// needs a training run folder). The grid's file name is `reproduce::GRID_FILE`.
pub fn not_a_run(dir: &Path) -> String {
    let what = if !dir.is_dir() {
        "is not a folder".to_string()
    } else if dir.join(FOLD_RESULT_FILE).is_file() || fold_of_dir(dir).is_some() {
        let run = dir.parent().map_or_else(|| "..".into(), |p| p.display().to_string());
        format!("is one fold of a training run; run `magsd report {run}` on the run folder")
    } else if dir.join("reproduce.json").is_file() {
        format!("is a `magsd reproduce` grid; its tables are written by `magsd reproduce --out {} --collect`, and `magsd report` takes one row's folder inside it", dir.display())
    } else if dir.join(METRICS_FILE).is_file() {
        "is an evaluation folder (`magsd eval` or `localize`), whose report.md and report.html eval wrote; run eval again to rewrite them".to_string()
    } else if dir.join("train").join(LOG_FILE).is_file() {
        "is a `magsd demo` folder, whose report.md and report.html the demo wrote".to_string()
    } else {
        "is not a training run folder".to_string()
    };
    format!("{} {what} (it has no {RUN_FILE}); `magsd report` rewrites the report of a `magsd train --out` folder", dir.display())
}

/// The image column of every predictions CSV (`predictions.csv` and `predict --out`).
pub const PATH_COLUMN: &str = "path";
/// The predicted class column of every predictions CSV (`predictions.csv` and `predict --out`).
pub const PREDICTED_COLUMN: &str = "predicted_label";

/// Writes `predictions.csv` (a fold's held-out images, or an evaluation's): path, true label,
/// one probability column per class at full precision (the shortest text that reads back as
/// the same number, so AUC from the file equals the one in `metrics.json`), predicted label.
/// Text cells go through [`crate::files::csv_cell`]; [`read_predictions`] reads them back.
pub fn write_predictions(path: &Path, ds: &Dataset, p: &Predictions) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header = vec![PATH_COLUMN.to_string(), "true_label".to_string()];
    header.extend(ds.classes.iter().map(|c| format!("prob_{c}")));
    header.push(PREDICTED_COLUMN.into());
    w.write_record(&header).expect("in-memory write");
    for (row, &i) in p.indices.iter().enumerate() {
        let cell = |s: &str| crate::files::csv_cell(s).into_owned();
        let mut rec = vec![cell(&ds.samples[i].name), cell(&ds.classes[p.labels[row]])];
        rec.extend(p.probs[row].iter().map(|v| v.to_string()));
        rec.push(cell(&ds.classes[argmax(&p.probs[row])]));
        w.write_record(&rec).expect("in-memory write");
    }
    let bytes = w.into_inner().map_err(|e| Error::Data(e.to_string()))?;
    write_atomic(path, &bytes)
}

/// Reads a fold's `predictions.csv` back: (image name, true class index, probabilities).
pub fn read_predictions(path: &Path, classes: &[String]) -> Result<Vec<(String, usize, Vec<f64>)>> {
    let text = crate::files::read(path, crate::files::MAX_TEXT_BYTES, "predictions CSV")?;
    let mut r = csv::Reader::from_reader(text.as_slice());
    let mut out = Vec::new();
    for rec in r.records() {
        let rec = rec.map_err(|e| Error::bad_file(path, e.to_string()))?;
        let y = classes
            .iter()
            .position(|c| Some(c.as_str()) == rec.get(1).map(crate::files::csv_uncell))
            .ok_or_else(|| Error::bad_file(path, format!("unknown label {:?}", rec.get(1))))?;
        let probs = (0..classes.len())
            .map(|k| rec.get(2 + k).and_then(|v| v.parse::<f64>().ok()).ok_or_else(|| Error::bad_file(path, "bad probability")))
            .collect::<Result<Vec<f64>>>()?;
        out.push((crate::files::csv_uncell(rec.get(0).unwrap_or_default()).to_string(), y, probs));
    }
    Ok(out)
}

/// Reads a JSON file of this layout, naming the file in any error.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    serde_json::from_slice(&crate::files::read(path, crate::files::MAX_TEXT_BYTES, "run-folder file")?).map_err(|e| Error::bad_file(path, e.to_string()))
}

/// Writes pretty JSON atomically (a reader never sees half a file).
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    write_atomic(path, &serde_json::to_vec_pretty(value).expect("run-folder types serialise"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_json_without_a_version_reads_as_version_1_and_newer_versions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(RUN_FILE),
            r#"{"data":"x.csv","label_column":"label","classes":["a","b"],"folds":2,"command":"magsd train"}"#,
        )
        .unwrap();
        assert_eq!(RunSpec::load(dir.path()).unwrap().format_version, 1);
        std::fs::write(
            dir.path().join(RUN_FILE),
            r#"{"format_version":99,"data":"x.csv","label_column":"label","classes":["a"],"folds":2,"command":""}"#,
        )
        .unwrap();
        let e = RunSpec::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("run.json") && e.contains("newer"), "{e}");
    }
}
