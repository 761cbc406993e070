//! `magsd reproduce --collect`: the tables from whatever units have finished — per table a
//! Markdown/HTML report in the paper's layout (mean ± std over folds), the paper's numbers
//! beside ours, Fig. 6 (one ROC curve per row from pooled out-of-fold predictions), paired
//! tests against MAG-SD and patient-level bootstrap intervals (`eval::stats`).
use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::paper::{self, DATASETS, METRICS, Reported};
use super::rows::{MAGSD, NOT_PROVIDED, Table};
use super::{Grid, Unit};
use crate::error::Result;
use crate::eval::metrics::{MeanStd, Metrics, compute};
use crate::eval::stats::{BootstrapCi, PairedT, Wilcoxon, bootstrap_ci, paired_t_test, wilcoxon_signed_rank};
use crate::eval::within_source::{Scored, WithinSource, within_source};
use crate::report::document::Document;
use crate::report::plots::{RocRow, RowsRocFigure, save};
use crate::runfolder::{FoldResult, PREDICTIONS_FILE, SUMMARY_MARKDOWN, fold_dir, read_predictions, write_json};
use crate::train::cv::{summarise_folds, summary_markdown};

/// Bootstrap settings: resamples, seed, level.
#[derive(Clone, Copy, Debug)]
pub struct BootstrapOptions {
    pub resamples: usize,
    pub seed: u64,
}

impl Default for BootstrapOptions {
    fn default() -> Self {
        BootstrapOptions { resamples: 1000, seed: 0 }
    }
}

/// A row against MAG-SD over the folds both have finished: paired t and Wilcoxon tests of the
/// per-fold accuracy and macro-F1.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Comparison {
    pub folds: Vec<usize>,
    pub accuracy_diff: f64,
    pub accuracy_t: Option<PairedT>,
    pub accuracy_wilcoxon: Option<Wilcoxon>,
    pub f1_diff: f64,
    pub f1_t: Option<PairedT>,
    pub f1_wilcoxon: Option<Wilcoxon>,
}

/// One row of a table as collected.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RowResult {
    pub id: String,
    pub label: String,
    pub note: Option<String>,
    /// The paper's row this one reproduces ("table N: name") and its values: dataset (A, B, C)
    /// → metric (ACC, SEN, SPC, F1, AUC) → mean ± std (%), from `paper-tables.csv`.
    pub paper_row: Option<String>,
    pub paper: BTreeMap<String, BTreeMap<String, Reported>>,
    pub folds: Vec<FoldResult>,
    pub missing_folds: Vec<usize>,
    pub mean_std: BTreeMap<String, MeanStd>,
    /// Metrics of the pooled out-of-fold predictions of the finished folds.
    pub pooled: Option<Metrics>,
    /// 95 % patient-level bootstrap intervals of the pooled accuracy, macro-F1 and AUC.
    pub bootstrap: BTreeMap<String, BootstrapCi>,
    pub vs_magsd: Option<Comparison>,
    /// Per source column: pooled within-source figures of the out-of-fold predictions beside
    /// the overall ones (`eval::within_source`).
    #[serde(default)]
    pub within_source: BTreeMap<String, WithinSource>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TableResult {
    pub number: u8,
    pub title: String,
    pub classes: Vec<String>,
    pub folds: usize,
    pub rows: Vec<RowResult>,
    /// What was run: the configuration and data behind every row.
    pub provenance: Provenance,
}

/// What a table was made from, for its page: command, settings, networks, data, version.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Provenance {
    pub command: String,
    pub preset: String,
    pub epochs: usize,
    pub folds: usize,
    pub image_size: i64,
    pub images: usize,
    pub patients: usize,
    pub magsd_version: String,
    /// The git commit the binary was built from ("unknown" when it was not built in a git
    /// checkout; results written before this field existed read as "unknown").
    #[serde(default = "unknown")]
    pub magsd_commit: String,
    /// When the tables were collected (UTC).
    pub collected: String,
    /// The devices the finished units trained on (from their logs).
    pub devices: Vec<String>,
    /// Per row id: its network (arch, backbone) and trainable parameter count.
    pub networks: BTreeMap<String, (String, i64)>,
    /// Why the grid is a smoke test and not evidence (empty: none of the reasons applies).
    pub not_evidence: Vec<String>,
}

