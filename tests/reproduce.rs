//! `magsd reproduce` end to end on CPU with the tiny preset: a whole Table 7 with its report,
//! figure and statistics; --plan/--unit/--collect; resuming never redoes a finished unit.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_magsd");

/// Small phantoms (4 classes × `per_class`, 48 px).
fn phantoms(dir: &Path, per_class: usize) -> PathBuf {
    let data = dir.join("data");
    let out = Command::new(BIN)
        .args(["data", "synth", "--per-class", &per_class.to_string(), "--size", "48", "--out"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    data
}

fn magsd(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn ok(out: Output) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    text
}

/// `magsd reproduce` on the tiny preset at 64 px on CPU, 2 folds, 1 epoch.
fn grid_args<'a>(data: &'a str, out: &'a str, table: &'a str) -> Vec<&'a str> {
    vec![
        "reproduce", "--data", data, "--table", table, "--folds", "2", "--epochs", "1", "--out", out, "--preset", "tiny",
        "--set", "model.image_size=64", "--set", "device=\"cpu\"", "--set", "batch_size=4", "--quiet",
    ]
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
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
    assert!(md.contains("| mix-up | ") && md.contains("94.69") && md.contains("mix-up + patching") && md.contains("AM+AD"), "{md}");
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
    let text = ok(magsd(&["reproduce", "--out", g, "--collect"]));
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
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds a grid made with other"), "{}", String::from_utf8_lossy(&out.stderr));
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
