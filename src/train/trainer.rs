//! The training loop for every network (spec §4): start or resume, epochs of steps, validation,
//! checkpoints. Each network brings its own step (`train::step`): MA-Net's is raw forward
//! (train mode) → three maps per image → attention mix-up, dimming, patching (no gradient) →
//! three more forwards → soft-distance loss → backward → SGD; a baseline's is one forward,
//! cross-entropy, backward, SGD.
//!
//! Reproducibility: each step's random numbers come from our RNG keyed by (seed, epoch, step),
//! the epoch's image order and image augmentation from (seed, epoch), the initial weights from
//! libtorch's process-wide generator, seeded from the run's seed under a lock (`TORCH_RNG`); so
//! on the CPU (and on CUDA with `--deterministic`, which fixes cuDNN's algorithms) a run is a
//! function of its seed and data, and a resumed run repeats exactly what the uninterrupted run
//! does. Everything of magsd's that draws from that generator holds the lock from its seeding to
//! its last draw (the weight initialisation here; a baseline's dropout in `train::step`'s
//! `CrossEntropyStep`; the throw-away initialisation of `model::weights::load_model`), so runs
//! and loads sharing a process do not change each other's draws; code that
//! draws without the lock (`Tensor::randn` in a parallel unit test) still can. MA-Net's steps
//! draw nothing from it.
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

use super::checkpoint::{self, Best, PartialEpoch, TrainState};
use super::config::TrainConfig;
use super::optim::Sgd;
use super::cuda_graph::GraphedMagSdStep;
use super::eta;
use super::step::{CrossEntropyStep, MagSdStep, TrainStep};
use crate::model::init::TORCH_RNG;
use crate::data::loader::Loader;
use crate::data::prefetch::DeviceBatches;
use crate::device::vars_to_channels_last;
use crate::error::{Error, IoContext, Result};
use crate::eval::evaluate::predict;
use crate::eval::metrics;
use crate::model::weights::{copy_exact, import_torchvision, mark_finished, save_model_with};
use crate::model::{Arch, Network, NetworkConfig};
use crate::rng::{Rng, mix};

/// Set by the command line's Ctrl-C handler: training stops after the current step and saves.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Set once the long-run warning was printed: one warning per process, not one per fold.
static LONG_RUN_WARNED: AtomicBool = AtomicBool::new(false);

pub use crate::runfolder::{BEST_CHECKPOINT, LAST_CHECKPOINT, LOG_FILE, MODEL_FILE};

