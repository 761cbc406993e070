//! One optimisation step of each network on a batch already on the device ([`TrainStep`]):
//! MA-Net's (spec §4, [`MagSdStep`]; replayed as a CUDA graph by `train::cuda_graph`) and the
//! baselines' plain cross-entropy ([`CrossEntropyStep`]). `train::trainer::step_for` chooses
//! one per network; `magsd bench` times them.
use tch::{Device, Kind, Tensor};

use super::attention_aug::{StepRandom, augment_batch};
use super::config::TrainConfig;
use super::loss::{LossParts, soft_distance_loss};
use super::optim::Sgd;
use crate::device::{autocast_bf16, channels_last};
use crate::error::Result;
use crate::model::Network;
use crate::model::init::TORCH_RNG;
use crate::rng::Rng;

/// What one step returns (on the device; reading them back costs a sync).
pub struct StepOutput {
    pub loss: LossParts,
    /// Correct raw-branch predictions in the batch.
    pub correct: Tensor,
}

/// One optimisation step of a network on a batch already on the device. Each network brings
/// its own: [`MagSdStep`] for MA-Net (spec §4), [`CrossEntropyStep`] for the baselines.
pub trait TrainStep {
    /// `rng` is this step's generator, keyed by (seed, epoch, step): a step's random numbers
    /// come from it alone, so a resumed run repeats them.
    #[allow(clippy::too_many_arguments)]
    fn step(&mut self, model: &Network, sgd: &mut Sgd, x: &Tensor, y: &Tensor, rng: &mut Rng, cfg: &TrainConfig, device: Device, lr: f64)
    -> Result<StepOutput>;
}

/// MAG-SD's step (spec §4): see [`train_step`]. With `method.augmentations = []` (MAG-SD(0AUG))
/// there are no augmented views and the soft-distance loss is the raw branch's cross-entropy.
pub struct MagSdStep;

impl TrainStep for MagSdStep {
    fn step(&mut self, model: &Network, sgd: &mut Sgd, x: &Tensor, y: &Tensor, rng: &mut Rng, cfg: &TrainConfig, device: Device, lr: f64) -> Result<StepOutput> {
        let random = StepRandom::draw(rng, x.size()[0], device);
        Ok(train_step(model, sgd, x, y, &random, cfg, device, lr))
    }
}

/// The baselines' step: one forward in training mode, cross-entropy, backward, SGD. Dropout
/// (VGG16, InceptionV3) draws from libtorch's generator, which is seeded from the step's `rng`
/// first so that a resumed run repeats the masks. The seeding and the forward that draws the
/// masks hold `TORCH_RNG` together, so that another run in the same process (whose weight
/// initialisation holds it too) cannot draw from the generator in between.
pub struct CrossEntropyStep;

impl TrainStep for CrossEntropyStep {
    fn step(&mut self, model: &Network, sgd: &mut Sgd, x: &Tensor, y: &Tensor, rng: &mut Rng, cfg: &TrainConfig, device: Device, lr: f64) -> Result<StepOutput> {
        let out = {
            let _guard = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
            tch::manual_seed((rng.next_u64() >> 1) as i64);
            autocast_bf16(cfg.performance.bf16, device, || model.forward_t(x, true))
        };
        let ce = out.logits.to_kind(Kind::Float).cross_entropy_for_logits(y);
        sgd.zero_grad();
        ce.backward();
        sgd.step(lr);
        let correct = tch::no_grad(|| out.logits.argmax(1, false).eq_tensor(y).sum(Kind::Float));
        Ok(StepOutput { loss: LossParts { total: ce.shallow_clone(), ce }, correct })
    }
}

/// One MAG-SD training step on a batch already on `device` (spec §4): raw forward → three
/// attention-guided views → three more forwards → soft-distance loss → backward → SGD.
#[allow(clippy::too_many_arguments)]
pub fn train_step(
    model: &Network,
    sgd: &mut Sgd,
    x: &Tensor,
    y: &Tensor,
    random: &StepRandom,
    cfg: &TrainConfig,
    device: Device,
    lr: f64,
) -> StepOutput {
    let (bf16, cl) = (cfg.performance.bf16, cfg.performance.channels_last && device.is_cuda());
    let raw = autocast_bf16(bf16, device, || model.forward_t(x, true));
    let views = augment_batch(x, &raw.attention, &cfg.method.augmentations, &cfg.method.attention, random);
    let z_aux: Vec<Tensor> = views
        .iter()
        .map(|v| {
            let v = if cl { channels_last(v) } else { v.shallow_clone() };
            autocast_bf16(bf16, device, || model.forward_t(&v, true).logits)
        })
        .collect();
    let loss = soft_distance_loss(&raw.logits, &z_aux, y, &cfg.method.loss);
    sgd.zero_grad();
    loss.total.backward();
    sgd.step(lr);
    let correct = tch::no_grad(|| raw.logits.argmax(1, false).eq_tensor(y).sum(Kind::Float));
    StepOutput { loss, correct }
}
