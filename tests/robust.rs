//! `magsd eval` on hostile data: a bad DICOM, a truncated JPEG and a missing file are all
//! counted and listed (and `--strict` refuses them all at once); classes left out with
//! `--classes`; paths outside the data root; evaluation on the model's own training images;
//! and reports that use the README's names and state the intended use.
use std::path::{Path, PathBuf};

use common::{magsd, text};

mod common;

/// A freshly initialised tiny model (64 px) saved as a run folder trained on `data`, so that
/// `magsd eval` can tell when it is evaluated on its own training images.
fn model_run(dir: &Path, classes: &[&str], data: &Path) -> PathBuf {
    let run = dir.join("run");
    std::fs::create_dir_all(&run).unwrap();
    common::run_json(&run, data, classes, 0, "magsd train (test)");
    common::tiny_model(&run.join("model.safetensors"), 64, classes)
}

fn png(path: &Path, shade: u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::GrayImage::from_fn(64, 64, |x, y| image::Luma([shade.wrapping_add((x ^ y) as u8)])).save(path).unwrap();
}

/// A DICOM whose header claims 99 bits per sample (it used to panic inside dicom-pixeldata).
fn bad_dicom(path: &Path) {
    let samples = common::dicom::Samples::U16(vec![7u16; 64]);
    common::dicom::Dicom { rows: 8, columns: 8, bits_stored: 99, high_bit: 98, samples, ..Default::default() }.write(path);
}

/// Three good images per class a/b/c, plus a bad DICOM, a JPEG cut in half and a row whose file
/// does not exist (all of class a).
fn hostile_data(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    let mut rows = vec!["path,label,source_repo".to_string()];
    for (c, class) in ["a", "b", "c"].iter().enumerate() {
        for i in 0..3 {
            let rel = format!("img/{class}{i}.png");
            png(&data.join(&rel), (c * 80 + i * 5) as u8);
            rows.push(format!("{rel},{class},{}", if i == 0 { "repo1" } else { "repo2" }));
        }
    }
    bad_dicom(&data.join("img/bad.dcm"));
    let mut jpg = std::io::Cursor::new(Vec::new());
    // Large enough that half the file is well into the scan data.
    image::GrayImage::from_fn(256, 256, |x, y| image::Luma([((x * 7) ^ (y * 3)) as u8]))
        .write_to(&mut jpg, image::ImageFormat::Jpeg)
        .unwrap();
    let jpg = jpg.into_inner();
    std::fs::write(data.join("img/cut.jpg"), &jpg[..jpg.len() / 2]).unwrap();
    rows.extend(["img/bad.dcm,a,repo1".into(), "img/cut.jpg,a,repo1".into(), "img/gone.png,a,repo1".into()]);
    std::fs::write(data.join("manifest.csv"), rows.join("\n") + "\n").unwrap();
    data
}

