//! `magsd reproduce --slurm` against a real one-node Slurm cluster (slurm-wlm + munge) that
//! `scripts/slurm-test-cluster.sh` installs and starts on this machine (root only; otherwise the
//! test prints SKIP on the terminal, or fails where `MAGSD_REQUIRE_SLURM` is set, as CI sets
//! it): a Table 8 array of 2 rows × 2 folds on CPU, then `--collect`; an array whose tasks fail
//! makes `--wait` exit non-zero naming them, and its resubmission keeps the first one's options;
//! and a task signalled as Slurm does before its time limit checkpoints and requeues itself, and
//! the requeued task resumes from the step it reached and finishes, so that `--wait` collects the
//! whole grid.
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
    let task_logs = || task_logs_of(&grid);
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

    // Resubmitting the failed grid covers its unfinished units with the first submission's options.
    let out = Command::new(BIN).args(["reproduce", "--slurm", "--no-submit", "--out"]).arg(&failing).output().unwrap();
    let log = text(&out);
    assert!(out.status.success() && log.contains("options not given again are those of the last submission"), "{log}");
    let script = std::fs::read_to_string(failing.join("slurm/job.sh")).unwrap();
    assert!(script.contains("#SBATCH --array=0-3\n") && script.contains("#SBATCH --mem=500M\n"), "{script}");

    // Before its time limit Slurm signals the batch shell with SIGUSR1 (here by hand, as
    // --signal=B:USR1@120 would): the unit saves a checkpoint after its step and requeues its own
    // task, which resumes from that step and finishes; `--wait` waits through the requeue and
    // collects the whole grid.
    let long = d.path().join("long");
    let mut parent = Command::new(BIN)
        .args(["reproduce", "--data", data.to_str().unwrap(), "--table", "8", "--rows", "magsd", "--folds", "2", "--epochs", "1", "--out"])
        .arg(&long)
        .args(["--preset", "tiny", "--set", "model.image_size=64", "--set", "device=\"cpu\"", "--set", "batch_size=4"])
        .args(["--set", &format!("iters_per_epoch={STEPS}"), "--set", "performance.log_every=1"])
        .args(["--slurm", "--gpus-per-task", "0", "--cpus-per-task", "1", "--time", "00:10:00", "--mem", "500M", "--wait"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (stdout, stderr) = (parent.stdout.take().unwrap(), parent.stderr.take().unwrap());
    let (tx, parent_done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::Read;
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::BufReader::new(stderr).read_to_string(&mut s);
            s
        });
        let mut out = String::new();
        let _ = std::io::BufReader::new(stdout).read_to_string(&mut out);
        let status = parent.wait().unwrap();
        let _ = tx.send((status, out + &err.join().unwrap_or_default()));
    });
    let train_log = long.join("magsd/fold-0/train.jsonl");
    let steps = || -> Vec<u64> {
        std::fs::read_to_string(&train_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["type"] == "step")
            .filter_map(|v| v["global_step"].as_u64())
            .collect()
    };
    // Generous limits: they only bound a failing test (a loaded 2-core machine is slow).
    let wait = |what: &str, done: &dyn Fn() -> bool| {
        for _ in 0..15_000 {
            if done() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("{what} did not happen within 300 s\n{}", task_logs_of(&long));
    };
    // The task of unit 0 (array job A, task 0: Slurm's id A_0) is about to train; signalled at
    // once, it stops after its first step or so, well before the last.
    wait("the unit's start", &|| task_logs_of(&long).contains("unit 0 of 2: row magsd"));
    let array_job = || -> Option<String> {
        let out = Command::new("squeue").args(["-h", "-n", "magsd-reproduce", "-o", "%F"]).output().ok()?;
        String::from_utf8_lossy(&out.stdout).lines().next().map(|l| l.trim().to_string()).filter(|l| !l.is_empty())
    };
    let job = array_job().expect("the array job in squeue");
    let sig = Command::new("scancel").args(["--batch", "--signal=USR1", &format!("{job}_0")]).output().unwrap();
    assert!(sig.status.success(), "{}", text(&sig));
    wait("the requeue", &|| task_logs_of(&long).contains("requeued Slurm job"));
    let reached = steps().into_iter().max().unwrap_or(0);
    let (status, log) = parent_done.recv_timeout(std::time::Duration::from_secs(600)).unwrap_or_else(|_| {
        let _ = Command::new("scancel").arg(&job).status();
        panic!("the --wait submission did not end within 600 s\n{}", task_logs_of(&long))
    });
    let logs = task_logs_of(&long);
    assert!(status.success() && log.contains("all 2 units finished"), "{log}\n{logs}");
    // One log for both runs of the task (appended): the stop, the requeue, the resume from the
    // step reached, and the end.
    assert!(logs.contains("SIGUSR1: stopping after this step"), "{logs}");
    assert!(logs.contains("resuming from") && logs.contains(&format!("(global step {reached})")), "{logs}");
    assert!((1..STEPS).contains(&reached), "stopped at step {reached} of {STEPS}\n{logs}");
    assert!(long.join("magsd/fold-0/fold.json").exists(), "{logs}");
    // Every step once, in order: the requeued task went on from the step it reached.
    assert_eq!(steps(), (1..=STEPS).collect::<Vec<u64>>(), "{logs}");
}

/// Training steps of each unit of the requeue test: enough that a unit is still training when
/// it is signalled, few enough to keep the test short.
const STEPS: u64 = 20;

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
