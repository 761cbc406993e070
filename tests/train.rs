//! Training end to end on CPU with the tiny preset: learning, determinism, resume, and a
//! cross-validation run on the shared demo images.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use magsd::data::dataset::{Dataset, DatasetOptions};
use magsd::data::split::{SplitFile, check_split};
use magsd::model::weights::load_tensors;
use magsd::train::config::TrainConfig;
use magsd::train::cv::{self, RunOptions, RunResult};
use magsd::data::loader::Loader;
use magsd::model::config::Arch;
use magsd::model::weights::load_model;
use magsd::train::checkpoint;
use magsd::train::trainer::{LAST_CHECKPOINT, LOG_FILE, MODEL_FILE, TrainJob, train};
use tch::Device;

/// Two classes told apart by where a bright blob sits (upper left vs lower right), with noise.
fn blobs(dir: &Path, per_class: usize) {
    let mut rng = magsd::rng::Rng::new(11);
    for (class, (cx, cy)) in [("left", (20.0, 20.0)), ("right", (44.0, 44.0))] {
        std::fs::create_dir_all(dir.join(class)).unwrap();
        for i in 0..per_class {
            let (jx, jy) = (rng.range(-6.0, 6.0), rng.range(-6.0, 6.0));
            let img = image::GrayImage::from_fn(64, 64, |x, y| {
                let d2 = (x as f64 - cx - jx).powi(2) + (y as f64 - cy - jy).powi(2);
                let v = 60.0 + 150.0 * (-d2 / 60.0).exp() + (((x * 7 + y * 13 + i as u32 * 31) % 17) as f64) * 2.0;
                image::Luma([v.min(255.0) as u8])
            });
            img.save(dir.join(class).join(format!("{i}.png"))).unwrap();
        }
    }
}

fn tiny(overrides: &[&str]) -> TrainConfig {
    let mut all = vec!["model.image_size=64", "device=\"cpu\"", "performance.log_every=1"];
    all.extend_from_slice(overrides);
    let all: Vec<String> = all.into_iter().map(String::from).collect();
    TrainConfig::resolve(Some("tiny"), None, &all).unwrap()
}

fn opts(out: &Path) -> RunOptions {
    RunOptions { out: out.to_path_buf(), device: Device::Cpu, resume: false, stop_after_steps: None, verbose: false, by: vec![], grouping: Default::default() }
}

/// (epoch, step, loss) of every step record in a log.
fn step_losses(log: &Path) -> Vec<(u64, u64, f64)> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["type"] == "step")
        .map(|v| (v["epoch"].as_u64().unwrap(), v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect()
}

fn epoch_records(log: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["type"] == "epoch")
        .collect()
}

fn open(dir: &Path) -> Arc<Dataset> {
    Arc::new(Dataset::open(dir, &DatasetOptions::default()).unwrap())
}

#[test]
fn loss_falls_on_a_learnable_problem() {
    let d = tempfile::tempdir().unwrap();
    blobs(&d.path().join("data"), 24);
    let cfg = tiny(&["epochs=6", "data.augment=\"none\""]);
    let out = d.path().join("run");
    cv::run(&cfg, open(&d.path().join("data")), 0, &opts(&out)).unwrap();
    let epochs = epoch_records(&out.join(LOG_FILE));
    assert_eq!(epochs.len(), 6);
    let first = epochs[0]["train_loss"].as_f64().unwrap();
    let last = epochs[5]["train_loss"].as_f64().unwrap();
    let acc = epochs[5]["train_accuracy"].as_f64().unwrap();
    assert!(last < 0.6 * first, "loss did not fall: {first} → {last}");
    assert!(acc > 0.8, "final training accuracy {acc}");
}

