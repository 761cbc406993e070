//! The MAG-SD training loop (spec §4). One step:
//! raw forward (train mode) → three maps per image → attention mix-up, dimming, patching (no
//! gradient) → three more forwards → soft-distance loss → backward → SGD.
//!
//! Reproducibility: each step's random numbers come from our RNG keyed by (seed, epoch, step),
//! the epoch's image order and image augmentation from (seed, epoch), the initial weights from
//! libtorch's generator seeded under a process-wide lock; so a run is a function of its seed,
//! data and device (even with other runs in the same process), and a resumed run repeats
//! exactly what the uninterrupted run does.
//!
//! Files written to the job's folder: `train.jsonl` (one record per logged step and per epoch),
//! `checkpoint-last.safetensors` (every epoch end and on stop), `checkpoint-best.safetensors`
//! and `model.safetensors` (the best epoch by validation accuracy, ties broken by validation
//! loss; the last epoch when there is no validation split).
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tch::{Device, Kind, Tensor, nn};

use super::attention_aug::{StepRandom, augment_batch};
use super::checkpoint::{self, Best, TrainState};
use super::config::TrainConfig;
use super::loss::soft_distance_loss;
use super::optim::Sgd;
use crate::data::loader::Loader;
use crate::device::{autocast_bf16, channels_last, vars_to_channels_last};
use crate::error::{Error, IoContext, Result};
use crate::eval::evaluate::predict;
use crate::eval::metrics;
use crate::model::weights::{copy_exact, import_torchvision, save_model};
use crate::model::{MagSd, MagSdConfig};
use crate::rng::{Rng, mix};

/// Set by the command line's Ctrl-C handler: training stops after the current step and saves.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

pub use crate::runfolder::{BEST_CHECKPOINT, LAST_CHECKPOINT, LOG_FILE, MODEL_FILE};

/// One training run: a model, the images to train and validate on, and where to write.
pub struct TrainJob {
    pub config: TrainConfig,
    /// The network (with class names).
    pub model_config: MagSdConfig,
    /// Loader over the dataset; training batches are augmented, validation batches are not.
    pub loader: Loader,
    pub train_idx: Vec<usize>,
    pub val_idx: Vec<usize>,
    pub out_dir: PathBuf,
    pub device: Device,
    /// Continue from `out_dir/checkpoint-last.safetensors` when it exists.
    pub resume: bool,
    /// Stop (with a checkpoint) once this many steps of the whole run are done.
    pub stop_after_steps: Option<u64>,
    /// Shown in progress bars and messages ("fold 2/5").
    pub label: String,
    /// Print a line per epoch to stderr.
    pub verbose: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Finish {
    Completed,
    /// Stopped early (Ctrl-C or `stop_after_steps`); `checkpoint-last` holds the position.
    Stopped,
}

pub struct TrainOutcome {
    pub finish: Finish,
    pub model_path: PathBuf,
    pub best: Option<Best>,
    pub state: TrainState,
}

/// Serialises use of libtorch's process-wide generator (weight initialisation).
static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Builds the model with initial weights that depend only on `seed`.
pub fn seeded_init(vs: &nn::VarStore, config: &MagSdConfig, seed: u64) -> Result<MagSd> {
    let _guard = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(mix(seed, &[0]) as i64);
    MagSd::new(&vs.root(), config.clone())
}

/// What one step returns (on the device; reading them back costs a sync).
pub struct StepOutput {
    pub loss: super::loss::LossParts,
    /// Correct raw-branch predictions in the batch.
    pub correct: Tensor,
}

/// One MAG-SD training step on a batch already on `device` (spec §4): raw forward → three
/// attention-guided views → three more forwards → soft-distance loss → backward → SGD.
#[allow(clippy::too_many_arguments)]
pub fn train_step(
    model: &MagSd,
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

/// The image order of one epoch: seeded shuffles of `train_idx`, repeated as needed to fill
/// `len` slots (for a fixed number of iterations per epoch).
pub fn epoch_order(train_idx: &[usize], seed: u64, epoch: usize, len: usize) -> Vec<usize> {
    let mut out = Vec::with_capacity(len + train_idx.len());
    let mut round = 0u64;
    while out.len() < len && !train_idx.is_empty() {
        let mut p = train_idx.to_vec();
        Rng::derive(seed, &[2, epoch as u64, round]).shuffle(&mut p);
        out.extend(p);
        round += 1;
    }
    out.truncate(len);
    out
}

struct Log {
    file: std::io::BufWriter<std::fs::File>,
    path: PathBuf,
}

impl Log {
    /// Opens the log; on resume keeps only records up to `upto` steps (what the checkpoint holds).
    fn open(path: &Path, upto: Option<u64>) -> Result<Self> {
        if let Some(upto) = upto {
            let kept: Vec<String> = std::fs::read_to_string(path)
                .unwrap_or_default()
                .lines()
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v["global_step"].as_u64())
                        .is_some_and(|s| s <= upto)
                })
                .map(|l| format!("{l}\n"))
                .collect();
            std::fs::write(path, kept.concat()).at(path)?;
        } else if path.exists() {
            std::fs::remove_file(path).at(path)?;
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path).at(path)?;
        Ok(Log { file: std::io::BufWriter::new(file), path: path.to_path_buf() })
    }

    fn record(&mut self, v: serde_json::Value) -> Result<()> {
        writeln!(self.file, "{v}").at(&self.path)
    }

    fn flush(&mut self) -> Result<()> {
        self.file.flush().at(&self.path)
    }
}

