//! The run folder read back by the commands that use it: `eval` takes the label column the
//! model was trained on, a stopped run's model file says it is unfinished (and `--max-steps`
//! exits 0), `predictions.csv` holds the probabilities `metrics.json` was computed from, and a
//! `magsd reproduce` row's fold model knows its training images (the grid's split).
use std::path::{Path, PathBuf};
use std::process::Output;

use magsd::data::dataset::{Dataset, DatasetOptions};
use magsd::data::split::Grouping;
use common::{magsd, text};
use magsd::runfolder::{RunSpec, SPLIT_FILE, fold_dir, read_predictions};

mod common;

/// The 32 demo images copied under `dir` with a manifest of two label columns: `label` (4
/// classes) and `label3` (viral and bacterial as `pneumonia`).
fn two_column_manifest(dir: &Path) -> PathBuf {
    let demo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/cxr-demo");
    let mut rows = vec!["path,label,label3,patient_id".to_string()];
    for class in ["bacterial", "covid19", "normal", "viral"] {
        let label3 = if class == "viral" || class == "bacterial" { "pneumonia" } else { class };
        std::fs::create_dir_all(dir.join(class)).unwrap();
        let mut files: Vec<_> = std::fs::read_dir(demo.join(class)).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        for (i, f) in files.iter().enumerate() {
            let name = format!("{class}/{}", f.file_name().unwrap().to_string_lossy());
            std::fs::copy(f, dir.join(&name)).unwrap();
            rows.push(format!("{name},{class},{label3},{class}-{i}"));
        }
    }
    let manifest = dir.join("manifest.csv");
    std::fs::write(&manifest, rows.join("\n") + "\n").unwrap();
    manifest
}

fn train_tiny(manifest: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "train", "--data", manifest.to_str().unwrap(), "--preset", "tiny", "--device", "cpu", "--quiet",
        "--out", out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    magsd(&args)
}

