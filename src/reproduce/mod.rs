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
//! DIR/slurm/             job.sh, options.json (the options of the last submission) and the array
//!                        tasks' logs (with --slurm)
//! DIR/logs/              unit-N.log of child processes (with --gpus)
//! DIR/grid.lock          held while the grid and its row folders are created
//! DIR/locks/unit-N.lock  held by the process that runs unit N
//! ```
//!
//! Units are idempotent: a unit whose `fold.json` exists is never redone, and an interrupted
//! unit continues from its last checkpoint, so rerunning any command resumes the grid. The row
//! folders are made once, with the grid (under `grid.lock`), so units started together only read
//! them; a unit runs in one process at a time (`locks/unit-N.lock`, an advisory `flock`).
pub mod collect;
pub mod paper;
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
/// Held (flock) while the grid folder and its row folders are created.
pub const GRID_LOCK: &str = "grid.lock";
/// `DIR/locks/unit-N.lock`: held by the process that runs unit N.
pub const UNIT_LOCKS: &str = "locks";
/// The most folds a grid may have (a plan is rows × folds units).
const MAX_FOLDS: usize = 1000;
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
        // Every row's config must resolve before anything is trained, and no two rows may train
        // the same configuration (a --set can make a row equal to MAG-SD's).
        let mut resolved: Vec<(&str, TrainConfig)> = Vec::new();
        for r in spec.rows() {
            let cfg = row_config_from(&req.base, &r.overrides.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .map_err(|e| Error::Config(format!("row '{}' ({}): {e}", r.id, r.overrides.join(" "))))?;
            if let Some((other, _)) = resolved.iter().find(|(_, c)| *c == cfg) {
                return Err(Error::Config(format!(
                    "rows '{other}' and '{}' would train the same configuration with these settings (--preset, --config, \
                     --set); drop the setting that makes them equal, or keep one of them with --rows",
                    r.id
                )));
            }
            resolved.push((r.id, cfg));
        }
        std::fs::create_dir_all(dir).at(dir)?;
        // One process at a time creates (or checks) the grid and its row folders.
        let _lock = lock_file(&dir.join(GRID_LOCK), true)?;
        if dir.join(GRID_FILE).exists() {
            let old = Grid::open(dir)?;
            let old_base = old.base_config()?;
            let differences = old.differences(&spec, &old_base, &req.base);
            if !differences.is_empty() {
                return Err(Error::Config(format!(
                    "{} holds a grid made with other settings: {}; choose another --out, \
                     or continue it with `magsd reproduce --out {}` alone",
                    dir.display(),
                    differences.join("; "),
                    shell_quote(&dir.display().to_string())
                )));
            }
            old.make_row_dirs()?;
            return Ok(old);
        }
        let split_folds = if held_out { 2 } else { req.folds };
        cv::load_or_make_split(&ds, &dir.join(SPLIT_FILE), split_folds, req.base.seed, &req.grouping)?;
        let patients: BTreeMap<String, String> = ds.samples.iter().map(|s| (s.name.clone(), s.patient_key())).collect();
        write_json(&dir.join(PATIENTS_FILE), &patients)?;
        write_atomic(&dir.join(BASE_CONFIG_FILE), req.base.to_toml().as_bytes())?;
        write_json(&dir.join(PLAN_FILE), &units)?;
        let grid = Grid { dir: dir.to_path_buf(), spec, units };
        grid.make_row_dirs()?;
        // The spec last: its presence means the folder is complete.
        write_json(&dir.join(GRID_FILE), &grid.spec)?;
        Ok(grid)
    }

    /// What differs between this grid and a request for `spec` with `base`, by option name.
    fn differences(&self, spec: &GridSpec, old_base: &TrainConfig, base: &TrainConfig) -> Vec<String> {
        let mut out = Vec::new();
        let mut differ = |name: &str, before: String, now: String| {
            if before != now {
                out.push(format!("{name} was {before}, now {now}"));
            }
        };
        let o = &self.spec;
        differ("--data", o.data.display().to_string(), spec.data.display().to_string());
        differ("--label-column", o.label_column.clone(), spec.label_column.clone());
        differ("the classes (--classes)", o.classes.join(","), spec.classes.join(","));
        differ("--folds", o.folds.to_string(), spec.folds.to_string());
        let tables = |t: &[u8]| t.iter().map(u8::to_string).collect::<Vec<_>>().join(",");
        differ("--table", tables(&o.tables), tables(&spec.tables));
        let rows = |r: &[String]| if r.is_empty() { "all".to_string() } else { r.join(",") };
        differ("--rows", rows(&o.only_rows), rows(&spec.only_rows));
        differ("the grouping (--group-by, --test-source)", o.grouping.describe(o.folds), spec.grouping.describe(spec.folds));
        for key in config_differences(old_base, base) {
            out.push(format!("setting {key} (--preset, --config, --set, --epochs)"));
        }
        out
    }

    /// The run folder of every row (`run.json`, `config.toml`), made once under the grid's lock so
    /// that units started together find them complete; existing ones are checked.
    fn make_row_dirs(&self) -> Result<()> {
        let base = self.base_config()?;
        for r in self.spec.rows() {
            let overrides: Vec<String> = r.overrides.iter().map(|s| s.to_string()).collect();
            let cfg = row_config_from(&base, &overrides)?;
            cv::prepare_run_dir(&self.row_dir(r.id), &self.row_run_spec(r.id), &cfg, true)?;
        }
        Ok(())
    }

    /// The `run.json` of a row's run folder.
    fn row_run_spec(&self, row: &str) -> RunSpec {
        RunSpec {
            format_version: runfolder::FORMAT_VERSION,
            data: self.spec.data.clone(),
            label_column: self.spec.label_column.clone(),
            classes: self.spec.classes.clone(),
            folds: self.spec.folds,
            command: format!("{} (row {row})", self.spec.command),
            grouping: self.spec.grouping.clone(),
            allow_outside_root: self.spec.allow_outside_root,
        }
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
        check_spec(&spec).map_err(|e| Error::bad_file(&path, e))?;
        let plan_path = dir.join(PLAN_FILE);
        let units: Vec<Unit> = read_json(&plan_path)?;
        check_plan(&spec, &units).map_err(|e| Error::bad_file(&plan_path, e))?;
        Ok(Grid { dir: dir.to_path_buf(), spec, units })
    }

    pub fn row_dir(&self, row: &str) -> PathBuf {
        self.dir.join(row)
    }

    /// The folder of a unit: `DIR/ROW/fold-K`.
    pub fn unit_dir(&self, u: &Unit) -> PathBuf {
        fold_dir(&self.row_dir(&u.row), u.fold)
    }

    /// The lock file held by the process that runs `u`.
    pub fn unit_lock(&self, u: &Unit) -> PathBuf {
        self.dir.join(UNIT_LOCKS).join(format!("unit-{}.lock", u.index))
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

/// What a `reproduce.json` must satisfy to be read: known tables and rows, a fold count the
/// grouping allows, at least two classes.
fn check_spec(spec: &GridSpec) -> std::result::Result<(), String> {
    if let Some(t) = spec.tables.iter().find(|t| !rows::TABLES.contains(t)) {
        return Err(format!("table {t} is not one of the paper's tables 3-8"));
    }
    if spec.tables.is_empty() {
        return Err("no tables".into());
    }
    let all = rows::rows_of(&spec.tables);
    if let Some(r) = spec.only_rows.iter().find(|o| !all.iter().any(|r| r.id == o.as_str())) {
        return Err(format!("row '{r}' is not a row of tables {:?}", spec.tables));
    }
    let held_out = matches!(spec.grouping, Grouping::HeldOut { .. });
    if (held_out && spec.folds != 1) || (!held_out && !(2..=MAX_FOLDS).contains(&spec.folds)) {
        return Err(format!("{} folds: a grid has 2 to {MAX_FOLDS} folds (1 with a held-out value)", spec.folds));
    }
    if spec.classes.len() < 2 {
        return Err(format!("{} classes: a grid has at least two", spec.classes.len()));
    }
    Ok(())
}

/// A `plan.json` must be exactly the units of its grid (rows × folds, in order): the rows name
/// folders inside the grid and the folds index its split, so nothing else may be run.
fn check_plan(spec: &GridSpec, units: &[Unit]) -> std::result::Result<(), String> {
    let expected = plan(&spec.rows(), spec.folds);
    if units.len() != expected.len() {
        return Err(format!(
            "{} units, the grid in {GRID_FILE} has {} ({} rows × {} folds); {PLAN_FILE} is written from {GRID_FILE}, do not edit it",
            units.len(),
            expected.len(),
            spec.rows().len(),
            spec.folds
        ));
    }
    if let Some((u, e)) = units.iter().zip(&expected).find(|(u, e)| u != e) {
        return Err(format!(
            "unit {} is row '{}' fold {} with overrides [{}]; the grid in {GRID_FILE} has row '{}' fold {} with [{}] \
             ({} folds); {PLAN_FILE} is written from {GRID_FILE}, do not edit it",
            u.index,
            u.row,
            u.fold,
            u.overrides.join(" "),
            e.row,
            e.fold,
            e.overrides.join(" "),
            spec.folds
        ));
    }
    Ok(())
}

/// A config as dotted keys → TOML values (`model.scales` → `"7+14"`).
pub fn config_settings(c: &TrainConfig) -> BTreeMap<String, String> {
    fn flatten(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    flatten(&key, v, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    if let Ok(v) = toml::from_str::<toml::Value>(&c.to_toml()) {
        flatten("", &v, &mut out);
    }
    out
}

/// The settings (dotted keys) whose values differ between two configs.
pub fn config_differences(a: &TrainConfig, b: &TrainConfig) -> Vec<String> {
    let (ta, tb) = (config_settings(a), config_settings(b));
    let mut keys: Vec<&String> = ta.keys().chain(tb.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| ta.get(*k) != tb.get(*k))
        .map(|k| {
            let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "(unset)".into());
            format!("{k} = {} before, {} now", show(ta.get(k)), show(tb.get(k)))
        })
        .collect()
}

/// `s` quoted for a POSIX shell (single quotes), so that a printed command can be pasted.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-+:,=@%".contains(&b)) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
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
pub(crate) fn row_config_from(base: &TrainConfig, overrides: &[String]) -> Result<TrainConfig> {
    let dir = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let path = dir.path().join(BASE_CONFIG_FILE);
    std::fs::write(&path, base.to_toml()).at(&path)?;
    TrainConfig::resolve(None, Some(&path), overrides)
}

/// An exclusive advisory lock (`flock`) on a file, released when dropped (or when the process
/// ends, however it ends).
pub struct FileLock {
    _file: std::fs::File,
}

/// Locks `path` (created if needed, never through a symlink): waits for it when `wait`,
/// otherwise `None` when another process holds it.
pub fn lock_file(path: &Path, wait: bool) -> Result<Option<FileLock>> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).at(parent)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .at(path)?;
    if wait {
        file.lock().at(path)?;
        return Ok(Some(FileLock { _file: file }));
    }
    match file.try_lock() {
        Ok(()) => Ok(Some(FileLock { _file: file })),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io(path, e)),
    }
}

