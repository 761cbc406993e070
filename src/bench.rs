//! `magsd bench`: throughput and latency, one JSON line per measurement, with the same settings
//! and field names as the PyTorch anchor `../shared/reference/bench_magsd_torch.py`, so the two
//! can be run in one call on one machine and compared as ratios.
//!
//! * `train_step`: one training step exactly as training runs it (`train::trainer::step_for`:
//!   MAG-SD's, or cross-entropy for a baseline) on a fixed synthetic batch (no data loading),
//!   original images/s = batch / step time;
//! * `inference`: eval-mode raw forward (what the metrics use);
//! * `eval_step`: raw forward + the mean-attention mix-up pass of the reference's test step;
//! * `predict`: single-image latency of `magsd predict` from the file (decode, preprocess, forward);
//! * `loader`: decode → resize → CLAHE → augment → z-score → tensors over a dataset, no cache.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};
use tch::{Device, Kind, Tensor, nn};

use crate::data::dataset::{Dataset, DatasetOptions};
use crate::data::loader::{InputPipeline, Loader};
use crate::device::{autocast_bf16, channels_last, vars_to_channels_last};
use crate::error::{Error, Result};
use crate::model::weights::parameter_count;
use crate::rng::Rng;
use crate::train::attention_aug::{StepRandom, attention_mixup};
use crate::train::config::TrainConfig;
use crate::train::optim::Sgd;
use crate::train::trainer::{seeded_init, step_for};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Measure {
    Train,
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
        "momentum": o.config.optim.momentum,
    })
}

fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