fn unknown() -> String {
    "unknown".into()
}

/// The paper's values of `row` (table, name) on its three datasets.
fn paper_values(row: Option<(u8, &str)>) -> BTreeMap<String, BTreeMap<String, Reported>> {
    let mut out = BTreeMap::new();
    if let Some((t, name)) = row {
        for (d, _) in DATASETS {
            let m: BTreeMap<String, Reported> =
                METRICS.iter().chain(&["AUC"]).filter_map(|m| paper::value(t, name, d, m).map(|v| (m.to_string(), v))).collect();
            if !m.is_empty() {
                out.insert(d.to_string(), m);
            }
        }
    }
    out
}

/// A row's network: "arch backbone" (or the arch alone) and its trainable parameter count.
fn network(cfg: &crate::train::config::TrainConfig, classes: &[String]) -> Result<(String, i64)> {
    let mc = cfg.model_config_for(classes)?;
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    tch::no_grad(|| crate::train::trainer::seeded_init(&vs, &mc, 0))?;
    let name = match cfg.model.arch {
        crate::model::config::Arch::Magsd => format!("MAG-SD on {} ({} maps)", cfg.model.backbone, cfg.model.maps),
        a => a.name().to_string(),
    };
    Ok((name, crate::model::weights::parameter_count(&vs)))
}

/// "139 k", "11.2 M".
fn count(n: i64) -> String {
    if n >= 1_000_000 { format!("{:.1} M", n as f64 / 1e6) } else if n >= 1000 { format!("{} k", n / 1000) } else { n.to_string() }
}

/// The devices named by the `start` records of the finished units' training logs.
fn devices(grid: &Grid) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for u in &grid.units {
        let log = grid.unit_dir(u).join(crate::runfolder::LOG_FILE);
        let Ok(text) = std::fs::read_to_string(&log) else { continue };
        for line in text.lines().take(3) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line)
                && v["type"] == "start"
                && let Some(d) = v["device"].as_str()
                && !out.iter().any(|o| o == d)
            {
                out.push(d.to_string());
            }
        }
    }
    out
}

/// The provenance of the grid's tables, with the reasons (if any) why they are no evidence:
/// fewer epochs or folds than the paper, a smaller network or images than the paper's MAG-SD
/// (each table adds its rows at chance).
fn provenance(grid: &Grid, ds_images: usize, ds_patients: usize) -> Result<Provenance> {
    let base = grid.base_config()?;
    let paper = crate::train::config::TrainConfig::paper();
    let classes = &grid.spec.classes;
    let mut networks = BTreeMap::new();
    for r in grid.spec.rows() {
        let overrides: Vec<String> = r.overrides.iter().map(|s| s.to_string()).collect();
        let cfg = super::row_config_from(&base, &overrides)?;
        networks.insert(r.id.to_string(), network(&cfg, classes)?);
    }
    let mut not_evidence = Vec::new();
    if base.epochs < paper.epochs {
        not_evidence.push(format!("{} epoch(s), the paper trains {}", base.epochs, paper.epochs));
    }
    if grid.spec.folds < 5 && !matches!(grid.spec.grouping, crate::data::split::Grouping::HeldOut { .. }) {
        not_evidence.push(format!("{} folds, the paper uses 5", grid.spec.folds));
    }
    let paper_net = network(&paper, classes)?;
    if let Some((name, n)) = networks.get(MAGSD.id)
        && *n < paper_net.1 / 2
    {
        not_evidence.push(format!("MAG-SD here is {name} with {} parameters, the paper's {} has {}", count(*n), paper_net.0, count(paper_net.1)));
    }
    if base.model.image_size < paper.model.image_size {
        not_evidence.push(format!("{} px images, the paper uses {} px", base.model.image_size, paper.model.image_size));
    }
    Ok(Provenance {
        command: grid.spec.command.clone(),
        preset: base.preset.clone(),
        epochs: base.epochs,
        folds: grid.spec.folds,
        image_size: base.model.image_size,
        images: ds_images,
        patients: ds_patients,
        magsd_version: env!("CARGO_PKG_VERSION").to_string(),
        magsd_commit: env!("MAGSD_GIT_COMMIT").to_string(),
        collected: crate::train::cv::utc_now(),
        devices: devices(grid),
        networks,
        not_evidence,
    })
}

