//! `magsd bench`: speed measurements as JSON lines.
use std::path::PathBuf;

use super::model::ModelArgs;
use crate::bench::{BenchOptions, Measure, run as run_bench};
use crate::error::Result;
use crate::train::config::TrainConfig;

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
  magsd bench --device cuda                                  # fp32, batch 32, ResNet50, 224 px\n  \
  magsd bench --device cuda --bf16 --channels-last\n  \
  magsd bench --device cpu --only predict --image chest.png   # single-image latency\n  \
  magsd bench --only loader --data ../shared/data/cxr         # input pipeline images/s\n  \
  magsd bench --device cpu --backbone tiny --image-size 96 --batch-size 8 --iters 3 --trials 2\n\n\
Same settings and JSON fields as ../shared/reference/bench_magsd_torch.py (batch 32, 1x224x224,\n\
3 classes, 32 maps, scales 7+14, SGD lr 1e-3 wd 1e-6); run both in one call and compare ratios.")]
pub struct BenchArgs {
    #[command(flatten)]
    pub device: super::DeviceArgs,
    /// Training batch size (`--batch` is the old name, still accepted).
    #[arg(long, alias = "batch", default_value_t = 32)]
    pub batch_size: usize,
    /// Inference batch (default: --batch-size).
    #[arg(long)]
    pub infer_batch: Option<usize>,
    /// Number of output classes.
    #[arg(long, default_value_t = 3)]
    pub num_classes: usize,
    #[command(flatten)]
    pub model: ModelArgs,
    /// bf16 autocast (CUDA; ignored with a note on CPU).
    #[arg(long)]
    pub bf16: bool,
    /// Channels-last memory layout (CUDA; ignored with a note on CPU).
    #[arg(long)]
    pub channels_last: bool,
    /// The authors' optimiser (weight decay 5e-4, Nesterov) instead of the paper's.
    #[arg(long)]
    pub code_optim: bool,
    /// Untimed training steps before the trials.
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    /// Timed training steps per trial.
    #[arg(long, default_value_t = 30)]
    pub iters: usize,
    /// Timed trials of each throughput measurement (median, min and max are reported).
    #[arg(long, default_value_t = 5)]
    pub trials: usize,
    /// Untimed inference batches before the trials.
    #[arg(long, default_value_t = 5)]
    pub infer_warmup: usize,
    /// Timed inference batches per trial.
    #[arg(long, default_value_t = 30)]
    pub infer_iters: usize,
    /// Measurements to run (default: train, infer, eval, predict; and loader with --data).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Measure>,
    /// Dataset for the loader measurement.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Image for the predict latency (default: a generated 512-px phantom).
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Any training setting, as for `magsd train`.
    #[arg(long = "set")]
    pub set: Vec<String>,
}

pub fn run(a: BenchArgs) -> Result<i32> {
    let mut sets = vec![format!("batch_size={}", a.batch_size.max(2))];
    if a.code_optim {
        sets.extend(["optim.weight_decay=5e-4".to_string(), "optim.nesterov=true".to_string()]);
    }
    // Explicit, whatever the preset says: fp32 eager unless asked (--bf16, --channels-last,
    // --set performance.cuda_graph=true), as the anchor's flags.
    sets.push(format!("performance.bf16={}", a.bf16));
    sets.push(format!("performance.channels_last={}", a.channels_last));
    sets.push("performance.cuda_graph=false".into());
    sets.extend(a.model.overrides());
    sets.extend(a.set.iter().cloned());
    sets.extend(a.device.overrides());
    let config = TrainConfig::resolve(Some("paper"), None, &sets)?;
    let measures = if a.only.is_empty() {
        let mut m = vec![Measure::Train, Measure::Infer, Measure::Eval, Measure::Predict];
        if a.data.is_some() {
            m.push(Measure::Loader);
        }
        m
    } else {
        a.only.clone()
    };
    let device = crate::device::set_up(config.device, config.performance.deterministic)?;
    if let Some(note) = crate::device::cuda_only_note(a.bf16, a.channels_last, device) {
        eprintln!("{note}");
    }
    let o = BenchOptions {
        device,
        config,
        classes: a.num_classes,
        batch: a.batch_size,
        infer_batch: a.infer_batch.unwrap_or(a.batch_size),
        warmup: a.warmup,
        iters: a.iters,
        trials: a.trials,
        infer_warmup: a.infer_warmup,
        infer_iters: a.infer_iters,
        measures,
        data: a.data.clone(),
        image: a.image.clone(),
    };
    for line in run_bench(&o)? {
        println!("{line}");
    }
    Ok(0)
}
