//! `magsd bench`: throughput and latency, one JSON line per measurement, with the same settings
//! and field names as the PyTorch anchor `../shared/reference/bench_magsd_torch.py`, so the two
//! can be run in one call on one machine and compared as ratios.
//!
//! Each throughput is measured in `trials` trials of `iters` timed calls after warm-up, and
//! reported as the median with min and max over the trials (field `*_trials` lists them), so two
//! runs can be compared with their spread in view.
//!
//! * `train_step`: one training step exactly as training runs it (`train::trainer::step_for`:
//!   MAG-SD's, replayed as a CUDA graph with `performance.cuda_graph`, or cross-entropy for a
//!   baseline) on a fixed synthetic batch (no data loading), original images/s = batch / step time;
//! * `inference`: eval-mode raw forward (what the metrics use);
//! * `eval_step`: raw forward + the mean-attention mix-up pass of the reference's test step;
//! * `predict`: single-image latency of `magsd predict` from the file (decode, preprocess,
//!   forward, calibration and unusual-image checks, boxes), exact and fast path interleaved;
//! * `graph_parity`: the losses of 20 steps eager and replayed as a CUDA graph, same start;
//! * `loader`: decode → resize → CLAHE → augment → z-score → tensors over a dataset, no cache, on
//!   one worker thread and on all of them, with the time per image of each stage and the serial
//!   fraction that Amdahl's law gives for the two speeds.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};
use tch::{Device, Kind, Tensor, nn};

use crate::data::dataset::{Dataset, DatasetOptions};
use crate::data::loader::{InputPipeline, Loader};
use crate::device::{autocast_bf16, channels_last, vars_to_channels_last};
use crate::error::{Error, Result};
use crate::eval::localize::Threshold;
use crate::eval::predictor::{Precision, Predictor, PredictorOptions};
use crate::model::weights::parameter_count;
use crate::model::{Network, NetworkConfig, MapKind};
use crate::rng::Rng;
use crate::train::attention_aug::{StepRandom, attention_mixup};
use crate::train::config::TrainConfig;
use crate::train::optim::Sgd;
use crate::train::cuda_graph::{GraphedInference, GraphedStep};
use crate::train::step::train_step;
use crate::train::trainer::{seeded_init, step_for};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Measure {
    Train,
    /// 20 training steps eager and as a CUDA graph from the same weights and inputs: the losses
    /// of both (CUDA only).
    GraphParity,
    Infer,
    Eval,
    Predict,
    Loader,
}

pub struct BenchOptions {
    pub device: Device,
    /// Training config (model, method, optimiser, bf16/channels-last) of the measured step.
    pub config: TrainConfig,
    pub classes: usize,
    pub batch: usize,
    pub infer_batch: usize,
    pub warmup: usize,
    pub iters: usize,
    /// Timed repetitions of each throughput measurement.
    pub trials: usize,
    pub infer_warmup: usize,
    pub infer_iters: usize,
    pub measures: Vec<Measure>,
    /// Dataset for the loader measurement.
    pub data: Option<PathBuf>,
    /// Image for the predict latency (default: a generated phantom).
    pub image: Option<PathBuf>,
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

fn describe(o: &BenchOptions) -> Value {
    let m = &o.config.model;
    json!({
        "impl": "magsd", "device": crate::device::describe(o.device), "tch": "0.24.0",
        "threads": tch::get_num_threads(), "amp_bf16": o.config.performance.bf16,
        "channels_last": o.config.performance.channels_last, "batch": o.batch, "infer_batch": o.infer_batch,
        "img": m.image_size, "in_chans": m.in_channels, "classes": o.classes, "maps": m.maps,
        "scales": m.scales.name(), "backbone": m.backbone, "head": m.head,
        "lr": o.config.optim.lr, "weight_decay": o.config.optim.weight_decay, "nesterov": o.config.optim.nesterov,
        "momentum": o.config.optim.momentum, "cuda_graph": o.config.performance.cuda_graph && o.device.is_cuda(),
    })
}

fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

/// What the measurements of one call share: the seeded network and how it runs.
struct Ctx<'a> {
    o: &'a BenchOptions,
    vs: nn::VarStore,
    model: Option<Network>,
    model_config: NetworkConfig,
    cl: bool,
    bf16: bool,
}

