//! Training runs: k-fold patient-level cross-validation (`--folds k`), folds grouped by a
//! metadata column (`--group-by`), one held-out source (`--test-source`), or one final model on
//! everything given (`--folds 0`), in a run folder whose layout `crate::runfolder` owns.
//!
//! In each fold a patient-level `validation.fraction` of the training folds picks the best
//! epoch; the held-out fold is evaluated once, with that model. Every fold starts from the same
//! seed (same initial weights), so folds differ only in their data. Grouped folds can leave a
//! class out of a fold's training or test part: the fold says which (`FoldResult`), and those
//! classes are kept out of its macro means, whose per-class figures are then `n/a` or only
//! measure the absence.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tch::Device;

use super::config::TrainConfig;
use super::trainer::{Finish, TrainJob, train};
use crate::data::dataset::Dataset;
use crate::data::decode::DecodeLimits;
use crate::data::loader::{InputPipeline, Loader};
use crate::data::split::{Folds, Grouping, SplitFile, check_split, holdout_split, make_split};
use crate::error::{Error, IoContext, Result};
use crate::eval::evaluate::PredictOptions;
use crate::eval::results::EvalReport;
use crate::eval::metrics::{Metrics, fixed4_or_na, pct_or_na, summarise};
use crate::eval::reliability::{Reliability, predict_assessed};
use crate::model::weights::load_model;
pub use crate::runfolder::{CONFIG_FILE, CvSummary, FoldResult, RUN_FILE, RunSpec, SPLIT_FILE, SUMMARY_FILE};
use crate::runfolder::{METRICS_FILE, MODEL_FILE, PREDICTIONS_FILE, SUMMARY_MARKDOWN, fold_dir, write_predictions};

pub struct RunOptions {
    pub out: PathBuf,
    pub device: Device,
    pub resume: bool,
    pub stop_after_steps: Option<u64>,
    pub verbose: bool,
    /// Metadata columns for per-group metrics in each fold's metrics.json.
    pub by: Vec<String>,
    /// How the folds are made (patient-level unless `--group-by` or `--test-source`).
    pub grouping: Grouping,
}

pub enum RunResult {
    CrossValidation(CvSummary),
    Final { model: PathBuf },
    Stopped,
}


pub fn input_pipeline(cfg: &TrainConfig) -> Result<InputPipeline> {
    Ok(InputPipeline {
        preprocess: cfg.preprocess()?,
        augment: cfg.data.augment,
        limits: DecodeLimits { max_pixels: cfg.data.max_pixels },
    })
}

/// A fresh run folder name under `runs/`: `runs/2026-11-25T19-37-42`.
pub fn default_run_dir() -> PathBuf {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    PathBuf::from("runs").join(format!("{y:04}-{m:02}-{d:02}T{:02}-{:02}-{:02}", rem / 3600, rem % 3600 / 60, rem % 60))
}

/// The time now, UTC: `2026-11-25 19:37 UTC`.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", rem / 3600, rem % 3600 / 60)
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The fold count a grouping allows: 0 (a final model, patient grouping only) or at least 2,
/// or exactly 1 for a held-out value.
fn check_fold_count(folds: usize, grouping: &Grouping) -> Result<()> {
    match grouping {
        Grouping::HeldOut { .. } if folds != 1 => Err(Error::Config("--test-source holds out one part: it takes no --folds".into())),
        Grouping::HeldOut { .. } => Ok(()),
        Grouping::Column { .. } if folds < 2 => Err(Error::Config("--group-by needs --folds of at least 2".into())),
        _ if folds == 1 => Err(Error::Config("--folds must be 0 (one final model) or at least 2".into())),
        _ => Ok(()),
    }
}