/// Validation result of one epoch.
struct Validation {
    loss: f64,
    metrics: metrics::Metrics,
    failures: usize,
}

fn validate(job: &TrainJob, model: &MagSd) -> Result<Validation> {
    let cfg = &job.config;
    let p = predict(model, &job.loader, &job.val_idx, job.device, &cfg.predict_options())?;
    let metrics = metrics::compute(&p.labels, &p.probs, &job.model_config.class_names);
    Ok(Validation { loss: p.mean_ce(), metrics, failures: p.failures.len() })
}

/// Trains (or continues training) the job's model. Returns when every epoch is done or when it
/// was asked to stop, having saved a checkpoint either way.
pub fn train(job: &TrainJob) -> Result<TrainOutcome> {
    let cfg = &job.config;
    let dir = &job.out_dir;
    std::fs::create_dir_all(dir).at(dir)?;
    let vs = nn::VarStore::new(job.device);
    let model = seeded_init(&vs, &job.model_config, cfg.seed)?;
    let mut sgd = Sgd::new(
        vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect(),
        cfg.optim.momentum,
        cfg.optim.weight_decay,
        cfg.optim.nesterov,
    );

    let last_path = dir.join(LAST_CHECKPOINT);
    let mut state = TrainState { epoch: 0, step: 0, global_step: 0, best: None };
    let resumed = job.resume && last_path.exists();
    if resumed {
        let ck = checkpoint::load(&last_path)?;
        if !ck.model_config.same_architecture(&job.model_config) {
            return Err(Error::Model(format!(
                "{}: the checkpoint's network ({} {} maps, scales {}, {:?}) differs from the requested one \
                 ({} {} maps, scales {}, {:?}); refusing to resume",
                last_path.display(),
                ck.model_config.backbone,
                ck.model_config.num_maps,
                ck.model_config.scales.name(),
                ck.model_config.head,
                job.model_config.backbone,
                job.model_config.num_maps,
                job.model_config.scales.name(),
                job.model_config.head
            )));
        }
        if ck.train_config.seed != cfg.seed || ck.train_config.optim != cfg.optim || ck.train_config.batch_size != cfg.batch_size {
            return Err(Error::Config(format!(
                "{}: the checkpoint was trained with a different seed, optimiser or batch size; \
                 resume with the run's own config.toml",
                last_path.display()
            )));
        }
        copy_exact(&vs, &ck.model, &last_path)?;
        sgd.load_state(&ck.optim)?;
        state = ck.state;
    } else if let Some(pre) = &cfg.model.pretrained {
        let r = import_torchvision(&vs, pre)?;
        if job.verbose {
            eprintln!(
                "{}: backbone from {}: {} tensors loaded, {} adapted, {} fresh",
                job.label,
                pre.display(),
                r.loaded.len(),
                r.adapted.len(),
                r.missing.len()
            );
        }
    }
    if cfg.performance.channels_last && job.device.is_cuda() {
        vars_to_channels_last(&vs);
    }
    let mut log = Log::open(&dir.join(LOG_FILE), resumed.then_some(state.global_step))?;
    if !resumed {
        log.record(json!({"type": "start", "global_step": 0, "label": job.label, "train_images": job.train_idx.len(),
            "val_images": job.val_idx.len(), "device": crate::device::describe(job.device)}))?;
    }

    let bs = cfg.batch_size;
    let iters = cfg.iters_per_epoch.unwrap_or(job.train_idx.len() / bs);
    if iters == 0 {
        return Err(Error::Data(format!(
            "{}: {} training images cannot fill one batch of {bs}",
            job.label,
            job.train_idx.len()
        )));
    }
    let cl = cfg.performance.channels_last && job.device.is_cuda();
    let to_device = |t: &Tensor| {
        let t = t.to_device(job.device);
        if cl { channels_last(&t) } else { t }
    };
    let mut warned: std::collections::HashSet<usize> = Default::default();

    while state.epoch < cfg.epochs {
        let epoch = state.epoch;
        let lr = cfg.optim.schedule.lr_at(cfg.optim.lr, epoch, cfg.epochs);
        let order = epoch_order(&job.train_idx, cfg.seed, epoch, iters * bs);
        let start_step = state.step;
        let bar = progress_bar(job, epoch, iters, start_step);
        // Running sums on the device; read back only at log points (each read is a sync).
        let zero = || Tensor::zeros([], (Kind::Float, job.device));
        let (mut win_loss, mut win_ce, mut win_correct, mut win_n) = (zero(), zero(), zero(), 0usize);
        let (mut ep_loss, mut ep_ce, mut ep_correct, mut ep_n) = (zero(), zero(), zero(), 0usize);
        let mut win_t = Instant::now();
        let ep_t = Instant::now();
        let batches = job.loader.batches(order[start_step * bs..].to_vec(), bs, Some(epoch as u64), cfg.performance.prefetch);
        for (offset, batch) in batches.enumerate() {
            let step = start_step + offset;
            for (i, e) in &batch.failures {
                if warned.insert(*i) {
                    eprintln!("warning: {e} (skipped)");
                }
            }
            if batch.indices.len() >= 2 {
                let mut rng = Rng::derive(cfg.seed, &[1, epoch as u64, step as u64]);
                let x = to_device(&batch.images);
                let y = batch.labels.to_device(job.device);
                let random = StepRandom::draw(&mut rng, batch.indices.len() as i64, job.device);
                let out = train_step(&model, &mut sgd, &x, &y, &random, cfg, job.device, lr);
                let (loss, correct) = (out.loss, out.correct);
                let n = batch.indices.len();
                let (l, c) = (loss.total.detach() * n as f64, loss.ce.detach() * n as f64);
                win_loss += &l;
                win_ce += &c;
                win_correct += &correct;
                win_n += n;
                ep_loss += l;
                ep_ce += c;
                ep_correct += correct;
                ep_n += n;
            }
            state.step = step + 1;
            state.global_step += 1;
            bar.inc(1);
            let stop = INTERRUPTED.load(Ordering::SeqCst) || job.stop_after_steps.is_some_and(|s| state.global_step >= s);
            if (state.step.is_multiple_of(cfg.performance.log_every) || state.step == iters || stop) && win_n > 0 {
                let secs = win_t.elapsed().as_secs_f64();
                let (loss, ce, acc) = (
                    win_loss.double_value(&[]) / win_n as f64,
                    win_ce.double_value(&[]) / win_n as f64,
                    win_correct.double_value(&[]) / win_n as f64,
                );
                log.record(json!({"type": "step", "epoch": epoch, "step": state.step, "global_step": state.global_step,
                    "lr": lr, "loss": loss, "ce": ce, "distance": loss - ce, "accuracy": acc,
                    "images_per_s": win_n as f64 / secs.max(1e-9)}))?;
                bar.set_message(format!("loss {loss:.4} acc {acc:.3} {:.1} img/s", win_n as f64 / secs.max(1e-9)));
                (win_loss, win_ce, win_correct, win_n) = (zero(), zero(), zero(), 0);
                win_t = Instant::now();
            }
            if stop {
                bar.abandon_with_message("stopped; checkpoint saved");
                log.flush()?;
                checkpoint::save(&last_path, &vs, &sgd, &job.model_config, cfg, &state)?;
                return Ok(TrainOutcome { finish: Finish::Stopped, model_path: dir.join(MODEL_FILE), best: state.best.clone(), state });
            }
        }
        bar.finish_and_clear();

        // End of epoch: validation, best tracking, checkpoints.
        let secs = ep_t.elapsed().as_secs_f64();
        let n = ep_n.max(1) as f64;
        let mut record = json!({"type": "epoch", "epoch": epoch, "global_step": state.global_step, "lr": lr,
            "train_loss": ep_loss.double_value(&[]) / n, "train_ce": ep_ce.double_value(&[]) / n,
            "train_accuracy": ep_correct.double_value(&[]) / n, "images": ep_n, "seconds": secs,
            "images_per_s": ep_n as f64 / secs.max(1e-9)});
        state.epoch += 1;
        state.step = 0;
        let validate_now = !job.val_idx.is_empty() && (state.epoch.is_multiple_of(cfg.validation.every) || state.epoch == cfg.epochs);
        let mut improved = job.val_idx.is_empty();
        if validate_now {
            let v = validate(job, &model)?;
            record["val"] = json!({"loss": v.loss, "accuracy": v.metrics.accuracy, "sensitivity": v.metrics.sensitivity,
                "specificity": v.metrics.specificity, "f1": v.metrics.f1, "auc": v.metrics.auc, "images": v.metrics.n,
                "unreadable": v.failures});
            let better = match &state.best {
                None => true,
                Some(b) => v.metrics.accuracy > b.accuracy || (v.metrics.accuracy == b.accuracy && v.loss < b.loss),
            };
            if better {
                state.best = Some(Best { epoch, accuracy: v.metrics.accuracy, loss: v.loss });
                improved = true;
            }
        }
        if job.verbose {
            eprintln!("{}", epoch_line(&job.label, &record));
        }
        log.record(record)?;
        log.flush()?;
        checkpoint::save(&last_path, &vs, &sgd, &job.model_config, cfg, &state)?;
        if improved {
            save_model(&dir.join(MODEL_FILE), &vs, &job.model_config)?;
            if !job.val_idx.is_empty() {
                checkpoint::save(&dir.join(BEST_CHECKPOINT), &vs, &sgd, &job.model_config, cfg, &state)?;
            }
        }
    }
    Ok(TrainOutcome { finish: Finish::Completed, model_path: dir.join(MODEL_FILE), best: state.best.clone(), state })
}

fn progress_bar(job: &TrainJob, epoch: usize, iters: usize, done: usize) -> ProgressBar {
    let bar = if job.verbose { ProgressBar::new(iters as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {elapsed_precise} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("{} epoch {}/{}", job.label, epoch + 1, job.config.epochs));
    bar.set_position(done as u64);
    bar
}

fn epoch_line(label: &str, r: &serde_json::Value) -> String {
    let mut s = format!(
        "{label} epoch {}: loss {:.4} acc {:.3} ({:.1} img/s)",
        r["epoch"].as_u64().unwrap_or(0) + 1,
        r["train_loss"].as_f64().unwrap_or(f64::NAN),
        r["train_accuracy"].as_f64().unwrap_or(f64::NAN),
        r["images_per_s"].as_f64().unwrap_or(0.0)
    );
    if let Some(v) = r.get("val") {
        s += &format!(
            "; validation loss {:.4} acc {:.3} F1 {:.3}",
            v["loss"].as_f64().unwrap_or(f64::NAN),
            v["accuracy"].as_f64().unwrap_or(f64::NAN),
            v["f1"].as_f64().unwrap_or(f64::NAN)
        );
    }
    s
}
