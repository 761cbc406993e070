//! The `magsd` command line: argument parsing and printing only; the work is in the library.
use clap::{Parser, Subcommand};

pub mod bench;
pub mod data;
pub mod demo;
pub mod eval;
pub mod localize;
pub mod predict;
pub mod report;
pub mod model;
pub mod ood_eval;
pub mod train;
pub mod reproduce;
pub mod serve;

#[derive(Parser, Debug)]
#[command(
    name = "magsd",
    version,
    about = "Train, evaluate and explain MAG-SD chest X-ray classifiers",
    long_about = "Train, evaluate and explain MAG-SD chest X-ray classifiers (Li et al., arXiv 2012.02278):\n\
                  a ResNet with multiscale attention, attention-guided augmentation and a soft-distance loss.",
    after_help = "Examples:\n  magsd demo                                   # a complete run on generated phantoms\n  magsd data summary --data ../shared/data/cxr/manifest.csv\n  magsd <command> --help                       # every command has examples"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// The embedded default: phantoms → train → evaluate → localise → report, no download.
    Demo(demo::DemoArgs),
    /// Inspect, summarise, split and check image data.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Measure training/inference throughput, predict latency and loader speed (JSON lines).
    Bench(bench::BenchArgs),
    /// Describe networks and weight files.
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// Train MAG-SD: patient-level cross-validation or a final model.
    Train(train::TrainArgs),
    /// Evaluate a model on a dataset: metrics, figures, attention overlays, report.
    Eval(eval::EvalArgs),
    /// Evaluate localisation: IoU of attention boxes against lesion masks or boxes.
    Localize(localize::LocalizeArgs),
    /// Classify X-rays and show where the model looked.
    Predict(predict::PredictArgs),
    /// Measure how well the model flags images unlike its training X-rays (AUROC, FPR at 95 % TPR).
    OodEval(ood_eval::OodEvalArgs),
    /// (Re)write report.md and report.html of a training run folder.
    #[command(after_help = "Examples:\n  magsd report runs/2026-11-25T19-37-42")]
    Report {
        /// A training run folder (the `--out` of `magsd train`).
        run: std::path::PathBuf,
    },
    /// The paper's Tables 3–8 on your data: rows × folds, resumable, locally, on GPUs or on Slurm.
    Reproduce(reproduce::ReproduceArgs),
    /// Serve a model: a web page, an HTTP API and the KServe v2 protocol, with dynamic batching.
    Serve(serve::ServeArgs),
}

/// Runs the parsed command; returns the process exit code.
pub fn run(cli: Cli) -> crate::Result<i32> {
    match cli.command {
        Command::Demo(a) => demo::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Data(c) => data::run(c),
        Command::Model(c) => model::run(c),
        Command::Train(a) => train::run(a),
        Command::Eval(a) => eval::eval(a, false),
        Command::Localize(a) => eval::eval(a.try_into()?, true),
        Command::Predict(a) => predict::predict_images(a),
        Command::OodEval(a) => ood_eval::run(a),
        Command::Report { run } => report::report(&run),
        Command::Reproduce(a) => reproduce::run(a),
        Command::Serve(a) => serve::run(a),
    }
}

/// Options shared by every command that reads a dataset: `train`, `reproduce`, `demo`, `eval`,
/// `localize`, `ood-eval` and `data`. `--data` is required unless a command makes it optional
/// (`#[command(mut_arg("data", ...))]`: `train` with --resume, `reproduce` on an existing grid,
/// `demo` on phantoms).
#[derive(clap::Args, Debug, Clone)]
pub struct DataArgs {
    /// An ImageFolder root (one folder per class), a folder with a manifest.csv, or a manifest CSV.
    #[arg(long, required = true)]
    pub data: Option<std::path::PathBuf>,
    /// Manifest column holding the labels (e.g. `label3` for the 3-class task); default `label`,
    /// or the config file's for `train` and `reproduce`, or for `eval` and `localize` the column
    /// the model's run was trained on.
    #[arg(long)]
    pub label_column: Option<String>,
    /// Keep only these classes, in this order (comma-separated); default: every label found.
    #[arg(long, value_delimiter = ',')]
    pub classes: Option<Vec<String>>,
    /// Accept manifest paths that lead outside the manifest's folder (absolute, or with `..`).
    #[arg(long)]
    pub allow_outside_root: bool,
}

