//! The training step and the inference forward as CUDA graphs (`performance.cuda_graph`):
//! captured once, then replayed with one launch per step instead of thousands of kernel
//! launches. What the step computes is unchanged: the same ops run on static input buffers that
//! each step's batch and random numbers are copied into. CUDA only; on in every preset, and
//! `magsd bench` uses it only when asked.
//!
//! The first steps run eagerly on a side stream, not the default one (as PyTorch's
//! whole-network capture example warms up), so that lazy one-time set-up (library handles,
//! algorithm choices, autograd's state) happens before recording; then the step is
//! recorded, on the recorded graph's own side stream (a different one from the pool, as
//! `torch.cuda.graph` also captures on its own stream), and replayed on the current stream. A change of learning rate (a scheduled epoch) records it again, since
//! the rate is a constant inside the graph. A batch of another size (images that failed to
//! load) runs eagerly.
use std::ffi::c_void;

use tch::{Device, Tensor};

use super::attention_aug::StepRandom;
use super::config::TrainConfig;
use super::loss::LossParts;
use super::optim::Sgd;
use super::step::{StepOutput, TrainStep, train_step};
use crate::error::{Error, Result};
use crate::model::Network;
use crate::rng::Rng;

unsafe extern "C" {
    fn magsd_graph_new(device: i32) -> *mut c_void;
    fn magsd_graph_free(g: *mut c_void);
    fn magsd_graph_enter_side(g: *mut c_void) -> i32;
    fn magsd_graph_leave_side(g: *mut c_void) -> i32;
    fn magsd_graph_capture_begin(g: *mut c_void) -> i32;
    fn magsd_graph_capture_end(g: *mut c_void) -> i32;
    fn magsd_graph_replay(g: *mut c_void) -> i32;
}

/// Eager steps on the warm-up side stream before the first recording.
pub(crate) const WARMUP_STEPS: usize = 3;

/// A libtorch CUDA graph with its own side stream (from libtorch's stream pool).
struct Graph(*mut c_void);

impl Graph {
    fn new(device: Device) -> Result<Self> {
        let Device::Cuda(i) = device else {
            return Err(Error::Config("performance.cuda_graph needs a CUDA device".into()));
        };
        // SAFETY: returns an owned handle or null.
        let g = unsafe { magsd_graph_new(i as i32) };
        if g.is_null() {
            return Err(Error::Config("CUDA graphs are unavailable in this build (no CUDA headers at build time)".into()));
        }
        Ok(Graph(g))
    }

    fn call(&self, f: unsafe extern "C" fn(*mut c_void) -> i32, what: &str) -> Result<()> {
        // SAFETY: `self.0` is a live handle from magsd_graph_new.
        match unsafe { f(self.0) } {
            0 => Ok(()),
            _ => Err(Error::Config(format!("CUDA graph: {what} failed"))),
        }
    }
}

impl Drop for Graph {
    fn drop(&mut self) {
        // SAFETY: owned handle, freed once.
        unsafe { magsd_graph_free(self.0) }
    }
}

/// What every graphed computation shares: eager runs on the side stream of `side` while warming
/// up, then one recording per `key` (the learning rate, a constant inside the graph), then replays.
struct Replayer<T> {
    device: Device,
    side: Graph,
    eager_runs: usize,
    recorded: Option<(Graph, f64, T)>,
}

impl<T> Replayer<T> {
    fn new(device: Device) -> Result<Self> {
        Ok(Replayer { device, side: Graph::new(device)?, eager_runs: 0, recorded: None })
    }

    /// Runs `work` eagerly (warm-up) or records it once for `key`, then replays the recording;
    /// returns `work`'s own outputs after an eager run, `share(outputs)` after a replay.
    fn run(&mut self, key: f64, mut work: impl FnMut() -> T, share: impl Fn(&T) -> T) -> Result<T> {
        if self.eager_runs < WARMUP_STEPS {
            self.eager_runs += 1;
            self.side.call(magsd_graph_enter_side, "switching to the side stream")?;
            let out = work();
            self.side.call(magsd_graph_leave_side, "leaving the side stream")?;
            return Ok(out);
        }
        if self.recorded.as_ref().is_none_or(|r| r.1 != key) {
            self.recorded = None; // frees the old graph and its memory pool first
            let graph = Graph::new(self.device)?;
            graph.call(magsd_graph_capture_begin, "starting the capture")?;
            let out = work();
            graph.call(magsd_graph_capture_end, "ending the capture")?;
            self.recorded = Some((graph, key, out));
        }
        let (graph, _, out) = self.recorded.as_ref().expect("recorded above");
        graph.call(magsd_graph_replay, "replay")?;
        Ok(share(out))
    }
}