/// Everything about a run that can be checked before its folder is written, so that a failed
/// start leaves nothing behind: the fold count, the data, the network, the split and its
/// validation part, and that every training part fills at least one batch.
pub fn check_start(cfg: &TrainConfig, ds: &Dataset, folds: usize, grouping: &Grouping) -> Result<()> {
    check_fold_count(folds, grouping)?;
    if ds.samples.is_empty() {
        return Err(Error::Data(format!("{}: no images", ds.source.display())));
    }
    cfg.model_config_for(&ds.classes)?;
    input_pipeline(cfg)?;
    if let Some(p) = &cfg.model.pretrained
        && !p.is_file()
    {
        return Err(Error::bad_file(p, "model.pretrained: no such file"));
    }
    let all: Vec<usize> = (0..ds.samples.len()).collect();
    super::reliability::check(cfg, &ds.classes, cfg.validation.fraction > 0.0)?;
    let mut train_parts = Vec::new();
    if folds == 0 {
        train_parts.push(final_split(cfg, ds)?.0.len());
    } else {
        let split = make_split(ds, &all, grouping, folds, cfg.seed)?;
        for k in 0..grouping.folds_to_run(folds) {
            let rest: Vec<usize> = split.folds.iter().enumerate().filter(|(j, _)| *j != k).flat_map(|(_, f)| f.clone()).collect();
            let n = if cfg.validation.fraction > 0.0 {
                holdout_split(ds, &rest, cfg.validation.fraction, cfg.seed)?.0.len()
            } else {
                rest.len()
            };
            train_parts.push(n);
        }
    }
    let smallest = train_parts.iter().copied().min().unwrap_or(0);
    if cfg.iters_per_epoch.unwrap_or(smallest / cfg.batch_size) == 0 {
        return Err(Error::Data(format!(
            "{}: {smallest} training images cannot fill one batch of {} (use a smaller batch_size or fewer folds)",
            ds.source.display(),
            cfg.batch_size
        )));
    }
    Ok(())
}

/// Writes `run.json` and `config.toml`, or on resume checks that they describe this run. A
/// resumed run may change only `epochs` and `device` (the caller checks which changes are
/// safe); config.toml is rewritten with them. A new run needs a new or empty folder.
pub fn prepare_run_dir(out: &Path, spec: &RunSpec, cfg: &TrainConfig, resume: bool) -> Result<()> {
    let run_path = out.join(RUN_FILE);
    if resume && run_path.exists() {
        let old = RunSpec::load(out)?;
        let cfg_path = out.join(CONFIG_FILE);
        let old_cfg: TrainConfig = toml::from_str(&crate::files::read_to_string(&cfg_path, crate::files::MAX_TEXT_BYTES, "config")?)
            .map_err(|e| Error::bad_file(&cfg_path, e.to_string()))?;
        let same_but_epochs_and_device = TrainConfig { epochs: cfg.epochs, device: cfg.device, ..old_cfg.clone() } == *cfg;
        if old.folds != spec.folds || old.classes != spec.classes || !same_but_epochs_and_device {
            return Err(Error::Config(format!(
                "{}: this run was made with other settings (folds, classes or config); resume it with \
                 `magsd train --resume {}` alone",
                out.display(),
                out.display()
            )));
        }
        if old_cfg != *cfg {
            crate::error::write_atomic(&cfg_path, cfg.to_toml().as_bytes())?;
        }
        return Ok(());
    }
    if !resume && run_path.exists() {
        return Err(Error::Config(format!(
            "{} already holds a run; choose another --out or continue it with --resume",
            out.display()
        )));
    }
    if out.exists() {
        let mut entries = std::fs::read_dir(out).at(out)?;
        if entries.next().is_some() {
            return Err(Error::Config(format!(
                "{} is not empty and holds no magsd run; a new run needs a new or empty folder",
                out.display()
            )));
        }
    }
    std::fs::create_dir_all(out).at(out)?;
    // run.json last: its presence means the folder is complete (a reader that finds it finds
    // config.toml too).
    crate::error::write_atomic(&out.join(CONFIG_FILE), cfg.to_toml().as_bytes())?;
    spec.save(out)
}

