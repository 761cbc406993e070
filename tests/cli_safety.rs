//! The `magsd` binary against careless and hostile use: no silent overwrite, settings checked
//! before anything is written, resume options, a second Ctrl-C, bounded configs, and `predict`
//! on folders with its warnings. Runs on a few 64-px phantoms and a tiny model.
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{fails_with, magsd, s, text, tiny_phantom_model};






#[test]
fn second_ctrl_c_exits_130_without_crashing() {
    let (_, data, _) = tiny_phantom_model();
    for attempt in 0..3 {
        let d = tempfile::tempdir().unwrap();
        let mut child = Command::new(common::BIN)
            .args([
                "train", "--data", s(data), "--preset", "tiny", "--folds", "0", "--epochs", "100", "--image-size", "128",
                "--batch-size", "4", "--device", "cpu", "--out", s(&d.path().join("run")),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The header line is printed just before the Ctrl-C handler is installed and training starts.
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        while err.read_line(&mut line).unwrap() > 0 && !line.contains("magsd train:") {
            line.clear();
        }
        assert!(line.contains("magsd train:"), "attempt {attempt}: training did not start");
        std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
        std::thread::sleep(Duration::from_millis(1500));
        let pid = child.id() as i32;
        // SAFETY: plain syscalls on our own child's pid.
        unsafe {
            libc::kill(pid, libc::SIGINT);
            std::thread::sleep(Duration::from_millis(30));
            libc::kill(pid, libc::SIGINT);
        }
        let t0 = Instant::now();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(130), "attempt {attempt}: {status:?}");
        assert!(t0.elapsed() < Duration::from_secs(30));
    }
}

#[test]
fn nothing_is_overwritten_without_force() {
    let (d, data, run) = tiny_phantom_model();
    let tmp = tempfile::tempdir().unwrap();
    // data synth into a folder that holds a manifest.
    let o = magsd(&["data", "synth", "--out", s(data), "--per-class", "3", "--size", "64"]);
    fails_with(&o, &["manifest.csv", "--force"]);
    // data split onto an existing file.
    let split = tmp.path().join("split.json");
    std::fs::write(&split, "keep me").unwrap();
    let o = magsd(&["data", "split", "--data", s(data), "--folds", "2", "--out", s(&split)]);
    fails_with(&o, &["split.json", "--force"]);
    assert_eq!(std::fs::read_to_string(&split).unwrap(), "keep me");
    let o = magsd(&["data", "split", "--data", s(data), "--folds", "2", "--out", s(&split), "--force"]);
    assert!(o.status.success(), "{}", text(&o));
    // eval into a training run's folder, or onto an earlier evaluation.
    let o = magsd(&["eval", "--model", s(run), "--data", s(data), "--device", "cpu", "--out", s(run), "--overlays", "0"]);
    fails_with(&o, &["training run folder"]);
    let ev = tmp.path().join("ev");
    std::fs::create_dir_all(&ev).unwrap();
    std::fs::write(ev.join("metrics.json"), "{}").unwrap();
    let o = magsd(&["eval", "--model", s(run), "--data", s(data), "--device", "cpu", "--out", s(&ev), "--overlays", "0"]);
    fails_with(&o, &["metrics.json", "--force"]);
    assert_eq!(std::fs::read_to_string(ev.join("metrics.json")).unwrap(), "{}");
    // train into a folder of unrelated files.
    let junk = tmp.path().join("junk");
    std::fs::create_dir_all(&junk).unwrap();
    std::fs::write(junk.join("notes.txt"), "mine").unwrap();
    let o = magsd(&["train", "--data", s(data), "--preset", "tiny", "--folds", "0", "--out", s(&junk), "--device", "cpu"]);
    fails_with(&o, &["not empty"]);
    assert_eq!(std::fs::read_dir(&junk).unwrap().count(), 1);
    // predict --out onto an existing file.
    let csv = tmp.path().join("p.csv");
    std::fs::write(&csv, "keep").unwrap();
    let o = magsd(&["predict", s(data), "--model", s(run), "--device", "cpu", "--out", s(&csv)]);
    fails_with(&o, &["p.csv", "--force"]);
    assert_eq!(std::fs::read_to_string(&csv).unwrap(), "keep");
    let _ = d;
}

#[test]
fn a_failed_start_leaves_no_run_folder_and_resume_refuses_unsafe_changes() {
    let (_, data, _) = tiny_phantom_model();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    // 12 images cannot fill a batch of 64: refused before the run folder exists ...
    let o = magsd(&["train", "--data", s(data), "--preset", "tiny", "--folds", "0", "--batch-size", "64", "--out", s(&out), "--device", "cpu"]);
    fails_with(&o, &["batch"]);
    assert!(!out.exists(), "a failed start wrote {}", out.display());
    // ... as is an impossible split.
    let o = magsd(&["train", "--data", s(data), "--preset", "tiny", "--folds", "50", "--out", s(&out), "--device", "cpu"]);
    fails_with(&o, &["50 folds"]);
    assert!(!out.exists());
    // So the corrected command just works, and --resume takes only safe changes.
    let o = magsd(&["train", "--data", s(data), "--preset", "tiny", "--folds", "0", "--epochs", "1", "--out", s(&out), "--device", "cpu", "--quiet"]);
    assert!(o.status.success(), "{}", text(&o));
    for (flag, value) in [("--lr", "0.1"), ("--batch-size", "4"), ("--seed", "3"), ("--backbone", "resnet18"), ("--folds", "3")] {
        let o = magsd(&["train", "--resume", s(&out), flag, value]);
        fails_with(&o, &[flag, "--resume"]);
    }
    let o = magsd(&["train", "--resume", s(&out), "--epochs", "2", "--device", "cpu", "--quiet"]);
    assert!(o.status.success(), "{}", text(&o));
    let cfg = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(cfg.contains("epochs = 2"), "{cfg}");
    let log = std::fs::read_to_string(out.join("train.jsonl")).unwrap();
    let epochs: Vec<u64> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["type"] == "epoch")
        .map(|r| r["epoch"].as_u64().unwrap())
        .collect();
    assert_eq!(epochs, [0, 1], "the resumed run did not add exactly one epoch:\n{log}");
    let o = magsd(&["train", "--resume", s(&out), "--epochs", "1"]);
    fails_with(&o, &["--epochs 1", "only add epochs"]);
}

