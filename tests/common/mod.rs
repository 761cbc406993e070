//! Helpers shared by the command-line tests (`mod common;` in each): the runner, its output as
//! text, failure assertions, and a tiny model trained once per test binary.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// Runs the built `magsd` with `args` and waits for it.
pub fn magsd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_magsd")).args(args).output().expect("runs magsd")
}

/// Standard output and standard error, one after the other.
pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
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