/// How a unit ended.
#[derive(Debug, PartialEq)]
pub enum UnitOutcome {
    /// Trained and evaluated now.
    Done,
    /// Its result was there already; nothing was run.
    AlreadyDone,
    /// Stopped early (Ctrl-C, SIGTERM, SIGUSR1); rerunning continues from its checkpoint.
    Stopped,
    /// Another process runs it (it holds this lock file); nothing was done.
    Busy(PathBuf),
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

    /// Trains and evaluates one unit into `DIR/ROW/fold-K` unless it has finished already or
    /// another process is running it (it holds `DIR/locks/unit-N.lock` until it ends).
    pub fn run(&mut self, u: &Unit) -> Result<UnitOutcome> {
        let grid = self.grid;
        if grid.unit_result(u)?.is_some() {
            return Ok(UnitOutcome::AlreadyDone);
        }
        let lock_path = grid.unit_lock(u);
        let Some(_unit_lock) = lock_file(&lock_path, false)? else {
            return Ok(UnitOutcome::Busy(lock_path));
        };
        // It may have finished while we waited for the lock's check.
        if grid.unit_result(u)?.is_some() {
            return Ok(UnitOutcome::AlreadyDone);
        }
        let cfg = TrainConfig::resolve(None, Some(&grid.dir.join(BASE_CONFIG_FILE)), &u.overrides)?;
        let row_dir = grid.row_dir(&u.row);
        {
            // Grids made before the row folders were made with the grid get them here, once.
            let _grid_lock = lock_file(&grid.dir.join(GRID_LOCK), true)?;
            cv::prepare_run_dir(&row_dir, &grid.row_run_spec(&u.row), &cfg, true)?;
        }
        if self.current.as_ref().map(|(r, _)| r != &u.row).unwrap_or(true) {
            self.current = Some((u.row.clone(), FoldRunner::new(&cfg, self.ds.clone())?));
        }
        let runner = &self.current.as_ref().expect("set above").1;
        let device = cfg.device.resolve()?;
        if self.verbose {
            eprintln!(
                "unit {} of {}: row {}, fold {} of {} on {}",
                u.index,
                grid.units.len(),
                u.row,
                u.fold,
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

/// Runs every pending unit in this process; stops at the first interrupted unit and skips (with
/// a message) units that another process is running.
pub fn run_sequential(grid: &Grid, verbose: bool) -> Result<UnitOutcome> {
    let pending: Vec<Unit> = grid.pending()?.into_iter().cloned().collect();
    if pending.is_empty() {
        return Ok(UnitOutcome::AlreadyDone);
    }
    let mut runner = UnitRunner::new(grid, verbose)?;
    for u in &pending {
        match runner.run(u)? {
            UnitOutcome::Stopped => return Ok(UnitOutcome::Stopped),
            UnitOutcome::Busy(lock) => {
                eprintln!("unit {} (row {}, fold {}) is being run by another process ({} is locked); skipped", u.index, u.row, u.fold, lock.display())
            }
            _ => {}
        }
    }
    Ok(UnitOutcome::Done)
}

/// A unit whose child process failed, and its log.
#[derive(Debug, PartialEq)]
pub struct FailedUnit {
    pub index: usize,
    pub log: PathBuf,
}

/// Runs every pending unit as child processes `magsd reproduce --unit N --out DIR`, one per
/// GPU at a time (`CUDA_VISIBLE_DEVICES` set to that GPU); each child's output goes to
/// `DIR/logs/unit-N.log`. Returns the units that failed. The children run in their own process
/// group, so a Ctrl-C or SIGTERM reaches them once, forwarded by this process.
pub fn run_on_gpus(grid: &Grid, exe: &Path, gpus: &[String], verbose: bool) -> Result<Vec<FailedUnit>> {
    use std::os::unix::process::CommandExt;
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
                    let log = logs.join(format!("unit-{index}.log"));
                    eprintln!("unit {index} failed ({status}); see {}", log.display());
                    failed.push(FailedUnit { index: *index, log });
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
                    .process_group(0)
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
            // Each child checkpoints after its current step when told once; wait for them.
            for (index, child) in running.iter_mut().flatten() {
                // SAFETY: kill(2) with a pid this process spawned and has not reaped yet.
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
                let status = child.wait().map_err(|e| Error::io(exe, e))?;
                if !status.success() {
                    failed.push(FailedUnit { index: *index, log: logs.join(format!("unit-{index}.log")) });
                }
            }
            return Ok(failed);
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}
