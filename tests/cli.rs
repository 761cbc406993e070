//! The `magsd` binary end to end: help, data summary, train → eval → predict on the shared demo
//! images, and bad input.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::{magsd, text};

mod common;

fn shared(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared").join(rel)
}

/// A tiny model trained once (1 epoch on the demo images) for the tests that need one.
fn trained_model() -> &'static Path {
    static RUN: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &RUN.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("final");
        let o = magsd(&[
            "train", "--data", shared("data/cxr-demo").to_str().unwrap(), "--preset", "tiny", "--folds", "0",
            "--epochs", "1", "--device", "cpu", "--out", out.to_str().unwrap(), "--quiet",
        ]);
        assert!(o.status.success(), "{}", text(&o));
        (d, out)
    })
    .1
}

#[test]
fn help_lists_every_command_and_each_has_examples() {
    let o = magsd(&["--help"]);
    assert!(o.status.success());
    let help = text(&o);
    for cmd in ["data", "model", "train", "eval", "localize", "predict", "report", "demo", "bench"] {
        assert!(help.contains(cmd), "magsd --help does not list {cmd}");
    }
    for cmd in [
        vec!["data", "inspect"],
        vec!["data", "summary"],
        vec!["data", "split"],
        vec!["data", "check"],
        vec!["data", "synth"],
        vec!["model", "info"],
        vec!["train"],
        vec!["eval"],
        vec!["localize"],
        vec!["predict"],
        vec!["report"],
        vec!["demo"],
        vec!["bench"],
        vec!["ood-eval"],
    ] {
        let mut args = cmd.clone();
        args.push("--help");
        let o = magsd(&args);
        assert!(o.status.success() && text(&o).contains("Examples:"), "{cmd:?} --help has no examples:\n{}", text(&o));
    }
}

#[test]
fn data_summary_counts_the_shared_manifest() {
    let o = magsd(&["data", "summary", "--data", shared("data/cxr/manifest.csv").to_str().unwrap()]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("images: 3506"), "{out}");
    for (class, n) in [("covid19", 379), ("viral", 808), ("bacterial", 829), ("normal", 1083)] {
        let line = out.lines().find(|l| l.split_whitespace().next() == Some(class)).unwrap_or_else(|| panic!("no {class} line"));
        assert_eq!(line.split_whitespace().nth(1), Some(n.to_string().as_str()), "{line}");
    }
    assert!(out.contains("split check passed"), "{out}");
}

#[test]
fn eval_writes_metrics_predictions_figures_and_report() {
    let model = trained_model();
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("eval");
    let o = magsd(&[
        "eval", "--model", model.to_str().unwrap(), "--data", shared("data/cxr-demo").to_str().unwrap(), "--device", "cpu",
        "--out", out.to_str().unwrap(), "--overlays", "4",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(m["overall"]["n"], 32);
    assert_eq!(m["overall"]["per_class"].as_array().unwrap().len(), 4);
    let csv = std::fs::read_to_string(out.join("predictions.csv")).unwrap();
    assert_eq!(csv.lines().count(), 33);
    assert!(csv.lines().next().unwrap().starts_with("path,true_label,prob_bacterial"));
    for f in ["roc.png", "roc.svg", "confusion.png", "report.md", "report.html"] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    assert_eq!(std::fs::read_dir(out.join("overlays")).unwrap().count(), 4);
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("data:image/png;base64,") && html.contains("covid19"));
}

#[test]
fn eval_skips_a_corrupt_image_and_strict_fails() {
    let model = trained_model();
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    for class in ["covid19", "normal"] {
        std::fs::create_dir_all(data.join(class)).unwrap();
        for e in std::fs::read_dir(shared("data/cxr-demo").join(class)).unwrap().take(2) {
            let e = e.unwrap();
            std::fs::copy(e.path(), data.join(class).join(e.file_name())).unwrap();
        }
    }
    std::fs::write(data.join("normal/broken.jpg"), b"\xFF\xD8\xFF\xE0 truncated").unwrap();
    let out = d.path().join("eval");
    let args = |strict: bool| {
        let mut a = vec![
            "eval".to_string(), "--model".into(), model.display().to_string(), "--data".into(), data.display().to_string(),
            "--device".into(), "cpu".into(), "--out".into(), out.display().to_string(), "--overlays".into(), "0".into(),
        ];
        if strict {
            // The first run's metrics.json is in --out: replacing it needs --force.
            a.extend(["--strict".into(), "--force".into()]);
        }
        a
    };
    let o = Command::new(common::BIN).args(args(false)).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("broken.jpg"), "{}", text(&o));
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(m["overall"]["n"], 4);
    assert!(m["unreadable"][0]["path"].as_str().unwrap().ends_with("broken.jpg"));
    let o = Command::new(common::BIN).args(args(true)).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("broken.jpg") && text(&o).contains("strict"), "{}", text(&o));
}

/// A DICOM copy of a demo JPEG.
fn dicom_from(jpg: &Path, out: &Path) {
    common::dicom::Dicom::gray8(&image::open(jpg).unwrap().to_luma8()).write(out);
}

