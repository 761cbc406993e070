//! `magsd train`: cross-validation or a final model, resumable.
use std::path::PathBuf;
use std::sync::Arc;

use super::model::{ModelArgs, toml_string};
use crate::data::dataset::{Dataset, DatasetOptions};
use crate::data::input_stats::{self, InputStats};
use crate::device::DeviceChoice;
use crate::error::{Error, Result};
use crate::model::weights::{load_tensors, save_tensors};
use crate::runfolder::{FOLD_RESULT_FILE, MODEL_FILE, fold_dir};
use crate::train::config::TrainConfig;
use crate::train::cv::{self, RunOptions, RunResult, RunSpec};

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
  magsd train --data ../shared/data/cxr-demo --preset tiny --folds 4 --out runs/demo-cv\n  \
  magsd train --data ../shared/data/cxr/manifest.csv --classes covid19,viral,bacterial,normal --folds 5\n  \
  magsd train --data ../shared/data/cxr --label-column label3 --preset authors-code --device cuda --fp32\n  \
  magsd train --data my_xrays/ --folds 0 --pretrained resnet50-imagenet.pth --out runs/final\n  \
  magsd train --config my.toml --set optim.lr=0.01 --set method.augmentations='[\"mixup\"]' --data x.csv\n  \
  magsd train --resume runs/demo-cv            # continue after Ctrl-C or a crash\n  \
  magsd train --data ../shared/data/cxr --arch resnet50 --folds 5   # a baseline of Table 3\n  \
  magsd train --data ../shared/data/cxr/manifest.csv --group-by source_repo --folds 3   # never test on a training source\n  \
  magsd train --data ../shared/data/cxr/manifest.csv --test-source muhammedtalo/COVID-19  # train on the other sources\n\n\
Presets: paper (lr 1e-3, wd 1e-6, batch 32, 100 epochs), authors-code (wd 5e-4, Nesterov, lr x0.1\n\
after epochs 75 and 125, batch 16, 150 epochs of 345 steps), tiny (small network, 96 px, 3 epochs,\n\
no validation split: the last epoch's model is kept; for CPU tests). paper and authors-code hold out\n\
a patient-level 10 % of the training images to pick the best epoch.\n\
Every setting of config.toml can be given with --set section.key=value.\n\
With --resume only --device, a larger --epochs, --max-steps, --by, --allow-outside-root and --quiet
may be given.")]
#[command(mut_arg("data", |a| a.required(false).required_unless_present("resume")))]
pub struct TrainArgs {
    #[command(flatten)]
    pub data: super::DataArgs,
    /// paper, authors-code or tiny (default: paper, or the config file's preset).
    #[arg(long)]
    pub preset: Option<String>,
    /// A TOML config (a run's config.toml works).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override any setting: section.key=value (TOML value), repeatable.
    #[arg(long = "set")]
    pub set: Vec<String>,
    /// Training epochs (setting `epochs`); with --resume, more epochs than the run had.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Images per training step (setting `batch_size`).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Base learning rate of SGD (setting `optim.lr`).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Seed of the initial weights, the split, the augmentations and the batch order (setting `seed`).
    #[arg(long)]
    pub seed: Option<u64>,
    #[command(flatten)]
    pub device: super::DeviceArgs,
    /// bf16 autocast (CUDA; already on in every preset, see --fp32).
    #[arg(long)]
    pub bf16: bool,
    /// Channels-last memory layout (CUDA; already on in every preset, see --fp32).
    #[arg(long)]
    pub channels_last: bool,
    /// fp32, default memory layout and no CUDA graph on CUDA (the presets use bf16 autocast,
    /// channels-last and a CUDA-graph step there): `performance.bf16/channels_last/cuda_graph = false`.
    #[arg(long, conflicts_with_all = ["bf16", "channels_last"])]
    pub fp32: bool,
    /// Start from a torchvision checkpoint (.pth or .safetensors): a ResNet for MA-Net's backbone,
    /// or the chosen baseline's own (VGG16, ResNet18/50, InceptionV3), matched by name.
    #[arg(long)]
    pub pretrained: Option<PathBuf>,
    /// Choose a decision threshold for CLASS on the validation split, reaching this sensitivity or
    /// specificity there (e.g. covid19:sensitivity=0.95), stored in the model file and applied by
    /// predict and serve; repeatable (setting `calibration.operating_points`).
    #[arg(long = "operating-point", value_name = "CLASS:sensitivity=S|specificity=S")]
    pub operating_point: Vec<String>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// k ≥ 2: patient-level k-fold cross-validation; 0: one final model on all the data [default: 5].
    #[arg(long, conflicts_with = "test_source")]
    pub folds: Option<usize>,
    #[command(flatten)]
    pub grouping: super::GroupingArgs,
    /// Run folder (default: a new runs/<timestamp>); must be new or empty.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in this folder with its own settings.
    #[arg(long, conflicts_with_all = ["data", "config", "preset", "set", "out"])]
    pub resume: Option<PathBuf>,
    /// Metadata columns to break held-out metrics down by (default: source_repo, dataset).
    #[arg(long = "by")]
    pub by: Vec<String>,
    /// Stop after this many steps (with a checkpoint), e.g. to fit a time limit; exits with
    /// status 0 (Ctrl-C: 130). The model file so far is marked unfinished until --resume ends it.
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
            push("optim.lr", toml::Value::Float(v).to_string());
        }
        if let Some(v) = self.seed {
            push("seed", v.to_string());
        }

        if self.bf16 {
            push("performance.bf16", "true".into());
        }
        if self.channels_last {
            push("performance.channels_last", "true".into());
        }

        if self.fp32 {
            for key in ["performance.bf16", "performance.channels_last", "performance.cuda_graph"] {
                push(key, "false".into());
            }
        }
        if let Some(p) = &self.pretrained {
            push("model.pretrained", toml_string(&p.display().to_string()));
        }
        if let Some(c) = &self.data.label_column {
            push("data.label_column", toml_string(c));
        }
        if let Some(c) = &self.data.classes {
            let list: Vec<String> = c.iter().map(|s| toml_string(s)).collect();
            push("data.classes", format!("[{}]", list.join(", ")));
        }
        if !self.operating_point.is_empty() {
            let list: Vec<String> = self.operating_point.iter().map(|s| toml_string(s)).collect();
            push("calibration.operating_points", format!("[{}]", list.join(", ")));
        }
        o.extend(self.model.overrides());
        o.extend(self.device.overrides());
        o
    }

    /// The options given that a resumed run cannot honour (it keeps its own settings).
    fn refused_on_resume(&self) -> Vec<&'static str> {
        let m = &self.model;
        [
            ("--batch-size", self.batch_size.is_some()),
            ("--lr", self.lr.is_some()),
            ("--seed", self.seed.is_some()),
            ("--bf16", self.bf16),
            ("--channels-last", self.channels_last),
            ("--fp32", self.fp32),
            ("--deterministic", self.device.deterministic),
            ("--pretrained", self.pretrained.is_some()),
            ("--label-column", self.data.label_column.is_some()),
            ("--classes", self.data.classes.is_some()),
            ("--operating-point", !self.operating_point.is_empty()),
            ("--folds", self.folds.is_some()),
            ("--group-by", self.grouping.group_by.is_some()),
            ("--test-source", self.grouping.test_source.is_some()),
            ("--backbone", m.backbone.is_some()),
            ("--maps", m.maps.is_some()),
            ("--scales", m.scales.is_some()),
            ("--head", m.head.is_some()),
            ("--in-channels", m.in_channels.is_some()),
            ("--image-size", m.image_size.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, given)| given.then_some(name))
        .collect()
    }
}

