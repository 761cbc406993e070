//! `magsd reproduce` end to end on CPU with the tiny preset: a whole Table 7 with its report,
//! figure and statistics; --plan/--unit/--collect; resuming never redoes a finished unit; units
//! started together; SIGTERM and the per-unit lock; hostile and tampered input (no training).
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{BIN, fails, json, magsd, ok};

mod common;

/// Small phantoms (4 classes × `per_class`, 48 px).
fn phantoms(dir: &Path, per_class: usize) -> PathBuf {
    let data = dir.join("data");
    ok(magsd(&["data", "synth", "--per-class", &per_class.to_string(), "--size", "48", "--out", common::s(&data)]));
    data
}

/// `magsd reproduce` on the tiny preset at 64 px on CPU, 2 folds, 1 epoch.
fn grid_args<'a>(data: &'a str, out: &'a str, table: &'a str) -> Vec<&'a str> {
    vec![
        "reproduce", "--data", data, "--table", table, "--folds", "2", "--epochs", "1", "--out", out, "--preset", "tiny",
        "--set", "model.image_size=64", "--set", "device=\"cpu\"", "--set", "batch_size=4", "--quiet",
    ]
}

#[test]
fn table_7_produces_tables_figure_and_statistics() {
    let d = tempfile::tempdir().unwrap();
    let data = phantoms(d.path(), 4);
    let grid = d.path().join("grid");
    let text = ok(magsd(&grid_args(data.to_str().unwrap(), grid.to_str().unwrap(), "7")));
    assert!(text.contains("all 10 units finished"), "{text}");
    let t = grid.join("table-7");
    for f in ["report.md", "report.html", "roc.png", "roc.svg", "results.json"] {
        assert!(t.join(f).exists(), "{f} missing");
    }
    let md = std::fs::read_to_string(t.join("report.md")).unwrap();
    // The paper's numbers beside ours, both two-augmentation rows labelled.
    assert!(md.contains("| mix-up | ") && md.contains("85.47 ± 1.40") && md.contains("mix-up + patching") && md.contains("AM+AD"), "{md}");
    // What was run, and that it is no evidence (1 epoch, 2 folds, a tiny network).
    assert!(md.contains("**A smoke test, not evidence.**") && md.contains("1 epoch(s), the paper trains 100"), "{md}");
    assert!(md.contains("What was run: `") && md.contains("preset tiny") && md.contains("16 images, 16 patients") && md.contains("trained on cpu"), "{md}");
    assert!(md.contains("| mix-up | MAG-SD on tiny (8 maps) | 138 k |"), "{md}");
    // Two folds: the Wilcoxon floor is 2/2^2.
    assert!(md.contains("With 2 folds the Wilcoxon p-value cannot be below 0.5000") && !md.contains("0.0625"), "{md}");
    // Every paper value shown is the CSV's (4 classes: dataset C), for every row that has one.
    let csv = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/reference/paper-tables.csv")).unwrap();
    let paper = |table: &str, row: &str, metric: &str| -> String {
        let l = csv.lines().find(|l| l.starts_with(&format!("{table},{row},C,{metric},"))).unwrap_or_else(|| panic!("{table} {row} {metric}"));
        let f: Vec<&str> = l.split(',').collect();
        format!("{} ± {}", f[4], f[5])
    };
    for (label, table, row) in [
        ("none (= MAG-SD(0AUG))", "3", "MAG-SD(0AUG)"),
        ("mix-up", "7", "AM"),
        ("mix-up + dimming", "7", "AM + AD"),
        ("mix-up + dimming + patching (MAG-SD)", "7", "AM + AD + AP"),
    ] {
        let line = md.lines().find(|l| l.starts_with(&format!("| {label} | "))).unwrap_or_else(|| panic!("{label}\n{md}"));
        let cells: Vec<&str> = line.split(" | ").collect();
        let shown: Vec<&str> = cells[7..11].iter().map(|c| c.trim_end_matches(" |")).collect();
        let want: Vec<String> = ["ACC", "SEN", "SPC", "F1"].iter().map(|m| paper(table, row, m)).collect();
        assert_eq!(shown, want, "{label}");
    }
    // Fig. 6 marks the three highest AUCs.
    assert_eq!(std::fs::read_to_string(t.join("roc.svg")).unwrap().matches("[top 3]").count(), 3);
    let res = json(&t.join("results.json"));
    let rows = res["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 5);
    for r in rows {
        assert_eq!(r["folds"].as_array().unwrap().len(), 2, "{}", r["id"]);
        assert_eq!(r["bootstrap"]["accuracy"]["resamples"], 1000);
        let ci = &r["bootstrap"]["f1"];
        assert!(ci["low"].as_f64().unwrap() <= ci["estimate"].as_f64().unwrap() && ci["estimate"].as_f64().unwrap() <= ci["high"].as_f64().unwrap());
        // Every row but MAG-SD is compared with MAG-SD over the same two folds.
        assert_eq!(r["vs_magsd"].is_null(), r["id"] == "magsd", "{}", r["id"]);
        if r["id"] != "magsd" {
            assert_eq!(r["vs_magsd"]["folds"], serde_json::json!([0, 1]));
        }
    }
    // Identical folds for every row: each row's fold k held out the same images.
    let held_out = |row: &str, k: usize| -> Vec<String> {
        let p = grid.join(row).join(format!("fold-{k}/predictions.csv"));
        let mut r = csv::Reader::from_path(p).unwrap();
        r.records().map(|x| x.unwrap()[0].to_string()).collect()
    };
    for row in ["magsd-0aug", "aug-mixup", "aug-mixup-dimming", "aug-mixup-patching"] {
        assert_eq!(held_out(row, 0), held_out("magsd", 0));
        assert_eq!(held_out(row, 1), held_out("magsd", 1));
    }
    // Finished rows are ordinary run folders: `magsd report` works on them.
    assert!(grid.join("magsd/cv-summary.json").exists());
    ok(magsd(&["report", grid.join("aug-mixup").to_str().unwrap()]));
}

#[test]
fn plan_unit_collect_round_trip_and_resume_never_redoes_a_unit() {
    let d = tempfile::tempdir().unwrap();
    let data = phantoms(d.path(), 3);
    let grid = d.path().join("grid");
    let g = grid.to_str().unwrap();
    let mut args = grid_args(data.to_str().unwrap(), g, "8");
    args.push("--plan");
    let text = ok(magsd(&args));
    assert!(text.contains("4 units (2 rows × 2 folds), 4 not finished"), "{text}");
    let plan = json(&grid.join("plan.json"));
    assert_eq!(plan.as_array().unwrap().len(), 4);
    assert_eq!(plan[0]["row"], "mean-ce");
    assert_eq!(plan[3]["row"], "magsd");
    assert_eq!(plan[3]["fold"], 1);

    // Unit 1 alone (what a Slurm array task runs), then collect: three units missing.
    let text = ok(magsd(&["reproduce", "--out", g, "--unit", "1", "--quiet"]));
    assert!(text.contains("unit 1 (row mean-ce, fold 1) finished"), "{text}");
    let unit_dir = grid.join("mean-ce/fold-1");
    let log_before = std::fs::read(unit_dir.join("train.jsonl")).unwrap();
    let mtime = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
    let result_time = mtime(&unit_dir.join("fold.json"));
    // Missing units: the tables are written, and the exit status says they are incomplete.
    let out = magsd(&["reproduce", "--out", g, "--collect"]);
    let text = common::text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("3 of 4 units missing") && text.contains("unit 0: row mean-ce, fold 0"), "{text}");
    let md = std::fs::read_to_string(grid.join("table-8/report.md")).unwrap();
    assert!(md.contains("Incomplete") && md.contains("| 1/2 |"), "{md}");

    // Rerunning the unit does nothing; resuming the grid runs only the other three.
    let text = ok(magsd(&["reproduce", "--out", g, "--unit", "1"]));
    assert!(text.contains("had finished already"), "{text}");
    // The same command again (with --data) resumes the grid.
    let text = ok(magsd(&grid_args(data.to_str().unwrap(), g, "8")));
    assert!(text.contains("all 4 units finished"), "{text}");
    assert_eq!(std::fs::read(unit_dir.join("train.jsonl")).unwrap(), log_before);
    assert_eq!(mtime(&unit_dir.join("fold.json")), result_time);
    let res = json(&grid.join("table-8/results.json"));
    assert!(res["rows"].as_array().unwrap().iter().all(|r| r["missing_folds"].as_array().unwrap().is_empty()));

    // The same folder with other settings is refused, naming the folder.
    let mut other = grid_args(data.to_str().unwrap(), g, "8");
    other.extend(["--set", "optim.lr=0.5"]);
    let out = magsd(&other);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("holds a grid made with other settings") && err.contains("optim.lr = 0.001 before, 0.5 now"), "{err}");
    // A unit outside the plan is an error, not a panic.
    let out = magsd(&["reproduce", "--out", g, "--unit", "9"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("units 0..3"));
}

