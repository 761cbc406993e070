//! Calibration, undefined metrics and out-of-distribution measures against scikit-learn 1.9,
//! SciPy 1.17 and OpenOOD's metric code, on `tests/fixtures/reliability_golden.json` (written by
//! `scripts/make_reliability_fixture.py`).
use magsd::eval::calibration::{brier, fit_temperature, reliability};
use magsd::eval::metrics::compute;
use magsd::eval::ood::{Mahalanobis, ledoit_wolf_shrinkage, ood_metrics};
use serde_json::Value;
use tch::{Kind, Tensor};

fn golden() -> Value {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reliability_golden.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

fn vec_f64(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn matrix(v: &Value) -> Vec<Vec<f64>> {
    v.as_array().unwrap().iter().map(vec_f64).collect()
}

fn labels(v: &Value) -> Vec<usize> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect()
}

fn tensor(m: &[Vec<f64>]) -> Tensor {
    let flat: Vec<f64> = m.iter().flatten().copied().collect();
    Tensor::from_slice(&flat).view([m.len() as i64, m[0].len() as i64])
}

fn close(got: Option<f64>, want: &Value, what: &str) {
    match (got, want.as_f64()) {
        (None, None) => {}
        (Some(g), Some(w)) => assert!((g - w).abs() < 1e-12, "{what}: {g} vs scikit-learn {w}"),
        (g, _) => panic!("{what}: {g:?} vs scikit-learn {want}"),
    }
}

#[test]
fn undefined_ratios_are_none_and_left_out_of_macro_means_as_scikit_learn_does() {
    for (i, case) in golden()["undefined_metrics"].as_array().unwrap().iter().enumerate() {
        let k = case["classes"].as_u64().unwrap() as usize;
        let classes: Vec<String> = (0..k).map(|c| c.to_string()).collect();
        let m = compute(&labels(&case["y_true"]), &matrix(&case["probs"]), &classes);
        for c in 0..k {
            let pc = &m.per_class[c];
            close(pc.sensitivity, &case["sensitivity"][c], &format!("case {i} class {c} sensitivity"));
            close(pc.specificity, &case["specificity"][c], &format!("case {i} class {c} specificity"));
            close(pc.precision, &case["precision"][c], &format!("case {i} class {c} precision"));
            close(pc.f1, &case["f1"][c], &format!("case {i} class {c} F1"));
        }
        close(m.sensitivity, &case["sen_macro"], &format!("case {i} macro sensitivity"));
        close(m.specificity, &case["spc_macro"], &format!("case {i} macro specificity"));
        close(m.f1, &case["f1_macro"], &format!("case {i} macro F1"));
    }
}

#[test]
fn brier_matches_scikit_learn_and_ece_matches_the_reference_binning() {
    let g = golden();
    for case in g["brier"].as_array().unwrap() {
        let got = brier(&matrix(&case["probs"]), &labels(&case["y_true"])).unwrap();
        let want = case["brier"].as_f64().unwrap();
        assert!((got - want).abs() < 1e-12, "{} classes: Brier {got} vs scikit-learn {want}", case["classes"]);
    }
    for case in g["ece"].as_array().unwrap() {
        let got = reliability(&matrix(&case["probs"]), &labels(&case["y_true"])).ece;
        let want = case["ece"].as_f64().unwrap();
        assert!((got - want).abs() < 1e-12, "{} classes: ECE {got} vs {want}", case["classes"]);
    }
}

#[test]
fn temperature_matches_scipy_minimising_the_nll() {
    let t = &golden()["temperature"];
    let c = fit_temperature(&matrix(&t["logits"]), &labels(&t["y_true"])).unwrap();
    let want = t["temperature"].as_f64().unwrap();
    assert!((c.temperature - want).abs() < 1e-6, "T {} vs SciPy {want}", c.temperature);
    assert!((c.nll_after - t["nll"].as_f64().unwrap()).abs() < 1e-10);
    assert!((c.nll_before - t["nll_at_1"].as_f64().unwrap()).abs() < 1e-10);
}

#[test]
fn ledoit_wolf_and_mahalanobis_match_scikit_learn() {
    let g = golden();
    let lw = &g["ledoit_wolf"];
    let got = ledoit_wolf_shrinkage(&tensor(&matrix(&lw["x_centred"])));
    let want = lw["shrinkage"].as_f64().unwrap();
    assert!((got - want).abs() < 1e-12, "shrinkage {got} vs scikit-learn {want}");

    let mh = &g["mahalanobis"];
    let m = Mahalanobis::fit(&tensor(&matrix(&mh["x"])), &labels(&mh["labels"])).unwrap();
    assert!((m.shrinkage - mh["shrinkage"].as_f64().unwrap()).abs() < 1e-12);
    let got = m.score(&tensor(&matrix(&mh["queries"])).to_kind(Kind::Float));
    for (g, w) in got.iter().zip(vec_f64(&mh["distance"])) {
        // The stored basis and means are f32.
        assert!((g - w).abs() < 1e-4 * w.max(1.0), "distance {g} vs {w}");
    }
}

#[test]
fn auroc_and_fpr_at_95_tpr_match_openood() {
    let o = &golden()["ood_metrics"];
    let m = ood_metrics(&vec_f64(&o["id_scores"]), &vec_f64(&o["ood_scores"]));
    assert!((m.auroc.unwrap() - o["auroc"].as_f64().unwrap()).abs() < 1e-12, "{m:?}");
    assert_eq!(m.fpr_at_95_tpr, o["fpr_at_95_tpr"].as_f64(), "{m:?}");
}
