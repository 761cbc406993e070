//! `magsd reproduce`: the paper's tables (3–8) as a grid of units, one unit = one row × one
//! fold, each trained and evaluated by `train::cv`'s single-fold code on identical folds.
//!
//! ```text
//! DIR/reproduce.json     the grid (GridSpec): data (absolute), classes, folds, tables, rows, command
//! DIR/base-config.toml   the user's preset/config/--set/--epochs, resolved; rows add to it
//! DIR/split.json         the patient-level folds, made once, shared by every row
//! DIR/patients.json      image name → patient key (for patient-level bootstrap)
//! DIR/plan.json          the units: index, row, fold, overrides
//! DIR/ROW/               a run folder (crate::runfolder) per row: run.json, config.toml,
//!                        fold-K/ (fold.json marks a finished unit), cv-summary.json once all
//!                        folds are collected
//! DIR/table-N/           report.md, report.html, roc.png/.svg, results.json
//! DIR/slurm/             job.sh and the array tasks' logs (with --slurm)
//! DIR/logs/              unit-N.log of child processes (with --gpus)
//! ```
//!
//! Units are idempotent: a unit whose `fold.json` exists is never redone, and an interrupted
//! unit continues from its last checkpoint, so rerunning any command resumes the grid.
pub mod collect;
pub mod rows;
pub mod slurm;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::data::dataset::{Dataset, DatasetOptions};
use crate::data::split::{Folds, Grouping, SplitFile, check_split};
use crate::error::{Error, IoContext, Result, write_atomic};
use crate::runfolder::{self, FoldResult, RunSpec, SPLIT_FILE, fold_dir, read_json, write_json};
use crate::train::config::TrainConfig;
use crate::train::cv::{self, FoldRunner, RunOptions};
use rows::Row;

pub const GRID_FILE: &str = "reproduce.json";
pub const BASE_CONFIG_FILE: &str = "base-config.toml";
pub const PLAN_FILE: &str = "plan.json";
pub const PATIENTS_FILE: &str = "patients.json";
/// Version of the grid folder's layout, written into `reproduce.json`.
pub const GRID_FORMAT_VERSION: u32 = 1;

/// What a grid folder was made from (`reproduce.json`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct GridSpec {
    pub format_version: u32,
    pub data: PathBuf,
    pub label_column: String,
    pub classes: Vec<String>,
    pub folds: usize,
    pub tables: Vec<u8>,
    /// Only these rows (folder ids) of the tables; empty: every row.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub only_rows: Vec<String>,
    pub command: String,
    /// How the folds are made (grids written before grouped folds existed are patient-level).
    #[serde(default, skip_serializing_if = "Grouping::is_patient")]
    pub grouping: Grouping,
    /// `--allow-outside-root` (grids written before this field existed had it off).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_outside_root: bool,
}

impl GridSpec {
    /// The grid's tables, with only the selected rows.
    pub fn tables(&self) -> Vec<rows::Table> {
        self.tables
            .iter()
            .filter_map(|&n| rows::table(n))
            .map(|mut t| {
                t.rows.retain(|r| self.only_rows.is_empty() || self.only_rows.iter().any(|o| o == r.row.id));
                t
            })
            .filter(|t| !t.rows.is_empty())
            .collect()
    }

    /// The distinct rows of the grid's tables, in table order (each trained once).
    pub fn rows(&self) -> Vec<Row> {
        rows::rows_of(&self.tables).into_iter().filter(|r| self.only_rows.is_empty() || self.only_rows.iter().any(|o| o == r.id)).collect()
    }
}

/// One unit of work: one row trained and evaluated on one fold.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Unit {
    pub index: usize,
    pub row: String,
    pub fold: usize,
    pub overrides: Vec<String>,
}

/// A grid folder, opened.
pub struct Grid {
    pub dir: PathBuf,
    pub spec: GridSpec,
    pub units: Vec<Unit>,
}

/// What `init` needs from the command line.
pub struct GridRequest {
    pub data: PathBuf,
    pub dataset: DatasetOptions,
    pub folds: usize,
    pub tables: Vec<u8>,
    /// Only these rows (folder ids); empty: all rows of the tables.
    pub only_rows: Vec<String>,
    /// The resolved base config (preset, file, --set, --epochs).
    pub base: TrainConfig,
    pub command: String,
    /// Patient-level folds, folds grouped by a column, or one held-out value (`folds` = 1).
    pub grouping: Grouping,
}