#[test]
fn eval_uses_the_runs_label_column_and_predictions_csv_reproduces_metrics_json() {
    let d = tempfile::tempdir().unwrap();
    let manifest = two_column_manifest(&d.path().join("data"));
    let run = d.path().join("run3");
    let o = train_tiny(&manifest, &run, &["--label-column", "label3", "--folds", "0", "--epochs", "1"]);
    assert!(o.status.success(), "{}", text(&o));
    // No --label-column: the run's `label3`, so every image counts (with `label`, the 16 viral
    // and bacterial images were left out as "not a class of this model").
    let ev = d.path().join("ev");
    let o = magsd(&["eval", "--model", run.to_str().unwrap(), "--data", manifest.to_str().unwrap(), "--device", "cpu", "--out", ev.to_str().unwrap(), "--overlays", "0"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("labels from column 'label3'"), "{}", text(&o));
    let metrics: serde_json::Value = serde_json::from_slice(&std::fs::read(ev.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["overall"]["n"], 32, "{}", text(&o));
    // `magsd report` on the evaluation folder says what the folder is.
    let o = magsd(&["report", ev.to_str().unwrap()]);
    assert!(!o.status.success() && text(&o).contains("is an evaluation folder"), "{}", text(&o));
    // A column the data lacks names both columns.
    let bad = d.path().join("data/no-label3.csv");
    std::fs::write(&bad, std::fs::read_to_string(&manifest).unwrap().replacen("label3", "other", 1)).unwrap();
    let o = magsd(&["eval", "--model", run.to_str().unwrap(), "--data", bad.to_str().unwrap(), "--device", "cpu", "--out", d.path().join("ev2").to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(text(&o).contains("label3") && text(&o).contains("--label-column"), "{}", text(&o));

    // predictions.csv at full precision: the AUC computed from the file is metrics.json's.
    let classes: Vec<String> = ["covid19", "normal", "pneumonia"].map(String::from).to_vec();
    let rows = read_predictions(&ev.join("predictions.csv"), &classes).unwrap();
    let labels: Vec<usize> = rows.iter().map(|r| r.1).collect();
    let probs: Vec<Vec<f64>> = rows.iter().map(|r| r.2.clone()).collect();
    let from_file = magsd::eval::metrics::compute(&labels, &probs, &classes);
    assert_eq!(from_file.auc, metrics["overall"]["auc"].as_f64(), "AUC from predictions.csv");
    let csv = std::fs::read_to_string(ev.join("predictions.csv")).unwrap();
    let long = csv.lines().skip(1).flat_map(|l| l.split(',')).filter(|c| c.split_once('.').is_some_and(|(_, frac)| frac.len() > 8)).count();
    assert!(long > 0, "probabilities are rounded:\n{csv}");

    // predict --out names its columns as predictions.csv does.
    let image = manifest.parent().unwrap().join(&rows[0].0);
    let out = d.path().join("predict.csv");
    let o = magsd(&["predict", image.to_str().unwrap(), "--model", run.to_str().unwrap(), "--device", "cpu", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let header = |p: &Path| std::fs::read_to_string(p).unwrap().lines().next().unwrap().split(',').map(String::from).collect::<Vec<_>>();
    let (predict, eval) = (header(&out), header(&ev.join("predictions.csv")));
    for c in ["path", "predicted_label", "prob_covid19"] {
        assert!(predict.contains(&c.to_string()) && eval.contains(&c.to_string()), "{c}: {predict:?} vs {eval:?}");
    }
}

#[test]
fn a_run_stopped_by_max_steps_exits_0_and_its_model_says_it_is_unfinished() {
    let d = tempfile::tempdir().unwrap();
    let manifest = two_column_manifest(&d.path().join("data"));
    let run = d.path().join("run");
    // 32 images in batches of 8: 4 steps an epoch; the 5th step is inside epoch 2 of 2.
    let o = train_tiny(&manifest, &run, &["--folds", "0", "--epochs", "2", "--max-steps", "5"]);
    assert_eq!(o.status.code(), Some(0), "a deliberate stop is a success:\n{}", text(&o));
    let model = run.join("model.safetensors");
    let (_, meta) = magsd::model::weights::load_tensors(&model).unwrap();
    assert_eq!(meta.get(magsd::model::weights::UNFINISHED_KEY).map(String::as_str), Some("saved after epoch 1 of 2"));
    let image = d.path().join("data/normal").read_dir().unwrap().next().unwrap().unwrap().path();
    let o = magsd(&["predict", image.to_str().unwrap(), "--model", run.to_str().unwrap(), "--device", "cpu"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("training did not finish (saved after epoch 1 of 2)"), "{}", text(&o));
    let o = magsd(&["report", run.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let report = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(!report.contains("Final model") && report.contains("Unfinished model"), "{report}");
    // Finishing the run removes the mark.
    let o = magsd(&["train", "--resume", run.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", text(&o));
    let (_, meta) = magsd::model::weights::load_tensors(&model).unwrap();
    assert!(!meta.contains_key(magsd::model::weights::UNFINISHED_KEY), "{meta:?}");
    let report = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(report.contains("Final model"), "{report}");
}

/// A `magsd reproduce` grid keeps one split for all rows (`DIR/split.json`), not one per row:
/// a row's fold model still knows which images trained it.
#[test]
fn a_reproduce_rows_fold_model_knows_its_training_images() {
    let d = tempfile::tempdir().unwrap();
    let manifest = two_column_manifest(&d.path().join("data"));
    let ds = Dataset::open(&manifest, &DatasetOptions::default()).unwrap();
    let grid = d.path().join("grid");
    let row = grid.join("t3-magsd");
    std::fs::create_dir_all(fold_dir(&row, 1)).unwrap();
    let folds = magsd::train::cv::load_or_make_split(&ds, &grid.join(SPLIT_FILE), 2, 7, &Grouping::Patient).unwrap();
    RunSpec {
        format_version: magsd::runfolder::FORMAT_VERSION,
        data: manifest.clone(),
        label_column: "label".into(),
        classes: ds.classes.clone(),
        folds: 2,
        command: "magsd reproduce (row t3-magsd)".into(),
        grouping: Grouping::Patient,
        allow_outside_root: false,
    }
    .save(&row)
    .unwrap();
    let model = fold_dir(&row, 1).join("model.safetensors");
    std::fs::write(&model, b"not read").unwrap();
    let (run, files) = magsd::runfolder::training_files(&model).expect("the row's run folder and the grid's split");
    assert_eq!(run, row);
    // Fold 1's model trained on fold 0's images.
    assert_eq!(files.len(), folds.folds[0].len());
    let fold0: Vec<PathBuf> = folds.folds[0].iter().map(|&i| ds.samples[i].path.canonicalize().unwrap()).collect();
    assert!(fold0.iter().all(|p| files.contains(p)));
}

/// The training report shows each held-out fold's metrics per source (the `by` sections of
/// `fold-K/metrics.json`), as `eval`'s report does.
#[test]
fn the_training_report_has_a_per_source_table() {
    let d = tempfile::tempdir().unwrap();
    let manifest = two_column_manifest(&d.path().join("data"));
    let run = d.path().join("cv");
    // `label3` stands in for a source column: any metadata column can be a breakdown.
    let o = train_tiny(&manifest, &run, &["--folds", "2", "--epochs", "1", "--by", "label3"]);
    assert!(o.status.success(), "{}", text(&o));
    let metrics: serde_json::Value = serde_json::from_slice(&std::fs::read(fold_dir(&run, 0).join("metrics.json")).unwrap()).unwrap();
    assert!(metrics["by"]["label3"].is_object(), "{metrics}");
    let report = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(report.contains("By label3 (held-out folds)"), "{report}");
    for row in ["fold 0: pneumonia", "fold 1: covid19"] {
        assert!(report.contains(row), "no row '{row}' in:\n{report}");
    }
}
