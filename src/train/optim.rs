//! SGD with momentum, weight decay and optional Nesterov, with PyTorch's update rule (the
//! learning-rate schedules are settings: `LrSchedule` in `train::config`). Written here (not
//! tch's optimiser) so that the momentum buffers can be saved in checkpoints and restored exactly.
use tch::Tensor;

use crate::error::{Error, Result};

unsafe extern "C" {
    /// `src/ffi/optim.cpp`: the SGD update over arrays of tch tensor handles.
    fn magsd_sgd_foreach(
        params: *mut *mut std::ffi::c_void,
        grads: *mut *mut std::ffi::c_void,
        bufs: *mut *mut std::ffi::c_void,
        n: i32,
        lr: f64,
        momentum: f64,
        weight_decay: f64,
        nesterov: i32,
    ) -> i32;
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

    /// The optimiser of a run: every trainable variable of `vs`, with the settings of `optim`.
    pub fn for_store(vs: &tch::nn::VarStore, optim: &crate::train::config::OptimSection) -> Self {
        let params = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        Sgd::new(params, optim.momentum, optim.weight_decay, optim.nesterov)
    }

    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
    }

    /// One update with learning rate `lr`, as libtorch multi-tensor (`_foreach_*`) kernels: a
    /// few launches for all parameters (PyTorch's `SGD(foreach=True)`). Parameters without a
    /// gradient are skipped. Equal to [`Sgd::step_per_parameter`] up to float rounding.
    pub fn step(&mut self, lr: f64) {
        let mut idx = Vec::with_capacity(self.params.len());
        let mut grads = Vec::with_capacity(self.params.len());
        for (i, (_, p)) in self.params.iter().enumerate() {
            let g = p.grad();
            if g.defined() {
                idx.push(i);
                grads.push(g);
            }
        }
        if idx.is_empty() {
            return;
        }
        if self.momentum != 0.0 {
            // A zero buffer makes the first update `buf = m·0 + d = d` (d = grad + wd·p),
            // PyTorch's first-step rule `buf = d`.
            for &i in &idx {
                if self.buffers[i].is_none() {
                    self.buffers[i] = Some(tch::no_grad(|| self.params[i].1.zeros_like()));
                }
            }
        }
        // tch's handles are `at::Tensor*` (torch-sys's `C_tensor`).
        let handle = |t: &Tensor| t.as_ptr() as *mut std::ffi::c_void;
        let mut params: Vec<*mut std::ffi::c_void> = idx.iter().map(|&i| handle(&self.params[i].1)).collect();
        let mut grad_ptrs: Vec<*mut std::ffi::c_void> = grads.iter().map(handle).collect();
        let mut bufs: Vec<*mut std::ffi::c_void> = if self.momentum != 0.0 {
            idx.iter().map(|&i| handle(self.buffers[i].as_ref().expect("created above"))).collect()
        } else {
            Vec::new()
        };
        // SAFETY: each pointer is a live libtorch tensor owned by `self` or `grads`, which
        // outlive the call; the call reads the handles and updates the tensors' data in place.
        let rc = unsafe {
            magsd_sgd_foreach(
                params.as_mut_ptr(),
                grad_ptrs.as_mut_ptr(),
                if bufs.is_empty() { std::ptr::null_mut() } else { bufs.as_mut_ptr() },
                idx.len() as i32,
                lr,
                self.momentum,
                self.weight_decay,
                i32::from(self.nesterov),
            )
        };
        assert_eq!(rc, 0, "libtorch's multi-tensor SGD update failed (parameters on several devices?)");
    }

    /// The same update, one parameter at a time (the reference for [`Sgd::step`]).
    pub fn step_per_parameter(&mut self, lr: f64) {
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
    use crate::train::config::LrSchedule;
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

    /// The multi-tensor update equals the per-parameter one to 1e-6 over several steps, with
    /// and without Nesterov, weight decay and momentum, skipping a parameter without gradient.
    #[test]
    fn foreach_update_equals_per_parameter_update() {
        for (momentum, wd, nesterov) in [(0.9, 1e-4, false), (0.9, 5e-4, true), (0.0, 0.0, false), (0.0, 1e-2, false)] {
            let make = || -> Vec<(String, Tensor)> {
                tch::manual_seed(3);
                vec![
                    ("a".into(), Tensor::randn([4, 3, 3, 3], (Kind::Float, Device::Cpu)).set_requires_grad(true)),
                    ("b".into(), Tensor::randn([7], (Kind::Float, Device::Cpu)).set_requires_grad(true)),
                    ("frozen".into(), Tensor::randn([2], (Kind::Float, Device::Cpu)).set_requires_grad(true)),
                ]
            };
            let (pa, pb) = (make(), make());
            let handles = |v: &Vec<(String, Tensor)>| v.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
            let mut fused = Sgd::new(handles(&pa), momentum, wd, nesterov);
            let mut plain = Sgd::new(handles(&pb), momentum, wd, nesterov);
            for step in 0..4 {
                for (params, opt, fused_path) in [(&pa, &mut fused, true), (&pb, &mut plain, false)] {
                    opt.zero_grad();
                    // A loss of the first two only: "frozen" gets no gradient.
                    let loss = (&params[0].1 * &params[0].1).sum(Kind::Float) * (1.0 + step as f64)
                        + params[1].1.sin().sum(Kind::Float);
                    loss.backward();
                    if fused_path { opt.step(0.05) } else { opt.step_per_parameter(0.05) }
                }
            }
            for ((n, a), (_, b)) in pa.iter().zip(&pb) {
                let diff = (a - b).abs().max().double_value(&[]);
                assert!(diff < 1e-6, "{n} (momentum {momentum}, wd {wd}, nesterov {nesterov}): {diff}");
            }
            assert_eq!(fused.state().len(), plain.state().len(), "buffers only for parameters with gradients");
            for ((n, a), (_, b)) in fused.state().iter().zip(&plain.state()) {
                // Relative: the buffers grow to tens, where one float32 ulp is ~2e-6.
                let rel = ((a - b).abs().max() / b.abs().max()).double_value(&[]);
                assert!(rel < 1e-6, "{n} (momentum {momentum}, wd {wd}, nesterov {nesterov}): {rel}");
            }
        }
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
