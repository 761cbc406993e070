//! The shortcut audit's maths against scikit-learn 1.9 on `tests/fixtures/probe_sklearn.json`
//! (written by `scripts/make_probe_fixture.py` with scikit-learn itself): GroupKFold's fold
//! assignment, StandardScaler + LogisticRegression(C=1), and the whole cross-validated source probe.
use magsd::data::split::group_kfold_assign;
use magsd::eval::logistic::{FitOptions, LogisticRegression, Scaler};
use magsd::eval::probe::{ProbeInput, source_probe};
use serde_json::Value;
use tch::{Kind, Tensor};

fn fixture() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/probe_sklearn.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn matrix(v: &Value) -> Vec<Vec<f64>> {
    v.as_array().unwrap().iter().map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()).collect()
}

fn tensor(rows: &[Vec<f64>]) -> Tensor {
    Tensor::from_slice(&rows.concat()).reshape([rows.len() as i64, rows[0].len() as i64])
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

#[test]
fn group_kfold_assigns_folds_as_scikit_learn() {
    for case in fixture()["group_kfold"].as_array().unwrap() {
        let groups = strings(&case["groups"]);
        let k = case["k"].as_u64().unwrap() as usize;
        let want: Vec<usize> = case["folds"].as_array().unwrap().iter().map(|f| f.as_u64().unwrap() as usize).collect();
        assert_eq!(group_kfold_assign(&groups, k).unwrap(), want, "groups {groups:?}, k = {k}");
    }
    assert_eq!(group_kfold_assign(&["a".to_string(), "b".to_string()], 3), None);
}

#[test]
fn logistic_regression_matches_scikit_learn() {
    for case in fixture()["logistic"].as_array().unwrap() {
        let x = tensor(&matrix(&case["x"]));
        let y: Vec<usize> = case["y"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        let k = case["k"].as_u64().unwrap() as usize;
        let xs = Scaler::fit(&x).transform(&x);
        let tight = LogisticRegression::fit(&xs, &y, k, FitOptions { tol: 1e-10, ..Default::default() });
        assert!(tight.converged, "{k} classes: {} iterations", tight.iterations);
        // scikit-learn's coef_ is [m, d]; ours [d, m].
        let coef = tensor(&matrix(&case["coef"])).transpose(0, 1);
        let err = (&tight.weights - &coef).abs().max().double_value(&[]);
        eprintln!("{k} classes: weights within {err}, {} iterations", tight.iterations);
        assert!(err < 1e-6, "{k} classes: weights differ by {err}");
        let intercept = Tensor::from_slice(&case["intercept"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect::<Vec<f64>>());
        let err = (&tight.intercept - &intercept).abs().max().double_value(&[]);
        assert!(err < 1e-6, "{k} classes: intercepts differ by {err}");
        let proba = tensor(&matrix(&case["proba"]));
        for (name, model) in [("tight", &tight), ("default", &LogisticRegression::fit(&xs, &y, k, FitOptions::default()))] {
            let err = (model.predict_proba(&xs).to_kind(Kind::Double) - &proba).abs().max().double_value(&[]);
            assert!(err < 1e-5, "{k} classes, {name} tolerance: probabilities differ by {err}");
        }
    }
}

#[test]
fn the_cross_validated_source_probe_matches_scikit_learn() {
    let case = &fixture()["probe"];
    let features: Vec<Vec<f32>> = matrix(&case["features"]).iter().map(|r| r.iter().map(|&v| v as f32).collect()).collect();
    let sources = strings(&case["sources"]);
    let patients = strings(&case["patients"]);
    let labels = vec![0usize; sources.len()];
    let classes = vec!["only".to_string()];
    let input = ProbeInput { features: &features, labels: &labels, classes: &classes, sources: &sources, patients: &patients };
    let probe = source_probe("source_repo", &input);
    let s = probe.source.unwrap();
    assert_eq!(s.folds, case["folds"].as_u64().unwrap() as usize);
    let want = case["accuracy"].as_f64().unwrap();
    assert!((s.accuracy - want).abs() < 1e-12, "accuracy {} vs scikit-learn {want}", s.accuracy);
    assert!(probe.class_within.is_empty(), "one class: no class probe");
}