/// The settings of the run in `dir`, with the changes a resume may make: another `--device`, and
/// more `--epochs` (the learning-rate schedule then spans the new count). More epochs are refused
/// once a cross-validation fold has finished, so that all folds train equally long.
fn resume_config(args: &TrainArgs, dir: &std::path::Path, spec: &RunSpec) -> Result<TrainConfig> {
    let refused = args.refused_on_resume();
    if !refused.is_empty() {
        return Err(Error::Config(format!(
            "{} cannot change on --resume (the run keeps its own settings); only --device, a larger \
             --epochs, --max-steps, --by, --allow-outside-root and --quiet can be given",
            refused.join(", ")
        )));
    }
    let mut cfg = TrainConfig::resolve(None, Some(&dir.join(cv::CONFIG_FILE)), &[])?;
    if let Some(d) = args.device.device {
        cfg.device = d;
    }
    if let Some(e) = args.epochs {
        if e < cfg.epochs {
            return Err(Error::Config(format!(
                "--epochs {e}: this run already trains {} epochs; --resume can only add epochs",
                cfg.epochs
            )));
        }
        let finished = (0..spec.folds).find(|&k| fold_dir(dir, k).join(FOLD_RESULT_FILE).exists());
        if let Some(k) = finished.filter(|_| e > cfg.epochs && spec.folds >= 2) {
            return Err(Error::Config(format!(
                "--epochs {e}: fold {k} has already finished with {} epochs; every fold must train \
                 equally long, so a cross-validation run cannot add epochs now",
                cfg.epochs
            )));
        }
        cfg.epochs = e;
    }
    cfg.validate()?;
    Ok(cfg)
}