/// What `collect` wrote and what is still missing.
pub struct Collected {
    /// (table number, report.html).
    pub reports: Vec<(u8, PathBuf)>,
    pub missing: Vec<Unit>,
}

/// A row's finished folds and their pooled predictions.
struct RowData {
    folds: Vec<FoldResult>,
    missing: Vec<usize>,
    names: Vec<String>,
    labels: Vec<usize>,
    probs: Vec<Vec<f64>>,
}

/// Each image's patient and value of every source column, by image name (from the grid's data).
struct Sources {
    columns: Vec<String>,
    by_name: BTreeMap<String, (String, Vec<String>)>,
}

impl Sources {
    fn of(grid: &Grid) -> Result<Sources> {
        let ds = grid.dataset()?;
        let columns = ds.default_breakdown();
        let by_name = ds
            .samples
            .iter()
            .map(|s| {
                let values = columns.iter().map(|c| s.meta.get(c).filter(|v| !v.is_empty()).cloned().unwrap_or_else(|| "(empty)".into())).collect();
                (s.name.clone(), (s.patient_key(), values))
            })
            .collect();
        Ok(Sources { columns, by_name })
    }

    /// Within-source figures of a row's pooled predictions, per column.
    fn within(&self, d: &RowData, classes: &[String], opts: BootstrapOptions) -> BTreeMap<String, WithinSource> {
        let mut out = BTreeMap::new();
        let Some(rows) = d.names.iter().map(|n| self.by_name.get(n)).collect::<Option<Vec<_>>>() else {
            return out;
        };
        let patients: Vec<String> = rows.iter().map(|(p, _)| p.clone()).collect();
        let counted: Vec<bool> = classes.iter().map(|c| !d.folds.iter().any(|f| f.absent_from_training.contains(c))).collect();
        for (k, col) in self.columns.iter().enumerate() {
            let sources: Vec<String> = rows.iter().map(|(_, v)| v[k].clone()).collect();
            let scored = Scored { labels: &d.labels, probs: &d.probs, sources: &sources, patients: &patients, classes, counted: &counted };
            out.insert(col.clone(), within_source(col, &scored, opts.resamples, opts.seed));
        }
        out
    }
}

fn load_row(grid: &Grid, id: &str) -> Result<RowData> {
    let classes = &grid.spec.classes;
    let mut d = RowData { folds: Vec::new(), missing: Vec::new(), names: Vec::new(), labels: Vec::new(), probs: Vec::new() };
    for k in 0..grid.spec.folds {
        let dir = fold_dir(&grid.row_dir(id), k);
        match FoldResult::load_if_done(&dir)? {
            None => d.missing.push(k),
            Some(r) => {
                for (name, y, p) in read_predictions(&dir.join(PREDICTIONS_FILE), classes)? {
                    d.names.push(name);
                    d.labels.push(y);
                    d.probs.push(p);
                }
                d.folds.push(r);
            }
        }
    }
    Ok(d)
}

fn compare(row: &RowData, reference: &RowData) -> Option<Comparison> {
    let pairs: Vec<(&FoldResult, &FoldResult)> =
        row.folds.iter().filter_map(|a| reference.folds.iter().find(|b| b.fold == a.fold).map(|b| (a, b))).collect();
    if pairs.is_empty() {
        return None;
    }
    // The folds where the metric is defined for both rows (F1 can be undefined: 0/0).
    let pick = |f: fn(&Metrics) -> Option<f64>| -> (Vec<f64>, Vec<f64>) {
        pairs.iter().filter_map(|(a, b)| Some((f(&a.metrics)?, f(&b.metrics)?))).unzip()
    };
    let mean_diff = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x - y).sum::<f64>() / a.len() as f64;
    let (acc_a, acc_b) = pick(|m| Some(m.accuracy));
    let (f1_a, f1_b) = pick(|m| m.f1);
    Some(Comparison {
        folds: pairs.iter().map(|(a, _)| a.fold).collect(),
        accuracy_diff: mean_diff(&acc_a, &acc_b),
        accuracy_t: paired_t_test(&acc_a, &acc_b),
        accuracy_wilcoxon: wilcoxon_signed_rank(&acc_a, &acc_b),
        f1_diff: mean_diff(&f1_a, &f1_b),
        f1_t: paired_t_test(&f1_a, &f1_b),
        f1_wilcoxon: wilcoxon_signed_rank(&f1_a, &f1_b),
    })
}