#[test]
fn eval_lists_a_bad_dicom_a_truncated_jpeg_and_a_missing_file_and_strict_refuses_them() {
    let d = tempfile::tempdir().unwrap();
    let data = hostile_data(d.path());
    let model = model_run(d.path(), &["a", "b", "c"], &data);
    let out = d.path().join("eval");
    let run = |extra: &[&str]| {
        let mut a = vec!["eval", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--device", "cpu"];
        a.extend(["--out", out.to_str().unwrap(), "--overlays", "6", "--batch-size", "4"]);
        a.extend(extra);
        magsd(&a)
    };

    // --strict: every problem listed at once, nothing written, exit 2.
    let o = run(&["--strict"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    for name in ["bad.dcm", "cut.jpg", "gone.png"] {
        assert!(t.contains(name), "--strict does not list {name}:\n{t}");
    }
    assert!(t.contains("3 image(s)") && t.contains("Bits Stored") && t.contains("truncated JPEG"), "{t}");
    assert!(!out.join("metrics.json").exists());

    // Without --strict: the bad DICOM and the missing file are skipped and listed, the
    // truncated JPEG is used with a warning; exit 1 because images were skipped.
    let o = run(&[]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("2 image(s) not evaluated") && t.contains("bad.dcm") && t.contains("gone.png"), "{t}");
    assert!(t.contains("cut.jpg") && t.contains("truncated JPEG"), "{t}");
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(m["overall"]["n"], 10);
    assert_eq!(m["skipped"], 2);
    let listed: Vec<&str> = m["unreadable"].as_array().unwrap().iter().map(|u| u["path"].as_str().unwrap()).collect();
    assert!(listed.iter().any(|p| p.ends_with("gone.png")) && listed.iter().any(|p| p.ends_with("bad.dcm")), "{listed:?}");
    assert!(m["warnings"][0]["path"].as_str().unwrap().ends_with("cut.jpg"));

    // The model's run.json says it was trained on this very data: loud in console and report.
    assert!(t.contains("WARNING: 10 of the 10 evaluated images were used to train"), "{t}");
    assert_eq!(m["training_overlap"]["images"], 10);
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("WARNING: 10 of the 10 evaluated images"), "{report}");
    assert!(report.contains("Images not evaluated (2)") && report.contains("gone.png") && report.contains("bad.dcm"));
    assert!(report.contains("Research use only; not for diagnosis."));
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("Research use only; not for diagnosis."));

    // README names, never Rust debug names.
    assert!(report.contains("bap head") && report.contains("z-score per-image"), "{report}");
    for debug in ["Bap", "PerImage", "Relative(", "Absolute(", "Mixup", "Some(", "[\""] {
        assert!(!report.contains(debug), "report shows the debug name {debug}:\n{report}");
    }

    // Overlays: all three classes, captioned with true and predicted class.
    let captions: Vec<&str> = report.lines().filter(|l| l.starts_with("*img/")).collect();
    assert_eq!(captions.len(), 6, "{report}");
    for class in ["a", "b", "c"] {
        assert!(captions.iter().any(|c| c.contains(&format!("true {class},"))), "{captions:?}");
    }
    assert!(captions.iter().all(|c| c.contains("predicted")));
}

#[test]
fn classes_left_out_with_classes_are_named_as_such_and_kept_out_of_the_means() {
    let d = tempfile::tempdir().unwrap();
    let data = hostile_data(d.path());
    std::fs::write(
        data.join("manifest.csv"),
        std::fs::read_to_string(data.join("manifest.csv"))
            .unwrap()
            .lines()
            .filter(|l| !l.contains("bad.dcm") && !l.contains("cut.jpg") && !l.contains("gone.png"))
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    // The model knows a, b and c; its run was trained elsewhere.
    let model = model_run(d.path(), &["a", "b", "c"], &d.path().join("elsewhere"));
    let out = d.path().join("eval");
    let o = magsd(&[
        "eval", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--device", "cpu", "--out",
        out.to_str().unwrap(), "--overlays", "0", "--classes", "a,b",
    ]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(t.contains("3 image(s) labelled 'c' left out: not among --classes"), "{t}");
    assert!(!t.contains("not a class of this model"), "{t}");
    assert!(!t.contains("WARNING"), "{t}");
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
    let per_class = m["overall"]["per_class"].as_array().unwrap();
    let present: Vec<&serde_json::Value> = per_class.iter().filter(|c| c["support"].as_u64().unwrap() > 0).collect();
    assert_eq!(present.len(), 2);
    let mean = |k: &str| present.iter().map(|c| c[k].as_f64().unwrap()).sum::<f64>() / 2.0;
    for k in ["sensitivity", "specificity", "f1"] {
        assert!((m["overall"][k].as_f64().unwrap() - mean(k)).abs() < 1e-12, "macro {k} is not over the present classes");
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("have no image in this data"), "{report}");
    assert!(!report.lines().any(|l| l.starts_with("| c |")), "class c has a row in the table:\n{report}");
}

#[test]
fn manifest_paths_outside_the_data_root_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    png(&data.join("a/1.png"), 10);
    png(&d.path().join("outside.png"), 20);
    std::fs::write(data.join("manifest.csv"), "path,label\na/1.png,a\n../outside.png,b\n").unwrap();
    let model = model_run(d.path(), &["a", "b"], &d.path().join("elsewhere"));
    let base = ["eval", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--device", "cpu", "--overlays", "0"];
    let o = magsd(&base);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(t.contains("../outside.png") && t.contains("--allow-outside-root"), "{t}");
    let out = d.path().join("eval");
    let mut allowed = base.to_vec();
    allowed.extend(["--allow-outside-root", "--out", out.to_str().unwrap()]);
    let o = magsd(&allowed);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}
