//! The options shared by every command that reads data or trains (issue 16): `--allow-outside-root`
//! on `train`, `reproduce` and `demo` as on `data` and `eval`, recorded for `--resume`; `--device`
//! and `--deterministic` on `reproduce`; `config.toml` names the device used.
use std::path::{Path, PathBuf};

use common::{magsd_in, text};

mod common;

/// A manifest in `dir/manifest` naming the 32 demo images by absolute path (outside its folder).
fn absolute_manifest(dir: &Path) -> PathBuf {
    let demo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/cxr-demo");
    let demo = demo.canonicalize().unwrap();
    let mut rows = vec!["path,label,patient_id".to_string()];
    for class in ["bacterial", "covid19", "normal", "viral"] {
        let mut files: Vec<_> = std::fs::read_dir(demo.join(class)).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        for (i, f) in files.iter().enumerate() {
            rows.push(format!("{},{class},{class}-{i}", f.display()));
        }
    }
    std::fs::create_dir_all(dir.join("manifest")).unwrap();
    let manifest = dir.join("manifest/manifest.csv");
    std::fs::write(&manifest, rows.join("\n") + "\n").unwrap();
    manifest
}

#[test]
fn train_and_reproduce_take_allow_outside_root_and_a_resume_remembers_it() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let manifest = absolute_manifest(dir);
    let m = manifest.to_str().unwrap();
    // Refused without the flag; the refusal names the flag.
    let o = magsd_in(dir, &["train", "--data", m, "--preset", "tiny", "--device", "cpu", "--out", "r0", "--quiet"]);
    assert!(!o.status.success() && text(&o).contains("--allow-outside-root"), "{}", text(&o));
    assert!(!dir.join("r0").exists(), "a refused start leaves no run folder");

    // With it, train runs (stopped after 2 steps), and --resume reads the manifest again without it.
    let common = ["--preset", "tiny", "--device", "cpu", "--folds", "0", "--epochs", "1", "--quiet"];
    let mut args = vec!["train", "--data", m, "--allow-outside-root", "--out", "run", "--max-steps", "2"];
    args.extend(common);
    let o = magsd_in(dir, &args);
    assert!(o.status.success(), "{}", text(&o));
    let o = magsd_in(dir, &["train", "--resume", "run", "--max-steps", "3", "--quiet"]);
    assert!(o.status.success(), "--resume of an --allow-outside-root run: {}", text(&o));
    // config.toml records the device used, not `auto`.
    let o = magsd_in(dir, &["train", "--data", m, "--allow-outside-root", "--out", "auto", "--max-steps", "1", "--preset", "tiny", "--folds", "0", "--quiet"]);
    assert!(o.status.success(), "{}", text(&o));
    let cfg = std::fs::read_to_string(dir.join("auto/config.toml")).unwrap();
    assert!(cfg.contains("device = \"cpu\"") || cfg.contains("device = \"cuda\""), "{cfg}");

    // reproduce: the same flag, and --device.
    let o = magsd_in(dir, &["reproduce", "--data", m, "--table", "7", "--folds", "2", "--out", "g0", "--plan"]);
    assert!(!o.status.success() && text(&o).contains("--allow-outside-root"), "{}", text(&o));
    let o = magsd_in(dir, &["reproduce", "--data", m, "--allow-outside-root", "--table", "7", "--folds", "2", "--out", "grid", "--plan", "--device", "cpu", "--preset", "tiny", "--epochs", "1"]);
    assert!(o.status.success(), "{}", text(&o));
    // A unit opens the grid's data again (with the flag the grid recorded) on the device asked for.
    let o = magsd_in(dir, &["reproduce", "--out", "grid", "--unit", "0", "--device", "cpu", "--quiet"]);
    assert!(o.status.success(), "{}", text(&o));
}

/// The refusal names the manifest's folder; for `manifest.csv` in the working folder that is
/// `.`, not an empty name ("folder ;").
#[test]
fn the_outside_root_refusal_names_the_folder() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("manifest.csv"), "path,label\n../x.png,a\n").unwrap();
    let o = magsd_in(d.path(), &["data", "summary", "--data", "manifest.csv"]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("manifest's folder .;") && !t.contains("folder ;"), "{t}");
}

/// The commands that infer take the same device and determinism options as those that train.
#[test]
fn every_inference_command_takes_device_and_deterministic() {
    for cmd in ["eval", "localize", "predict", "ood-eval", "serve"] {
        let o = magsd_in(Path::new("."), &[cmd, "--help"]);
        let t = text(&o);
        for flag in ["--device", "--deterministic"] {
            assert!(t.contains(flag), "{cmd} --help lacks {flag}");
        }
    }
}

/// `reproduce`, `demo` and `bench` take the same device and determinism options as `train`.
#[test]
fn every_training_command_takes_device_and_deterministic() {
    for cmd in ["train", "reproduce", "demo", "bench"] {
        let o = magsd_in(Path::new("."), &[cmd, "--help"]);
        let t = text(&o);
        for flag in ["--device", "--deterministic"] {
            assert!(t.contains(flag), "{cmd} --help lacks {flag}");
        }
        if cmd != "bench" {
            assert!(t.contains("--allow-outside-root"), "{cmd} --help lacks --allow-outside-root");
        }
    }
}

/// Issue 16: every option and argument of every command says what it is in `--help`.
#[test]
fn every_option_of_every_command_has_a_help_line() {
    use clap::CommandFactory;
    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for a in cmd.get_arguments() {
            let id = a.get_id().as_str();
            if a.is_hide_set() || id == "help" || id == "version" {
                continue;
            }
            if a.get_help().is_none() && a.get_long_help().is_none() {
                missing.push(format!("{path} {id}"));
            }
        }
        for s in cmd.get_subcommands() {
            walk(s, &format!("{path} {}", s.get_name()), missing);
        }
    }
    let mut missing = Vec::new();
    walk(&magsd::cli::Cli::command(), "magsd", &mut missing);
    assert!(missing.is_empty(), "options without a help line: {missing:?}");
}