#[test]
fn slurm_job_script_covers_the_pending_units() {
    let d = tempfile::tempdir().unwrap();
    let data = phantoms(d.path(), 3);
    let grid = d.path().join("grid");
    let g = grid.to_str().unwrap();
    let mut args = grid_args(data.to_str().unwrap(), g, "4");
    args.extend(["--slurm", "--no-submit", "--partition", "gpu", "--time", "02:00:00", "--account", "proj", "--sbatch=--qos=long"]);
    let text = ok(magsd(&args));
    assert!(text.contains("job script:"), "{text}");
    let job = std::fs::read_to_string(grid.join("slurm/job.sh")).unwrap();
    for line in ["#SBATCH --array=0-3", "#SBATCH --partition=gpu", "#SBATCH --time=02:00:00", "#SBATCH --account=proj", "#SBATCH --gpus-per-task=1", "#SBATCH --qos=long"] {
        assert!(job.contains(line), "{line} not in\n{job}");
    }
    assert!(job.contains("reproduce --unit \"$SLURM_ARRAY_TASK_ID\" --out"), "{job}");
}

/// Everything here runs without training: hostile values for job.sh, unchecked options, --gpus
/// on a machine without those GPUs, tampered grid files, changed settings, grids made by many
/// processes at once, and a paper-preset table page.
#[test]
fn grid_input_is_checked_and_job_sh_is_safe() {
    let d = tempfile::tempdir().unwrap();
    let data = phantoms(d.path(), 5);
    let data = data.to_str().unwrap();
    let grid = d.path().join("grid");
    let g = grid.to_str().unwrap();
    let slurm = |extra: &[&str]| {
        let mut a = grid_args(data, g, "8");
        a.extend(["--slurm", "--no-submit"]);
        a.extend_from_slice(extra);
        common::magsd_in(d.path(), &a)
    };
    // Hostile values never reach job.sh: refused before the grid is made.
    let hostile: [(&[&str], &str); 8] = [
        (&["--time", "1:00:00\n#SBATCH --wrap=evil\ntouch pwned1"], "--time"),
        (&["--sbatch=--qos=long\ntouch pwned2"], "--sbatch"),
        (&["--sbatch=--wrap=touch pwned2"], "--sbatch"),
        (&["--partition", "gpu$(touch pwned3)"], "--partition"),
        (&["--setup", "module load x\ntouch pwned4"], "--setup"),
        (&["--max-parallel", "0"], "--max-parallel"),
        (&["--cpus-per-task", "0"], "--cpus-per-task"),
        (&["--mem", ""], "--mem"),
    ];
    for (args, name) in hostile {
        let text = fails(slurm(args));
        assert!(text.contains(name), "{args:?}: {text}");
    }
    let bad_out = d.path().join("grid\ntouch pwned5");
    let mut a = grid_args(data, bad_out.to_str().unwrap(), "8");
    a.extend(["--slurm", "--no-submit"]);
    assert!(fails(magsd(&a)).contains("--out"));
    assert!(!grid.exists() && !bad_out.exists(), "a refused command made a grid");
    for f in ["pwned1", "pwned2", "pwned3", "pwned4", "pwned5"] {
        assert!(!d.path().join(f).exists());
    }
    // --gpus: a malformed list, and devices that do not exist (none on a CPU machine).
    let mut a = grid_args(data, g, "8");
    a.extend(["--gpus", "foo,"]);
    assert!(fails(magsd(&a)).contains("\"foo\" is not a GPU index"));
    let mut a = grid_args(data, g, "8");
    a.extend(["--gpus", "0,99"]);
    let text = fails(magsd(&a));
    assert!(text.contains("no CUDA device is visible") || text.contains("GPU 99 does not exist"), "{text}");
    assert!(!grid.exists());

    // A valid job.sh: signal, requeue, export, setup before the command, throttle, progress logs.
    let text = ok(slurm(&["--time", "1-00:00:00", "--max-parallel", "2", "--setup", "module load cuda/12.1", "--setup", "echo \"$HOSTNAME\""]));
    assert!(text.contains("warning: no --mem") && !text.contains("warning: no --time"), "{text}");
    let job_path = grid.join("slurm/job.sh");
    assert!(text.contains(&format!("submit it with: sbatch {}", job_path.display())), "{text}");
    let job = std::fs::read_to_string(&job_path).unwrap();
    for line in ["#SBATCH --array=0-3%2", "#SBATCH --signal=B:USR1@120", "#SBATCH --requeue", "#SBATCH --export=ALL", "#SBATCH --time=1-00:00:00"] {
        assert!(job.contains(line), "{line} not in\n{job}");
    }
    let setup = job.find("module load cuda/12.1\necho \"$HOSTNAME\"\n").expect("setup lines");
    assert!(setup < job.find("exec ").unwrap() && !job.contains("--quiet"), "{job}");
    // Resubmitting remembers the first submission's options; --no-requeue is written.
    ok(slurm(&["--no-requeue"]));
    let job = std::fs::read_to_string(&job_path).unwrap();
    for line in ["#SBATCH --array=0-3%2", "#SBATCH --time=1-00:00:00", "module load cuda/12.1", "#SBATCH --no-requeue"] {
        assert!(job.contains(line), "{line} not in\n{job}");
    }
    // A paper-preset grid is not a smoke test: its page (no unit finished) has no such line.
    let out = magsd(&["reproduce", "--out", g, "--collect"]);
    assert_eq!(out.status.code(), Some(1));
    let md = std::fs::read_to_string(grid.join("table-8/report.md")).unwrap();
    assert!(md.contains("**A smoke test, not evidence.**"), "tiny grid:\n{md}");
    let paper_grid = d.path().join("paper");
    let p = paper_grid.to_str().unwrap();
    ok(magsd(&["reproduce", "--data", data, "--table", "8", "--folds", "5", "--preset", "paper", "--out", p, "--plan"]));
    assert_eq!(magsd(&["reproduce", "--out", p, "--collect"]).status.code(), Some(1));
    let md = std::fs::read_to_string(paper_grid.join("table-8/report.md")).unwrap();
    assert!(!md.contains("smoke test") && md.contains("preset paper, 100 epoch(s), 5 fold(s), 224 px"), "{md}");
    assert!(md.contains("| soft distance (MAG-SD) | MAG-SD on resnet50 (32 maps) | 23.9 M |"), "{md}");

    // Changed settings are refused by name.
    for (extra, named) in [(&["--epochs", "2"][..], "epochs = 1 before, 2 now"), (&["--folds", "3"][..], "--folds was 2, now 3")] {
        let mut a = grid_args(data, g, "8");
        let pos = a.iter().position(|x| *x == extra[0]).unwrap();
        a[pos + 1] = extra[1];
        a.push("--plan");
        assert!(fails(magsd(&a)).contains(named), "{extra:?}");
    }
    let mut a = grid_args(data, g, "7");
    a.push("--plan");
    assert!(fails(magsd(&a)).contains("--table was 8, now 7"));

    // Rows that a --set makes equal are refused; MAG-SD's row is labelled by what it runs.
    let dup = d.path().join("dup");
    let mut a = grid_args(data, dup.to_str().unwrap(), "5");
    a.extend(["--set", "model.scales=\"7+14+28\"", "--plan"]);
    let text = fails(magsd(&a));
    assert!(text.contains("rows 'magsd' and 'scales-7-14-28' would train the same configuration"), "{text}");
    let relabelled = d.path().join("relabelled");
    let mut a = grid_args(data, relabelled.to_str().unwrap(), "7");
    a.extend(["--rows", "aug-mixup,magsd", "--set", "method.augmentations=[\"dimming\"]", "--plan"]);
    ok(magsd(&a));
    assert_eq!(magsd(&["reproduce", "--out", relabelled.to_str().unwrap(), "--collect"]).status.code(), Some(1));
    let md = std::fs::read_to_string(relabelled.join("table-7/report.md")).unwrap();
    assert!(md.contains("| MAG-SD with method.augmentations = [\"dimming\"] (the paper's is [\"mixup\", \"dimming\", \"patching\"]) |"), "{md}");

    // Tampered plan.json and reproduce.json: an error naming the file, never a panic or a path
    // outside the grid.
    let plan_path = grid.join("plan.json");
    let plan = std::fs::read_to_string(&plan_path).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&plan).unwrap();
    v[1]["fold"] = 7.into();
    std::fs::write(&plan_path, v.to_string()).unwrap();
    let text = fails(magsd(&["reproduce", "--out", g, "--unit", "1"]));
    assert!(text.contains("plan.json") && text.contains("fold 7") && !text.contains("panicked"), "{text}");
    let mut v: serde_json::Value = serde_json::from_str(&plan).unwrap();
    v[1]["row"] = "../../escape_row".into();
    std::fs::write(&plan_path, v.to_string()).unwrap();
    let text = fails(magsd(&["reproduce", "--out", g, "--unit", "1"]));
    assert!(text.contains("plan.json") && text.contains("escape_row"), "{text}");
    assert!(!d.path().join("escape_row").exists());
    std::fs::write(&plan_path, &plan).unwrap();
    let spec_path = grid.join("reproduce.json");
    let spec = std::fs::read_to_string(&spec_path).unwrap();
    std::fs::write(&spec_path, spec.replace("\"folds\": 2", "\"folds\": 0")).unwrap();
    let text = fails(magsd(&["reproduce", "--out", g, "--collect"]));
    assert!(text.contains("reproduce.json") && text.contains("0 folds"), "{text}");

    // Six processes make one grid at once: all succeed, and every row folder is complete.
    let fresh = d.path().join("fresh");
    let f = fresh.to_str().unwrap();
    let mut a = grid_args(data, f, "7");
    a.push("--plan");
    let children: Vec<_> = (0..6).map(|_| Command::new(BIN).args(&a).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap()).collect();
    for c in children {
        ok(c.wait_with_output().unwrap());
    }
    for row in ["magsd-0aug", "aug-mixup", "aug-mixup-dimming", "aug-mixup-patching", "magsd"] {
        assert!(fresh.join(row).join("run.json").exists() && fresh.join(row).join("config.toml").exists(), "{row}");
    }
}

