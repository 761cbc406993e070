//! Helpers shared by the tests in `tests/` (`mod common;` in each): the runner, its output as
//! text, success and failure assertions, a tiny untrained model (alone or in a run folder
//! written through `RunSpec`), a tiny model trained once per test binary, and the one DICOM
//! writer (`common::dicom`).
#![allow(dead_code)] // each test binary uses its own subset

pub mod dicom;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use magsd::model::{Network, NetworkConfig};
use magsd::runfolder::RunSpec;

/// The built `magsd`, for tests that spawn it themselves.
pub const BIN: &str = env!("CARGO_BIN_EXE_magsd");

/// Runs the built `magsd` with `args` and waits for it.
pub fn magsd(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("runs magsd")
}

/// Runs the built `magsd` with `args` in the folder `dir` and waits for it.
pub fn magsd_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN).current_dir(dir).args(args).output().expect("runs magsd")
}

/// Standard output and standard error, one after the other.
pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Asserts success; returns the output as text.
pub fn ok(o: Output) -> String {
    assert!(o.status.success(), "{}", text(&o));
    text(&o)
}

/// Asserts a failure; returns the output as text.
pub fn fails(o: Output) -> String {
    assert!(!o.status.success(), "{}", text(&o));
    text(&o)
}

/// A JSON file's value; a missing or broken file fails the test naming it.
pub fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// A freshly initialised tiny MAG-SD (torch seed 0) of `image_size` px, with `classes` as its
/// class names (the preset's names when empty; 3 classes then), saved as the library saves
/// models at `path`.
pub fn tiny_model(path: &Path, image_size: i64, classes: &[&str]) -> PathBuf {
    let mut cfg = NetworkConfig::tiny(if classes.is_empty() { 3 } else { classes.len() as i64 });
    cfg.image_size = image_size;
    if !classes.is_empty() {
        cfg.class_names = classes.iter().map(|c| c.to_string()).collect();
    }
    tch::manual_seed(0);
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let _model = Network::new(&vs.root(), cfg.clone()).unwrap();
    magsd::model::weights::save_model(path, &vs, &cfg).unwrap();
    path.to_path_buf()
}

/// The `run.json` of a run trained on `data` (label column `label`) with `folds` folds by
/// `command`, written into `run` as `magsd train` writes it.
pub fn run_json(run: &Path, data: &Path, classes: &[&str], folds: usize, command: &str) {
    RunSpec {
        format_version: magsd::runfolder::FORMAT_VERSION,
        data: data.to_path_buf(),
        label_column: "label".into(),
        classes: classes.iter().map(|c| c.to_string()).collect(),
        folds,
        command: command.into(),
        grouping: Default::default(),
        allow_outside_root: false,
    }
    .save(run)
    .unwrap();
}

/// Asserts a failure whose message contains every one of `needles`, without a panic.
pub fn fails_with(o: &Output, needles: &[&str]) {
    assert!(!o.status.success(), "expected a failure:\n{}", text(o));
    for n in needles {
        assert!(text(o).contains(n), "expected '{n}' in:\n{}", text(o));
    }
    assert!(!text(o).contains("panicked"), "{}", text(o));
}

/// 12 phantoms of 64 px (3 per class) and a tiny model trained on them for one epoch, once per
/// test binary: (the temporary folder, the phantoms, the run folder).
pub fn tiny_phantom_model() -> &'static (tempfile::TempDir, PathBuf, PathBuf) {
    static F: OnceLock<(tempfile::TempDir, PathBuf, PathBuf)> = OnceLock::new();
    F.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("phantoms");
        let o = magsd(&["data", "synth", "--out", s(&data), "--per-class", "3", "--size", "64"]);
        assert!(o.status.success(), "{}", text(&o));
        let run = d.path().join("run");
        let o = magsd(&[
            "train", "--data", s(&data), "--preset", "tiny", "--folds", "0", "--epochs", "1", "--device", "cpu", "--out",
            s(&run), "--quiet", "--deterministic",
        ]);
        assert!(o.status.success(), "{}", text(&o));
        (d, data, run)
    })
}