impl Grid {
    /// Creates the grid folder (spec, base config, split, patients, plan), or opens an existing
    /// one after checking that it was made with the same data, folds, tables and config.
    pub fn init(dir: &Path, req: &GridRequest) -> Result<Grid> {
        let held_out = matches!(req.grouping, Grouping::HeldOut { .. });
        if held_out && req.folds != 1 {
            return Err(Error::Config("--test-source holds out one part: the grid has one fold".into()));
        }
        if !held_out && req.folds < 2 {
            return Err(Error::Config("--folds must be at least 2 (the tables are cross-validated)".into()));
        }
        let ds = Dataset::open(&req.data, &req.dataset)?;
        for p in ds.problems.iter().take(10) {
            eprintln!("warning: {p}");
        }
        let spec = GridSpec {
            format_version: GRID_FORMAT_VERSION,
            // Absolute, so units started elsewhere (Slurm tasks, --gpus children) find it.
            data: std::path::absolute(&req.data).at(&req.data)?,
            label_column: req.dataset.label_column.clone(),
            classes: ds.classes.clone(),
            folds: req.folds,
            tables: req.tables.clone(),
            only_rows: req.only_rows.clone(),
            command: req.command.clone(),
            grouping: req.grouping.clone(),
            allow_outside_root: req.dataset.allow_outside_root,
        };
        let all = rows::rows_of(&req.tables);
        if let Some(bad) = req.only_rows.iter().find(|o| !all.iter().any(|r| r.id == o.as_str())) {
            let ids: Vec<&str> = all.iter().map(|r| r.id).collect();
            return Err(Error::Config(format!("--rows {bad}: tables {:?} have the rows {}", req.tables, ids.join(", "))));
        }
        let units = plan(&spec.rows(), req.folds);
        // Every row's config must resolve before anything is trained.
        for r in spec.rows() {
            row_config_from(&req.base, &r.overrides.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .map_err(|e| Error::Config(format!("row '{}' ({}): {e}", r.id, r.overrides.join(" "))))?;
        }
        if dir.join(GRID_FILE).exists() {
            let old = Grid::open(dir)?;
            let old_base = TrainConfig::resolve(None, Some(&dir.join(BASE_CONFIG_FILE)), &[])?;
            let same = old.spec.data == spec.data
                && old.spec.classes == spec.classes
                && old.spec.label_column == spec.label_column
                && old.spec.folds == spec.folds
                && old.spec.tables == spec.tables
                && old.spec.only_rows == spec.only_rows
                && old.spec.grouping == spec.grouping
                && old_base == req.base;
            if !same {
                return Err(Error::Config(format!(
                    "{} holds a grid made with other data, folds, grouping, tables or settings; choose another --out, \
                     or continue it with `magsd reproduce --out {}` alone",
                    dir.display(),
                    dir.display()
                )));
            }
            return Ok(old);
        }
        std::fs::create_dir_all(dir).at(dir)?;
        let split_folds = if held_out { 2 } else { req.folds };
        cv::load_or_make_split(&ds, &dir.join(SPLIT_FILE), split_folds, req.base.seed, &req.grouping)?;
        let patients: BTreeMap<String, String> = ds.samples.iter().map(|s| (s.name.clone(), s.patient_key())).collect();
        write_json(&dir.join(PATIENTS_FILE), &patients)?;
        write_atomic(&dir.join(BASE_CONFIG_FILE), req.base.to_toml().as_bytes())?;
        write_json(&dir.join(PLAN_FILE), &units)?;
        // The spec last: its presence means the folder is complete.
        write_json(&dir.join(GRID_FILE), &spec)?;
        Ok(Grid { dir: dir.to_path_buf(), spec, units })
    }

    /// Opens an existing grid folder.
    pub fn open(dir: &Path) -> Result<Grid> {
        let path = dir.join(GRID_FILE);
        if !path.exists() {
            return Err(Error::Config(format!(
                "{}: no {GRID_FILE}; start a grid with `magsd reproduce --data ... --table ... --out {}`",
                dir.display(),
                dir.display()
            )));
        }
        let spec: GridSpec = read_json(&path)?;
        if spec.format_version > GRID_FORMAT_VERSION {
            return Err(Error::bad_file(&path, format!("grid format {} is newer than this magsd reads", spec.format_version)));
        }
        let units: Vec<Unit> = read_json(&dir.join(PLAN_FILE))?;
        Ok(Grid { dir: dir.to_path_buf(), spec, units })
    }

    pub fn row_dir(&self, row: &str) -> PathBuf {
        self.dir.join(row)
    }

    /// The folder of a unit: `DIR/ROW/fold-K`.
    pub fn unit_dir(&self, u: &Unit) -> PathBuf {
        fold_dir(&self.row_dir(&u.row), u.fold)
    }

    /// The unit's result, when it has finished.
    pub fn unit_result(&self, u: &Unit) -> Result<Option<FoldResult>> {
        FoldResult::load_if_done(&self.unit_dir(u))
    }

    /// Units without a result yet.
    pub fn pending(&self) -> Result<Vec<&Unit>> {
        let mut out = Vec::new();
        for u in &self.units {
            if self.unit_result(u)?.is_none() {
                out.push(u);
            }
        }
        Ok(out)
    }

    pub fn base_config(&self) -> Result<TrainConfig> {
        TrainConfig::resolve(None, Some(&self.dir.join(BASE_CONFIG_FILE)), &[])
    }

    /// The dataset the grid was made from, with its classes in the grid's order.
    pub fn dataset(&self) -> Result<Arc<Dataset>> {
        let opts = DatasetOptions {
            label_column: self.spec.label_column.clone(),
            classes: Some(self.spec.classes.clone()),
            allow_outside_root: self.spec.allow_outside_root,
        };
        Ok(Arc::new(Dataset::open(&self.spec.data, &opts)?))
    }

    /// The grid's folds (`DIR/split.json`), resolved against the data.
    pub fn split(&self, ds: &Dataset) -> Result<Folds> {
        let path = self.dir.join(SPLIT_FILE);
        let split = SplitFile::load(&path)?.resolve(ds, &path)?;
        // A held-out value is a split of two parts of which one (part 0) is tested.
        let parts = if matches!(self.spec.grouping, Grouping::HeldOut { .. }) { 2 } else { self.spec.folds };
        if split.folds.len() != parts {
            return Err(Error::bad_file(&path, format!("{} folds, the grid has {}", split.folds.len(), parts)));
        }
        check_split(ds, &split.folds)?;
        Ok(split)
    }

    /// image name → patient key.
    pub fn patients(&self) -> Result<BTreeMap<String, String>> {
        read_json(&self.dir.join(PATIENTS_FILE))
    }

    pub fn unit(&self, index: usize) -> Result<&Unit> {
        self.units.get(index).ok_or_else(|| {
            Error::Config(format!("--unit {index}: the grid in {} has units 0..{}", self.dir.display(), self.units.len().saturating_sub(1)))
        })
    }
}

/// Rows × folds, row-major: unit `index = row_position * folds + fold`.
pub fn plan(rows: &[Row], folds: usize) -> Vec<Unit> {
    rows.iter()
        .flat_map(|r| (0..folds).map(move |k| (r, k)))
        .enumerate()
        .map(|(index, (r, fold))| Unit { index, row: r.id.to_string(), fold, overrides: r.overrides.iter().map(|s| s.to_string()).collect() })
        .collect()
}

/// The base config with a row's overrides applied.
fn row_config_from(base: &TrainConfig, overrides: &[String]) -> Result<TrainConfig> {
    let dir = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let path = dir.path().join(BASE_CONFIG_FILE);
    std::fs::write(&path, base.to_toml()).at(&path)?;
    TrainConfig::resolve(None, Some(&path), overrides)
}

/// How a unit ended.
#[derive(Debug, PartialEq)]
pub enum UnitOutcome {
    /// Trained and evaluated now.
    Done,
    /// Its result was there already; nothing was run.
    AlreadyDone,
    /// Stopped early (Ctrl-C); rerunning continues from its checkpoint.
    Stopped,
}

/// Runs units in this process, one after another (the rows' loaders are reused across folds).
pub struct UnitRunner<'a> {
    grid: &'a Grid,
    ds: Arc<Dataset>,
    split: Folds,
    current: Option<(String, FoldRunner)>,
    /// The metadata columns of each unit's per-source and within-source metrics.
    by: Vec<String>,
    pub verbose: bool,
}