type MetricFn = fn(&Metrics) -> Option<f64>;

/// A row's label from what it runs: MAG-SD's row is labelled by the paper's choice of the
/// table's setting (e.g. "7×7 + 14×14 (MAG-SD)") only when the grid's settings keep it.
fn row_label(table: u8, tr: &super::rows::TableRow, base: &BTreeMap<String, String>, paper: &BTreeMap<String, String>) -> String {
    if tr.row != MAGSD {
        return tr.label.to_string();
    }
    match super::rows::varied_setting(table) {
        Some(key) if base.get(key) != paper.get(key) => {
            format!("MAG-SD with {key} = {} (the paper's is {})", base.get(key).map(String::as_str).unwrap_or("n/a"), paper.get(key).map(String::as_str).unwrap_or("n/a"))
        }
        _ => tr.label.to_string(),
    }
}

fn bootstrap(d: &RowData, patients: &BTreeMap<String, String>, classes: &[String], opts: BootstrapOptions) -> BTreeMap<String, BootstrapCi> {
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, name) in d.names.iter().enumerate() {
        let key = patients.get(name).cloned().unwrap_or_else(|| format!("image:{name}"));
        groups.entry(key).or_default().push(i);
    }
    let groups: Vec<Vec<usize>> = groups.into_values().collect();
    let metric = |idx: &[usize]| {
        let labels: Vec<usize> = idx.iter().map(|&i| d.labels[i]).collect();
        let probs: Vec<Vec<f64>> = idx.iter().map(|&i| d.probs[i].clone()).collect();
        compute(&labels, &probs, classes)
    };
    let mut out = BTreeMap::new();
    let stats: [(&str, MetricFn); 3] = [("accuracy", |m| Some(m.accuracy)), ("f1", |m| m.f1), ("auc", |m| m.auc)];
    for (i, (name, f)) in stats.into_iter().enumerate() {
        // One stream per statistic, the same for every row.
        let seed = crate::rng::mix(opts.seed, &[i as u64]);
        if let Some(ci) = bootstrap_ci(&groups, opts.resamples, seed, 0.95, |idx| f(&metric(idx))) {
            out.insert(name.to_string(), ci);
        }
    }
    out
}