#[test]
fn predict_reads_jpeg_png_and_dicom_and_writes_heatmaps() {
    let model = trained_model();
    let d = tempfile::tempdir().unwrap();
    let jpg = shared("data/cxr-demo/covid19/hida6__1663b242.jpg");
    let png = d.path().join("same.png");
    image::open(&jpg).unwrap().save(&png).unwrap();
    let dcm = d.path().join("same.dcm");
    dicom_from(&jpg, &dcm);
    let heat = d.path().join("heat");
    let files = [jpg.to_str().unwrap(), png.to_str().unwrap(), dcm.to_str().unwrap()];
    let mut args = vec!["predict"];
    args.extend(files);
    args.extend(["--model", model.to_str().unwrap(), "--device", "cpu", "--json", "--heatmap", heat.to_str().unwrap()]);
    let o = magsd(&args);
    assert!(o.status.success(), "{}", text(&o));
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 3);
    let probs = |r: &serde_json::Value| -> Vec<f64> {
        let mut v: Vec<(String, f64)> =
            r["probabilities"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_f64().unwrap())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v.into_iter().map(|x| x.1).collect()
    };
    // The same pixels in three containers give the same probabilities.
    let p0 = probs(&rows[0]);
    assert!((p0.iter().sum::<f64>() - 1.0).abs() < 1e-5);
    for r in &rows[1..] {
        for (a, b) in p0.iter().zip(probs(r)) {
            assert!((a - b).abs() < 1e-5, "{p0:?} vs {r}");
        }
    }
    // same.png and same.dcm share a stem: each gets its own heatmap.
    assert_eq!(std::fs::read_dir(&heat).unwrap().count(), 3);
    let heatmaps: Vec<&str> = rows.iter().map(|r| r["heatmap"].as_str().unwrap()).collect();
    assert!(heatmaps[1] != heatmaps[2] && heatmaps[1].contains("same_"), "{heatmaps:?}");
    // A non-image among the inputs: reported, the others still predicted, exit code 1.
    let o = magsd(&["predict", jpg.to_str().unwrap(), "Cargo.toml", "--model", model.to_str().unwrap(), "--device", "cpu"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("Cargo.toml: not a PNG, JPEG or DICOM"), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("hida6__1663b242.jpg"));
}

#[test]
fn model_info_counts_the_paper_network() {
    let o = magsd(&["model", "info", "--backbone", "resnet50", "--classes", "3"]);
    assert!(o.status.success());
    assert!(text(&o).contains("parameters: 23,796,800"), "{}", text(&o));
    // The bottleneck fixture has the tiny preset's shapes: it imports; into ResNet18 it does not.
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torchvision_bottleneck.pth");
    let o = magsd(&["model", "info", "--weights", fixture.to_str().unwrap(), "--backbone", "tiny", "--maps", "4"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("loaded: ") && text(&o).contains("fc.weight"), "{}", text(&o));
    let o = magsd(&["model", "info", "--weights", fixture.to_str().unwrap(), "--backbone", "resnet18"]);
    assert!(!o.status.success(), "a bottleneck checkpoint must not load into ResNet18");
    assert!(text(&o).contains("shape") && text(&o).contains("torchvision_bottleneck.pth"), "{}", text(&o));
}

#[test]
fn bench_prints_one_json_line_per_measurement() {
    let o = magsd(&[
        "bench", "--device", "cpu", "--backbone", "tiny", "--image-size", "64", "--maps", "4", "--batch-size", "4", "--warmup", "1",
        "--iters", "1", "--trials", "2", "--infer-warmup", "1", "--infer-iters", "2", "--only", "train,infer,eval,predict,loader", "--data",
        shared("data/cxr-demo").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let kinds: Vec<&str> = lines.iter().map(|l| l["bench"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["train_step", "inference", "eval_step", "predict", "loader"]);
    assert!(lines[0]["train_img_s"].as_f64().unwrap() > 0.0 && lines[0]["loss_finite"] == true);
    assert_eq!(lines[4]["images"], 32);
    for (line, key) in [(&lines[0], "train_img_s"), (&lines[1], "infer_img_s"), (&lines[2], "eval_step_img_s")] {
        let (lo, med, hi) = (line[format!("{key}_min")].as_f64().unwrap(), line[key].as_f64().unwrap(), line[format!("{key}_max")].as_f64().unwrap());
        assert!(lo <= med && med <= hi, "{key}: {lo} {med} {hi}");
        assert_eq!(line[format!("{key}_trials")].as_array().unwrap().len(), 2, "{key}");
    }
    let stages = lines[4]["stage_ms_per_image"].as_object().unwrap();
    assert_eq!(stages.len(), 5, "{stages:?}");
    assert!(lines[4]["images_per_s_1_thread"].as_f64().unwrap() > 0.0);
}

/// A run whose estimate is long for its device is warned about once, up front, with the
/// estimate and what to do; fold numbers in the progress lines count from 0, as the `fold-K`
/// folders do; the CUDA graph, which every preset turns on, is not mentioned on the CPU.
#[test]
fn a_long_run_is_warned_about_up_front_with_fold_numbers_from_0() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("run");
    // 10⁹ epochs of 2 steps: over an hour at any step time above 2 ns, so nothing here depends
    // on how fast the machine is; stopped after 6 steps.
    let o = magsd(&[
        "train", "--data", shared("data/cxr-demo").to_str().unwrap(), "--preset", "tiny", "--folds", "2",
        "--epochs", "1000000000", "--device", "cpu", "--max-steps", "6", "--out", out.to_str().unwrap(),
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert_eq!(t.matches("will take about").count(), 1, "one warning:\n{t}");
    assert!(t.contains("warning: fold 0 of 2: at ") && t.contains("--preset tiny") && t.contains("--device cuda"), "{t}");
    assert!(!t.contains("fold 1/2") && !t.contains("cuda_graph"), "{t}");
    assert!(out.join("fold-0").is_dir() && !out.join("fold-1").exists(), "the first fold is fold-0");
}