#[test]
fn bad_settings_are_errors_that_name_them() {
    let (_, data, run) = tiny_phantom_model();
    let tmp = tempfile::tempdir().unwrap();
    let o = magsd(&["model", "info", "--classes", "1000000"]);
    fails_with(&o, &["num_classes", "1000000"]);
    let o = magsd(&["data", "synth", "--out", s(&tmp.path().join("big")), "--size", "100000"]);
    fails_with(&o, &["--size 100000"]);
    let o = magsd(&["data", "summary", "--data", s(data), "--folds", "50"]);
    fails_with(&o, &["--folds 50", "patient"]);
    let o = magsd(&["data", "summary", "--data", s(data), "--classes", "normal,normal"]);
    fails_with(&o, &["--classes", "normal", "twice"]);
    let out = tmp.path().join("r");
    for (flag, value, key) in [("--lr", "nan", "optim.lr"), ("--lr=-1", "", "optim.lr")] {
        let mut args = vec!["train", "--data", s(data), "--preset", "tiny", flag, "--out", s(&out)];
        if !value.is_empty() {
            args.insert(6, value);
        }
        let o = magsd(&args);
        fails_with(&o, &[key]);
    }
    let o = magsd(&["train", "--data", s(data), "--preset", "tiny", "--set", "method.loss.smoothing=1.5", "--out", s(&out)]);
    fails_with(&o, &["method.loss.smoothing"]);
    assert!(!out.exists());

    // data check: a split that misses an image, or has another k than asked for.
    let split = tmp.path().join("split.json");
    let o = magsd(&["data", "split", "--data", s(data), "--folds", "2", "--out", s(&split)]);
    assert!(o.status.success(), "{}", text(&o));
    let o = magsd(&["data", "check", "--data", s(data), "--split", s(&split), "--folds", "3"]);
    fails_with(&o, &["2 folds", "--folds"]);
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&split).unwrap()).unwrap();
    v["folds"][0].as_array_mut().unwrap().remove(0);
    std::fs::write(&split, serde_json::to_vec(&v).unwrap()).unwrap();
    let o = magsd(&["data", "check", "--data", s(data), "--split", s(&split)]);
    fails_with(&o, &["in no fold"]);

    // A model file claiming a 100000-px input is refused before anything is allocated.
    let model = run.join("model.safetensors");
    let (tensors, mut meta) = magsd::model::weights::load_tensors(&model).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&meta[magsd::model::weights::CONFIG_KEY]).unwrap();
    cfg["image_size"] = serde_json::json!(100_000);
    meta.insert(magsd::model::weights::CONFIG_KEY.into(), cfg.to_string());
    let huge = tmp.path().join("huge.safetensors");
    magsd::model::weights::save_tensors(&huge, &tensors, meta).unwrap();
    let img = data.join("images/normal/normal_0000.png");
    let o = magsd(&["predict", s(&img), "--model", s(&huge), "--device", "cpu"]);
    fails_with(&o, &["image_size 100000"]);
    // A PyTorch file given as a model: told what it is.
    let pth = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torchvision_bottleneck.pth");
    let o = magsd(&["predict", s(&img), "--model", s(&pth), "--device", "cpu"]);
    fails_with(&o, &["PyTorch file", "--pretrained"]);
}