/// Runs the requested measurements; returns one JSON object per measurement.
pub fn run(o: &BenchOptions) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    let needs_model = o.measures.iter().any(|m| matches!(m, Measure::Train | Measure::Infer | Measure::Eval | Measure::Predict));
    let model_config = o.config.model_config(o.classes)?;
    let vs = nn::VarStore::new(o.device);
    let model = if needs_model { Some(seeded_init(&vs, &model_config, o.config.seed)?) } else { None };
    let cl = o.config.performance.channels_last && o.device.is_cuda();
    if cl {
        vars_to_channels_last(&vs);
    }
    let bf16 = o.config.performance.bf16;
    let (c, s) = (o.config.model.in_channels, o.config.model.image_size);
    let input = |b: usize| {
        let x = Tensor::randn([b as i64, c, s, s], (Kind::Float, o.device));
        if cl { channels_last(&x) } else { x }
    };
    for m in &o.measures {
        let base = merge(describe(o), json!({"params": parameter_count(&vs)}));
        let model = model.as_ref();
        let line = match m {
            Measure::Train => {
                let model = model.expect("model built");
                let mut sgd = Sgd::new(
                    vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect(),
                    o.config.optim.momentum,
                    o.config.optim.weight_decay,
                    o.config.optim.nesterov,
                );
                let x = input(o.batch);
                let y = Tensor::randint(o.classes as i64, [o.batch as i64], (Kind::Int64, o.device));
                let mut rng = Rng::new(o.config.seed);
                // The network's own step, as training chooses it (MAG-SD's, or cross-entropy for a baseline).
                let stepper = step_for(model_config.arch);
                let mut step = || stepper.step(model, &mut sgd, &x, &y, &mut rng, &o.config, o.device, o.config.optim.lr).loss.total.detach();
                let t = Instant::now();
                let mut losses = Vec::new();
                for _ in 0..o.warmup {
                    losses.push(step().double_value(&[]));
                }
                sync(o.device);
                let warmup_s = t.elapsed().as_secs_f64();
                let t = Instant::now();
                let mut last = None;
                for _ in 0..o.iters {
                    last = Some(step());
                }
                sync(o.device);
                let dt = t.elapsed().as_secs_f64();
                if let Some(l) = last {
                    losses.push(l.double_value(&[]));
                }
                let per = dt / o.iters.max(1) as f64;
                // Forward passes per image: the raw one plus one per augmented view (MAG-SD), or one.
                let fwd = if model_config.arch.is_baseline() { 1 } else { 1 + o.config.method.augmentations.len() };
                json!({"bench": "train_step", "train_warmup_s": warmup_s, "train_iters": o.iters,
                    "train_step_ms": 1e3 * per, "train_img_s": o.batch as f64 / per, "train_fwd_img_s": (fwd * o.batch) as f64 / per,
                    "fwd_images_per_train_step": fwd * o.batch,
                    "loss_first": losses.first(), "loss_last": losses.last(), "loss_finite": losses.iter().all(|v| v.is_finite())})
            }
            Measure::Infer => {
                let model = model.expect("model built");
                let x = input(o.infer_batch);
                let f = || tch::no_grad(|| autocast_bf16(bf16, o.device, || model.forward_t(&x, false).logits));
                let per = time(o.device, o.infer_warmup, o.infer_iters, || {
                    let _ = f();
                });
                json!({"bench": "inference", "infer_iters": o.infer_iters, "infer_ms": 1e3 * per, "infer_img_s": o.infer_batch as f64 / per})
            }
            Measure::Eval => {
                let model = model.expect("model built");
                let x = input(o.infer_batch);
                let mut rng = Rng::new(1);
                let n = (o.infer_iters / 2).max(1);
                let cfg = &o.config.method.attention;
                let per = time(o.device, 1, n, || {
                    let _ = tch::no_grad(|| {
                        let out = autocast_bf16(bf16, o.device, || model.forward_t(&x, false));
                        let r = StepRandom::draw(&mut rng, o.infer_batch as i64, o.device);
                        let mixed = attention_mixup(&x, &out.mean_attention(), &r.theta.select(1, 0), cfg);
                        let mixed = if cl { channels_last(&mixed) } else { mixed };
                        autocast_bf16(bf16, o.device, || model.forward_t(&mixed, false).logits)
                    });
                });
                json!({"bench": "eval_step", "eval_iters": n, "eval_step_img_s": o.infer_batch as f64 / per})
            }
            Measure::Predict => {
                let model = model.expect("model built");
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
                let pipeline = InputPipeline { preprocess: model_config.preprocess(), ..Default::default() };
                let mut times = Vec::new();
                for i in 0..(o.infer_warmup + o.infer_iters) {
                    let t = Instant::now();
                    let (x, _) = pipeline.eval_tensor(&path)?;
                    let (p, _) = crate::eval::evaluate::infer(model, &x, o.device, bf16, cl);
                    let _ = p.to_device(Device::Cpu).double_value(&[0, 0]);
                    if i >= o.infer_warmup {
                        times.push(t.elapsed().as_secs_f64() * 1e3);
                    }
                }
                times.sort_by(f64::total_cmp);
                let pct = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
                json!({"bench": "predict", "image": path, "runs": times.len(), "latency_ms_median": pct(0.5),
                    "latency_ms_p90": pct(0.9), "latency_ms_min": times[0], "includes": "decode + resize + CLAHE + z-score + forward + softmax"})
            }
            Measure::Loader => {
                let data = o.data.clone().ok_or_else(|| Error::Config("the loader measurement needs --data".into()))?;
                let ds = Arc::new(Dataset::open(&data, &DatasetOptions::default())?);
                let pipeline = InputPipeline {
                    preprocess: model_config.preprocess(),
                    augment: o.config.data.augment,
                    limits: Default::default(),
                };
                let loader = Loader::new(ds.clone(), pipeline, 0, false);
                let all: Vec<usize> = (0..ds.samples.len()).collect();
                let t = Instant::now();
                let mut n = 0;
                for b in loader.batches(all, o.batch, Some(0), o.config.performance.prefetch) {
                    n += b.indices.len();
                }
                let dt = t.elapsed().as_secs_f64();
                json!({"bench": "loader", "data": data, "images": n, "seconds": dt, "images_per_s": n as f64 / dt,
                    "rayon_threads": rayon::current_num_threads(),
                    "cores": std::thread::available_parallelism().map(|c| c.get()).unwrap_or(1),
                    "cache": false, "augment": o.config.data.augment, "image_size": o.config.model.image_size})
            }
        };
        out.push(merge(base, line));
    }
    Ok(out)
}

/// Seconds per call of `f`, after `warmup` calls, with the device synchronised around the timing.
fn time(device: Device, warmup: usize, iters: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..warmup {
        f();
    }
    sync(device);
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    sync(device);
    t.elapsed().as_secs_f64() / iters.max(1) as f64
}