impl<'a> UnitRunner<'a> {
    pub fn new(grid: &'a Grid, verbose: bool) -> Result<Self> {
        let ds = grid.dataset()?;
        let split = grid.split(&ds)?;
        let by = ds.default_breakdown();
        Ok(UnitRunner { grid, ds, split, current: None, by, verbose })
    }

    /// Trains and evaluates one unit into `DIR/ROW/fold-K` unless it has finished already.
    pub fn run(&mut self, u: &Unit) -> Result<UnitOutcome> {
        let grid = self.grid;
        if grid.unit_result(u)?.is_some() {
            return Ok(UnitOutcome::AlreadyDone);
        }
        let cfg = TrainConfig::resolve(None, Some(&grid.dir.join(BASE_CONFIG_FILE)), &u.overrides)?;
        let row_dir = grid.row_dir(&u.row);
        let spec = RunSpec {
            format_version: runfolder::FORMAT_VERSION,
            data: grid.spec.data.clone(),
            label_column: grid.spec.label_column.clone(),
            classes: grid.spec.classes.clone(),
            folds: grid.spec.folds,
            command: format!("{} (row {})", grid.spec.command, u.row),
            grouping: grid.spec.grouping.clone(),
            allow_outside_root: grid.spec.allow_outside_root,
        };
        cv::prepare_run_dir(&row_dir, &spec, &cfg, true)?;
        if self.current.as_ref().map(|(r, _)| r != &u.row).unwrap_or(true) {
            self.current = Some((u.row.clone(), FoldRunner::new(&cfg, self.ds.clone())?));
        }
        let runner = &self.current.as_ref().expect("set above").1;
        let device = cfg.device.resolve()?;
        if self.verbose {
            eprintln!(
                "unit {}/{}: row {}, fold {}/{} on {}",
                u.index + 1,
                grid.units.len(),
                u.row,
                u.fold + 1,
                grid.spec.folds,
                crate::device::describe(device)
            );
        }
        let opts = RunOptions {
            out: row_dir.clone(),
            device,
            resume: true,
            stop_after_steps: None,
            verbose: self.verbose,
            by: self.by.clone(),
            grouping: grid.spec.grouping.clone(),
        };
        Ok(match runner.run_fold(&self.split, u.fold, &grid.unit_dir(u), &opts)? {
            Some(_) => UnitOutcome::Done,
            None => UnitOutcome::Stopped,
        })
    }
}

