//! `magsd reproduce`: the paper's Tables 3–8 on the user's data, locally, on several GPUs or as
//! a Slurm job array.
use std::path::PathBuf;

use super::model::toml_string;
use crate::error::{Error, Result};
use crate::reproduce::collect::{BootstrapOptions, collect};
use crate::reproduce::slurm::{SlurmOptions, check_sbatch_path, remembered, submit, write_job};
use crate::reproduce::{Grid, GridRequest, UnitOutcome, UnitRunner, rows, run_on_gpus, run_sequential, shell_quote};
use crate::train::config::TrainConfig;

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
  magsd reproduce --data ../shared/data/cxr-demo --preset tiny --table 7 --folds 2 --epochs 1 --out runs/t7\n  \
  magsd reproduce --data ../shared/data/cxr/manifest.csv --table all --folds 5 --epochs 100 --out runs/paper --gpus 0,1,2,3\n  \
  magsd reproduce --data x.csv --table 3,8 --out runs/grid --slurm --partition gpu --time 12:00:00 --account proj\n  \
  magsd reproduce --out runs/grid --collect      # the tables from whatever has finished\n  \
  magsd reproduce --out runs/grid                # resume: finished units are never redone\n  \
  magsd reproduce --data x.csv --table 7 --group-by source_repo --folds 3 --out runs/t7-by-source\n\n\
One unit = one table row x one fold; every row uses the same folds (DIR/split.json). Rows are the\n\
user's preset/config/--set plus each row's overrides (see the tables' 'Rows' section).")]
#[command(mut_arg("data", |a| a.required(false).help(
    "An ImageFolder root, a folder with manifest.csv, or a manifest CSV (needed to start a grid; \
     an existing grid folder remembers it)"
)))]
pub struct ReproduceArgs {
    #[command(flatten)]
    pub data: super::DataArgs,
    /// Tables: 3, 4, 5, 6, 7, 8 or all (comma-separated or repeated).
    #[arg(long)]
    pub table: Vec<String>,
    /// Only these rows of the tables (their folder names, e.g. resnet18,magsd); default: all.
    #[arg(long, value_delimiter = ',')]
    pub rows: Vec<String>,
    /// Cross-validation folds (ignored with --test-source, which holds out one part).
    #[arg(long, default_value_t = 5, conflicts_with = "test_source")]
    pub folds: usize,
    #[command(flatten)]
    pub grouping: super::GroupingArgs,
    /// Epochs of every row (setting `epochs`; default: the preset's).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// paper, authors-code or tiny (default: paper, or the config file's preset).
    #[arg(long)]
    pub preset: Option<String>,
    /// A TOML config (a run's config.toml works).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override any setting of every row: section.key=value (TOML value), repeatable.
    #[arg(long = "set")]
    pub set: Vec<String>,
    #[command(flatten)]
    pub device: super::DeviceArgs,
    /// The grid folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Write the grid and its unit list (DIR/plan.json), run nothing.
    #[arg(long, conflicts_with_all = ["unit", "collect", "slurm"])]
    pub plan: bool,
    /// Run unit N of DIR/plan.json only (what a Slurm array task runs).
    #[arg(long, conflicts_with_all = ["collect", "slurm", "gpus"])]
    pub unit: Option<usize>,
    /// Build the tables from the finished units and list the missing ones.
    #[arg(long, conflicts_with_all = ["slurm", "gpus"])]
    pub collect: bool,
    /// Run one unit per GPU at a time as child processes (CUDA_VISIBLE_DEVICES), e.g. 0,1,2,3.
    #[arg(long, value_delimiter = ',')]
    pub gpus: Option<Vec<String>>,
    /// Write DIR/slurm/job.sh (a job array over the pending units) and submit it with sbatch.
    #[arg(long)]
    pub slurm: bool,
    /// With --slurm: write the job script only.
    #[arg(long, requires = "slurm")]
    pub no_submit: bool,
    /// With --slurm: wait until every array task has ended (sbatch --wait), then collect.
    #[arg(long, requires = "slurm")]
    pub wait: bool,
    /// With --slurm: the partition to submit to (sbatch --partition).
    #[arg(long, requires = "slurm")]
    pub partition: Option<String>,
    /// Time limit per array task (Slurm syntax, e.g. 12:00:00).
    #[arg(long, requires = "slurm")]
    pub time: Option<String>,
    /// With --slurm: the account to charge (sbatch --account).
    #[arg(long, requires = "slurm")]
    pub account: Option<String>,
    /// GPUs per array task (0 for CPU-only clusters; default 1).
    #[arg(long, requires = "slurm")]
    pub gpus_per_task: Option<u32>,
    /// With --slurm: CPU cores per array task (sbatch --cpus-per-task).
    #[arg(long, requires = "slurm")]
    pub cpus_per_task: Option<u32>,
    /// With --slurm: memory per array task (Slurm syntax, e.g. 32G; sbatch --mem).
    #[arg(long, requires = "slurm")]
    pub mem: Option<String>,
    /// At most this many array tasks at once.
    #[arg(long, requires = "slurm")]
    pub max_parallel: Option<u32>,
    /// Any other sbatch option for the job script (repeatable), e.g. --sbatch=--qos=long.
    #[arg(long = "sbatch", requires = "slurm", allow_hyphen_values = true)]
    pub sbatch: Vec<String>,
    /// A shell line each task runs before magsd (repeatable), e.g. --setup 'module load cuda/12.1'.
    #[arg(long, requires = "slurm", allow_hyphen_values = true)]
    pub setup: Vec<String>,
    /// The signal Slurm sends to each task before its time limit (USR1, TERM or INT @ seconds;
    /// default USR1@120: SIGUSR1 120 s before); the unit saves a checkpoint after its current
    /// step and stops, and with USR1 requeues its task, which continues from there.
    #[arg(long, requires = "slurm")]
    pub signal: Option<String>,
    /// Requeue nothing: write #SBATCH --no-requeue instead of --requeue (a preempted task is not
    /// requeued) and a task stopped at its time limit does not requeue itself.
    #[arg(long, requires = "slurm")]
    pub no_requeue: bool,
    /// With --unit, in a Slurm task (job.sh passes it): when SIGUSR1 (the time-limit signal)
    /// stopped the unit, requeue the task with `scontrol requeue $SLURM_JOB_ID`.
    #[arg(long, requires = "unit", hide = true)]
    pub slurm_requeue: bool,
    /// Bootstrap resamples for the confidence intervals.
    #[arg(long, default_value_t = 1000)]
    pub bootstrap: usize,
    /// No progress bars or per-unit lines.
    #[arg(long)]
    pub quiet: bool,
}