/// What every fold of one training config shares: the config, the network and one loader
/// (so decoded images are cached across folds).
pub struct FoldRunner {
    cfg: TrainConfig,
    ds: Arc<Dataset>,
    model_config: crate::model::NetworkConfig,
    loader: Loader,
}

impl FoldRunner {
    pub fn new(cfg: &TrainConfig, ds: Arc<Dataset>) -> Result<Self> {
        if ds.samples.is_empty() {
            return Err(Error::Data(format!("{}: no images", ds.source.display())));
        }
        let model_config = cfg.model_config_for(&ds.classes)?;
        let loader = Loader::new(ds.clone(), input_pipeline(cfg)?, cfg.seed, cfg.performance.cache);
        Ok(FoldRunner { cfg: cfg.clone(), ds, model_config, loader })
    }

    fn job(&self, train_idx: Vec<usize>, val_idx: Vec<usize>, dir: PathBuf, label: String, opts: &RunOptions) -> TrainJob {
        TrainJob {
            config: self.cfg.clone(),
            model_config: self.model_config.clone(),
            loader: self.loader.clone(),
            train_idx,
            val_idx,
            out_dir: dir,
            device: opts.device,
            resume: opts.resume,
            stop_after_steps: opts.stop_after_steps,
            label,
            verbose: opts.verbose,
        }
    }

    /// Trains fold `k` of `split` in `dir` (a patient-level validation split of the other folds
    /// picks the best epoch), then evaluates the held-out fold once with that model, never
    /// augmented, and writes `fold.json` last. With `opts.resume` a finished fold (its
    /// `fold.json` exists) is read back, not redone. `None`: training stopped early.
    pub fn run_fold(&self, split: &Folds, k: usize, dir: &Path, opts: &RunOptions) -> Result<Option<FoldResult>> {
        let (cfg, ds) = (&self.cfg, &self.ds);
        if opts.resume
            && let Some(r) = FoldResult::load_if_done(dir)?
        {
            return Ok(Some(r));
        }
        let folds = split.folds.len();
        let Some(test) = split.folds.get(k).cloned() else {
            return Err(Error::Config(format!("fold {k}: the split has folds 0..{}", folds.saturating_sub(1))));
        };
        let rest: Vec<usize> = split.folds.iter().enumerate().filter(|(j, _)| *j != k).flat_map(|(_, f)| f.clone()).collect();
        let (train_idx, val_idx) = if cfg.validation.fraction > 0.0 {
            holdout_split(ds, &rest, cfg.validation.fraction, cfg.seed)?
        } else {
            (rest, Vec::new())
        };
        check_split(ds, &[train_idx.clone(), val_idx.clone(), test.clone()])?;
        // Fold numbers count from 0, as the fold-K folders, fold.json and the reports do.
        let label = format!("fold {k} of {folds}");
        let absent_from_training = absent_classes(ds, &train_idx);
        let absent_from_test = absent_classes(ds, &test);
        if opts.verbose {
            for (names, part) in [(&absent_from_training, "training"), (&absent_from_test, "test")] {
                if !names.is_empty() {
                    eprintln!("{label}: class(es) {} have no image in its {part} part; their metrics are n/a", names.join(", "));
                }
            }
        }
        let outcome = train(&self.job(train_idx.clone(), val_idx.clone(), dir.to_path_buf(), label, opts))?;
        if outcome.finish == Finish::Stopped {
            return Ok(None);
        }
        super::reliability::fit_and_store(&dir.join(MODEL_FILE), &self.loader, &train_idx, &val_idx, cfg, opts.device)?;
        // Evaluate the held-out fold once, with the selected model, never augmented, with its
        // calibration and checks.
        let m = load_model(&dir.join(MODEL_FILE), opts.device)?;
        let reliability = Reliability::of(&m, &dir.join(MODEL_FILE))?;
        // Features for the source probe (`eval::probe`) in the fold's metrics.json.
        let predict_opts = PredictOptions { keep_features: true, ..cfg.predict_options() };
        let (p, trust) = predict_assessed(&m.model, &reliability, &self.loader, &test, opts.device, &predict_opts)?;
        let trained: Vec<bool> = ds.classes.iter().map(|c| !absent_from_training.contains(c)).collect();
        let mut report = EvalReport::new_over(ds, &p, &opts.by, &trained)?;
        report.reliability = Some(trust);
        report.save(&dir.join(METRICS_FILE))?;
        write_predictions(&dir.join(PREDICTIONS_FILE), ds, &p)?;
        let r = FoldResult {
            fold: k,
            train_images: train_idx.len(),
            val_images: val_idx.len(),
            test_images: p.indices.len(),
            best_epoch: outcome.best.map(|b| b.epoch),
            metrics: report.overall,
            absent_from_training,
            absent_from_test,
        };
        r.save(dir)?;
        if opts.verbose {
            eprintln!(
                "fold {k} of {folds}: held-out accuracy {:.4}, macro F1 {}, AUC {}",
                r.metrics.accuracy,
                fixed4_or_na(r.metrics.f1),
                fixed4_or_na(r.metrics.auc)
            );
        }
        Ok(Some(r))
    }
}