impl Ctx<'_> {
    fn model(&self) -> &Network {
        self.model.as_ref().expect("model built")
    }

    /// A random input batch of `b` images, in the layout the network runs in.
    fn input(&self, b: usize) -> Tensor {
        let (c, s) = (self.o.config.model.in_channels, self.o.config.model.image_size);
        let x = Tensor::randn([b as i64, c, s, s], (Kind::Float, self.o.device));
        if self.cl { channels_last(&x) } else { x }
    }
}

/// Runs the requested measurements; returns one JSON object per measurement.
pub fn run(o: &BenchOptions) -> Result<Vec<Value>> {
    let needs_model = o.measures.iter().any(|m| matches!(m, Measure::Train | Measure::Infer | Measure::Eval | Measure::Predict));
    let model_config = o.config.model_config(o.classes)?;
    let vs = nn::VarStore::new(o.device);
    let model = if needs_model { Some(seeded_init(&vs, &model_config, o.config.seed)?) } else { None };
    let cl = o.config.performance.channels_last && o.device.is_cuda();
    if cl {
        vars_to_channels_last(&vs);
    }
    let ctx = Ctx { o, vs, model, model_config, cl, bf16: o.config.performance.bf16 };
    let mut out = Vec::new();
    for m in &o.measures {
        let base = merge(describe(o), json!({"params": parameter_count(&ctx.vs)}));
        let line = match m {
            Measure::Train => train_step_speed(&ctx)?,
            Measure::GraphParity => graph_parity(&ctx)?,
            Measure::Infer => inference_speed(&ctx)?,
            Measure::Eval => eval_step_speed(&ctx)?,
            Measure::Predict => predict_latency(&ctx)?,
            Measure::Loader => loader_speed(&ctx)?,
        };
        out.push(merge(base, line));
    }
    Ok(out)
}

/// `train_step`: one training step as training runs it, on a fixed synthetic batch.
fn train_step_speed(ctx: &Ctx) -> Result<Value> {
    let (o, model_config) = (ctx.o, &ctx.model_config);
    let model = ctx.model();
    let mut sgd = Sgd::for_store(&ctx.vs, &o.config.optim);
    let x = ctx.input(o.batch);
    let y = Tensor::randint(o.classes as i64, [o.batch as i64], (Kind::Int64, o.device));
    let mut rng = Rng::new(o.config.seed);
    // The network's own step, as training chooses it (MAG-SD's, or cross-entropy for a baseline).
    let mut stepper = step_for(model_config.arch, &o.config, o.device)?;
    let mut step = || {
        let out = stepper.step(model, &mut sgd, &x, &y, &mut rng, &o.config, o.device, o.config.optim.lr).expect("training step");
        out.loss.total.detach().copy()
    };
    let t = Instant::now();
    let mut losses = Vec::new();
    for _ in 0..o.warmup {
        losses.push(step().double_value(&[]));
    }
    sync(o.device);
    let warmup_s = t.elapsed().as_secs_f64();
    let mut last = None;
    let per = trials(o.device, o.trials, || {
        for _ in 0..o.iters {
            last = Some(step());
        }
        o.iters
    });
    if let Some(l) = last {
        losses.push(l.double_value(&[]));
    }
    let img_s: Vec<f64> = per.iter().map(|p| o.batch as f64 / p).collect();
    let (med, lo, hi) = spread(&img_s);
    // Forward passes per image: the raw one plus one per augmented view (MAG-SD), or one.
    let fwd = if model_config.arch.is_baseline() { 1 } else { 1 + o.config.method.augmentations.len() };
    Ok(json!({"bench": "train_step", "train_warmup_s": warmup_s, "train_iters": o.iters, "trials": o.trials,
        "train_step_ms": 1e3 * o.batch as f64 / med, "train_img_s": med, "train_img_s_min": lo, "train_img_s_max": hi,
        "train_img_s_trials": img_s, "train_fwd_img_s": fwd as f64 * med,
        "fwd_images_per_train_step": fwd * o.batch,
        "loss_first": losses.first(), "loss_last": losses.last(), "loss_finite": losses.iter().all(|v| v.is_finite())}))
}

