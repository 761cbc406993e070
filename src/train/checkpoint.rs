//! Training checkpoints: model variables, optimizer state, the position in the schedule, the
//! best result so far and both configs, in one safetensors file written atomically. Random
//! numbers are derived from (seed, epoch, step), so the seed and the position are all the RNG
//! state a resume needs.
use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{Tensor, nn};

use super::config::TrainConfig;
use super::optim::Sgd;
use crate::error::{Error, Result};
use crate::model::NetworkConfig;
use crate::model::weights::{CHECKPOINT_FORMAT, CONFIG_KEY, OPTIM_PREFIX, load_tensors, model_config, named_variables, save_tensors};

pub const TRAIN_KEY: &str = "magsd.train";
pub const STATE_KEY: &str = "magsd.state";

/// The best validation result so far.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Best {
    pub epoch: usize,
    pub accuracy: f64,
    pub loss: f64,
}

/// Where training stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// The epoch in progress (or the next one when `step` is 0).
    pub epoch: usize,
    /// Steps of `epoch` already done.
    pub step: usize,
    /// Steps done over the whole run.
    pub global_step: u64,
    pub best: Option<Best>,
    /// The training sums of the steps of `epoch` done before a stop, so that a resumed epoch
    /// logs its loss and accuracy over all of its steps (absent in older checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<PartialEpoch>,
}

/// Sums over the images of the steps of an epoch done so far.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartialEpoch {
    pub loss: f64,
    pub ce: f64,
    pub correct: f64,
    pub images: usize,
    pub seconds: f64,
}

pub struct Checkpoint {
    pub model: Vec<(String, Tensor)>,
    pub optim: Vec<(String, Tensor)>,
    pub model_config: NetworkConfig,
    pub train_config: TrainConfig,
    pub state: TrainState,
}

pub fn save(path: &Path, vs: &nn::VarStore, sgd: &Sgd, model_config: &NetworkConfig, cfg: &TrainConfig, state: &TrainState) -> Result<()> {
    let mut tensors = named_variables(vs);
    tensors.extend(sgd.state().into_iter().map(|(n, t)| (format!("{OPTIM_PREFIX}{n}"), t)));
    let meta = HashMap::from([
        ("format".to_string(), CHECKPOINT_FORMAT.to_string()),
        (CONFIG_KEY.to_string(), json(model_config)),
        (TRAIN_KEY.to_string(), json(cfg)),
        (STATE_KEY.to_string(), json(state)),
    ]);
    save_tensors(path, &tensors, meta)
}

pub fn load(path: &Path) -> Result<Checkpoint> {
    let (tensors, meta) = load_tensors(path)?;
    let bad = |what: &str| Error::bad_file(path, format!("not a magsd checkpoint: {what}"));
    let model_config = model_config(&meta, path)?.ok_or_else(|| bad("no model config"))?;
    let parse = |key: &str| -> Result<serde_json::Value> {
        serde_json::from_str(meta.get(key).ok_or_else(|| bad(key))?).map_err(|e| Error::bad_file(path, format!("{key}: {e}")))
    };
    let train_config: TrainConfig =
        serde_json::from_value(parse(TRAIN_KEY)?).map_err(|e| Error::bad_file(path, format!("training config: {e}")))?;
    let state: TrainState = serde_json::from_value(parse(STATE_KEY)?).map_err(|e| Error::bad_file(path, format!("state: {e}")))?;
    let (optim, model): (Vec<_>, Vec<_>) = tensors.into_iter().partition(|(n, _)| n.starts_with(OPTIM_PREFIX));
    let optim = optim.into_iter().map(|(n, t)| (n[OPTIM_PREFIX.len()..].to_string(), t)).collect();
    Ok(Checkpoint { model, optim, model_config, train_config, state })
}

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("serialises")
}
