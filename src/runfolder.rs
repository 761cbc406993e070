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
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde::de::DeserializeOwned;

use crate::data::split::Grouping;
use crate::error::{Error, Result, write_atomic};
use crate::eval::metrics::{MeanStd, Metrics};

/// The layout version written into `run.json`. Runs written before the field existed have
/// the same layout and read as version 1.
pub const FORMAT_VERSION: u32 = 1;

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
}

impl RunSpec {
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