/// `graph_parity`: the losses of 20 steps eager and replayed as a CUDA graph, same start.
fn graph_parity(ctx: &Ctx) -> Result<Value> {
    let (o, model_config, cl) = (ctx.o, &ctx.model_config, ctx.cl);
    let (c, s) = (o.config.model.in_channels, o.config.model.image_size);
    if !o.device.is_cuda() {
        return Err(Error::Config("--only graph-parity needs --device cuda".into()));
    }
    let losses = |graph: bool| -> Result<Vec<f64>> {
        let vs = nn::VarStore::new(o.device);
        let model = seeded_init(&vs, model_config, o.config.seed)?;
        if cl {
            vars_to_channels_last(&vs);
        }
        let mut sgd = Sgd::for_store(&ctx.vs, &o.config.optim);
        let mut graphed = if graph { Some(GraphedStep::new(o.device)?) } else { None };
        let mut rng = Rng::new(o.config.seed);
        let mut out = Vec::new();
        for i in 0..20u64 {
            let mut data = Rng::derive(o.config.seed, &[9, i]);
            let v: Vec<f32> = (0..o.batch as i64 * c * s * s).map(|_| data.uniform() as f32 * 2.0 - 1.0).collect();
            let x = Tensor::from_slice(&v).view([o.batch as i64, c, s, s]).to_device(o.device);
            let x = if cl { channels_last(&x) } else { x };
            let y = Tensor::arange(o.batch as i64, (Kind::Int64, o.device)).remainder(o.classes as i64);
            let random = StepRandom::draw(&mut rng, o.batch as i64, o.device);
            let lr = o.config.optim.lr;
            let step = match &mut graphed {
                Some(g) => g.step(&model, &mut sgd, &x, &y, &random, &o.config, lr)?,
                None => train_step(&model, &mut sgd, &x, &y, &random, &o.config, o.device, lr),
            };
            out.push(step.loss.total.double_value(&[]));
        }
        Ok(out)
    };
    // A second eager run shows how far two eager runs drift apart on their own (cuDNN
    // picks algorithms per call unless --deterministic): the floor to judge the graph by.
    let (eager, eager_again, graph) = (losses(false)?, losses(false)?, losses(true)?);
    let max_rel = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(a, b)| (a - b).abs() / a.abs().max(1e-12)).fold(0.0, f64::max);
    Ok(json!({"bench": "graph_parity", "steps": 20, "eager_losses": eager, "eager_again_losses": eager_again,
        "graph_losses": graph, "max_rel_diff": max_rel(&eager, &graph), "max_rel_diff_eager_repeat": max_rel(&eager, &eager_again)}))
}

/// `inference`: the eval-mode raw forward.
fn inference_speed(ctx: &Ctx) -> Result<Value> {
    let (o, bf16) = (ctx.o, ctx.bf16);
    let model = ctx.model();
    let x = ctx.input(o.infer_batch);
    let forward = |x: &Tensor| tch::no_grad(|| autocast_bf16(bf16, o.device, || model.forward_t(x, false).logits));
    let mut graphed = match o.config.performance.cuda_graph && o.device.is_cuda() {
        true => Some(GraphedInference::new(o.device)?),
        false => None,
    };
    let mut f = || match &mut graphed {
        Some(g) => g.run(&x, forward).expect("CUDA graph inference"),
        None => forward(&x),
    };
    for _ in 0..o.infer_warmup {
        let _ = f();
    }
    let per = trials(o.device, o.trials, || {
        for _ in 0..o.infer_iters {
            let _ = f();
        }
        o.infer_iters
    });
    let img_s: Vec<f64> = per.iter().map(|p| o.infer_batch as f64 / p).collect();
    let (med, lo, hi) = spread(&img_s);
    Ok(json!({"bench": "inference", "infer_iters": o.infer_iters, "trials": o.trials, "infer_ms": 1e3 * o.infer_batch as f64 / med,
        "infer_img_s": med, "infer_img_s_min": lo, "infer_img_s_max": hi, "infer_img_s_trials": img_s}))
}

