//! The README's first command as a library call: phantoms → train → evaluate → localise → report.
use magsd::demo::{DemoOptions, run};

#[test]
fn demo_learns_the_phantoms_and_localises_better_than_a_uniform_map() {
    let d = tempfile::tempdir().unwrap();
    let mut o = DemoOptions::new(d.path().join("demo")).unwrap();
    o.verbose = false;
    let s = run(&o).unwrap();
    assert_eq!(s.classes.len(), 4);
    assert_eq!(s.test_images + s.train_images, 240);
    // Clearly better than chance (0.25), with a margin.
    assert!(s.accuracy >= s.chance_accuracy + 0.35, "held-out accuracy {} vs chance {}", s.accuracy, s.chance_accuracy);
    assert!(s.auc.unwrap() > 0.8, "AUC {:?}", s.auc);
    // Attention boxes overlap the true lesion masks more than a uniform map's whole-image box.
    let (iou, uniform) = (s.mean_iou.unwrap(), s.uniform_iou.unwrap());
    assert!(iou >= uniform + 0.02, "attention IoU {iou} vs uniform {uniform}");
    for f in ["report.html", "report.md", "metrics.json", "localization.json", "curves.png", "roc.png", "confusion.png", "summary.json"] {
        assert!(d.path().join("demo").join(f).exists(), "{f} missing");
    }
    assert_eq!(std::fs::read_dir(d.path().join("demo/overlays")).unwrap().count(), 8);
    // The report compares the model's maps with Grad-CAM on the same model and two priors (issue 20).
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(d.path().join("demo/metrics.json")).unwrap()).unwrap();
    let methods: Vec<&str> = m["saliency"]["methods"].as_array().unwrap().iter().map(|x| x["method"].as_str().unwrap()).collect();
    for want in ["mean", "class", "class14", "gradcam", "gradcam++", "uniform", "centre"] {
        assert!(methods.contains(&want), "{want} missing from {methods:?}");
    }
    let report = std::fs::read_to_string(d.path().join("demo/report.md")).unwrap();
    assert!(report.contains("Saliency methods compared"));
}