/// One training run: a model, the images to train and validate on, and where to write.
pub struct TrainJob {
    pub config: TrainConfig,
    /// The network (with class names).
    pub model_config: NetworkConfig,
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
    /// Shown in progress bars and messages ("fold 1 of 5": folds count from 0).
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

/// Builds the model with initial weights that depend only on `seed`.
pub fn seeded_init(vs: &nn::VarStore, config: &NetworkConfig, seed: u64) -> Result<Network> {
    let _guard = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(mix(seed, &[0]) as i64);
    Network::new(&vs.root(), config.clone())
}

/// The step for `arch`, chosen here and nowhere else: MA-Net trains with MAG-SD's step (replayed
/// as a CUDA graph with `performance.cuda_graph` on CUDA), every baseline with plain
/// cross-entropy.
pub fn step_for(arch: Arch, cfg: &TrainConfig, device: Device) -> Result<Box<dyn TrainStep>> {
    Ok(if arch.is_baseline() {
        Box::new(CrossEntropyStep)
    } else if graphed_step(arch, cfg, device) {
        Box::new(GraphedMagSdStep::new(device)?)
    } else {
        Box::new(MagSdStep)
    })
}

/// Whether [`step_for`] replays `arch`'s step as a CUDA graph.
fn graphed_step(arch: Arch, cfg: &TrainConfig, device: Device) -> bool {
    !arch.is_baseline() && cfg.performance.cuda_graph && device.is_cuda()
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
            let kept: Vec<String> = crate::files::read_to_string(path, crate::files::MAX_TEXT_BYTES, "training log")
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

fn validate(job: &TrainJob, model: &Network) -> Result<Validation> {
    let cfg = &job.config;
    let p = predict(model, &job.loader, &job.val_idx, job.device, &cfg.predict_options())?;
    let metrics = metrics::compute(&p.labels, &p.probs, &job.model_config.class_names);
    Ok(Validation { loss: p.mean_ce(), metrics, failures: p.failures.len() })
}

/// Everything a run carries from one epoch to the next.
struct Session {
    vs: nn::VarStore,
    model: Network,
    sgd: Sgd,
    state: TrainState,
    log: Log,
    last_path: PathBuf,
    /// The steps timed for the long-run estimate (see [`StepClock`]).
    clock: StepClock,
}

/// Times [`eta::TIMED_STEPS`] steps of a run, once, after the steps that pay for set-up: the
/// first, and with the CUDA-graph step its eager warm-up and the recording.
struct StepClock {
    /// Steps still to run before the clock starts.
    skip: usize,
    since: Option<Instant>,
    timed: usize,
    done: bool,
}

impl StepClock {
    fn new(job: &TrainJob) -> Self {
        let graphed = graphed_step(job.model_config.arch, &job.config, job.device);
        StepClock { skip: if graphed { super::cuda_graph::WARMUP_STEPS + 1 } else { 1 }, since: None, timed: 0, done: false }
    }
}

/// Trains (or continues training) the job's model. Returns when every epoch is done or when it
/// was asked to stop, having saved a checkpoint either way. A non-finite loss (or weight) stops
/// training with an error before any checkpoint is written, so `checkpoint-last` keeps the last
/// good state; so does an epoch in which no training image could be read.
pub fn train(job: &TrainJob) -> Result<TrainOutcome> {
    let cfg = &job.config;
    if job.train_idx.is_empty() {
        return Err(Error::Data(format!("{}: no training images (nothing to train on)", job.label)));
    }
    let iters = cfg.iters_per_epoch.unwrap_or(job.train_idx.len() / cfg.batch_size);
    if iters == 0 {
        return Err(Error::Data(format!(
            "{}: {} training images cannot fill one batch of {}",
            job.label,
            job.train_idx.len(),
            cfg.batch_size
        )));
    }
    let mut s = start(job)?;
    let mut stepper = step_for(job.model_config.arch, cfg, job.device)?;
    while s.state.epoch < cfg.epochs {
        let epoch = s.state.epoch;
        let lr = cfg.optim.schedule.lr_at(cfg.optim.lr, epoch, cfg.epochs);
        let sums = match run_epoch(job, &mut s, stepper.as_mut(), iters, lr)? {
            EpochEnd::Done(sums) => sums,
            EpochEnd::Stopped => {
                check_weights(job, &mut s)?;
                checkpoint::save(&s.last_path, &s.vs, &s.sgd, &job.model_config, cfg, &s.state)?;
                return Ok(TrainOutcome { finish: Finish::Stopped, model_path: job.out_dir.join(MODEL_FILE), best: s.state.best.clone(), state: s.state });
            }
        };
        end_epoch(job, &mut s, sums, lr)?;
    }
    let model = job.out_dir.join(MODEL_FILE);
    if model.is_file() {
        mark_finished(&model)?;
    }
    Ok(TrainOutcome { finish: Finish::Completed, model_path: job.out_dir.join(MODEL_FILE), best: s.state.best.clone(), state: s.state })
}

/// Builds the model and optimiser, then resumes from `checkpoint-last` or starts fresh (from
/// `model.pretrained` when given), and opens the log.
fn start(job: &TrainJob) -> Result<Session> {
    let cfg = &job.config;
    let dir = &job.out_dir;
    std::fs::create_dir_all(dir).at(dir)?;
    let vs = nn::VarStore::new(job.device);
    let model = seeded_init(&vs, &job.model_config, cfg.seed)?;
    let mut sgd = Sgd::for_store(&vs, &cfg.optim);

    let last_path = dir.join(LAST_CHECKPOINT);
    let mut state = TrainState { epoch: 0, step: 0, global_step: 0, best: None, partial: None };
    let resumed = job.resume && last_path.exists();
    if resumed {
        let ck = checkpoint::load(&last_path)?;
        if !ck.model_config.same_architecture(&job.model_config) {
            let describe = |c: &NetworkConfig| {
                format!("{} {} {} maps, scales {}, {} head", c.arch.name(), c.backbone, c.num_maps, c.scales.name(), c.head)
            };
            return Err(Error::Model(format!(
                "{}: the checkpoint's network ({}) differs from the requested one ({}); refusing to resume",
                last_path.display(),
                describe(&ck.model_config),
                describe(&job.model_config)
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
        if job.verbose {
            eprintln!(
                "{}: resuming from {} at epoch {} step {} (global step {})",
                job.label,
                last_path.display(),
                state.epoch + 1,
                state.step,
                state.global_step
            );
        }
    } else if let Some(pre) = &cfg.model.pretrained {
        let r = import_torchvision(&vs, pre)?;
        if job.verbose {
            eprintln!(
                "{}: weights from {}: {} tensors loaded, {} adapted, {} fresh",
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
        log.record(json!({"type": "start", "global_step": 0, "label": job.label, "arch": job.model_config.arch.name(),
            "train_images": job.train_idx.len(), "val_images": job.val_idx.len(), "device": crate::device::describe(job.device)}))?;
    }
    Ok(Session { vs, model, sgd, state, log, last_path, clock: StepClock::new(job) })
}

/// Device-side sums of one epoch's training losses, read back at its end.
struct EpochSums {
    loss: Tensor,
    ce: Tensor,
    correct: Tensor,
    images: usize,
    seconds: f64,
}

enum EpochEnd {
    Done(EpochSums),
    /// Asked to stop (Ctrl-C or `stop_after_steps`) after the step in `state`.
    Stopped,
}

/// The error for a non-finite loss or weight, after recording it in the log.
fn diverged(job: &TrainJob, s: &mut Session, what: &str) -> Error {
    let st = &s.state;
    let _ = s.log.record(json!({"type": "diverged", "epoch": st.epoch, "step": st.step, "global_step": st.global_step, "what": what}));
    let _ = s.log.flush();
    let kept = if s.last_path.exists() {
        format!("{} still holds the last good state", s.last_path.display())
    } else {
        "no checkpoint had been written yet".to_string()
    };
    Error::Training(format!(
        "{}: {what} at epoch {} step {} (global step {}); training stopped and nothing was saved \
         after it: {kept}. Lower the learning rate (optim.lr) or check the data",
        job.label,
        st.epoch + 1,
        st.step,
        st.global_step
    ))
}

/// Refuses to save weights that are not all finite (the last update can break them after the
/// last loss was read).
fn check_weights(job: &TrainJob, s: &mut Session) -> Result<()> {
    let finite = tch::no_grad(|| s.vs.trainable_variables().iter().all(|t| bool::try_from(t.isfinite().all()).unwrap_or(false)));
    if finite { Ok(()) } else { Err(diverged(job, s, "non-finite weights")) }
}

/// Runs the rest of the current epoch from `state.step`. Losses stay on the device and are
/// read back (one sync) only at log points, where a non-finite loss stops training.
fn run_epoch(job: &TrainJob, s: &mut Session, stepper: &mut dyn TrainStep, iters: usize, lr: f64) -> Result<EpochEnd> {
    let cfg = &job.config;
    let epoch = s.state.epoch;
    let bs = cfg.batch_size;
    let order = match super::sampling::weights(job.loader.dataset(), &job.train_idx, cfg.data.sampling, &cfg.data.source_column) {
        None => epoch_order(&job.train_idx, cfg.seed, epoch, iters * bs),
        Some(w) => super::sampling::weighted_order(&job.train_idx, &w, cfg.seed, epoch, iters * bs),
    };
    let start_step = s.state.step;
    let bar = progress_bar(job, epoch, iters, start_step);
    let cl = cfg.performance.channels_last && job.device.is_cuda();
    let zero = || Tensor::zeros([], (Kind::Float, job.device));
    let (mut win_loss, mut win_ce, mut win_correct, mut win_n) = (zero(), zero(), zero(), 0usize);
    // A resumed epoch carries on the sums of the steps done before its stop.
    let carried = s.state.partial.take();
    let (mut ep_loss, mut ep_ce, mut ep_correct, mut ep_n) = match &carried {
        Some(p) => (zero() + p.loss, zero() + p.ce, zero() + p.correct, p.images),
        None => (zero(), zero(), zero(), 0usize),
    };
    let carried_seconds = carried.map(|p| p.seconds).unwrap_or(0.0);
    let mut win_t = Instant::now();
    let ep_t = Instant::now();
    let mut warned: std::collections::HashSet<usize> = Default::default();
    let host_batches = job.loader.batches(order[start_step * bs..].to_vec(), bs, Some(epoch as u64), cfg.performance.prefetch);
    for (offset, batch) in DeviceBatches::new(host_batches, job.device, cl).enumerate() {
        let step = start_step + offset;
        for (i, e) in &batch.failures {
            if warned.insert(*i) {
                eprintln!("warning: {e} (skipped)");
            }
        }
        // The loader reports each image's decoder warnings once (e.g. a truncated JPEG).
        for (_, w) in &batch.warnings {
            eprintln!("warning: {w} (used)");
        }
        if batch.indices.len() >= 2 {
            let mut rng = Rng::derive(cfg.seed, &[1, epoch as u64, step as u64]);
            let out = stepper.step(&s.model, &mut s.sgd, &batch.images, &batch.labels, &mut rng, cfg, job.device, lr)?;
            let n = batch.indices.len();
            let (l, c) = (out.loss.total.detach() * n as f64, out.loss.ce.detach() * n as f64);
            win_loss += &l;
            win_ce += &c;
            win_correct += &out.correct;
            win_n += n;
            ep_loss += l;
            ep_ce += c;
            ep_correct += out.correct;
            ep_n += n;
            if let Some(per_step) = time_step(&mut s.clock, &out.loss.total) {
                warn_if_long(job, &bar, (epoch, iters), step + 1, per_step);
            }
        }
        s.state.step = step + 1;
        s.state.global_step += 1;
        bar.inc(1);
        let stop = INTERRUPTED.load(Ordering::SeqCst) || job.stop_after_steps.is_some_and(|n| s.state.global_step >= n);
        if (s.state.step.is_multiple_of(cfg.performance.log_every) || s.state.step == iters || stop) && win_n > 0 {
            let secs = win_t.elapsed().as_secs_f64();
            let (loss, ce, acc) = (
                win_loss.double_value(&[]) / win_n as f64,
                win_ce.double_value(&[]) / win_n as f64,
                win_correct.double_value(&[]) / win_n as f64,
            );
            if !loss.is_finite() {
                bar.abandon_with_message("non-finite loss; stopped");
                return Err(diverged(job, s, &format!("non-finite loss ({loss})")));
            }
            s.log.record(json!({"type": "step", "epoch": epoch, "step": s.state.step, "global_step": s.state.global_step,
                "lr": lr, "loss": loss, "ce": ce, "distance": loss - ce, "accuracy": acc,
                "images_per_s": win_n as f64 / secs.max(1e-9)}))?;
            // Synced just now (the loss was read back): this epoch's mean step time so far.
            let left = eta::steps_left(cfg.epochs, iters, epoch, s.state.step);
            let eta = eta::estimate(left, offset + 1, ep_t.elapsed().as_secs_f64()).map(eta::human).unwrap_or_else(|| "n/a".into());
            bar.set_message(format!("loss {loss:.4} acc {acc:.3} {:.1} img/s, ETA {eta}", win_n as f64 / secs.max(1e-9)));
            (win_loss, win_ce, win_correct, win_n) = (zero(), zero(), zero(), 0);
            win_t = Instant::now();
        }
        if stop {
            bar.abandon_with_message("stopped; checkpoint saved");
            s.log.flush()?;
            s.state.partial = Some(PartialEpoch {
                loss: ep_loss.double_value(&[]),
                ce: ep_ce.double_value(&[]),
                correct: ep_correct.double_value(&[]),
                images: ep_n,
                seconds: carried_seconds + ep_t.elapsed().as_secs_f64(),
            });
            return Ok(EpochEnd::Stopped);
        }
    }
    bar.finish_and_clear();
    if ep_n == 0 && start_step < iters {
        return Err(Error::Data(format!(
            "{}: no training image of epoch {} could be read (see the warnings above)",
            job.label,
            epoch + 1
        )));
    }
    let seconds = carried_seconds + ep_t.elapsed().as_secs_f64();
    Ok(EpochEnd::Done(EpochSums { loss: ep_loss, ce: ep_ce, correct: ep_correct, images: ep_n, seconds }))
}

/// End of an epoch: checks, validation, best tracking, checkpoints.
fn end_epoch(job: &TrainJob, s: &mut Session, sums: EpochSums, lr: f64) -> Result<()> {
    let cfg = &job.config;
    let epoch = s.state.epoch;
    let n = sums.images.max(1) as f64;
    let train_loss = sums.loss.double_value(&[]) / n;
    if !train_loss.is_finite() {
        return Err(diverged(job, s, &format!("non-finite loss ({train_loss})")));
    }
    check_weights(job, s)?;
    let mut record = json!({"type": "epoch", "epoch": epoch, "global_step": s.state.global_step, "lr": lr,
        "train_loss": train_loss, "train_ce": sums.ce.double_value(&[]) / n,
        "train_accuracy": sums.correct.double_value(&[]) / n, "images": sums.images, "seconds": sums.seconds,
        "images_per_s": sums.images as f64 / sums.seconds.max(1e-9)});
    s.state.epoch += 1;
    s.state.step = 0;
    let validate_now = !job.val_idx.is_empty() && (s.state.epoch.is_multiple_of(cfg.validation.every) || s.state.epoch == cfg.epochs);
    let mut improved = job.val_idx.is_empty();
    if validate_now {
        let v = validate(job, &s.model)?;
        record["val"] = json!({"loss": v.loss, "accuracy": v.metrics.accuracy, "sensitivity": v.metrics.sensitivity,
            "specificity": v.metrics.specificity, "f1": v.metrics.f1, "auc": v.metrics.auc, "images": v.metrics.n,
            "unreadable": v.failures});
        let better = match &s.state.best {
            None => true,
            Some(b) => v.metrics.accuracy > b.accuracy || (v.metrics.accuracy == b.accuracy && v.loss < b.loss),
        };
        if better {
            s.state.best = Some(Best { epoch, accuracy: v.metrics.accuracy, loss: v.loss });
            improved = true;
        }
    }
    if job.verbose {
        eprintln!("{}", epoch_line(&job.label, &record));
    }
    s.log.record(record)?;
    s.log.flush()?;
    checkpoint::save(&s.last_path, &s.vs, &s.sgd, &job.model_config, cfg, &s.state)?;
    if improved {
        // Marked unfinished until the last epoch ends (`train` clears the mark), so that a run
        // stopped early leaves a model file that says so.
        let progress = format!("saved after epoch {} of {}", epoch + 1, cfg.epochs);
        save_model_with(&job.out_dir.join(MODEL_FILE), &s.vs, &job.model_config, Some(&progress))?;
        if !job.val_idx.is_empty() {
            checkpoint::save(&job.out_dir.join(BEST_CHECKPOINT), &s.vs, &s.sgd, &job.model_config, cfg, &s.state)?;
        }
    }
    Ok(())
}

/// Counts one finished step on `clock`; after the set-up steps and [`eta::TIMED_STEPS`] more,
/// waits for the device (reading `loss` back) and returns their mean time, once; None at every
/// other step.
fn time_step(clock: &mut StepClock, loss: &Tensor) -> Option<f64> {
    if clock.done {
        return None;
    }
    if clock.skip > 0 {
        clock.skip -= 1;
        if clock.skip == 0 {
            let _ = loss.double_value(&[]); // the set-up steps' work is done before the clock starts
            clock.since = Some(Instant::now());
        }
        return None;
    }
    let since = clock.since?;
    clock.timed += 1;
    if clock.timed < eta::TIMED_STEPS {
        return None;
    }
    let _ = loss.double_value(&[]);
    clock.done = true;
    Some(since.elapsed().as_secs_f64() / clock.timed as f64)
}

/// Prints (once per process, verbose runs only) the warning for a run that will take long on
/// its device, from the measured `per_step` and the steps left after `step` of `epoch` (of
/// `iters` steps).
fn warn_if_long(job: &TrainJob, bar: &ProgressBar, (epoch, iters): (usize, usize), step: usize, per_step: f64) {
    let left = eta::steps_left(job.config.epochs, iters, epoch, step);
    let Some(total) = eta::estimate(left, 1, per_step) else { return };
    if let Some(w) = eta::long_run_warning(&job.label, job.device, left, per_step, total)
        && job.verbose
        && !LONG_RUN_WARNED.swap(true, Ordering::SeqCst)
    {
        bar.suspend(|| eprintln!("{w}"));
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use tch::{Device, Kind, Tensor};

    /// The long-run estimate comes after the set-up steps (4 with the CUDA graph's warm-up and
    /// recording) and then `TIMED_STEPS` timed ones, exactly once.
    #[test]
    fn the_step_clock_skips_the_set_up_steps_and_answers_once() {
        let loss = Tensor::from(1.5f32);
        for skip in [1, crate::train::cuda_graph::WARMUP_STEPS + 1] {
            let mut clock = StepClock { skip, since: None, timed: 0, done: false };
            let answers: Vec<bool> = (0..skip + eta::TIMED_STEPS + 2).map(|_| time_step(&mut clock, &loss).is_some()).collect();
            let first = answers.iter().position(|&a| a);
            assert_eq!(first, Some(skip + eta::TIMED_STEPS - 1), "skip {skip}: {answers:?}");
            assert_eq!(answers.iter().filter(|&&a| a).count(), 1, "skip {skip}: {answers:?}");
        }
    }

    /// MAG-SD(0AUG) is MA-Net trained on the raw branch's cross-entropy alone: with no
    /// augmentations, MAG-SD's step must do exactly what the plain cross-entropy step does.
    #[test]
    fn magsd_without_augmentations_is_the_cross_entropy_step() {
        let mut cfg = TrainConfig::tiny();
        cfg.method.augmentations.clear();
        let mut model_cfg = NetworkConfig::tiny(2);
        model_cfg.image_size = 64;
        let x = Tensor::randn([4, 1, 64, 64], (Kind::Float, Device::Cpu));
        let y = Tensor::from_slice(&[0i64, 1, 1, 0]);
        // Both runs start from the same weights, copied rather than re-drawn: the other unit
        // tests draw from libtorch's process-wide generator in parallel threads, so two
        // seeded initialisations in one test binary need not be equal.
        let start = nn::VarStore::new(Device::Cpu);
        seeded_init(&start, &model_cfg, 7).unwrap();
        let run = |stepper: &mut dyn TrainStep| {
            let mut vs = nn::VarStore::new(Device::Cpu);
            let model = Network::new(&vs.root(), model_cfg.clone()).unwrap();
            vs.copy(&start).unwrap();
            let params = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
            let mut sgd = Sgd::new(params, 0.9, 5e-4, true);
            let out = stepper.step(&model, &mut sgd, &x, &y, &mut Rng::new(1), &cfg, Device::Cpu, 0.01).unwrap();
            (out.loss.total.double_value(&[]), out.loss.ce.double_value(&[]), crate::model::weights::named_variables(&vs))
        };
        let (loss_a, ce_a, w_a) = run(&mut MagSdStep);
        let (loss_b, ce_b, w_b) = run(&mut CrossEntropyStep);
        assert_eq!(loss_a, ce_a, "no augmentations: the loss is the cross-entropy");
        assert_eq!((loss_a, ce_a), (loss_b, ce_b));
        for ((n, a), (_, b)) in w_a.iter().zip(&w_b) {
            assert!(a.equal(b), "{n} differs after one step");
        }
    }
}
