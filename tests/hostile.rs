//! The `magsd` binary against hostile inputs (issue 18): symbolic-link loops, devices and
//! endless files, links where outputs go, formula cells, absurd model sizes, a closed pipe,
//! truncated images, out-of-range thresholds and schedules, and files that are not images.
//! Runs on 12 phantoms of 64 px and a tiny model trained on them for one epoch, once.
//!
//! Commands that misbehaved before run under [`bounded`]: killed when their resident memory
//! passes 2 GB or when they run for 2 minutes (a guard against hangs, not a timing check).
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{fails_with, magsd, s, text, tiny_phantom_model};




const MAX_RSS_KB: u64 = 2_000_000;
const MAX_RUN: Duration = Duration::from_secs(120);

/// Runs magsd and kills it when its resident memory passes [`MAX_RSS_KB`] or it runs past
/// [`MAX_RUN`]; a killed run fails the test with the reason.
fn bounded(args: &[&str]) -> Output {
    let mut child = Command::new(common::BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs magsd");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let t0 = Instant::now();
    let mut killed = None;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        let rss = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
            .ok()
            .and_then(|st| st.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()))
            .unwrap_or(0);
        if rss > MAX_RSS_KB || t0.elapsed() > MAX_RUN {
            killed = Some(format!("killed: resident memory {rss} kB after {:?}", t0.elapsed()));
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let o = Output { status, stdout: t_out.join().unwrap(), stderr: t_err.join().unwrap() };
    if let Some(why) = killed {
        panic!("magsd {args:?} {why}\n{}", text(&o));
    }
    o
}



fn phantom(data: &Path) -> PathBuf {
    data.join("images/normal/normal_0000.png")
}

fn json_lines(o: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&o.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

#[test]
fn predict_does_not_follow_folder_links_and_takes_a_linked_file_once() {
    let (_, data, run) = tiny_phantom_model();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("scans");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::copy(phantom(data), dir.join("a.png")).unwrap();
    std::os::unix::fs::symlink(&dir, dir.join("self")).unwrap();
    std::os::unix::fs::symlink("..", dir.join("sub/up")).unwrap();
    std::os::unix::fs::symlink(dir.join("a.png"), dir.join("sub/again.png")).unwrap();
    std::os::unix::fs::symlink(phantom(data).with_file_name("normal_0001.png"), dir.join("sub/linked.png")).unwrap();
    let o = bounded(&["predict", s(&dir), "--model", s(run), "--device", "cpu", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let files: Vec<String> = json_lines(&o).iter().map(|v| v["file"].as_str().unwrap().to_string()).collect();
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(files[0].ends_with("a.png") && files[1].ends_with("linked.png"), "{files:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("2 symbolic link(s) to folders not followed"), "{err}");
    assert!(err.contains("1 link(s) to an image already taken left out"), "{err}");
}

#[test]
fn devices_and_folders_are_refused_instead_of_read() {
    let (_, data, run) = tiny_phantom_model();
    let tmp = tempfile::tempdir().unwrap();
    let zero = "/dev/zero";
    let msg = ["/dev/zero", "not a regular file"];
    fails_with(&bounded(&["data", "inspect", zero]), &msg);
    fails_with(&bounded(&["predict", zero, "--model", s(run), "--device", "cpu"]), &msg);
    let out = tmp.path().join("r");
    fails_with(&bounded(&["train", "--config", zero, "--data", s(data), "--preset", "tiny", "--out", s(&out)]), &msg);
    assert!(!out.exists());
    fails_with(&bounded(&["data", "summary", "--data", zero]), &msg);
    fails_with(&bounded(&["data", "check", "--data", s(data), "--split", zero]), &msg);
    // A folder where a file is expected is named as one.
    fails_with(&bounded(&["data", "check", "--data", s(data), "--split", s(data)]), &["a folder"]);
}

#[test]
fn heatmaps_never_follow_links_and_replace_overlays_only_with_force() {
    let (_, data, run) = tiny_phantom_model();
    let tmp = tempfile::tempdir().unwrap();
    let heat = tmp.path().join("heat");
    std::fs::create_dir_all(&heat).unwrap();
    let victim = tmp.path().join("victim.txt");
    std::fs::write(&victim, "keep").unwrap();
    let img = tmp.path().join("a.png");
    std::fs::copy(phantom(data), &img).unwrap();
    std::os::unix::fs::symlink(&victim, heat.join("a_attention.png")).unwrap();
    for force in [false, true] {
        let mut args = vec!["predict", s(&img), "--model", s(run), "--device", "cpu", "--heatmap", s(&heat)];
        if force {
            args.push("--force");
        }
        fails_with(&magsd(&args), &["a_attention.png", "symbolic link"]);
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
    }
    // An overlay of an earlier run: kept without --force, replaced with it.
    std::fs::remove_file(heat.join("a_attention.png")).unwrap();
    std::fs::write(heat.join("a_attention.png"), "earlier").unwrap();
    let args = ["predict", s(&img), "--model", s(run), "--device", "cpu", "--heatmap", s(&heat)];
    fails_with(&magsd(&args), &["a_attention.png", "--force"]);
    assert_eq!(std::fs::read_to_string(heat.join("a_attention.png")).unwrap(), "earlier");
    let o = magsd(&[&args[..], &["--force"]].concat());
    assert!(o.status.success(), "{}", text(&o));
    assert!(std::fs::read(heat.join("a_attention.png")).unwrap().starts_with(b"\x89PNG"));
    // --out is never written through a link either.
    let csv = tmp.path().join("p.csv");
    std::os::unix::fs::symlink(&victim, &csv).unwrap();
    fails_with(&magsd(&["predict", s(&img), "--model", s(run), "--device", "cpu", "--out", s(&csv), "--force"]), &["symbolic link"]);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
}

#[test]
fn csv_cells_that_start_a_formula_are_quoted_and_truncated_jpegs_are_warned_about() {
    let (_, data, run) = tiny_phantom_model();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("in");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(phantom(data), dir.join("=HYPERLINK(1).png")).unwrap();
    std::fs::copy(phantom(data), dir.join("@x.png")).unwrap();
    // A JPEG cut in half: it decodes (the missing rows grey) but must say so.
    let gray = image::open(phantom(data)).unwrap().resize_exact(256, 256, image::imageops::FilterType::Triangle).to_luma8();
    let mut jpeg = std::io::Cursor::new(Vec::new());
    gray.write_to(&mut jpeg, image::ImageFormat::Jpeg).unwrap();
    let bytes = jpeg.into_inner();
    std::fs::write(dir.join("cut.jpg"), &bytes[..bytes.len() / 2]).unwrap();

    let csv = tmp.path().join("p.csv");
    // Relative paths, as a user in that folder types them: the cells start with the names.
    let o = Command::new(common::BIN)
        .current_dir(&dir)
        .args(["predict", "=HYPERLINK(1).png", "@x.png", "cut.jpg", "--model", s(run), "--device", "cpu", "--out", s(&csv)])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("cut.jpg: truncated JPEG"), "{}", text(&o));
    let mut r = csv::Reader::from_path(&csv).unwrap();
    let header: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let rows: Vec<csv::StringRecord> = r.records().map(|x| x.unwrap()).collect();
    assert_eq!(rows.len(), 3);
    for row in &rows {
        let file = &row[col("path")];
        assert!(!file.starts_with(['=', '+', '-', '@']), "a formula cell: {file}");
        if file.contains("HYPERLINK") || file.contains("@x") {
            assert!(file.starts_with('\''), "{file}");
        }
        // Numbers stay numbers.
        for (h, v) in header.iter().zip(row.iter()) {
            if h.starts_with("prob_") {
                v.parse::<f64>().unwrap_or_else(|_| panic!("{h} = {v}"));
            }
        }
        assert_eq!(row[col("warnings")].contains("truncated JPEG"), file.ends_with("cut.jpg"), "{row:?}");
    }
    let o = magsd(&["predict", s(&dir.join("cut.jpg")), "--model", s(run), "--device", "cpu", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v = &json_lines(&o)[0];
    assert!(v["warnings"][0].as_str().unwrap().contains("truncated JPEG"), "{v}");
    let o = magsd(&["data", "inspect", s(&dir.join("cut.jpg"))]);
    assert!(text(&o).contains("warning: truncated JPEG"), "{}", text(&o));
}

#[test]
fn absurd_model_sizes_thresholds_and_schedules_are_refused_with_a_message() {
    let (_, data, run) = tiny_phantom_model();
    let tmp = tempfile::tempdir().unwrap();
    let o = bounded(&["model", "info", "--maps", "1024", "--classes", "10000"]);
    fails_with(&o, &["parameters", "1024 maps", "10000 classes"]);
    // The same numbers in a model file's metadata.
    let (tensors, mut meta) = magsd::model::weights::load_tensors(&run.join("model.safetensors")).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&meta[magsd::model::weights::CONFIG_KEY]).unwrap();
    cfg["num_maps"] = serde_json::json!(1024);
    cfg["num_classes"] = serde_json::json!(10_000);
    cfg["class_names"] = serde_json::json!([]);
    meta.insert(magsd::model::weights::CONFIG_KEY.into(), cfg.to_string());
    let huge = tmp.path().join("huge.safetensors");
    magsd::model::weights::save_tensors(&huge, &tensors, meta).unwrap();
    fails_with(&bounded(&["model", "info", "--weights", s(&huge)]), &["parameters"]);
    fails_with(&bounded(&["predict", s(&phantom(data)), "--model", s(&huge), "--device", "cpu"]), &["parameters"]);

    for t in ["rel:5", "abs:nan", "rel:-1"] {
        let o = magsd(&["predict", s(&phantom(data)), "--model", s(run), "--device", "cpu", "--threshold", t]);
        fails_with(&o, &[t]);
    }
    let out = tmp.path().join("r");
    let o = magsd(&["train", "--data", s(data), "--preset", "tiny", "--set", "optim.schedule.min_lr=5", "--out", s(&out)]);
    fails_with(&o, &["optim.schedule.min_lr", "5"]);
    assert!(!out.exists());
}

#[test]
fn a_closed_pipe_ends_quietly() {
    let (_, data, _) = tiny_phantom_model();
    let mut child = Command::new(common::BIN)
        .args(["data", "summary", "--data", s(data), "--folds", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // `| head -0`: the reader is gone before magsd prints its first line.
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked") && o.status.code() != Some(101), "{:?}\n{err}", o.status);
}

/// A PNG chunk with its CRC.
fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut crc = !0u32;
    for &b in kind.iter().chain(data) {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    [&(data.len() as u32).to_be_bytes()[..], kind, data, &(!crc).to_be_bytes()].concat()
}

fn png_header(w: u32, h: u32) -> Vec<u8> {
    let ihdr = [&w.to_be_bytes()[..], &h.to_be_bytes(), &[8, 0, 0, 0, 0]].concat();
    [&b"\x89PNG\r\n\x1a\n"[..], &chunk(b"IHDR", &ihdr)].concat()
}

#[test]
fn data_summary_counts_only_files_that_decode() {
    let (_, data, _) = tiny_phantom_model();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("set");
    for class in ["a", "b"] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for i in 0..2 {
            std::fs::copy(phantom(data).with_file_name(format!("normal_000{i}.png")), root.join(format!("{class}/{i}.png"))).unwrap();
        }
    }
    std::fs::write(root.join("a/empty.png"), b"").unwrap();
    std::fs::write(root.join("a/text.png"), b"hello, not an image\n").unwrap();
    std::fs::write(root.join("b/zero.png"), [png_header(0, 0), chunk(b"IEND", &[])].concat()).unwrap();
    std::fs::write(root.join("b/header-only.png"), [png_header(64, 64), chunk(b"IEND", &[])].concat()).unwrap();
    let o = bounded(&["data", "summary", "--data", s(&root), "--folds", "0"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("images: 4 "), "{out}");
    assert!(out.contains("not images (4"), "{out}");
    for f in ["empty.png", "text.png", "zero.png", "header-only.png"] {
        assert!(out.contains(f), "{f} not listed:\n{out}");
    }
}