pub struct GraphedStep {
    device: Device,
    x: Option<Tensor>,
    y: Option<Tensor>,
    random: Option<StepRandom>,
    replayer: Replayer<StepOutput>,
}

fn copy_into(dst: &mut Option<Tensor>, src: &Tensor) {
    match dst {
        Some(d) if d.size() == src.size() => {
            d.copy_(src);
        }
        _ => *dst = Some(src.copy()),
    }
}

fn handles(o: &StepOutput) -> StepOutput {
    StepOutput {
        loss: LossParts { total: o.loss.total.shallow_clone(), ce: o.loss.ce.shallow_clone() },
        correct: o.correct.shallow_clone(),
    }
}

impl GraphedStep {
    pub fn new(device: Device) -> Result<Self> {
        Ok(GraphedStep { device, x: None, y: None, random: None, replayer: Replayer::new(device)? })
    }

    /// One training step, the same as [`train_step`]; the returned tensors are valid until the
    /// next call (they are the graph's outputs).
    #[allow(clippy::too_many_arguments)]
    pub fn step(&mut self, model: &Network, sgd: &mut Sgd, x: &Tensor, y: &Tensor, random: &StepRandom, cfg: &TrainConfig, lr: f64) -> Result<StepOutput> {
        let same_shape = self.x.as_ref().is_none_or(|s| s.size() == x.size());
        if !same_shape {
            return Ok(train_step(model, sgd, x, y, random, cfg, self.device, lr));
        }
        // The batch and this step's random numbers go into the static buffers.
        copy_into(&mut self.x, x);
        copy_into(&mut self.y, y);
        match &mut self.random {
            Some(r) => {
                r.maps.copy_(&random.maps);
                r.theta.copy_(&random.theta);
                r.offset.copy_(&random.offset);
            }
            None => {
                self.random = Some(StepRandom { maps: random.maps.copy(), theta: random.theta.copy(), offset: random.offset.copy() })
            }
        }
        let (sx, sy, sr) = (self.x.as_ref().expect("set"), self.y.as_ref().expect("set"), self.random.as_ref().expect("set"));
        let device = self.device;
        self.replayer.run(lr, || train_step(model, sgd, sx, sy, sr, cfg, device, lr), handles)
    }
}

/// The eval-mode forward (logits) of fixed-size batches as a CUDA graph.
pub struct GraphedInference {
    x: Option<Tensor>,
    replayer: Replayer<Tensor>,
}

impl GraphedInference {
    pub fn new(device: Device) -> Result<Self> {
        Ok(GraphedInference { x: None, replayer: Replayer::new(device)? })
    }

    /// `forward` must compute the logits of its argument (same batch size every call); the
    /// returned tensor is valid until the next call.
    pub fn run(&mut self, x: &Tensor, forward: impl Fn(&Tensor) -> Tensor) -> Result<Tensor> {
        if self.x.as_ref().is_some_and(|s| s.size() != x.size()) {
            return Ok(tch::no_grad(|| forward(x)));
        }
        copy_into(&mut self.x, x);
        let sx = self.x.as_ref().expect("set");
        self.replayer.run(0.0, || tch::no_grad(|| forward(sx)), Tensor::shallow_clone)
    }
}

/// MAG-SD's step recorded once as a CUDA graph and replayed ([`GraphedStep`]): the same
/// computation and the same random numbers as `train::step::MagSdStep`.
pub struct GraphedMagSdStep(GraphedStep);

impl GraphedMagSdStep {
    pub fn new(device: Device) -> Result<Self> {
        Ok(GraphedMagSdStep(GraphedStep::new(device)?))
    }
}

impl TrainStep for GraphedMagSdStep {
    fn step(&mut self, model: &Network, sgd: &mut Sgd, x: &Tensor, y: &Tensor, rng: &mut Rng, cfg: &TrainConfig, device: Device, lr: f64) -> Result<StepOutput> {
        let random = StepRandom::draw(rng, x.size()[0], device);
        self.0.step(model, sgd, x, y, &random, cfg, lr)
    }
}
