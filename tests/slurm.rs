//! `magsd reproduce --slurm` against a real one-node Slurm cluster (slurm-wlm + munge) that
//! `scripts/slurm-test-cluster.sh` installs and starts on this machine (root only; otherwise the
//! test prints SKIP on the terminal, or fails where `MAGSD_REQUIRE_SLURM` is set, as CI sets
//! it): a Table 8 array of 2 rows × 2 folds on CPU, then `--collect`; an array whose tasks fail makes `--wait` exit non-zero naming them; and a task
//! signalled as Slurm does before its time limit checkpoints, and its resubmission resumes
//! from the step it reached.
use std::path::Path;
use std::process::Command;

use common::{BIN, text};

mod common;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/slurm-test-cluster.sh");

/// Set (CI sets it) to make a skip for want of root a failure.
const REQUIRE: &str = "MAGSD_REQUIRE_SLURM";

/// Stops the daemons the script started, also when the test fails.
struct Cluster;

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash").args([SCRIPT, "stop"]).status();
    }
}

#[test]
fn slurm_array_runs_the_units_and_collect_builds_the_table() {
    let start = Command::new("bash").args([SCRIPT, "start"]).output().unwrap();
    if start.status.code() == Some(77) {
        // CI sets MAGSD_REQUIRE_SLURM=1 (.ci/run): there a skipped cluster fails the run.
        let why = text(&start);
        assert!(std::env::var_os(REQUIRE).is_none(), "{REQUIRE} is set but the Slurm test cluster did not start: {}", why.trim());
        // Written past the test harness's capture, so that a skip is seen.
        use std::io::Write;
        let _ = writeln!(std::io::stderr().lock(), "\nSKIP tests/slurm.rs: the Slurm test cluster needs root ({})", why.trim());
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

    // Tasks that fail (no batch fits in 6 training images): --wait exits 1 naming each unit and
    // its log.
    let failing = d.path().join("failing");
    let out = Command::new(BIN)
        .args(["reproduce", "--data", data.to_str().unwrap(), "--table", "8", "--folds", "2", "--epochs", "1", "--out"])
        .arg(&failing)
        .args(["--preset", "tiny", "--set", "model.image_size=64", "--set", "device=\"cpu\"", "--set", "batch_size=64"])
        .args(["--slurm", "--gpus-per-task", "0", "--cpus-per-task", "1", "--time", "00:10:00", "--mem", "500M", "--wait"])
        .output()
        .unwrap();
    let log = text(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("4 of 4 units missing"), "{log}");
    for u in 0..4 {
        assert!(log.contains(&format!("unit {u}: row ")) && log.contains(&format!("unit-{u}_job-")), "unit {u}: {log}");
    }

    // Before its time limit Slurm signals the batch shell (here by hand, as --signal=B:USR1
    // would): the unit saves a checkpoint after its step and stops; resubmitting runs only the
    // unfinished units, and the task resumes from that step.
    let long = d.path().join("long");
    let out = Command::new(BIN)
        .args(["reproduce", "--data", data.to_str().unwrap(), "--table", "8", "--rows", "magsd", "--folds", "2", "--epochs", "1", "--out"])
        .arg(&long)
        .args(["--preset", "tiny", "--set", "model.image_size=64", "--set", "device=\"cpu\"", "--set", "batch_size=4"])
        .args(["--set", "iters_per_epoch=100000", "--set", "performance.log_every=1"])
        .args(["--slurm", "--gpus-per-task", "0", "--cpus-per-task", "1", "--time", "00:10:00", "--mem", "500M", "--max-parallel", "1"])
        .output()
        .unwrap();
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    let job = log.lines().find_map(|l| l.strip_prefix("submitted job ")).expect("job id").trim().to_string();
    let train_log = long.join("magsd/fold-0/train.jsonl");
    let last_step = || -> u64 {
        std::fs::read_to_string(&train_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["type"] == "step")
            .filter_map(|v| v["global_step"].as_u64())
            .max()
            .unwrap_or(0)
    };
    let wait = |what: &str, done: &dyn Fn() -> bool| {
        for _ in 0..1800 {
            if done() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("{what} did not happen within 180 s\n{}", task_logs_of(&long));
    };
    let queue_empty = |id: &str| {
        let out = Command::new("squeue").args(["-h", "-j", id]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().is_empty()
    };
    // The task's log (stderr, unbuffered) shows the unit has started training.
    wait("the unit's start", &|| task_logs_of(&long).contains("unit 0 of 2: row magsd"));
    std::thread::sleep(std::time::Duration::from_secs(2));
    // Signal the whole array (task 1 waits behind the throttle and is cancelled with it).
    let sig = Command::new("scancel").args(["--batch", "--signal=USR1", &job]).output().unwrap();
    assert!(sig.status.success(), "{}", text(&sig));
    wait("the signalled task's end", &|| Command::new("squeue").args(["-h", "-j", &format!("{job}_0")]).output().map(|o| o.stdout.is_empty()).unwrap_or(false));
    let _ = Command::new("scancel").arg(&job).status();
    wait("the job's end", &|| queue_empty(&job));
    assert!(long.join("magsd/fold-0/checkpoint-last.safetensors").exists(), "{}", task_logs_of(&long));
    let reached = last_step();
    assert!(task_logs_of(&long).contains("SIGUSR1: stopping after this step"), "{}", task_logs_of(&long));

    let out = Command::new(BIN).args(["reproduce", "--slurm", "--out"]).arg(&long).output().unwrap();
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    let job2 = log.lines().find_map(|l| l.strip_prefix("submitted job ")).expect("job id").trim().to_string();
    let script = std::fs::read_to_string(long.join("slurm/job.sh")).unwrap();
    // Only the unfinished units, with the first submission's options.
    assert!(script.contains("#SBATCH --array=0-1%1") && script.contains("#SBATCH --mem=500M"), "{script}");
    wait("the resume", &|| task_logs_of(&long).contains("resuming from"));
    let _ = Command::new("scancel").args(["--batch", "--signal=USR1", &job2]).status();
    let _ = Command::new("scancel").arg(&job2).status();
    wait("the second job's end", &|| queue_empty(&job2));
    let logs = task_logs_of(&long);
    assert!(logs.contains(&format!("(global step {reached})")) && logs.contains("resuming from"), "{logs}");
    // The resumed task stopped after at least one more step, logged after the ones before.
    assert!(last_step() > reached, "{logs}");
}

/// Every array task's log of a grid.
fn task_logs_of(grid: &Path) -> String {
    std::fs::read_dir(grid.join("slurm"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "out"))
                .map(|e| format!("{}:\n{}", e.path().display(), std::fs::read_to_string(e.path()).unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default()
}