#[test]
fn the_same_seed_gives_the_same_loss_curve_and_another_seed_does_not() {
    let d = tempfile::tempdir().unwrap();
    blobs(&d.path().join("data"), 8);
    let ds = open(&d.path().join("data"));
    let run = |name: &str, seed: &str| {
        let out = d.path().join(name);
        cv::run(&tiny(&["epochs=2", seed]), ds.clone(), 0, &opts(&out)).unwrap();
        step_losses(&out.join(LOG_FILE))
    };
    let a = run("a", "seed=3");
    let b = run("b", "seed=3");
    let c = run("c", "seed=4");
    assert_eq!(a.len(), 4);
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn an_interrupted_run_resumes_bit_for_bit() {
    let d = tempfile::tempdir().unwrap();
    blobs(&d.path().join("data"), 8);
    let ds = open(&d.path().join("data"));
    let cfg = tiny(&["epochs=3"]); // 2 steps per epoch: 6 steps
    let full = d.path().join("full");
    cv::run(&cfg, ds.clone(), 0, &opts(&full)).unwrap();

    // Stop after step 3 (mid-epoch 2), then resume from the checkpoint.
    let part = d.path().join("part");
    let stopped = cv::run(&cfg, ds.clone(), 0, &RunOptions { stop_after_steps: Some(3), ..opts(&part) }).unwrap();
    assert!(matches!(stopped, RunResult::Stopped));
    assert!(part.join(LAST_CHECKPOINT).exists());
    assert_eq!(step_losses(&part.join(LOG_FILE)).len(), 3);
    cv::run(&cfg, ds.clone(), 0, &RunOptions { resume: true, ..opts(&part) }).unwrap();

    assert_eq!(step_losses(&full.join(LOG_FILE)), step_losses(&part.join(LOG_FILE)));
    let (a, _) = load_tensors(&full.join(MODEL_FILE)).unwrap();
    let (b, _) = load_tensors(&part.join(MODEL_FILE)).unwrap();
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert!(ta.equal(tb), "{na} differs after resume");
    }
}

/// A stop on the last step of an epoch: the resumed epoch has no step left, and its record
/// still carries the loss and accuracy of all of its steps (it logged 0.0000 / 0.000 before).
#[test]
fn an_epoch_stopped_on_its_last_step_logs_its_real_loss_after_resume() {
    let d = tempfile::tempdir().unwrap();
    blobs(&d.path().join("data"), 8);
    let ds = open(&d.path().join("data"));
    let cfg = tiny(&["epochs=1"]); // 2 steps
    let full = d.path().join("full");
    cv::run(&cfg, ds.clone(), 0, &opts(&full)).unwrap();
    let part = d.path().join("part");
    let stopped = cv::run(&cfg, ds.clone(), 0, &RunOptions { stop_after_steps: Some(2), ..opts(&part) }).unwrap();
    assert!(matches!(stopped, RunResult::Stopped));
    cv::run(&cfg, ds, 0, &RunOptions { resume: true, ..opts(&part) }).unwrap();
    let (a, b) = (epoch_records(&full.join(LOG_FILE)), epoch_records(&part.join(LOG_FILE)));
    assert_eq!((a.len(), b.len()), (1, 1));
    assert!(a[0]["train_loss"].as_f64().unwrap() > 0.0);
    for key in ["train_loss", "train_ce", "train_accuracy", "images"] {
        assert_eq!(a[0][key], b[0][key], "{key}");
    }
}

#[test]
fn resume_refuses_a_checkpoint_of_another_architecture() {
    let d = tempfile::tempdir().unwrap();
    blobs(&d.path().join("data"), 8);
    let ds = open(&d.path().join("data"));
    let out = d.path().join("run");
    cv::run(&tiny(&["epochs=2"]), ds.clone(), 0, &RunOptions { stop_after_steps: Some(1), ..opts(&out) }).unwrap();
    let e = cv::run(&tiny(&["epochs=2", "model.maps=4"]), ds, 0, &RunOptions { resume: true, ..opts(&out) })
        .err()
        .expect("must refuse")
        .to_string();
    assert!(e.contains("refusing to resume"), "{e}");
}

fn shared_demo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/cxr-demo")
}