impl DataArgs {
    pub const DEFAULT_LABEL_COLUMN: &'static str = "label";

    /// `--data`, for the commands on which clap requires it.
    pub fn path(&self) -> &std::path::Path {
        self.data.as_deref().expect("clap requires --data on this command")
    }

    /// The dataset options, with `label_column` when `--label-column` was not given.
    pub fn options_with(&self, label_column: &str) -> crate::data::dataset::DatasetOptions {
        crate::data::dataset::DatasetOptions {
            label_column: self.label_column.clone().unwrap_or_else(|| label_column.to_string()),
            classes: self.classes.clone(),
            allow_outside_root: self.allow_outside_root,
        }
    }

    pub fn options(&self) -> crate::data::dataset::DatasetOptions {
        self.options_with(Self::DEFAULT_LABEL_COLUMN)
    }

    pub fn open(&self) -> crate::Result<crate::data::dataset::Dataset> {
        check_classes(&self.classes)?;
        crate::data::dataset::Dataset::open(self.path(), &self.options())
    }
}

/// The device and determinism options of every command that trains or infers: `train`,
/// `reproduce`, `demo`, `bench`, `eval`, `localize`, `predict`, `ood-eval` and `serve`;
/// [`crate::device::set_up`] acts on them.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DeviceArgs {
    /// cpu, cuda or auto (training: setting `device`, default the config's, auto in every
    /// preset; inference: default auto).
    #[arg(long, value_enum)]
    pub device: Option<crate::device::DeviceChoice>,
    /// Deterministic cuDNN and libtorch algorithms, cuDNN benchmarking off (setting
    /// `performance.deterministic`): the same seed gives the same loss curve on CUDA too (it may
    /// be slower; CPU runs need no flag).
    #[arg(long)]
    pub deterministic: bool,
}

impl DeviceArgs {
    /// Sets up determinism and the device for a command without a training config (`auto`
    /// when --device is not given).
    pub fn set_up(&self) -> crate::error::Result<tch::Device> {
        crate::device::set_up(self.device.unwrap_or_default(), self.deterministic)
    }

    /// The flags given, as `key=value` settings.
    pub fn overrides(&self) -> Vec<String> {
        let mut o = Vec::new();
        if let Some(d) = self.device {
            o.push(format!("device={}", model::toml_string(&format!("{d:?}").to_lowercase())));
        }
        if self.deterministic {
            o.push("performance.deterministic=true".into());
        }
        o
    }
}

/// Source-aware protocols, shared by `train` and `reproduce` (issue 22).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct GroupingArgs {
    /// Folds grouped by this metadata column, as scikit-learn's GroupKFold: every value (e.g.
    /// every source_repo) in exactly one fold, so a model is never tested on a source it trained on.
    #[arg(long, value_name = "COLUMN")]
    pub group_by: Option<String>,
    /// Train on every image whose --group-by column (default source_repo) is not NAME, and test
    /// on those that are: one held-out source instead of k folds.
    #[arg(long, value_name = "NAME")]
    pub test_source: Option<String>,
}

impl GroupingArgs {
    /// The column `--test-source` looks at when `--group-by` is not given.
    pub const DEFAULT_SOURCE_COLUMN: &'static str = "source_repo";

    pub fn grouping(&self) -> crate::data::split::Grouping {
        use crate::data::split::Grouping;
        let column = self.group_by.clone();
        match (&self.test_source, column) {
            (Some(value), column) => Grouping::HeldOut {
                column: column.unwrap_or_else(|| Self::DEFAULT_SOURCE_COLUMN.to_string()),
                value: value.clone(),
            },
            (None, Some(column)) => Grouping::Column { column },
            (None, None) => Grouping::Patient,
        }
    }

    pub fn given(&self) -> bool {
        self.group_by.is_some() || self.test_source.is_some()
    }
}

