//! `magsd train`: cross-validation or a final model, resumable.
use std::path::PathBuf;
use std::sync::Arc;

use super::model::{ModelArgs, toml_string};
use crate::data::dataset::{Dataset, DatasetOptions};
use crate::device::DeviceChoice;
use crate::error::Result;
use crate::train::config::TrainConfig;
use crate::train::cv::{self, RunOptions, RunResult, RunSpec};

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
  magsd train --data ../shared/data/cxr-demo --preset tiny --folds 4 --out runs/demo-cv\n  \
  magsd train --data ../shared/data/cxr/manifest.csv --classes covid19,viral,bacterial,normal --folds 5\n  \
  magsd train --data ../shared/data/cxr --label-column label3 --preset authors-code --device cuda --bf16\n  \
  magsd train --data my_xrays/ --folds 0 --pretrained resnet50-imagenet.pth --out runs/final\n  \
  magsd train --config my.toml --set optim.lr=0.01 --set method.augmentations='[\"mixup\"]' --data x.csv\n  \
  magsd train --resume runs/demo-cv            # continue after Ctrl-C or a crash\n\n\
Presets: paper (lr 1e-3, wd 1e-6, batch 32, 100 epochs), authors-code (wd 5e-4, Nesterov, lr x0.1\n\
after epochs 75 and 125, batch 16, 150 epochs of 345 steps), tiny (small network, 96 px, CPU tests).\n\
Every setting of config.toml can be given with --set section.key=value.")]
pub struct TrainArgs {
    /// Images: an ImageFolder root, a folder with manifest.csv, or a manifest CSV.
    #[arg(long, required_unless_present = "resume")]
    pub data: Option<PathBuf>,
    #[arg(long, default_value = "label")]
    pub label_column: String,
    /// Keep only these classes, in this order (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub classes: Option<Vec<String>>,
    /// paper, authors-code or tiny (default: paper, or the config file's preset).
    #[arg(long)]
    pub preset: Option<String>,
    /// A TOML config (a run's config.toml works).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override any setting: section.key=value (TOML value), repeatable.
    #[arg(long = "set")]
    pub set: Vec<String>,
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long, value_enum)]
    pub device: Option<DeviceChoice>,
    /// bf16 autocast (CUDA).
    #[arg(long)]
    pub bf16: bool,
    /// Channels-last memory layout (CUDA).
    #[arg(long)]
    pub channels_last: bool,
    /// Start the backbone from a torchvision ResNet checkpoint (.pth or .safetensors).
    #[arg(long)]
    pub pretrained: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// k ≥ 2: patient-level k-fold cross-validation; 0: one final model on all the data.
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    /// Run folder (default: a new runs/<timestamp>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in this folder with its own settings.
    #[arg(long, conflicts_with_all = ["data", "config", "preset", "set", "out"])]
    pub resume: Option<PathBuf>,
    /// Metadata columns to break held-out metrics down by (default: source_repo, dataset).
    #[arg(long = "by")]
    pub by: Vec<String>,
    /// Stop after this many steps (with a checkpoint), e.g. to fit a time limit.
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// No progress bars or per-epoch lines.
    #[arg(long)]
    pub quiet: bool,
}

impl TrainArgs {
    /// The explicit flags as `key=value` overrides, after any `--set`.
    fn overrides(&self) -> Vec<String> {
        let mut o = self.set.clone();
        let mut push = |k: &str, v: String| o.push(format!("{k}={v}"));
        if let Some(v) = self.epochs {
            push("epochs", v.to_string());
        }
        if let Some(v) = self.batch_size {
            push("batch_size", v.to_string());
        }
        if let Some(v) = self.lr {
            push("optim.lr", format!("{v:e}"));
        }
        if let Some(v) = self.seed {
            push("seed", v.to_string());
        }
        if let Some(v) = self.device {
            push("device", toml_string(&format!("{v:?}").to_lowercase()));
        }
        if self.bf16 {
            push("performance.bf16", "true".into());
        }
        if self.channels_last {
            push("performance.channels_last", "true".into());
        }
        if let Some(p) = &self.pretrained {
            push("model.pretrained", toml_string(&p.display().to_string()));
        }
        push("data.label_column", toml_string(&self.label_column));
        if let Some(c) = &self.classes {
            let list: Vec<String> = c.iter().map(|s| toml_string(s)).collect();
            push("data.classes", format!("[{}]", list.join(", ")));
        }
        o.extend(self.model.overrides());
        o
    }
}

pub fn run(args: TrainArgs) -> Result<i32> {
    let (cfg, spec, out, resume) = match &args.resume {
        Some(dir) => {
            let spec = RunSpec::load(dir)?;
            let cfg = TrainConfig::resolve(None, Some(&dir.join(cv::CONFIG_FILE)), &[])?;
            (cfg, spec, dir.clone(), true)
        }
        None => {
            let cfg = TrainConfig::resolve(args.preset.as_deref(), args.config.as_deref(), &args.overrides())?;
            let data = args.data.clone().expect("clap requires --data without --resume");
            let spec = RunSpec {
                format_version: crate::runfolder::FORMAT_VERSION,
                data,
                label_column: cfg.data.label_column.clone(),
                classes: Vec::new(),
                folds: args.folds,
                command: std::env::args().collect::<Vec<_>>().join(" "),
            };
            (cfg, spec, args.out.clone().unwrap_or_else(cv::default_run_dir), false)
        }
    };
    let opts = DatasetOptions {
        label_column: cfg.data.label_column.clone(),
        classes: cfg.data.classes.clone().or_else(|| (!spec.classes.is_empty()).then(|| spec.classes.clone())),
    };
    let ds = Arc::new(Dataset::open(&spec.data, &opts)?);
    for p in ds.problems.iter().take(10) {
        eprintln!("warning: {p}");
    }
    let spec = RunSpec { classes: ds.classes.clone(), ..spec };
    cv::prepare_run_dir(&out, &spec, &cfg, resume)?;
    let device = cfg.device.resolve()?;
    if let Some(note) = crate::device::cuda_only_note(cfg.performance.bf16, cfg.performance.channels_last, device) {
        eprintln!("{note}");
    }
    let by = if args.by.is_empty() { ds.default_breakdown() } else { args.by.clone() };
    if !args.quiet {
        eprintln!(
            "magsd train: {} images, {} classes ({}), {} on {}, run folder {}",
            ds.samples.len(),
            ds.classes.len(),
            ds.classes.join(", "),
            if spec.folds >= 2 { format!("{}-fold cross-validation", spec.folds) } else { "final model".into() },
            crate::device::describe(device),
            out.display()
        );
    }
    super::install_ctrl_c();
    let result = cv::run(
        &cfg,
        ds.clone(),
        spec.folds,
        &RunOptions { out: out.clone(), device, resume, stop_after_steps: args.max_steps, verbose: !args.quiet, by },
    )?;
    match result {
        RunResult::Stopped => {
            eprintln!("stopped with a checkpoint; continue with: magsd train --resume {}", out.display());
            Ok(130)
        }
        RunResult::Final { model } => {
            let html = crate::report::run::write_run_report(&out)?;
            println!("final model: {}\nreport: {}", model.display(), html.display());
            Ok(0)
        }
        RunResult::CrossValidation(s) => {
            print!("{}", cv::summary_markdown(&s, &ds.classes));
            let html = crate::report::run::write_run_report(&out)?;
            println!("\nrun folder: {}\nreport: {}", out.display(), html.display());
            Ok(0)
        }
    }
}
