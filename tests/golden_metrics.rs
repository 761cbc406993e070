//! Metrics against scikit-learn 1.9 on `../shared/reference/golden/metrics.json`, to 1e-9.
use magsd::eval::metrics::compute;

#[test]
fn metrics_match_scikit_learn() {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/reference/golden/metrics.json");
    let cases: Vec<serde_json::Value> = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(cases.len(), 3);
    for case in cases {
        let k = case["classes"].as_u64().unwrap() as usize;
        let y: Vec<usize> = case["y_true"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        let probs: Vec<Vec<f64>> = case["probs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect())
            .collect();
        let classes: Vec<String> = (0..k).map(|c| c.to_string()).collect();
        let m = compute(&y, &probs, &classes);
        let close = |name: &str, got: f64, key: &str| {
            let want = case[key].as_f64().unwrap();
            assert!((got - want).abs() < 1e-9, "{k} classes: {name} = {got}, scikit-learn {want}");
        };
        close("accuracy", m.accuracy, "acc");
        close("macro sensitivity", m.sensitivity.unwrap(), "sen_macro");
        close("macro specificity", m.specificity.unwrap(), "spc_macro");
        close("macro F1", m.f1.unwrap(), "f1_macro");
        close("macro AUC", m.auc.unwrap(), "auc_ovr_macro");
        for (c, want) in case["auc_per_class_ovr"].as_array().unwrap().iter().enumerate() {
            let got = m.per_class[c].auc.unwrap();
            assert!((got - want.as_f64().unwrap()).abs() < 1e-9, "{k} classes: AUC of class {c}");
        }
        let confusion: Vec<Vec<usize>> = serde_json::from_value(case["confusion"].clone()).unwrap();
        assert_eq!(m.confusion, confusion, "{k} classes: confusion matrix");
        let pred: Vec<usize> = case["y_pred"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        let ours: Vec<usize> = probs.iter().map(|p| magsd::eval::metrics::argmax(p)).collect();
        assert_eq!(ours, pred);
    }
}
