//! Whether an evaluation reuses images the model was trained on: an evaluated image that
//! trained it (the same file, after resolving links) makes the metrics a training-set score,
//! not a held-out estimate, and `magsd eval` says so loudly. Which images trained a model is
//! the run folder's to say (`runfolder::training_overlap`).
use serde::{Deserialize, Serialize};

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