/// Collects every table of the grid; rows whose folds have all finished also get their
/// run folder's `cv-summary.json`, so `magsd report DIR/ROW` works on them.
pub fn collect(grid: &Grid, opts: BootstrapOptions) -> Result<Collected> {
    let classes = grid.spec.classes.clone();
    let patients = grid.patients()?;
    let mut data: BTreeMap<String, RowData> = BTreeMap::new();
    for r in grid.spec.rows() {
        let d = load_row(grid, r.id)?;
        if d.missing.is_empty() {
            let summary = summarise_folds(d.folds.clone());
            let dir = grid.row_dir(r.id);
            summary.save(&dir)?;
            crate::error::write_atomic(&dir.join(SUMMARY_MARKDOWN), summary_markdown(&summary, &classes, &grid.spec.grouping.describe(grid.spec.folds)).as_bytes())?;
        }
        data.insert(r.id.to_string(), d);
    }
    let sources = Sources::of(grid)?;
    let base_provenance = {
        let ds = grid.dataset()?;
        let patients: std::collections::BTreeSet<String> = ds.samples.iter().map(|s| s.patient_key()).collect();
        provenance(grid, ds.samples.len(), patients.len())?
    };
    let base_settings = super::config_settings(&grid.base_config()?);
    let paper_settings = super::config_settings(&crate::train::config::TrainConfig::paper());
    let mut within: BTreeMap<String, BTreeMap<String, WithinSource>> = BTreeMap::new();
    let mut boots: BTreeMap<String, BTreeMap<String, BootstrapCi>> = BTreeMap::new();
    let mut reports = Vec::new();
    for t in grid.spec.tables() {
        let mut result = TableResult {
            number: t.number,
            title: t.title.into(),
            classes: classes.clone(),
            folds: grid.spec.folds,
            rows: Vec::new(),
            provenance: base_provenance.clone(),
        };
        for tr in &t.rows {
            let d = &data[tr.row.id];
            if !boots.contains_key(tr.row.id) {
                boots.insert(tr.row.id.to_string(), if d.labels.is_empty() { BTreeMap::new() } else { bootstrap(d, &patients, &classes, opts) });
                within.insert(tr.row.id.to_string(), if d.labels.is_empty() { BTreeMap::new() } else { sources.within(d, &classes, opts) });
            }
            let metrics: Vec<Metrics> = d.folds.iter().map(|f| f.metrics.clone()).collect();
            result.rows.push(RowResult {
                id: tr.row.id.into(),
                label: row_label(t.number, tr, &base_settings, &paper_settings),
                note: tr.note.map(String::from),
                paper_row: tr.paper.map(|(t, name)| format!("table {t}: {name}")),
                paper: paper_values(tr.paper),
                folds: d.folds.clone(),
                missing_folds: d.missing.clone(),
                mean_std: if metrics.is_empty() { BTreeMap::new() } else { crate::eval::metrics::summarise(&metrics) },
                pooled: (!d.labels.is_empty()).then(|| compute(&d.labels, &d.probs, &classes)),
                bootstrap: boots[tr.row.id].clone(),
                vs_magsd: data.get(MAGSD.id).filter(|_| tr.row != MAGSD).and_then(|m| compare(d, m)),
                within_source: within[tr.row.id].clone(),
            });
        }
        // A row at chance (mean accuracy within 5 points of 1/k) supports no comparison.
        let chance = 1.0 / classes.len() as f64;
        let at_chance: Vec<&str> = result
            .rows
            .iter()
            .filter(|r| r.mean_std.get("accuracy").is_some_and(|a| a.n > 0 && a.mean <= chance + 0.05))
            .map(|r| r.label.as_str())
            .collect();
        if !at_chance.is_empty() {
            let reason = format!("rows at chance level (mean accuracy within 5 points of {:.2} %): {}", 100.0 * chance, at_chance.join(", "));
            result.provenance.not_evidence.push(reason);
        }
        let dir = grid.dir.join(format!("table-{}", t.number));
        write_json(&dir.join("results.json"), &result)?;
        let rows_roc: Vec<RocRow> = t
            .rows
            .iter()
            .zip(&result.rows)
            .filter(|(tr, _)| !data[tr.row.id].labels.is_empty())
            .map(|(tr, r)| RocRow {
                name: tr.label.to_string(),
                labels: &data[tr.row.id].labels,
                probs: &data[tr.row.id].probs,
                auc: r.pooled.as_ref().and_then(|m| m.auc),
            })
            .collect();
        let has_figure = !rows_roc.is_empty();
        if has_figure {
            let fig = RowsRocFigure { title: format!("Table {}: ROC, pooled out-of-fold (macro average)", t.number), rows: rows_roc };
            save(&fig, &dir.join("roc"))?;
        }
        let (_, html) = document(&t, &result, grid, has_figure, opts).write(&dir)?;
        reports.push((t.number, html));
    }
    let missing = grid.pending()?.into_iter().cloned().collect();
    Ok(Collected { reports, missing })
}

fn pct(v: f64) -> String {
    format!("{:.2}", 100.0 * v)
}

fn ms(r: &RowResult, key: &str) -> String {
    r.mean_std.get(key).filter(|v| v.n > 0).map(|v| format!("{} ± {}", pct(v.mean), pct(v.std))).unwrap_or_else(|| "—".into())
}

fn p_value(p: Option<f64>) -> String {
    match p {
        None => "n/a".into(),
        Some(p) if p < 0.001 => format!("{p:.1e}"),
        Some(p) => format!("{p:.3}"),
    }
}

