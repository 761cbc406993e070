//! SGD with momentum, weight decay and optional Nesterov, with PyTorch's update rule, and the
//! learning-rate schedules. Written here (not tch's optimiser) so that the momentum buffers can
//! be saved in checkpoints and restored exactly.
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum LrSchedule {
    Constant,
    /// ×`gamma` at each epoch in `milestones` (epoch `e` uses `gamma^(#milestones ≤ e)`).
    MultiStep { milestones: Vec<usize>, gamma: f64 },
    /// Cosine annealing from the base rate to `min_lr` over the run.
    Cosine { min_lr: f64 },
}

impl LrSchedule {
    /// The learning rate of (0-based) `epoch` out of `epochs`.
    pub fn lr_at(&self, base: f64, epoch: usize, epochs: usize) -> f64 {
        match self {
            LrSchedule::Constant => base,
            LrSchedule::MultiStep { milestones, gamma } => {
                base * gamma.powi(milestones.iter().filter(|&&m| m <= epoch).count() as i32)
            }
            LrSchedule::Cosine { min_lr } => {
                let t = epoch as f64 / epochs.max(1) as f64;
                min_lr + (base - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }
}

/// `torch.optim.SGD` semantics: `d = g + wd·p`; `buf = d` on the first step, else
/// `buf = m·buf + d`; `d = d + m·buf` (Nesterov) or `d = buf`; `p -= lr·d`.
pub struct Sgd {
    params: Vec<(String, Tensor)>,
    buffers: Vec<Option<Tensor>>,
    pub momentum: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
}

impl Sgd {
    /// `params`: the trainable variables, by name (sorted for a stable order).
    pub fn new(mut params: Vec<(String, Tensor)>, momentum: f64, weight_decay: f64, nesterov: bool) -> Self {
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let buffers = params.iter().map(|_| None).collect();
        Sgd { params, buffers, momentum, weight_decay, nesterov }
    }

    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
    }

    /// One update with learning rate `lr`. Parameters without a gradient are skipped.
    pub fn step(&mut self, lr: f64) {
        tch::no_grad(|| {
            for ((_, p), buf) in self.params.iter_mut().zip(&mut self.buffers) {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let mut d = if self.weight_decay != 0.0 { &g + &*p * self.weight_decay } else { g };
                if self.momentum != 0.0 {
                    let b = match buf {
                        Some(b) => {
                            let _ = b.g_mul_scalar_(self.momentum).g_add_(&d);
                            b.shallow_clone()
                        }
                        None => {
                            let b = d.detach().copy();
                            *buf = Some(b.shallow_clone());
                            b
                        }
                    };
                    d = if self.nesterov { d + b * self.momentum } else { b };
                }
                let _ = p.g_sub_(&(d * lr));
            }
        });
    }

    /// The momentum buffers, named `momentum.<parameter>` (only those that exist yet).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .zip(&self.buffers)
            .filter_map(|((n, _), b)| b.as_ref().map(|b| (format!("momentum.{n}"), b.shallow_clone())))
            .collect()
    }

    /// Restores buffers saved by [`Sgd::state`]; names must match this optimiser's parameters.
    pub fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        for (name, t) in state {
            let pname = name.strip_prefix("momentum.").unwrap_or(name);
            let i = self
                .params
                .iter()
                .position(|(n, _)| n == pname)
                .ok_or_else(|| Error::Model(format!("optimizer state for unknown parameter {pname}")))?;
            let p = &self.params[i].1;
            if t.size() != p.size() {
                return Err(Error::Model(format!("optimizer state for {pname} has shape {:?}, parameter {:?}", t.size(), p.size())));
            }
            self.buffers[i] = Some(t.to_device(p.device()).to_kind(p.kind()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn schedules() {
        let m = LrSchedule::MultiStep { milestones: vec![2, 4], gamma: 0.1 };
        let lrs: Vec<f64> = (0..6).map(|e| m.lr_at(1.0, e, 6)).collect();
        assert_eq!(lrs[..2], [1.0, 1.0]);
        assert!((lrs[2] - 0.1).abs() < 1e-12 && (lrs[4] - 0.01).abs() < 1e-12);
        let c = LrSchedule::Cosine { min_lr: 0.0 };
        assert_eq!(c.lr_at(1.0, 0, 10), 1.0);
        assert!((c.lr_at(1.0, 5, 10) - 0.5).abs() < 1e-12);
    }

    /// Two steps on f(p) = Σ p²/2 (gradient p), against the update rule worked by hand.
    #[test]
    fn update_rule_matches_pytorch_sgd() {
        for nesterov in [false, true] {
            let p = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
            let mut opt = Sgd::new(vec![("p".into(), p.shallow_clone())], 0.9, 0.1, nesterov);
            let (lr, m, wd) = (0.5f64, 0.9f64, 0.1f64);
            let mut want = [1.0f64, -2.0];
            let mut buf: Option<[f64; 2]> = None;
            for _ in 0..2 {
                opt.zero_grad();
                (&p * &p).sum(Kind::Float).g_mul_scalar(0.5).backward();
                opt.step(lr);
                let d: Vec<f64> = want.iter().map(|w| w + wd * w).collect();
                let b: Vec<f64> = match buf {
                    None => d.clone(),
                    Some(b) => b.iter().zip(&d).map(|(b, d)| m * b + d).collect(),
                };
                buf = Some([b[0], b[1]]);
                for i in 0..2 {
                    let step = if nesterov { d[i] + m * b[i] } else { b[i] };
                    want[i] -= lr * step;
                }
            }
            let got: Vec<f32> = Vec::try_from(&p.detach()).unwrap();
            for i in 0..2 {
                assert!((got[i] as f64 - want[i]).abs() < 1e-5, "nesterov {nesterov}: {got:?} vs {want:?}");
            }
            let state = opt.state();
            assert_eq!(state.len(), 1);
            let mut fresh = Sgd::new(vec![("p".into(), p.shallow_clone())], 0.9, 0.1, nesterov);
            fresh.load_state(&state).unwrap();
            assert!(fresh.state()[0].1.equal(&state[0].1));
            let _ = Device::Cpu;
        }
    }
}