/// The names of the classes with no image among `indices`.
fn absent_classes(ds: &Dataset, indices: &[usize]) -> Vec<String> {
    let mut present = vec![false; ds.classes.len()];
    for &i in indices {
        present[ds.samples[i].label] = true;
    }
    ds.classes.iter().zip(present).filter(|(_, p)| !p).map(|(c, _)| c.clone()).collect()
}

/// The training and validation images of a final model (`--folds 0`): like every fold, a
/// patient-level `validation.fraction` of the images is held out to pick the best epoch and to
/// fit the calibration, the detector's threshold and the operating points; with
/// `validation.fraction = 0` it trains on everything and fits only what needs no held-out image.
pub fn final_split(cfg: &TrainConfig, ds: &Dataset) -> Result<(Vec<usize>, Vec<usize>)> {
    let all: Vec<usize> = (0..ds.samples.len()).collect();
    if cfg.validation.fraction > 0.0 { holdout_split(ds, &all, cfg.validation.fraction, cfg.seed) } else { Ok((all, Vec::new())) }
}

/// The folds of `split_path` (made by `grouping`, seeded by `seed`, and saved there when the
/// file does not exist yet); checked to be disjoint, and to have been made the same way.
pub fn load_or_make_split(ds: &Dataset, split_path: &Path, folds: usize, seed: u64, grouping: &Grouping) -> Result<Folds> {
    let split = if split_path.exists() {
        let file = SplitFile::load(split_path)?;
        if file.grouping != *grouping {
            return Err(Error::bad_file(
                split_path,
                format!("the split was made with {:?}, this run asks for {grouping:?}", file.grouping),
            ));
        }
        file.resolve(ds, split_path)?
    } else {
        let all: Vec<usize> = (0..ds.samples.len()).collect();
        let s = make_split(ds, &all, grouping, folds, seed)?;
        SplitFile::new(ds, &s).grouped(grouping).save(split_path)?;
        s
    };
    check_split(ds, &split.folds)?;
    Ok(split)
}

/// Per-fold results and their mean ± std.
pub fn summarise_folds(results: Vec<FoldResult>) -> CvSummary {
    let metrics: Vec<Metrics> = results.iter().map(|r| r.metrics.clone()).collect();
    CvSummary { mean_std: summarise(&metrics), folds: results }
}