/// `eval_step`: the raw forward and the mean-attention mix-up pass of the reference's test step.
fn eval_step_speed(ctx: &Ctx) -> Result<Value> {
    let (o, cl, bf16) = (ctx.o, ctx.cl, ctx.bf16);
    let model = ctx.model();
    let x = ctx.input(o.infer_batch);
    let mut rng = Rng::new(1);
    let n = (o.infer_iters / 2).max(1);
    let cfg = &o.config.method.attention;
    let mut eval = || {
        let _ = tch::no_grad(|| {
            let out = autocast_bf16(bf16, o.device, || model.forward_t(&x, false));
            let r = StepRandom::draw(&mut rng, o.infer_batch as i64, o.device);
            let mixed = attention_mixup(&x, &out.mean_attention(), &r.theta.select(1, 0), cfg);
            let mixed = if cl { channels_last(&mixed) } else { mixed };
            autocast_bf16(bf16, o.device, || model.forward_t(&mixed, false).logits)
        });
    };
    eval();
    let per = trials(o.device, o.trials, || {
        for _ in 0..n {
            eval();
        }
        n
    });
    let img_s: Vec<f64> = per.iter().map(|p| o.infer_batch as f64 / p).collect();
    let (med, lo, hi) = spread(&img_s);
    Ok(json!({"bench": "eval_step", "eval_iters": n, "trials": o.trials, "eval_step_img_s": med,
        "eval_step_img_s_min": lo, "eval_step_img_s_max": hi, "eval_step_img_s_trials": img_s}))
}

/// `loader`: the input pipeline over a dataset, on one worker thread and on all.
fn loader_speed(ctx: &Ctx) -> Result<Value> {
    let (o, model_config) = (ctx.o, &ctx.model_config);
    let data = o.data.clone().ok_or_else(|| Error::Config("the loader measurement needs --data".into()))?;
    let ds = Arc::new(Dataset::open(&data, &DatasetOptions::default())?);
    let pipeline = InputPipeline {
        preprocess: model_config.preprocess(),
        augment: o.config.data.augment,
        limits: Default::default(),
    };
    let all: Vec<usize> = (0..ds.samples.len()).collect();
    // Images/s of one pass over the data (no cache), and the loader's stage clock.
    let pass = |loader: Loader| {
        let t = Instant::now();
        let mut n = 0;
        for b in loader.batches(all.clone(), o.batch, Some(0), o.config.performance.prefetch) {
            n += b.indices.len();
        }
        (n, t.elapsed().as_secs_f64(), loader)
    };
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().map_err(|e| Error::Config(e.to_string()))?;
    let (n1, t1, _) = pass(Loader::new(ds.clone(), pipeline.clone(), 0, false).with_pool(Arc::new(one)));
    let (n, dt, loader) = pass(Loader::new(ds.clone(), pipeline, 0, false));
    let threads = rayon::current_num_threads();
    // Amdahl: t_N = t_1·(s + (1 − s)/N)  ⇒  s = (t_N/t_1 − 1/N) / (1 − 1/N).
    let serial = (threads > 1).then(|| ((dt / t1) - 1.0 / threads as f64) / (1.0 - 1.0 / threads as f64));
    let stages: serde_json::Map<String, Value> =
        loader.stage_times().per_image_ms().into_iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
    Ok(json!({"bench": "loader", "data": data, "images": n, "seconds": dt, "images_per_s": n as f64 / dt,
        "images_per_s_1_thread": n1 as f64 / t1, "serial_fraction": serial,
        "stage_ms_per_image": stages, "rayon_threads": threads,
        "cores": std::thread::available_parallelism().map(|c| c.get()).unwrap_or(1),
        "cache": false, "augment": o.config.data.augment, "image_size": o.config.model.image_size}))
}

