//! The shortcut audit end to end on CPU (issue 22), tiny preset, 64-px phantoms of `data synth`:
//! a model that can only read a source marker is caught (within-source figures at chance, a
//! source probe near 100 %, the shortcut signature); without the marker, on lesions it can
//! learn, the gap closes; grouped folds never put a source in two parts; a held-out source
//! leaves what needs an absent class `n/a` (never 0 where undefined).
use std::path::{Path, PathBuf};

use common::{json, magsd, ok, s};
use serde_json::Value;

mod common;

/// `data synth` of bacterial and normal phantoms (64 px) in two sites (bacterial: a lobar
/// consolidation, the easiest lesion to learn in a few epochs).
fn synth(out: &Path, per_class: usize, seed: u64, confounding: &str, extra: &[&str]) -> PathBuf {
    let mut args = vec!["data", "synth", "--classes", "bacterial,normal", "--sources", "2", "--confounding", confounding, "--size", "64"];
    let (per, seed) = (per_class.to_string(), seed.to_string());
    args.extend(["--per-class", &per, "--seed", &seed, "--out", s(out)]);
    args.extend_from_slice(extra);
    ok(magsd(&args));
    out.to_path_buf()
}

/// The tiny preset on CPU at 64 px, no image augmentation.
fn train_args<'a>(data: &'a str, out: &'a str, epochs: &'a str) -> Vec<&'a str> {
    vec![
        "train", "--data", data, "--preset", "tiny", "--set", "model.image_size=64", "--set", "data.augment=\"none\"",
        "--epochs", epochs, "--device", "cpu", "--seed", "0", "--out", out, "--quiet",
    ]
}

/// Trains a final model on a fully confounded set (site = class) and evaluates it on a set where
/// 20 % of each site's images are of the other class; returns eval's metrics.json.
fn confounded_run(dir: &Path, marker: &[&str]) -> Value {
    let train = synth(&dir.join("train"), 24, 1, "1", marker);
    let test = synth(&dir.join("test"), 40, 2, "0.8", marker);
    let run = dir.join("run");
    let mut args = train_args(s(&train), s(&run), "6");
    args.extend(["--folds", "0"]);
    ok(magsd(&args));
    let out = dir.join("eval");
    ok(magsd(&["eval", "--model", s(&run), "--data", s(&test), "--out", s(&out), "--device", "cpu", "--overlays", "0"]));
    json(&out.join("metrics.json"))
}

fn estimate(w: &Value, key: &str) -> f64 {
    w[key]["estimate"].as_f64().unwrap_or_else(|| panic!("{key} is {}", w[key]))
}

#[test]
fn a_marker_reader_is_at_chance_within_sources_and_its_features_give_the_source_away() {
    let d = tempfile::tempdir().unwrap();
    // No lesions: only the site's marker tells the labels apart.
    let m = confounded_run(d.path(), &["--stamp", "--no-lesions"]);
    let w = &m["within_source"]["source_repo"];
    assert_eq!(w["mixed"].as_array().unwrap().len(), 2, "{w}");
    let (within_auc, overall_auc) = (estimate(w, "auc"), estimate(w, "overall_auc"));
    assert!(overall_auc > 0.75, "overall AUC {overall_auc}: the marker should pay off overall");
    assert!((within_auc - 0.5).abs() < 0.2, "within-source AUC {within_auc}: should be near chance");
    assert!(estimate(w, "f1") < estimate(w, "overall_f1") - 0.2, "{w}");
    assert!(w["f1"]["high"].as_f64().unwrap() < estimate(w, "overall_f1"), "the gap must be outside the interval: {w}");
    let p = &m["probe"]["source_repo"];
    assert!(p["source"]["accuracy"].as_f64().unwrap() > 0.95, "source probe {}", p["source"]);
    assert_eq!(p["shortcut_signature"], true, "{p}");
    let report = std::fs::read_to_string(d.path().join("eval/report.md")).unwrap();
    for needle in ["# Shortcut audit", "less well inside one source_repo", "Shortcut signature:", "2 (mixed)"] {
        assert!(report.contains(needle), "report lacks {needle:?}:\n{report}");
    }
}

#[test]
fn without_the_marker_a_model_of_the_lesions_shows_no_gap() {
    let d = tempfile::tempdir().unwrap();
    // The same confounding, but no marker and real lesions (lobar consolidation).
    let m = confounded_run(d.path(), &[]);
    let w = &m["within_source"]["source_repo"];
    let (within_auc, overall_auc) = (estimate(w, "auc"), estimate(w, "overall_auc"));
    assert!(within_auc > 0.75, "within-source AUC {within_auc}: the lesions are learnable within a site");
    assert!((within_auc - overall_auc).abs() < 0.15, "within {within_auc} vs overall {overall_auc}");
    assert!(w["f1"]["high"].as_f64().unwrap() >= estimate(w, "overall_f1"), "no gap expected: {w}");
    let p = &m["probe"]["source_repo"];
    assert_eq!(p["shortcut_signature"], false, "{p}");
    let report = std::fs::read_to_string(d.path().join("eval/report.md")).unwrap();
    assert!(report.contains("no clear gap") && report.contains("No shortcut signature"), "{report}");
}