#[test]
fn tiny_cross_validation_on_the_demo_images_completes() {
    let d = tempfile::tempdir().unwrap();
    let ds = open(&shared_demo());
    assert_eq!(ds.samples.len(), 32);
    let out = d.path().join("cv");
    let cfg = tiny(&["epochs=1", "validation.fraction=0.25"]);
    let RunResult::CrossValidation(s) = cv::run(&cfg, ds.clone(), 4, &opts(&out)).unwrap() else {
        panic!("expected a cross-validation result")
    };
    assert_eq!(s.folds.len(), 4);
    assert_eq!(s.folds.iter().map(|f| f.test_images).sum::<usize>(), 32);
    for f in &s.folds {
        assert_eq!(f.train_images + f.val_images + f.test_images, 32);
        assert!(f.val_images > 0);
        assert!(out.join(format!("fold-{}/metrics.json", f.fold)).exists());
        assert!(out.join(format!("fold-{}/checkpoint-best.safetensors", f.fold)).exists());
        let csv = std::fs::read_to_string(out.join(format!("fold-{}/predictions.csv", f.fold))).unwrap();
        assert_eq!(csv.lines().count(), 1 + f.test_images);
    }
    assert!(s.mean_std.contains_key("accuracy") && s.mean_std.contains_key("auc"));
    assert!(out.join("cv-summary.md").exists());
    // The saved split is patient-disjoint and covers every image exactly once.
    let split_path = out.join("split.json");
    let split = SplitFile::load(&split_path).unwrap().resolve(&ds, &split_path).unwrap();
    check_split(&ds, &split.folds).unwrap();
    let mut all: Vec<usize> = split.folds.concat();
    all.sort();
    assert_eq!(all, (0..32).collect::<Vec<_>>());
}

#[test]
fn a_baseline_trains_through_the_same_trainer() {
    let d = tempfile::tempdir().unwrap();
    blobs(&d.path().join("data"), 8);
    let out = d.path().join("run");
    cv::run(&tiny(&["epochs=1", "model.arch=\"resnet18\""]), open(&d.path().join("data")), 0, &opts(&out)).unwrap();
    let epochs = epoch_records(&out.join(LOG_FILE));
    assert_eq!(epochs.len(), 1);
    assert!(epochs[0]["train_loss"].as_f64().unwrap().is_finite());
    let m = load_model(&out.join(MODEL_FILE), Device::Cpu).unwrap();
    assert_eq!(m.model.config.arch, Arch::Resnet18);
}

#[test]
fn a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    blobs(&d.path().join("data"), 8);
    let out = d.path().join("run");
    // Epoch 1 trains normally; from epoch 2 the rate is 1e-3 × 1e33 = 1e30.
    let cfg = tiny(&["epochs=4", "optim.schedule={kind=\"multi-step\", milestones=[1], gamma=1e33}"]);
    let e = cv::run(&cfg, open(&d.path().join("data")), 0, &opts(&out)).err().expect("training must stop").to_string();
    assert!(e.contains("non-finite") && e.contains("epoch 2"), "{e}");
    assert!(e.contains(LAST_CHECKPOINT), "{e}");
    // checkpoint-last is still the end of epoch 1, loadable, with finite weights.
    let ck = checkpoint::load(&out.join(LAST_CHECKPOINT)).unwrap();
    assert_eq!((ck.state.epoch, ck.state.step), (1, 0));
    for (name, t) in &ck.model {
        assert!(bool::try_from(t.isfinite().all()).unwrap(), "{name} is not finite in checkpoint-last");
    }
    load_model(&out.join(LAST_CHECKPOINT), Device::Cpu).unwrap();
    let log = std::fs::read_to_string(out.join(LOG_FILE)).unwrap();
    assert!(log.contains("\"diverged\""), "the log records why training stopped");
    assert_eq!(epoch_records(&out.join(LOG_FILE)).len(), 1);
}

#[test]
fn zero_training_images_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    blobs(&d.path().join("data"), 2);
    let ds = open(&d.path().join("data"));
    // A fixed number of iterations per epoch once let an empty training set "complete".
    let cfg = tiny(&["iters_per_epoch=2"]);
    let job = TrainJob {
        model_config: cfg.model_config_for(&ds.classes).unwrap(),
        loader: Loader::new(ds.clone(), cv::input_pipeline(&cfg).unwrap(), cfg.seed, false),
        config: cfg,
        train_idx: Vec::new(),
        val_idx: vec![0, 1],
        out_dir: d.path().join("run"),
        device: Device::Cpu,
        resume: false,
        stop_after_steps: None,
        label: "fold 1/2".into(),
        verbose: false,
    };
    let e = train(&job).err().expect("must refuse").to_string();
    assert!(e.contains("fold 1/2") && e.contains("no training images"), "{e}");
    assert!(!d.path().join("run").join(MODEL_FILE).exists());
}