#[test]
fn predict_reads_folders_writes_csv_unique_heatmaps_and_warns_on_unlike_inputs() {
    let (_, data, run) = tiny_phantom_model();
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("p.csv");
    let heat = tmp.path().join("heat");
    // The phantoms' folder holds 12 images and their 12 lesion masks (same file names).
    let o = magsd(&["predict", s(data), "--model", s(run), "--device", "cpu", "--out", s(&csv), "--heatmap", s(&heat)]);
    assert!(o.status.success(), "{}", text(&o));
    let rows: Vec<HashMap<String, String>> =
        csv::Reader::from_path(&csv).unwrap().deserialize().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), 24);
    assert_eq!(std::fs::read_dir(&heat).unwrap().count(), 24, "heatmaps of same-named inputs overwrote each other");
    assert!(text(&o).contains(&format!("heatmaps: 24 written to {}", heat.display())), "{}", text(&o));
    for r in &rows {
        let sum: f64 = r.iter().filter(|(k, _)| k.starts_with("prob_")).map(|(_, v)| v.parse::<f64>().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-4, "{r:?}");
        // Training images pass the pixel screen and the detector; the black-and-white masks do not.
        let is_mask = r["path"].contains("/masks/");
        assert_eq!(r["unusual"] == "true", is_mask, "{r:?}");
        assert_eq!(r["unusual_reasons"].contains("pixels are unlike the training X-rays"), is_mask, "{r:?}");
    }
    assert!(text(&o).contains("12 of 24 images look unlike"), "{}", text(&o));
}

#[test]
fn localize_has_its_own_help_and_options_are_explained() {
    let eval = text(&magsd(&["eval", "--help"]));
    let localize = text(&magsd(&["localize", "--help"]));
    assert_ne!(eval, localize);
    assert!(localize.contains("magsd localize --model"), "{localize}");
    // `--help` puts each option's text on the lines below it.
    let explained = |cmd: &[&str], flag: &str| {
        let mut args = cmd.to_vec();
        args.push("--help");
        let help = text(&magsd(&args));
        let lines: Vec<&str> = help.lines().collect();
        let i = lines.iter().position(|l| l.trim_start().starts_with(flag)).unwrap_or_else(|| panic!("{flag} missing"));
        let same_line = lines[i].trim().split_once("  ").map_or("", |(_, rest)| rest.trim());
        let next_line = lines.get(i + 1).map(|l| l.trim()).filter(|l| !l.starts_with('-')).unwrap_or("");
        assert!(same_line.len() + next_line.len() > 10, "{cmd:?} {flag} has no help:\n{}", lines[i..(i + 2).min(lines.len())].join("\n"));
    };
    for flag in ["--epochs", "--batch-size", "--lr", "--seed", "--deterministic", "--label-column"] {
        explained(&["train"], flag);
    }
    explained(&["bench"], "--bf16");
    assert!(text(&magsd(&["report", "--help"])).contains("training run folder"));
}