fn ci(r: &RowResult, key: &str) -> String {
    match (r.pooled.as_ref(), r.bootstrap.get(key)) {
        (_, Some(c)) => format!("{} [{}, {}]", pct(c.estimate), pct(c.low), pct(c.high)),
        (Some(m), None) if key == "accuracy" => pct(m.accuracy),
        _ => "n/a".into(),
    }
}

fn document(t: &Table, res: &TableResult, grid: &Grid, has_figure: bool, opts: BootstrapOptions) -> Document {
    let k = res.classes.len();
    let pv = &res.provenance;
    let mut doc = Document::new(format!("Table {}: {}", t.number, t.title));
    if !pv.not_evidence.is_empty() {
        doc.p(format!(
            "**A smoke test, not evidence.** These numbers cannot support or refute the paper's: {}. Compare them with \
             the paper's only as a check that every row runs.",
            pv.not_evidence.join("; ")
        ));
    }
    doc.p(format!(
        "What was run: `{}` — preset {}, {} epoch(s), {} fold(s), {} px images; data {} ({} images, {} patients; label \
         column '{}'; {} classes: {}); trained on {}; magsd {} (commit {}); collected {}.",
        pv.command,
        pv.preset,
        pv.epochs,
        pv.folds,
        pv.image_size,
        grid.spec.data.display(),
        pv.images,
        pv.patients,
        grid.spec.label_column,
        k,
        res.classes.join(", "),
        if pv.devices.is_empty() { "n/a (no unit has finished)".to_string() } else { pv.devices.join(", ") },
        pv.magsd_version,
        pv.magsd_commit,
        pv.collected
    ));
    doc.p(format!(
        "{}, the same folds for every row ({}).",
        grid.spec.grouping.describe(res.folds),
        grid.dir.join(crate::runfolder::SPLIT_FILE).display()
    ));
    // Every row has the same folds, so one line per fold.
    let absent: std::collections::BTreeSet<String> = res
        .rows
        .iter()
        .flat_map(|r| &r.folds)
        .filter(|f| !(f.absent_from_training.is_empty() && f.absent_from_test.is_empty()))
        .map(|f| format!("fold {}: training lacks [{}], test lacks [{}]", f.fold, f.absent_from_training.join(", "), f.absent_from_test.join(", ")))
        .collect();
    if !absent.is_empty() {
        doc.p(format!(
            "Grouped parts lack classes ({}). A class absent from a fold's training part is left out of that fold's macro means; \
             a class absent from its test part has no sensitivity or AUC (n/a); its precision and F1 are 0 where the model \
             predicted it (each such prediction was wrong, as scikit-learn counts it), n/a where it did not.",
            absent.into_iter().collect::<Vec<_>>().join("; ")
        ));
    }
    let missing: usize = res.rows.iter().map(|r| r.missing_folds.len()).sum();
    if missing > 0 {
        doc.p(format!(
            "Incomplete: {missing} row × fold units of this table have not finished; their rows show the finished folds only \
             (see the folds column). Rerun `magsd reproduce --out {}` to finish them.",
            super::shell_quote(&grid.dir.display().to_string())
        ));
    }
    // The paper's values for its dataset with as many classes as the grid, or all three.
    let matching = paper::dataset_for(k);
    let mut header: Vec<String> = ["Method", "ACC %", "SEN %", "SPC %", "F1 %", "AUC %", "folds"].iter().map(|s| s.to_string()).collect();
    match matching {
        Some(d) => header.extend(METRICS.iter().map(|m| format!("paper {m} % ({d})"))),
        None => header.extend(DATASETS.iter().map(|(d, n)| format!("paper {d} ({n} classes): ACC / SEN / SPC / F1 %"))),
    }
    let rows: Vec<Vec<String>> = res
        .rows
        .iter()
        .map(|r| {
            let mut v = vec![
                r.label.clone(),
                ms(r, "accuracy"),
                ms(r, "sensitivity"),
                ms(r, "specificity"),
                ms(r, "f1"),
                ms(r, "auc"),
                format!("{}/{}", r.folds.len(), res.folds),
            ];
            let shown = |d: &str, m: &str| r.paper.get(d).and_then(|x| x.get(m)).map(Reported::show).unwrap_or_else(|| "—".into());
            match matching {
                Some(d) => v.extend(METRICS.iter().map(|m| shown(d, m))),
                None => v.extend(DATASETS.iter().map(|(d, _)| METRICS.iter().map(|m| shown(d, m)).collect::<Vec<_>>().join(" / "))),
            }
            v
        })
        .collect();
    doc.table(header, rows);
    doc.p(format!(
        "Ours: mean ± std over the held-out folds (std with n − 1); SEN, SPC, F1 and AUC are unweighted means over \
         classes (one-vs-rest), SPC = TN/(TN+FP). Paper: mean ± std as the paper reports them (its Tables 3–8), {} — \
         other data, other folds, for reference only; — where the paper has no such row.",
        match matching {
            Some(d) => format!("on its dataset {d}, which has {k} classes like this grid"),
            None => format!("on its datasets A (2 classes), B (3) and C (4), none of which has {k} classes like this grid"),
        }
    ));
    if let Some(d) = matching
        && let Some(auc) = res.rows.iter().find(|r| r.id == MAGSD.id).and_then(|r| r.paper.get(d)).and_then(|x| x.get("AUC"))
    {
        doc.p(format!("The paper gives an AUC for MAG-SD only: {} % on its dataset {d}.", auc.show()));
    }
    for r in res.rows.iter().filter(|r| r.note.is_some()) {
        doc.p(format!("{}: {}.", r.label, r.note.as_deref().unwrap_or_default()));
    }
    if t.number == 3 {
        let shown: Vec<String> = NOT_PROVIDED
            .iter()
            .map(|name| {
                let vals: Vec<String> = DATASETS
                    .iter()
                    .filter(|(d, _)| matching.is_none_or(|m| m == *d))
                    .filter_map(|(d, _)| paper::value(3, name, d, "ACC").map(|v| format!("ACC {} on {d}", v.show())))
                    .collect();
                format!("{name} ({})", vals.join(", "))
            })
            .collect();
        doc.p(format!(
            "Not provided: the paper's rows {} are networks of its reference [51], whose training the paper does not \
             describe, so magsd cannot train them as they were trained; their published values are in \
             paper-tables.csv.",
            shown.join(" and ")
        ));
    }
    let net_rows: Vec<Vec<String>> = res
        .rows
        .iter()
        .map(|r| {
            let (name, n) = pv.networks.get(&r.id).cloned().unwrap_or_else(|| ("n/a".into(), 0));
            vec![r.label.clone(), name, if n > 0 { count(n) } else { "n/a".into() }]
        })
        .collect();
    doc.table(vec!["Method".into(), "network".into(), "parameters".into()], net_rows);

    doc.h(2, "Statistics");
    let header: Vec<String> = [
        "Method",
        "pooled ACC % [95% CI]",
        "pooled F1 % [95% CI]",
        "pooled AUC % [95% CI]",
        "ΔACC vs MAG-SD",
        "p (t)",
        "p (Wilcoxon)",
        "ΔF1 vs MAG-SD",
        "p (t)",
        "p (Wilcoxon)",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let rows: Vec<Vec<String>> = res
        .rows
        .iter()
        .map(|r| {
            let mut v = vec![r.label.clone(), ci(r, "accuracy"), ci(r, "f1"), ci(r, "auc")];
            match &r.vs_magsd {
                None => v.extend(["—".to_string(), "—".into(), "—".into(), "—".into(), "—".into(), "—".into()]),
                Some(c) => v.extend([
                    format!("{:+.2}", 100.0 * c.accuracy_diff),
                    p_value(c.accuracy_t.as_ref().map(|t| t.p)),
                    p_value(c.accuracy_wilcoxon.as_ref().map(|w| w.p)),
                    format!("{:+.2}", 100.0 * c.f1_diff),
                    p_value(c.f1_t.as_ref().map(|t| t.p)),
                    p_value(c.f1_wilcoxon.as_ref().map(|w| w.p)),
                ]),
            }
            v
        })
        .collect();
    doc.table(header, rows);
    doc.p(format!(
        "Pooled: every image predicted once, by the fold model that did not see it; 95 % percentile bootstrap intervals \
         over {} resamples of patients (not images; seed {}). Δ: mean over the folds both rows finished of (row − MAG-SD), \
         in percentage points; p: two-sided paired t-test and Wilcoxon signed-rank test of the per-fold values \
         (zero differences dropped; exact or sign-flip enumeration for small n, as SciPy). {} n/a: undefined (e.g. \
         identical differences in every fold).",
        opts.resamples,
        opts.seed,
        wilcoxon_floor_sentence(res.folds)
    ));
    within_source_table(&mut doc, res);
    if has_figure {
        doc.image(
            "roc.png",
            "Fig. 6: ROC of every row from pooled out-of-fold predictions. With more than two classes each curve is the \
             macro average (one-vs-rest TPR averaged over classes at each FPR); with two, the curve of the second class. \
             Legend: the pooled macro AUC (as in the statistics table); as in the paper's Fig. 6 the three highest AUCs \
             are drawn thick and marked [top 3]. The paper draws one panel per dataset (A, B, C: 2, 3, 4 classes); \
             a grid has one class set, so one panel, named by its class count.",
        );
    }
    doc.h(2, "Rows");
    let rows: Vec<Vec<String>> =
        t.rows.iter().map(|tr| vec![tr.label.to_string(), tr.row.id.to_string(), if tr.row.overrides.is_empty() { "(the base config)".into() } else { tr.row.overrides.join(" ") }]).collect();
    doc.table(vec!["Method".into(), "folder".into(), "config overrides".into()], rows);
    doc
}

/// The smallest two-sided p-value an exact Wilcoxon signed-rank test of `n` pairs can give:
/// every difference of one sign, 2 / 2^n.
pub fn wilcoxon_floor(n: usize) -> f64 {
    2.0 / 2f64.powi(n as i32)
}

/// What the Wilcoxon test can say with this many folds.
fn wilcoxon_floor_sentence(folds: usize) -> String {
    if folds == 0 {
        return String::new();
    }
    let floor = wilcoxon_floor(folds).min(1.0);
    if floor > 0.05 {
        format!(
            "With {folds} folds the Wilcoxon p-value cannot be below {floor:.4} (2/2^{folds}): too few pairs for it to reach \
             0.05, whatever the differences; it needs at least 6."
        )
    } else {
        format!("With {folds} folds the Wilcoxon p-value cannot be below {floor:.4} (2/2^{folds}).")
    }
}

/// Overall against within-source macro-F1 and AUC of every row, per source column.
fn within_source_table(doc: &mut Document, res: &TableResult) {
    use crate::report::audit::ci_cell;
    let columns: Vec<&String> = {
        let mut c: Vec<&String> = res.rows.iter().flat_map(|r| r.within_source.keys()).collect();
        c.sort();
        c.dedup();
        c
    };
    for col in columns {
        doc.h(2, format!("Within one {col} (shortcut audit)"));
        let rows: Vec<Vec<String>> = res
            .rows
            .iter()
            .map(|r| match r.within_source.get(col) {
                None => vec![r.label.clone(), "n/a".into(), "n/a".into(), "n/a".into(), "n/a".into(), "n/a".into()],
                Some(w) => vec![
                    r.label.clone(),
                    ci_cell(w.overall_f1.as_ref()),
                    ci_cell(w.f1.as_ref()),
                    ci_cell(w.overall_auc.as_ref()),
                    ci_cell(w.auc.as_ref()),
                    w.gap().to_string(),
                ],
            })
            .collect();
        doc.table(
            vec![
                "Method".into(),
                "macro-F1 % all".into(),
                format!("macro-F1 % within {col}"),
                "AUC % all".into(),
                format!("AUC % within {col}"),
                "within-source".into(),
            ],
            rows,
        );
        let mixed = res.rows.iter().find_map(|r| r.within_source.get(col)).map(|w| w.mixed.len()).unwrap_or(0);
        doc.p(format!(
            "Pooled out-of-fold predictions; within: the {mixed} {col}(s) holding at least two classes, pooled as in `magsd eval`'s \
             shortcut audit (macro-F1: image-weighted mean of each {col}'s macro-F1; AUC: within-{col} pairs only), 95 % patient \
             bootstrap intervals. \"lower\": the within-{col} interval lies below the overall figure, so part of the row's score \
             comes from recognising the {col} rather than the disease; \"no clear gap\": it does not."
        ));
    }
}