#[test]
fn grouped_folds_never_put_a_source_in_two_parts() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    ok(magsd(&["data", "synth", "--sources", "3", "--per-class", "3", "--size", "48", "--seed", "4", "--out", s(&data)]));
    let run = d.path().join("run");
    let mut args = train_args(s(&data), s(&run), "1");
    args.extend(["--group-by", "source_repo", "--folds", "3", "--set", "batch_size=2"]);
    let text = ok(magsd(&args));
    assert!(text.contains("grouped by source_repo"), "{text}");
    let split = json(&run.join("split.json"));
    assert_eq!(split["grouping"], serde_json::json!({"kind": "column", "column": "source_repo"}));
    let source_of: std::collections::HashMap<String, String> = csv::Reader::from_path(data.join("manifest.csv"))
        .unwrap()
        .deserialize::<std::collections::HashMap<String, String>>()
        .map(|r| {
            let r = r.unwrap();
            (r["path"].clone(), r["source_repo"].clone())
        })
        .collect();
    let folds: Vec<std::collections::BTreeSet<&str>> = split["folds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_array().unwrap().iter().map(|n| source_of[n.as_str().unwrap()].as_str()).collect())
        .collect();
    assert_eq!(folds.len(), 3);
    for (a, fa) in folds.iter().enumerate() {
        assert_eq!(fa.len(), 1, "fold {a} holds sources {fa:?}");
        for fb in &folds[a + 1..] {
            assert!(fa.is_disjoint(fb), "{folds:?}");
        }
    }
    let summary = std::fs::read_to_string(run.join("cv-summary.md")).unwrap();
    assert!(summary.contains("grouped by source_repo"), "{summary}");
    // The run's report carries the pooled within-source audit.
    let report = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(report.contains("Shortcut audit (pooled out-of-fold)"), "{report}");
}

#[test]
fn a_held_out_source_leaves_absent_classes_na_never_zero() {
    let d = tempfile::tempdir().unwrap();
    // Site 0 holds covid19 and viral, site 1 only normal (confounding 1: class j in site j mod 2).
    let data = d.path().join("data");
    ok(magsd(&[
        "data", "synth", "--classes", "covid19,normal,viral", "--sources", "2", "--confounding", "1", "--per-class", "4", "--size",
        "48", "--seed", "5", "--out", s(&data),
    ]));
    let run = d.path().join("run");
    let mut args = train_args(s(&data), s(&run), "1");
    args.extend(["--test-source", "phantom-site-1", "--set", "batch_size=2"]);
    let text = ok(magsd(&args));
    assert!(text.contains("held-out source_repo 'phantom-site-1'"), "{text}");
    let fold = json(&run.join("fold-0/fold.json"));
    assert_eq!(fold["absent_from_training"], serde_json::json!(["normal"]));
    assert_eq!(fold["absent_from_test"], serde_json::json!(["covid19", "viral"]));
    assert_eq!(fold["test_images"], 4);
    let m = &fold["metrics"];
    // Only normal is tested and the model never saw it: nothing is left for a macro mean, and a
    // one-class test part has no specificity or AUC. None of it may read 0.
    for key in ["sensitivity", "specificity", "f1", "auc"] {
        assert!(m[key].is_null(), "{key} = {}", m[key]);
    }
    // The untested classes have no sensitivity or AUC; their F1 is scikit-learn's 2TP/(2TP+FP+FN):
    // 0 when the model predicted them (every such prediction wrong), n/a when it did not.
    for (k, c) in m["per_class"].as_array().unwrap().iter().enumerate() {
        if c["class"] != "normal" {
            assert!(c["sensitivity"].is_null() && c["auc"].is_null(), "{c}");
            let predicted: u64 = m["confusion"].as_array().unwrap().iter().map(|row| row[k].as_u64().unwrap()).sum();
            if predicted == 0 {
                assert!(c["f1"].is_null() && c["precision"].is_null(), "{c}");
            } else {
                assert_eq!((c["f1"].as_f64(), c["precision"].as_f64()), (Some(0.0), Some(0.0)), "{c}");
            }
        }
    }
    let summary = std::fs::read_to_string(run.join("cv-summary.md")).unwrap();
    assert!(summary.contains("| 0 | 4 |") && summary.contains("n/a"), "{summary}");
    assert!(summary.contains("training part has no image of normal") && summary.contains("test part has no image of covid19, viral"), "{summary}");
    let report = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(report.contains("training part has no image of normal"), "{report}");
    // Asking for a source that is not there names the ones that are.
    let e = magsd(&train_args(s(&data), s(&d.path().join("run2")), "1").into_iter().chain(["--test-source", "nowhere"]).collect::<Vec<_>>());
    let t = format!("{}", String::from_utf8_lossy(&e.stderr));
    assert!(!e.status.success() && t.contains("nowhere") && t.contains("phantom-site-0, phantom-site-1"), "{t}");
    assert!(!d.path().join("run2").exists(), "a refused start leaves no run folder");
}