/// `predict`: single-image latency of the whole path from the file (decode, preprocess,
/// forward, calibration and unusual-image checks, boxes: [`Predictor::predict_file`]), for the
/// exact float32 path and the fast path, in interleaved trials (exact, fast, exact, fast, ...),
/// with the largest probability difference between the two.
fn predict_latency(ctx: &Ctx) -> Result<Value> {
    let o = ctx.o;
    let tmp = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let path = match &o.image {
        Some(p) => p.clone(),
        None => {
            let p = tmp.path().join("phantom.png");
            let ph = crate::data::synth::render(0, 512, &mut Rng::new(7));
            image::GrayImage::from_raw(512, 512, ph.image)
                .expect("size")
                .save(&p)
                .map_err(|e| Error::Data(format!("{}: {e}", p.display())))?;
            p
        }
    };
    // The network goes through a model file, as `magsd predict` loads it.
    let file = tmp.path().join("model.safetensors");
    crate::model::weights::save_model(&file, &ctx.vs, &ctx.model_config)?;
    // bfloat16 on the CPU only where the CPU has AVX-512 BF16.
    let mut precisions = vec![Precision::Exact, Precision::Fast];
    if o.device == Device::Cpu && crate::eval::predictor::cpu_has_bf16() {
        precisions.push(Precision::Bf16Cpu);
    }
    let predictors = precisions
        .iter()
        .map(|&precision| -> Result<Predictor> {
            let m = crate::model::weights::load_model(&file, o.device)?;
            let reliability = crate::eval::reliability::Reliability::of(&m, &file)?;
            let pipeline = InputPipeline { preprocess: ctx.model_config.preprocess(), ..Default::default() };
            let opts = PredictorOptions { device: o.device, precision, bf16: ctx.bf16, map: MapKind::Mean, threshold: Threshold::Relative(0.5) };
            Ok(Predictor::new(m, reliability, pipeline, opts))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut probabilities = Vec::new();
    for p in &predictors {
        for _ in 0..o.infer_warmup.max(1) {
            let _ = p.predict_file(&path)?;
        }
        probabilities.push(p.predict_file(&path)?.0.assessment.probabilities);
    }
    let max_diff = |i: usize| probabilities[0].iter().zip(&probabilities[i]).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    // Milliseconds per image in each trial, per path; the paths alternate trial by trial.
    let mut ms: Vec<Vec<f64>> = vec![Vec::new(); predictors.len()];
    for _ in 0..o.trials.max(1) {
        for (p, ms) in predictors.iter().zip(&mut ms) {
            let t = Instant::now();
            for _ in 0..o.infer_iters.max(1) {
                let _ = p.predict_file(&path)?;
            }
            ms.push(t.elapsed().as_secs_f64() * 1e3 / o.infer_iters.max(1) as f64);
        }
    }
    let summary = |ms: &[f64]| {
        let (med, lo, hi) = spread(ms);
        json!({"latency_ms_median": med, "latency_ms_min": lo, "latency_ms_max": hi, "latency_ms_trials": ms})
    };
    let (exact, fast) = (spread(&ms[0]).0, spread(&ms[1]).0);
    let bf16 = (precisions.len() > 2).then(|| {
        json!({"latency": summary(&ms[2]), "over_exact": spread(&ms[2]).0 / exact, "max_probability_diff_vs_exact": max_diff(2)})
    });
    Ok(json!({"bench": "predict", "image": path, "trials": o.trials, "iters_per_trial": o.infer_iters,
        "exact": summary(&ms[0]), "fast": summary(&ms[1]), "fast_over_exact": fast / exact,
        "latency_ms_median": fast, "max_probability_diff_fast_vs_exact": max_diff(1), "bf16_cpu": bf16,
        "includes": "decode + resize + CLAHE + z-score + forward + calibration + unusual checks + boxes"}))
}

/// Seconds per call in each of `n` trials; `f` runs one trial and returns its number of calls.
/// The device is synchronised around every trial.
fn trials(device: Device, n: usize, mut f: impl FnMut() -> usize) -> Vec<f64> {
    (0..n.max(1))
        .map(|_| {
            sync(device);
            let t = Instant::now();
            let calls = f();
            sync(device);
            t.elapsed().as_secs_f64() / calls.max(1) as f64
        })
        .collect()
}

/// (median, min, max) of a non-empty sample.
fn spread(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    let median = if s.len() % 2 == 1 { s[m] } else { 0.5 * (s[m - 1] + s[m]) };
    (median, s[0], s[s.len() - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_gives_median_min_max() {
        assert_eq!(spread(&[3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(spread(&[4.0, 1.0, 2.0, 3.0]), (2.5, 1.0, 4.0));
    }

    #[test]
    fn trials_time_each_repetition() {
        let mut calls = 0;
        let per = trials(Device::Cpu, 3, || {
            calls += 1;
            std::thread::sleep(std::time::Duration::from_millis(4));
            2
        });
        assert_eq!(calls, 3);
        assert_eq!(per.len(), 3);
        assert!(per.iter().all(|&p| p >= 0.002), "{per:?}");
    }
}