pub fn run(args: TrainArgs) -> Result<i32> {
    let (cfg, spec, out, resume) = match &args.resume {
        Some(dir) => {
            let spec = RunSpec::load(dir)?;
            let cfg = resume_config(&args, dir, &spec)?;
            (cfg, spec, dir.clone(), true)
        }
        None => {
            super::check_classes(&args.data.classes)?;
            let cfg = TrainConfig::resolve(args.preset.as_deref(), args.config.as_deref(), &args.overrides())?;
            let data = args.data.path().to_path_buf();
            let grouping = args.grouping.grouping();
            let spec = RunSpec {
                format_version: crate::runfolder::FORMAT_VERSION,
                data,
                label_column: cfg.data.label_column.clone(),
                classes: Vec::new(),
                folds: if args.grouping.test_source.is_some() { 1 } else { args.folds.unwrap_or(5) },
                command: std::env::args().collect::<Vec<_>>().join(" "),
                grouping,
                allow_outside_root: args.data.allow_outside_root,
            };
            (cfg, spec, args.out.clone().unwrap_or_else(cv::default_run_dir), false)
        }
    };
    // Before the data is read: determinism must be set before CUDA starts.
    let device = crate::device::set_up(cfg.device, cfg.performance.deterministic)?;
    // config.toml records the device used, not `auto`, so the run says where it ran.
    let cfg = TrainConfig { device: DeviceChoice::used(device), ..cfg };
    // A resumed run may be given --allow-outside-root when its manifest has moved.
    let spec = RunSpec { allow_outside_root: spec.allow_outside_root || args.data.allow_outside_root, ..spec };
    let opts = DatasetOptions {
        label_column: cfg.data.label_column.clone(),
        classes: cfg.data.classes.clone().or_else(|| (!spec.classes.is_empty()).then(|| spec.classes.clone())),
        allow_outside_root: spec.allow_outside_root,
    };
    let ds = Arc::new(Dataset::open(&spec.data, &opts)?);
    for p in ds.problems.iter().take(10) {
        eprintln!("warning: {p}");
    }
    let spec = RunSpec { classes: ds.classes.clone(), ..spec };
    // Everything is checked before the run folder is written, so a failed start leaves none.
    cv::check_start(&cfg, &ds, spec.folds, &spec.grouping)?;
    cv::prepare_run_dir(&out, &spec, &cfg, resume)?;
    // Only for flags given: the presets' bf16 and channels-last are simply unused on the CPU.
    if let Some(note) = crate::device::cuda_only_note(args.bf16, args.channels_last, device) {
        eprintln!("{note}");
    }
    // Every preset turns the CUDA graph on; say it is unused only to a user who asked for it.
    let graph_asked = args.set.iter().any(|s| s.replace(' ', "") == "performance.cuda_graph=true");
    if graph_asked && !device.is_cuda() {
        eprintln!("note: performance.cuda_graph applies on CUDA only; this run steps eagerly");
    }
    let by = if args.by.is_empty() { ds.default_breakdown() } else { args.by.clone() };
    if !args.quiet {
        eprintln!(
            "magsd train: {} images, {} classes ({}), {} on {}, run folder {}",
            ds.samples.len(),
            ds.classes.len(),
            ds.classes.join(", "),
            if spec.folds >= 1 { spec.grouping.describe(spec.folds) } else { "final model".into() },
            crate::device::describe(device),
            out.display()
        );
    }
    super::install_ctrl_c();
    let result = cv::run(
        &cfg,
        ds.clone(),
        spec.folds,
        &RunOptions {
            out: out.clone(),
            device,
            resume,
            stop_after_steps: args.max_steps,
            verbose: !args.quiet,
            by,
            grouping: spec.grouping.clone(),
        },
    )?;
    match result {
        RunResult::Stopped => {
            eprintln!("stopped with a checkpoint; continue with: magsd train --resume {}", out.display());
            // A deliberate stop (--max-steps) is a success; an interrupted run exits as Ctrl-C does.
            let interrupted = crate::train::trainer::INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst);
            Ok(if interrupted { 130 } else { 0 })
        }
        RunResult::Final { model } => {
            store_input_stats(std::slice::from_ref(&model), &ds, &cfg)?;
            let html = crate::report::run::write_run_report(&out)?;
            println!("final model: {}\nreport: {}", model.display(), html.display());
            Ok(0)
        }
        RunResult::CrossValidation(s) => {
            let models: Vec<PathBuf> = (0..spec.grouping.folds_to_run(spec.folds)).map(|k| fold_dir(&out, k).join(MODEL_FILE)).collect();
            store_input_stats(&models, &ds, &cfg)?;
            print!("{}", cv::summary_markdown(&s, &ds.classes, &spec.grouping.describe(spec.folds)));
            let html = crate::report::run::write_run_report(&out)?;
            println!("\nrun folder: {}\nreport: {}", out.display(), html.display());
            Ok(0)
        }
    }
}

/// Stores summary statistics of the run's images (all of its dataset, up to
/// [`input_stats::MAX_IMAGES`] of them) in each model file, for `magsd predict`'s warning about
/// inputs unlike the training data (see `crate::data::input_stats`).
fn store_input_stats(models: &[PathBuf], ds: &Dataset, cfg: &TrainConfig) -> Result<()> {
    let Some(stats) = InputStats::collect(ds, &cv::input_pipeline(cfg)?) else {
        return Ok(());
    };
    let json = serde_json::to_string(&stats).expect("stats serialise");
    for path in models.iter().filter(|p| p.is_file()) {
        let (tensors, mut meta) = load_tensors(path)?;
        meta.insert(input_stats::STATS_KEY.to_string(), json.clone());
        save_tensors(path, &tensors, meta)?;
    }
    Ok(())
}
