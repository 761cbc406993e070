//! `magsd reproduce`: the paper's Tables 3–8 on the user's data, locally, on several GPUs or as
//! a Slurm job array.
use std::path::PathBuf;

use super::model::toml_string;
use crate::error::{Error, Result};
use crate::reproduce::collect::{BootstrapOptions, collect};
use crate::reproduce::slurm::{SlurmOptions, submit, write_job};
use crate::reproduce::{Grid, GridRequest, UnitOutcome, UnitRunner, rows, run_on_gpus, run_sequential};
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
    /// GPUs per array task (0 for CPU-only clusters).
    #[arg(long, default_value_t = 1)]
    pub gpus_per_task: u32,
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

fn collect_and_print(grid: &Grid, args: &ReproduceArgs) -> Result<i32> {
    let c = collect(grid, BootstrapOptions { resamples: args.bootstrap, ..Default::default() })?;
    for (n, html) in &c.reports {
        println!("table {n}: {}", html.display());
    }
    if c.missing.is_empty() {
        println!("all {} units finished", grid.units.len());
    } else {
        println!("{} of {} units missing:", c.missing.len(), grid.units.len());
        for u in &c.missing {
            println!("  unit {}: row {}, fold {}", u.index, u.row, u.fold);
        }
    }
    Ok(0)
}

pub fn run(args: ReproduceArgs) -> Result<i32> {
    if args.bootstrap == 0 {
        return Err(Error::Config("--bootstrap must be at least 1 (1,000 or more for a 95 % interval)".into()));
    }
    if args.data.data.is_some() && args.table.is_empty() {
        return Err(Error::Config("--table: name the tables to reproduce (3, 4, 5, 6, 7, 8 or all)".into()));
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
            UnitOutcome::AlreadyDone => {
                println!("unit {n} (row {}, fold {}) had finished already", u.row, u.fold);
                0
            }
            UnitOutcome::Done => {
                println!("unit {n} (row {}, fold {}) finished: {}", u.row, u.fold, grid.unit_dir(&u).display());
                0
            }
            UnitOutcome::Stopped => {
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
        let opts = SlurmOptions {
            partition: args.partition.clone(),
            time: args.time.clone(),
            account: args.account.clone(),
            gpus_per_task: args.gpus_per_task,
            cpus_per_task: args.cpus_per_task,
            mem: args.mem.clone(),
            max_parallel: args.max_parallel,
            extra: args.sbatch.clone(),
        };
        let Some(job) = write_job(&grid, &exe, &opts)? else {
            println!("every unit has finished; nothing to submit");
            return collect_and_print(&grid, &args);
        };
        println!("job script: {}", job.display());
        if args.no_submit {
            println!("submit it with: sbatch {}\nthen: magsd reproduce --out {} --collect", job.display(), grid.dir.display());
            return Ok(0);
        }
        let id = submit(&job, args.wait)?;
        println!("submitted job {id}");
        if args.wait {
            return collect_and_print(&grid, &args);
        }
        println!("when it has finished: magsd reproduce --out {} --collect", grid.dir.display());
        return Ok(0);
    }
    super::install_ctrl_c();
    if verbose {
        eprintln!("magsd reproduce: {} units ({} not finished) in {}", grid.units.len(), grid.pending()?.len(), grid.dir.display());
    }
    match &args.gpus {
        Some(gpus) if !gpus.is_empty() => {
            let failed = run_on_gpus(&grid, &exe, gpus, verbose)?;
            if !failed.is_empty() {
                eprintln!("{} units failed: {failed:?}", failed.len());
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
