//! `magsd reproduce --slurm` against a real one-node Slurm cluster (slurm-wlm + munge) that
//! `scripts/slurm-test-cluster.sh` installs and starts on this machine (root only; skipped
//! otherwise): a Table 8 array of 2 rows × 2 folds on CPU, then `--collect`.
use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_magsd");
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/slurm-test-cluster.sh");

/// Stops the daemons the script started, also when the test fails.
struct Cluster;

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash").args([SCRIPT, "stop"]).status();
    }
}

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn slurm_array_runs_the_units_and_collect_builds_the_table() {
    let start = Command::new("bash").args([SCRIPT, "start"]).output().unwrap();
    if start.status.code() == Some(77) {
        eprintln!("skipped: the Slurm test cluster needs root ({})", text(&start).trim());
        return;
    }
    let _cluster = Cluster;
    assert!(start.status.success(), "cluster did not start:\n{}", text(&start));

    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let out = Command::new(BIN).args(["data", "synth", "--per-class", "3", "--size", "48", "--out"]).arg(&data).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let grid = d.path().join("grid");
    let out = Command::new(BIN)
        .args(["reproduce", "--data", data.to_str().unwrap(), "--table", "8", "--folds", "2", "--epochs", "1", "--out"])
        .arg(&grid)
        .args(["--preset", "tiny", "--set", "model.image_size=64", "--set", "device=\"cpu\"", "--set", "batch_size=4"])
        .args(["--slurm", "--gpus-per-task", "0", "--cpus-per-task", "1", "--time", "00:10:00", "--wait"])
        .output()
        .unwrap();
    let log = text(&out);
    let task_logs = || -> String {
        std::fs::read_dir(grid.join("slurm"))
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "out"))
                    .map(|e| format!("{}:\n{}", e.path().display(), std::fs::read_to_string(e.path()).unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(out.status.success(), "{log}\n{}", task_logs());
    assert!(log.contains("submitted job "), "{log}");
    assert!(log.contains("all 4 units finished"), "{log}\n{}", task_logs());
    // One log per array task, from Slurm itself.
    assert_eq!(task_logs().matches("finished: ").count(), 4, "{}", task_logs());

    // A separate collect step gathers the same results.
    let out = Command::new(BIN).args(["reproduce", "--collect", "--out"]).arg(&grid).output().unwrap();
    assert!(out.status.success() && text(&out).contains("all 4 units finished"), "{}", text(&out));
    for f in ["report.md", "report.html", "roc.png", "results.json"] {
        assert!(Path::new(&grid.join("table-8").join(f)).exists(), "{f} missing");
    }
}
