//! The training step and the inference forward as CUDA graphs (`performance.cuda_graph`):
//! captured once, then replayed with one launch per step instead of thousands of kernel
//! launches. What the step computes is unchanged: the same ops run on static input buffers that
//! each step's batch and random numbers are copied into. CUDA only; on in every preset, and
//! `magsd bench` uses it only when asked.
//!
//! The first steps run eagerly on the graph's side stream (as PyTorch's whole-network capture
//! recommends, so that cuDNN and cuBLAS set up their workspaces there); then the step is
//! recorded and replayed. A change of learning rate (a scheduled epoch) records it again, since
//! the rate is a constant inside the graph. A batch of another size (images that failed to
//! load) runs eagerly.
use std::ffi::c_void;

use tch::{Device, Tensor};

use super::attention_aug::StepRandom;
use super::config::TrainConfig;
use super::loss::LossParts;
use super::optim::Sgd;
use super::trainer::{StepOutput, train_step};
use crate::error::{Error, Result};
use crate::model::MagSd;

unsafe extern "C" {
    fn magsd_graph_new(device: i32) -> *mut c_void;
    fn magsd_graph_free(g: *mut c_void);
    fn magsd_graph_enter_side(g: *mut c_void) -> i32;
    fn magsd_graph_leave_side(g: *mut c_void) -> i32;
    fn magsd_graph_capture_begin(g: *mut c_void) -> i32;
    fn magsd_graph_capture_end(g: *mut c_void) -> i32;
    fn magsd_graph_replay(g: *mut c_void) -> i32;
}

/// Eager steps on the side stream before the first recording.
const WARMUP_STEPS: usize = 3;

/// A libtorch CUDA graph with its side stream.
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

/// Static buffers and the recorded step.
struct Recorded {
    graph: Graph,
    lr: f64,
    out: StepOutput,
}

pub struct GraphedStep {
    device: Device,
    x: Option<Tensor>,
    y: Option<Tensor>,
    random: Option<StepRandom>,
    eager_steps: usize,
    recorded: Option<Recorded>,
    /// A graph handle used for the warm-up steps' side stream.
    side: Graph,
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
        Ok(GraphedStep { device, x: None, y: None, random: None, eager_steps: 0, recorded: None, side: Graph::new(device)? })
    }

    /// One training step, the same as [`train_step`]; the returned tensors are valid until the
    /// next call (they are the graph's outputs).
    #[allow(clippy::too_many_arguments)]
    pub fn step(&mut self, model: &MagSd, sgd: &mut Sgd, x: &Tensor, y: &Tensor, random: &StepRandom, cfg: &TrainConfig, lr: f64) -> Result<StepOutput> {
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
        if self.eager_steps < WARMUP_STEPS {
            self.eager_steps += 1;
            self.side.call(magsd_graph_enter_side, "switching to the side stream")?;
            let out = train_step(model, sgd, sx, sy, sr, cfg, self.device, lr);
            self.side.call(magsd_graph_leave_side, "leaving the side stream")?;
            return Ok(out);
        }
        if self.recorded.as_ref().is_none_or(|r| r.lr != lr) {
            self.recorded = None; // frees the old graph and its memory pool first
            let graph = Graph::new(self.device)?;
            graph.call(magsd_graph_capture_begin, "starting the capture")?;
            let out = train_step(model, sgd, sx, sy, sr, cfg, self.device, lr);
            graph.call(magsd_graph_capture_end, "ending the capture")?;
            self.recorded = Some(Recorded { graph, lr, out });
        }
        let rec = self.recorded.as_ref().expect("recorded above");
        rec.graph.call(magsd_graph_replay, "replay")?;
        Ok(handles(&rec.out))
    }
}

/// The eval-mode forward (logits) of fixed-size batches as a CUDA graph.
pub struct GraphedInference {
    x: Option<Tensor>,
    recorded: Option<(Graph, Tensor)>,
    eager_calls: usize,
    side: Graph,
}

impl GraphedInference {
    pub fn new(device: Device) -> Result<Self> {
        Ok(GraphedInference { x: None, recorded: None, eager_calls: 0, side: Graph::new(device)? })
    }

    /// `forward` must compute the logits of its argument (same batch size every call); the
    /// returned tensor is valid until the next call.
    pub fn run(&mut self, x: &Tensor, forward: impl Fn(&Tensor) -> Tensor) -> Result<Tensor> {
        if self.x.as_ref().is_some_and(|s| s.size() != x.size()) {
            return Ok(tch::no_grad(|| forward(x)));
        }
        copy_into(&mut self.x, x);
        let sx = self.x.as_ref().expect("set");
        if self.eager_calls < WARMUP_STEPS {
            self.eager_calls += 1;
            self.side.call(magsd_graph_enter_side, "switching to the side stream")?;
            let out = tch::no_grad(|| forward(sx));
            self.side.call(magsd_graph_leave_side, "leaving the side stream")?;
            return Ok(out);
        }
        if self.recorded.is_none() {
            let graph = Graph::new(sx.device())?;
            graph.call(magsd_graph_capture_begin, "starting the capture")?;
            let out = tch::no_grad(|| forward(sx));
            graph.call(magsd_graph_capture_end, "ending the capture")?;
            self.recorded = Some((graph, out));
        }
        let (graph, out) = self.recorded.as_ref().expect("recorded above");
        graph.call(magsd_graph_replay, "replay")?;
        Ok(out.shallow_clone())
    }
}