impl ReproduceArgs {
    fn overrides(&self) -> Vec<String> {
        let mut o = self.set.clone();
        if let Some(e) = self.epochs {
            o.push(format!("epochs={e}"));
        }
        // Determinism is a setting of the grid (every unit, --gpus and Slurm ones too); the
        // device is this process's, applied to the units it runs (see `run`).
        if self.device.deterministic {
            o.push("performance.deterministic=true".into());
        }
        if let Some(c) = &self.data.label_column {
            o.push(format!("data.label_column={}", toml_string(c)));
        }
        if let Some(c) = &self.data.classes {
            let list: Vec<String> = c.iter().map(|s| toml_string(s)).collect();
            o.push(format!("data.classes=[{}]", list.join(", ")));
        }
        o
    }

    /// Opens the grid in --out, creating it when --data is given.
    fn grid(&self) -> Result<Grid> {
        let Some(data) = &self.data.data else {
            return Grid::open(&self.out);
        };
        let base = TrainConfig::resolve(self.preset.as_deref(), self.config.as_deref(), &self.overrides())?;
        let req = GridRequest {
            data: data.clone(),
            dataset: crate::data::dataset::DatasetOptions {
                label_column: base.data.label_column.clone(),
                classes: base.data.classes.clone(),
                allow_outside_root: self.data.allow_outside_root,
            },
            folds: if self.grouping.test_source.is_some() { 1 } else { self.folds },
            tables: rows::parse_tables(&self.table)?,
            only_rows: self.rows.clone(),
            base,
            command: std::env::args().collect::<Vec<_>>().join(" "),
            grouping: self.grouping.grouping(),
        };
        Grid::init(&self.out, &req)
    }
}

/// Builds the tables; exit status 0 when every unit has finished, 1 (naming the missing units
/// and their logs) otherwise.
fn collect_and_print(grid: &Grid, args: &ReproduceArgs) -> Result<i32> {
    let c = collect(grid, BootstrapOptions { resamples: args.bootstrap, ..Default::default() })?;
    for (n, html) in &c.reports {
        println!("table {n}: {}", html.display());
    }
    if c.missing.is_empty() {
        println!("all {} units finished", grid.units.len());
        return Ok(0);
    }
    eprintln!("{} of {} units missing:", c.missing.len(), grid.units.len());
    for u in &c.missing {
        let logs: Vec<String> = unit_logs(grid, u.index).iter().map(|p| p.display().to_string()).collect();
        let logs = if logs.is_empty() { String::new() } else { format!("; log: {}", logs.join(", ")) };
        eprintln!("  unit {}: row {}, fold {}{logs}", u.index, u.row, u.fold);
    }
    eprintln!("rerun `magsd reproduce --out {}` (or --slurm) to run them", shell_quote(&grid.dir.display().to_string()));
    Ok(1)
}