/// Runs every pending unit in this process; stops at the first interrupted unit.
pub fn run_sequential(grid: &Grid, verbose: bool) -> Result<UnitOutcome> {
    let pending: Vec<Unit> = grid.pending()?.into_iter().cloned().collect();
    if pending.is_empty() {
        return Ok(UnitOutcome::AlreadyDone);
    }
    let mut runner = UnitRunner::new(grid, verbose)?;
    for u in &pending {
        if runner.run(u)? == UnitOutcome::Stopped {
            return Ok(UnitOutcome::Stopped);
        }
    }
    Ok(UnitOutcome::Done)
}

/// Runs every pending unit as child processes `magsd reproduce --unit N --out DIR`, one per
/// GPU at a time (`CUDA_VISIBLE_DEVICES` set to that GPU); each child's output goes to
/// `DIR/logs/unit-N.log`. Returns the units that failed.
pub fn run_on_gpus(grid: &Grid, exe: &Path, gpus: &[String], verbose: bool) -> Result<Vec<usize>> {
    use std::process::{Child, Command, Stdio};
    let mut queue: std::collections::VecDeque<usize> = grid.pending()?.iter().map(|u| u.index).collect();
    let logs = grid.dir.join("logs");
    std::fs::create_dir_all(&logs).at(&logs)?;
    let mut running: Vec<Option<(usize, Child)>> = gpus.iter().map(|_| None).collect();
    let mut failed = Vec::new();
    loop {
        for (slot, gpu) in running.iter_mut().zip(gpus) {
            if let Some((index, child)) = slot
                && let Some(status) = child.try_wait().map_err(|e| Error::io(exe, e))?
            {
                if !status.success() {
                    eprintln!("unit {index} failed ({status}); see {}", logs.join(format!("unit-{index}.log")).display());
                    failed.push(*index);
                } else if verbose {
                    eprintln!("unit {index} finished on GPU {gpu}");
                }
                *slot = None;
            }
            if slot.is_none()
                && let Some(index) = queue.pop_front()
            {
                let log_path = logs.join(format!("unit-{index}.log"));
                let log = std::fs::File::create(&log_path).at(&log_path)?;
                let err = log.try_clone().at(&log_path)?;
                let child = Command::new(exe)
                    .args(["reproduce", "--unit", &index.to_string(), "--out"])
                    .arg(&grid.dir)
                    .env("CUDA_VISIBLE_DEVICES", gpu)
                    .stdin(Stdio::null())
                    .stdout(log)
                    .stderr(err)
                    .spawn()
                    .map_err(|e| Error::io(exe, e))?;
                if verbose {
                    eprintln!("unit {index} started on GPU {gpu}");
                }
                *slot = Some((index, child));
            }
        }
        if queue.is_empty() && running.iter().all(Option::is_none) {
            return Ok(failed);
        }
        if crate::train::trainer::INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
            // The children got the same Ctrl-C and checkpoint themselves; wait for them.
            for (_, child) in running.iter_mut().flatten() {
                let _ = child.wait();
            }
            return Ok(failed);
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}