/// `--classes`: no empty name, none twice.
pub fn check_classes(classes: &Option<Vec<String>>) -> crate::Result<()> {
    match classes {
        Some(c) => crate::train::config::check_class_list(c).map_err(|e| crate::Error::Config(format!("--classes: {e}"))),
        None => Ok(()),
    }
}

/// Refuses to replace `path` (a file that `--force` would overwrite) unless `force`.
pub fn refuse_overwrite(path: &std::path::Path, force: bool) -> crate::Result<()> {
    if path.exists() && !force {
        return Err(crate::Error::Config(format!(
            "{} already exists; choose another path or add --force to overwrite it",
            path.display()
        )));
    }
    Ok(())
}

/// The signal that first asked this process to stop (0: none yet); set by [`install_ctrl_c`]'s
/// handler.
pub static FIRST_SIGNAL: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// Ctrl-C (SIGINT), SIGTERM (what Slurm sends on preemption and at the time limit) and SIGUSR1
/// (what `#SBATCH --signal=B:USR1@120` sends before the time limit) ask training to stop after
/// the current step and save a checkpoint; a second Ctrl-C exits at once with status 130. A
/// repeated SIGTERM or SIGUSR1 does not: the step in progress still ends with its checkpoint.
///
/// The second exit is `_exit`, not `std::process::exit`: `exit` runs C++ static destructors
/// while libtorch's worker threads still use those objects, which crashed (SIGSEGV, status 139).
/// `_exit` ends the process without running them; the last checkpoint on disk stays intact
/// because checkpoints are written atomically.
///
/// The first of these signals is kept in [`FIRST_SIGNAL`] (`reproduce --unit` requeues a Slurm
/// task only when it was the time-limit signal).
pub fn install_ctrl_c() {
    extern "C" fn on_signal(sig: libc::c_int) {
        use std::sync::atomic::Ordering;
        let again = crate::train::trainer::INTERRUPTED.swap(true, Ordering::SeqCst);
        if again && sig == libc::SIGINT {
            // SAFETY: `_exit` takes a status and never returns; it touches no Rust state.
            unsafe { libc::_exit(130) };
        }
        if !again {
            FIRST_SIGNAL.store(sig, Ordering::SeqCst);
            let msg: &[u8] = match sig {
                libc::SIGINT => b"\nstopping after this step (Ctrl-C again to quit now)...\n",
                libc::SIGTERM => b"\nSIGTERM: stopping after this step with a checkpoint...\n",
                _ => b"\nSIGUSR1: stopping after this step with a checkpoint...\n",
            };
            // SAFETY: write(2) is async-signal-safe; the buffer is a static byte string.
            unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
        }
    }
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGUSR1] {
        // SAFETY: a zeroed sigaction with a handler that only touches an atomic, calls
        // async-signal-safe functions (write, _exit) and returns.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every option of every command says what it does in `--help`.
    #[test]
    fn every_option_has_a_help_line() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id != "help" && id != "version" && arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} --{}", arg.get_long().unwrap_or(id)));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "magsd", &mut missing);
        assert!(missing.is_empty(), "options without a help line: {missing:?}");
    }

    /// `localize` runs `eval`'s pipeline, so its --strict does what eval's does and says so
    /// (it claimed to stop at the first unreadable image, while every bad image is listed).
    #[test]
    fn strict_means_the_same_in_eval_and_localize() {
        let help = |cmd: &str| {
            let c = Cli::command();
            let sub = c.find_subcommand(cmd).unwrap();
            let arg = sub.get_arguments().find(|a| a.get_id() == "strict").unwrap();
            arg.get_help().map(|h| h.to_string())
        };
        assert_eq!(help("eval"), help("localize"));
    }

    /// `bench --batch-size` as every other command; the old `--batch` still parses.
    #[test]
    fn bench_takes_batch_size_and_the_old_batch() {
        for flag in ["--batch-size", "--batch"] {
            let cli = Cli::try_parse_from(["magsd", "bench", flag, "8"]).unwrap();
            let Command::Bench(a) = cli.command else { panic!("not bench") };
            assert_eq!(a.batch_size, 8, "{flag}");
        }
    }
}