/// SIGTERM (what Slurm sends) stops a unit after its step with a checkpoint; a second process
/// on the same unit is refused (exit 3) while the first runs; rerunning resumes from the step.
#[test]
fn sigterm_checkpoints_a_unit_that_resumes_from_its_step_and_a_unit_runs_once() {
    let d = tempfile::tempdir().unwrap();
    let data = phantoms(d.path(), 3);
    let grid = d.path().join("grid");
    let g = grid.to_str().unwrap();
    let mut a = grid_args(data.to_str().unwrap(), g, "8");
    a.extend(["--rows", "magsd", "--set", "iters_per_epoch=100000", "--set", "performance.log_every=1", "--plan"]);
    ok(magsd(&a));
    let log = grid.join("magsd/fold-0/train.jsonl");
    let last_step = || -> u64 {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["type"] == "step")
            .filter_map(|v| v["global_step"].as_u64())
            .max()
            .unwrap_or(0)
    };
    // A unit's stderr, line by line (the training log is written in blocks; stderr is not).
    let spawn = || {
        let mut child = Command::new(BIN)
            .args(["reproduce", "--out", g, "--unit", "0"])
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        (child, rx)
    };
    let wait_for = |rx: &std::sync::mpsc::Receiver<String>, seen: &mut String, what: &str| {
        while !seen.contains(what) {
            match rx.recv_timeout(std::time::Duration::from_secs(300)) {
                Ok(line) => *seen += &format!("{line}\n"),
                Err(_) => panic!("no {what:?} on stderr:\n{seen}"),
            }
        }
    };
    let finish = |mut child: std::process::Child, rx: std::sync::mpsc::Receiver<String>, seen: &mut String| {
        // SAFETY: kill(2) on a child this test spawned and has not reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let status = child.wait().unwrap();
        *seen += &rx.iter().collect::<Vec<_>>().join("\n");
        status
    };

    let (first, rx) = spawn();
    let mut seen = String::new();
    wait_for(&rx, &mut seen, "unit 0 of 2: row magsd, fold 0 of 2");
    let second = magsd(&["reproduce", "--out", g, "--unit", "0"]);
    let text = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(3), "{text}");
    assert!(text.contains("being run by another process") && text.contains("unit-0.lock"), "{text}");
    let status = finish(first, rx, &mut seen);
    assert_eq!(status.code(), Some(130), "{seen}");
    assert!(seen.contains("SIGTERM: stopping after this step"), "{seen}");
    assert!(grid.join("magsd/fold-0/checkpoint-last.safetensors").exists());
    let reached = last_step();
    assert!(reached >= 1, "{seen}");

    let (resumed, rx) = spawn();
    let mut seen = String::new();
    wait_for(&rx, &mut seen, "resuming from");
    let status = finish(resumed, rx, &mut seen);
    assert_eq!(status.code(), Some(130), "{seen}");
    assert!(seen.contains(&format!("(global step {reached})")), "{seen}");
    // It stopped after at least one more step, logged after the ones before.
    assert!(last_step() > reached, "{seen}");
    let starts = std::fs::read_to_string(&log).unwrap().lines().filter(|l| l.contains("\"type\":\"start\"")).count();
    assert_eq!(starts, 1, "the resumed unit started over");
}

/// Table 3 with its ResNet18 row needs the baseline networks (`model.arch`).
#[test]
fn table_3_resnet18_and_magsd() {
    let d = tempfile::tempdir().unwrap();
    let data = phantoms(d.path(), 4);
    let grid = d.path().join("grid");
    let mut args = grid_args(data.to_str().unwrap(), grid.to_str().unwrap(), "3");
    args.extend(["--rows", "resnet18,magsd"]);
    let text = ok(magsd(&args));
    assert!(text.contains("all 4 units finished"), "{text}");
    let t = grid.join("table-3");
    for f in ["report.md", "report.html", "roc.png", "results.json"] {
        assert!(t.join(f).exists(), "{f} missing");
    }
    let res = json(&t.join("results.json"));
    let ids: Vec<&str> = res["rows"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["resnet18", "magsd"]);
    assert!(!res["rows"][0]["vs_magsd"].is_null());
    assert!(res["rows"][0]["bootstrap"]["auc"].is_object());
}