/// The logs a unit's runs left: `DIR/logs/unit-N.log` (--gpus) and `DIR/slurm/unit-N_job-J.out`.
fn unit_logs(grid: &Grid, index: usize) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let gpu_log = grid.dir.join("logs").join(format!("unit-{index}.log"));
    if gpu_log.is_file() {
        out.push(gpu_log);
    }
    let prefix = format!("unit-{index}_job-");
    if let Ok(rd) = std::fs::read_dir(grid.dir.join("slurm")) {
        let mut slurm: Vec<_> =
            rd.flatten().map(|e| e.path()).filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".out"))).collect();
        slurm.sort();
        out.extend(slurm);
    }
    out
}

/// Set to 1, `--gpus` skips its check that the devices exist: for tests on machines without
/// GPUs, whose children then run on the device their grid's config names (the CPU).
pub const TEST_GPUS_ON_CPU: &str = "MAGSD_TEST_GPUS_ON_CPU";

/// `--gpus`: every entry a device index (or a GPU/MIG UUID), no empty or repeated entry, and the
/// devices must exist: without CUDA the children would all train on the CPU at once (unless
/// [`TEST_GPUS_ON_CPU`] is set).
fn check_gpus(gpus: &[String]) -> Result<()> {
    if gpus.is_empty() {
        return Err(Error::Config("--gpus: name at least one GPU, e.g. --gpus 0,1".into()));
    }
    for (i, g) in gpus.iter().enumerate() {
        let index = !g.is_empty() && g.len() <= 4 && g.chars().all(|c| c.is_ascii_digit());
        let uuid = (g.starts_with("GPU-") || g.starts_with("MIG-")) && g.len() <= 100 && g.chars().all(|c| c.is_ascii_alphanumeric() || "-/".contains(c));
        if !index && !uuid {
            return Err(Error::Config(format!("--gpus {}: {g:?} is not a GPU index (0, 1, ...) or a GPU-/MIG- UUID", gpus.join(","))));
        }
        if gpus[..i].contains(g) {
            return Err(Error::Config(format!("--gpus {}: GPU {g} is named twice", gpus.join(","))));
        }
    }
    if std::env::var_os(TEST_GPUS_ON_CPU).is_some_and(|v| v == "1") {
        return Ok(());
    }
    let count = tch::Cuda::device_count();
    if count == 0 {
        return Err(Error::Config(format!(
            "--gpus {}: no CUDA device is visible to this process; without --gpus the units run one at a time here",
            gpus.join(",")
        )));
    }
    if let Some(g) = gpus.iter().find(|g| g.parse::<i64>().is_ok_and(|i| i >= count)) {
        return Err(Error::Config(format!("--gpus {}: GPU {g} does not exist ({count} visible: 0..{})", gpus.join(","), count - 1)));
    }
    Ok(())
}

