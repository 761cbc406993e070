//! Whether an evaluation reuses images the model was trained on: the model's run folder
//! (`run.json`, and `split.json` for a cross-validation fold, a reproduce grid's for its rows) says
//! which images trained it; an
//! evaluated image that is one of them (the same file, after resolving links) makes the metrics
//! a training-set score, not a held-out estimate, and `magsd eval` says so loudly.
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::dataset::{Dataset, DatasetOptions};
use crate::data::split::SplitFile;
use crate::runfolder::{RunSpec, run_of_model, split_file};

/// Evaluated images that also trained (or validated) the model.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainingOverlap {
    /// The run folder that trained the model.
    pub run: String,
    /// How many of the evaluated images the model saw in training.
    pub images: usize,
    /// How many images were evaluated.
    pub of: usize,
    /// A few of them, for the message.
    pub examples: Vec<String>,
}

impl TrainingOverlap {
    /// The warning for the console and the report.
    pub fn message(&self) -> String {
        format!(
            "{} of the {} evaluated images were used to train or validate this model (run {}): these metrics \
             are a training-set score, not a held-out estimate of performance",
            self.images, self.of, self.run
        )
    }
}

/// The files that trained the model at `model`, resolved; `None` when the model has no run
/// folder, or its training data can no longer be read.
pub fn training_files(model: &Path) -> Option<(PathBuf, HashSet<PathBuf>)> {
    let (run, fold) = run_of_model(model)?;
    let spec = RunSpec::load(&run).ok()?;
    let opts = DatasetOptions {
        label_column: spec.label_column.clone(),
        classes: (!spec.classes.is_empty()).then(|| spec.classes.clone()),
        // The run accepted these paths when it was trained.
        allow_outside_root: true,
    };
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