/// Trains according to `cfg` on `ds` into `opts.out`, with `folds` as in [`RunSpec`].
pub fn run(cfg: &TrainConfig, ds: Arc<Dataset>, folds: usize, opts: &RunOptions) -> Result<RunResult> {
    check_fold_count(folds, &opts.grouping)?;
    let runner = FoldRunner::new(cfg, ds.clone())?;

    if folds == 0 {
        let (train_idx, val_idx) = final_split(cfg, &ds)?;
        let outcome = train(&runner.job(train_idx.clone(), val_idx.clone(), opts.out.clone(), "final".into(), opts))?;
        return Ok(match outcome.finish {
            Finish::Stopped => RunResult::Stopped,
            Finish::Completed => {
                super::reliability::fit_and_store(&outcome.model_path, &runner.loader, &train_idx, &val_idx, cfg, opts.device)?;
                RunResult::Final { model: outcome.model_path }
            }
        });
    }

    let split = load_or_make_split(&ds, &opts.out.join(SPLIT_FILE), folds, cfg.seed, &opts.grouping)?;
    let mut results = Vec::new();
    for k in 0..opts.grouping.folds_to_run(folds) {
        match runner.run_fold(&split, k, &fold_dir(&opts.out, k), opts)? {
            Some(r) => results.push(r),
            None => return Ok(RunResult::Stopped),
        }
    }
    let summary = summarise_folds(results);
    summary.save(&opts.out)?;
    let md = summary_markdown(&summary, &ds.classes, &opts.grouping.describe(folds));
    crate::error::write_atomic(&opts.out.join(SUMMARY_MARKDOWN), md.as_bytes())?;
    Ok(RunResult::CrossValidation(summary))
}

/// The cross-validation table: one row per fold, then mean ± std; `protocol` names how the
/// folds were made ([`Grouping::describe`]).
pub fn summary_markdown(s: &CvSummary, classes: &[String], protocol: &str) -> String {
    let pct = |v: f64| format!("{:.2}", 100.0 * v);
    let mut out = format!(
        "# Cross-validation ({protocol}; classes: {})\n\n| fold | images | ACC | SEN | SPC | F1 | AUC |\n|---|---|---|---|---|---|---|\n",
        classes.join(", ")
    );
    for f in &s.folds {
        let m = &f.metrics;
        out += &format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            f.fold,
            m.n,
            pct_or_na((m.n > 0).then_some(m.accuracy)),
            pct_or_na(m.sensitivity),
            pct_or_na(m.specificity),
            pct_or_na(m.f1),
            pct_or_na(m.auc)
        );
    }
    let ms = |k: &str| s.mean_std.get(k).map(|v| format!("{} ± {}", pct(v.mean), pct(v.std))).unwrap_or_else(|| "n/a".into());
    out += &format!(
        "| mean ± std | | {} | {} | {} | {} | {} |\n\nSEN, SPC, F1 and AUC are unweighted means over classes (one-vs-rest); SPC = TN/(TN+FP); std over folds with n − 1.\n",
        ms("accuracy"),
        ms("sensitivity"),
        ms("specificity"),
        ms("f1"),
        ms("auc")
    );
    for line in absent_class_notes(s) {
        out += &format!("\n{line}\n");
    }
    out
}

/// One sentence per fold whose training or test part lacks a class.
pub fn absent_class_notes(s: &CvSummary) -> Vec<String> {
    s.folds
        .iter()
        .filter(|f| !(f.absent_from_training.is_empty() && f.absent_from_test.is_empty()))
        .map(|f| {
            let mut parts = Vec::new();
            if !f.absent_from_training.is_empty() {
                parts.push(format!(
                    "its training part has no image of {}: they are left out of its macro means and its figures for them only \
                     measure that absence",
                    f.absent_from_training.join(", ")
                ));
            }
            if !f.absent_from_test.is_empty() {
                parts.push(format!(
                    "its test part has no image of {}: their sensitivity and AUC are n/a (their precision and F1 are 0 where the \
                     model predicted them, every such prediction being wrong)",
                    f.absent_from_test.join(", ")
                ));
            }
            format!("Fold {}: {}.", f.fold, parts.join("; "))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_782), (2026, 11, 25));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