pub fn run(args: ReproduceArgs) -> Result<i32> {
    if args.bootstrap == 0 {
        return Err(Error::Config("--bootstrap must be at least 1 (1,000 or more for a 95 % interval)".into()));
    }
    if args.data.data.is_some() && args.table.is_empty() {
        return Err(Error::Config("--table: name the tables to reproduce (3, 4, 5, 6, 7, 8 or all)".into()));
    }
    // Options are checked before the grid folder is made or touched.
    let given = SlurmOptions {
        partition: args.partition.clone(),
        time: args.time.clone(),
        account: args.account.clone(),
        gpus_per_task: args.gpus_per_task,
        cpus_per_task: args.cpus_per_task,
        mem: args.mem.clone(),
        max_parallel: args.max_parallel,
        extra: args.sbatch.clone(),
        setup: args.setup.clone(),
        signal: args.signal.clone(),
        requeue: args.no_requeue.then_some(false),
    };
    given.check()?;
    if args.slurm {
        let out = std::path::absolute(&args.out).map_err(|e| Error::io(&args.out, e))?;
        check_sbatch_path("--out", &out)?;
    }
    if let Some(gpus) = &args.gpus {
        check_gpus(gpus)?;
    }
    let mut grid = args.grid()?;
    let verbose = !args.quiet;
    // --device: the units this process runs use it, whatever the grid's config says.
    let device_override = super::DeviceArgs { deterministic: false, ..args.device.clone() }.overrides();
    for u in &mut grid.units {
        u.overrides.extend(device_override.iter().cloned());
    }
    let runs_here = args.unit.is_some() || !(args.plan || args.collect || args.slurm || args.gpus.as_ref().is_some_and(|g| !g.is_empty()));
    if runs_here {
        let base = grid.base_config()?;
        crate::device::set_up(args.device.device.unwrap_or(base.device), base.performance.deterministic || args.device.deterministic)?;
    }
    if let Some(n) = args.unit {
        let u = grid.unit(n)?.clone();
        super::install_ctrl_c();
        return Ok(match UnitRunner::new(&grid, verbose)?.run(&u)? {
            UnitOutcome::Busy(lock) => {
                eprintln!(
                    "unit {n} (row {}, fold {}) is being run by another process (it holds {}); nothing was done",
                    u.row,
                    u.fold,
                    lock.display()
                );
                3
            }
            UnitOutcome::AlreadyDone => {
                println!("unit {n} (row {}, fold {}) had finished already", u.row, u.fold);
                0
            }
            UnitOutcome::Done => {
                println!("unit {n} (row {}, fold {}) finished: {}", u.row, u.fold, grid.unit_dir(&u).display());
                0
            }
            UnitOutcome::Stopped => {
                let time_limit = crate::cli::FIRST_SIGNAL.load(std::sync::atomic::Ordering::SeqCst) == libc::SIGUSR1;
                if args.slurm_requeue && time_limit {
                    match crate::reproduce::slurm::requeue_self() {
                        Ok(job) => {
                            eprintln!("unit {n} stopped with a checkpoint at the time limit; requeued Slurm job {job}, which continues from it");
                            return Ok(0);
                        }
                        Err(e) => eprintln!("unit {n}: {e}"),
                    }
                }
                eprintln!("unit {n} stopped with a checkpoint; rerun it to continue");
                130
            }
        });
    }
    if args.plan {
        let pending = grid.pending()?.len();
        println!(
            "{} units ({} rows × {} folds), {pending} not finished: {}",
            grid.units.len(),
            grid.units.len() / grid.spec.folds,
            grid.spec.folds,
            grid.dir.join(crate::reproduce::PLAN_FILE).display()
        );
        return Ok(0);
    }
    if args.collect {
        return collect_and_print(&grid, &args);
    }
    let exe = std::env::current_exe().map_err(|e| Error::Config(format!("cannot find the magsd binary: {e}")))?;
    if args.slurm {
        let old = remembered(&grid)?;
        if old != SlurmOptions::default() && verbose {
            eprintln!("options not given again are those of the last submission ({})", grid.dir.join("slurm/options.json").display());
        }
        let opts = given.or(old);
        let Some(job) = write_job(&grid, &exe, &opts)? else {
            println!("every unit has finished; nothing to submit");
            return collect_and_print(&grid, &args);
        };
        let job_q = shell_quote(&job.display().to_string());
        let dir_q = shell_quote(&grid.dir.display().to_string());
        println!("job script: {}", job.display());
        if args.no_submit {
            println!("submit it with: sbatch {job_q}\nthen: magsd reproduce --out {dir_q} --collect");
            return Ok(0);
        }
        let id = submit(&job, args.wait)?;
        println!("submitted job {id}");
        if args.wait {
            return collect_and_print(&grid, &args);
        }
        println!("when it has finished: magsd reproduce --out {dir_q} --collect");
        return Ok(0);
    }
    super::install_ctrl_c();
    if verbose {
        eprintln!("magsd reproduce: {} units ({} not finished) in {}", grid.units.len(), grid.pending()?.len(), grid.dir.display());
    }
    match &args.gpus {
        Some(gpus) => {
            let failed = run_on_gpus(&grid, &exe, gpus, verbose)?;
            if !failed.is_empty() {
                eprintln!("{} unit(s) failed:", failed.len());
                for f in &failed {
                    eprintln!("  unit {}: {}", f.index, f.log.display());
                }
                collect_and_print(&grid, &args)?;
                return Ok(1);
            }
        }
        _ => {
            if run_sequential(&grid, verbose)? == UnitOutcome::Stopped {
                eprintln!("stopped; rerun `magsd reproduce --out {}` to continue", grid.dir.display());
                return Ok(130);
            }
        }
    }
    collect_and_print(&grid, &args)
}
