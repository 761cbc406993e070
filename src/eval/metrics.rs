//! Classification metrics with the correct definitions (spec §5), matching scikit-learn:
//! accuracy; per-class one-vs-rest sensitivity TP/(TP+FN), specificity TN/(TN+FP) (the
//! authors' code computes the negative predictive value TN/(TN+FN) instead), precision and
//! F1 = 2TP/(2TP+FP+FN); ROC AUC per class (one-vs-rest, ties counted half, as
//! `roc_auc_score`); unweighted means over classes; the confusion matrix; mean ± std over folds.
//!
//! Macro averages run over the classes present in the true labels, as scikit-learn does when
//! given `labels` = the classes present in `y_true`: a class with no image in the data (e.g. a
//! model class left out with `--classes`) stays in the per-class table but does not pull the
//! means down. The macro AUC runs over classes that have both positives and negatives. For two
//! classes the macro AUC is the binary AUC of class 1 (what `roc_auc_score` returns for binary
//! problems). Undefined ratios are `None` (`null` in JSON, printed `n/a`), never 0: sensitivity
//! with no positives, specificity with no negatives (TN + FP = 0, e.g. a COVID-only cohort),
//! precision of a class never predicted, F1 with TP + FP + FN = 0. They are left out of the macro
//! means, as scikit-learn's `zero_division=np.nan` does; a mean over nothing is `None` too.
//!
//! [`compute_over`] leaves chosen classes out of the macro means as well (e.g. classes that a
//! grouped fold's training part never saw, whose figures would only measure that absence).
//!
//! Scores must be finite: [`try_compute`] and [`check_scores`] refuse NaN or infinite
//! probabilities (a diverged model) with an error instead of ranking them.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PerClass {
    pub class: String,
    pub support: usize,
    /// TP / (TP + FN); `None` without positives.
    pub sensitivity: Option<f64>,
    /// TN / (TN + FP); `None` without negatives.
    pub specificity: Option<f64>,
    /// TP / (TP + FP); `None` when the class is never predicted.
    pub precision: Option<f64>,
    /// 2TP / (2TP + FP + FN); `None` when that is 0/0.
    pub f1: Option<f64>,
    /// `None` when the class has no positives or no negatives.
    pub auc: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Metrics {
    pub n: usize,
    pub accuracy: f64,
    /// Macro means over the classes present whose value is defined; `None` when none is.
    pub sensitivity: Option<f64>,
    pub specificity: Option<f64>,
    pub f1: Option<f64>,
    pub auc: Option<f64>,
    pub per_class: Vec<PerClass>,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<usize>>,
}

/// Index of the largest probability; the first on ties (numpy's argmax).
pub fn argmax(p: &[f64]) -> usize {
    let mut best = 0;
    for (i, &v) in p.iter().enumerate() {
        if v > p[best] {
            best = i;
        }
    }
    best
}

/// `a / b`, `None` when `b` is 0 (scikit-learn's `zero_division=np.nan`).
fn ratio(a: usize, b: usize) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

/// Mean of the defined values; `None` when there are none (NumPy's `nanmean` of all-NaN, which
/// scikit-learn then reports as NaN).
pub fn mean_defined(values: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    let v: Vec<f64> = values.into_iter().flatten().collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// A rate as a percentage with two decimals, or `n/a`.
pub fn pct_or_na(v: Option<f64>) -> String {
    v.map(|x| format!("{:.2}", 100.0 * x)).unwrap_or_else(|| "n/a".into())
}

/// A number with four decimals, or `n/a`.
pub fn fixed4_or_na(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.4}")).unwrap_or_else(|| "n/a".into())
}

/// Binary ROC AUC of `scores` for `positive` labels, ties counted half (Mann–Whitney U).
/// `None` unless both classes are present.
pub fn binary_auc(positive: &[bool], scores: &[f64]) -> Option<f64> {
    let n_pos = positive.iter().filter(|&&p| p).count();
    let n_neg = positive.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Average ranks (1-based) over runs of equal scores.
    let mut rank_sum_pos = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum_pos += avg_rank * order[i..=j].iter().filter(|&&k| positive[k]).count() as f64;
        i = j + 1;
    }
    let u = rank_sum_pos - (n_pos * (n_pos + 1)) as f64 / 2.0;
    Some(u / (n_pos as f64 * n_neg as f64))
}

/// Refuses scores that are NaN or infinite (a diverged model), and rows of the wrong length,
/// naming the first offending row.
pub fn check_scores(probs: &[Vec<f64>], classes: usize) -> Result<()> {
    let bad_rows = probs.iter().filter(|p| p.iter().any(|v| !v.is_finite())).count();
    if let Some(first) = probs.iter().position(|p| p.iter().any(|v| !v.is_finite())) {
        return Err(Error::Data(format!(
            "{bad_rows} of {} predictions have non-finite scores (first: row {first}, {:?}); the model \
             has diverged or its weights are broken, so no metric or figure is computed",
            probs.len(),
            probs[first]
        )));
    }
    if let Some(row) = probs.iter().position(|p| p.len() != classes) {
        return Err(Error::Data(format!("prediction row {row} has {} scores for {classes} classes", probs[row].len())));
    }
    Ok(())
}

/// [`compute`] after [`check_scores`]: an error instead of metrics of non-finite scores.
pub fn try_compute(y_true: &[usize], probs: &[Vec<f64>], classes: &[String]) -> Result<Metrics> {
    try_compute_over(y_true, probs, classes, &vec![true; classes.len()])
}

/// [`compute_over`] after the checks of [`try_compute`].
pub fn try_compute_over(y_true: &[usize], probs: &[Vec<f64>], classes: &[String], counted: &[bool]) -> Result<Metrics> {
    if y_true.len() != probs.len() {
        return Err(Error::Data(format!("{} labels for {} predictions", y_true.len(), probs.len())));
    }
    if let Some(&y) = y_true.iter().find(|&&y| y >= classes.len()) {
        return Err(Error::Data(format!("label {y} is not one of the {} classes", classes.len())));
    }
    check_scores(probs, classes.len())?;
    Ok(compute_over(y_true, probs, classes, counted))
}

/// Metrics of predictions `argmax(probs)` against `y_true`, for `classes` (names in order).
/// Expects finite scores; callers with untrusted scores use [`try_compute`].
pub fn compute(y_true: &[usize], probs: &[Vec<f64>], classes: &[String]) -> Metrics {
    compute_over(y_true, probs, classes, &vec![true; classes.len()])
}

/// [`compute`] with the macro means over the classes present in `y_true` for which
/// `counted[c]` holds (the per-class figures and the accuracy still cover every class). With two
/// classes the AUC needs both counted.
pub fn compute_over(y_true: &[usize], probs: &[Vec<f64>], classes: &[String], counted: &[bool]) -> Metrics {
    assert_eq!(y_true.len(), probs.len());
    assert_eq!(counted.len(), classes.len());
    let k = classes.len();
    let n = y_true.len();
    let y_pred: Vec<usize> = probs.iter().map(|p| argmax(p)).collect();
    let mut confusion = vec![vec![0usize; k]; k];
    for (&t, &p) in y_true.iter().zip(&y_pred) {
        confusion[t][p] += 1;
    }
    let correct: usize = (0..k).map(|c| confusion[c][c]).sum();
    let mut per_class = Vec::with_capacity(k);
    for c in 0..k {
        let tp = confusion[c][c];
        let fn_ = (0..k).filter(|&p| p != c).map(|p| confusion[c][p]).sum::<usize>();
        let fp = (0..k).filter(|&t| t != c).map(|t| confusion[t][c]).sum::<usize>();
        let tn = n - tp - fn_ - fp;
        let positive: Vec<bool> = y_true.iter().map(|&t| t == c).collect();
        let scores: Vec<f64> = probs.iter().map(|p| p[c]).collect();
        per_class.push(PerClass {
            class: classes[c].clone(),
            support: tp + fn_,
            sensitivity: ratio(tp, tp + fn_),
            specificity: ratio(tn, tn + fp),
            precision: ratio(tp, tp + fp),
            f1: ratio(2 * tp, 2 * tp + fp + fn_),
            auc: binary_auc(&positive, &scores),
        });
    }
    // Classes present in the true labels (scikit-learn with `labels=np.unique(y_true)`) and counted.
    let used: Vec<&PerClass> = (0..k).filter(|&c| counted[c] && per_class[c].support > 0).map(|c| &per_class[c]).collect();
    let mean = |f: &dyn Fn(&PerClass) -> Option<f64>| mean_defined(used.iter().map(|m| f(m)));
    let auc = if k == 2 {
        per_class[1].auc.filter(|_| counted[0] && counted[1])
    } else {
        mean_defined((0..k).filter(|&c| counted[c]).map(|c| per_class[c].auc))
    };
    Metrics {
        n,
        // n = 0 happens only for an empty set, which callers do not report.
        accuracy: ratio(correct, n).unwrap_or(0.0),
        sensitivity: mean(&|m| m.sensitivity),
        specificity: mean(&|m| m.specificity),
        f1: mean(&|m| m.f1),
        auc,
        per_class,
        confusion,
    }
}

/// Mean and sample standard deviation (n − 1) of one metric over folds.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct MeanStd {
    pub mean: f64,
    pub std: f64,
    pub n: usize,
}

pub fn mean_std(values: &[f64]) -> MeanStd {
    let n = values.len();
    let mean = values.iter().sum::<f64>() / n.max(1) as f64;
    let var = if n > 1 { values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64 } else { 0.0 };
    MeanStd { mean, std: var.sqrt(), n }
}

/// ACC, SEN, SPC, F1 and AUC as mean ± std over folds, each over the folds where it is defined
/// (a metric defined in no fold is left out).
pub fn summarise(folds: &[Metrics]) -> BTreeMap<String, MeanStd> {
    let mut out = BTreeMap::new();
    type Pick = fn(&Metrics) -> Option<f64>;
    let metrics: [(&str, Pick); 5] = [
        ("accuracy", |m| (m.n > 0).then_some(m.accuracy)),
        ("sensitivity", |m| m.sensitivity),
        ("specificity", |m| m.specificity),
        ("f1", |m| m.f1),
        ("auc", |m| m.auc),
    ];
    for (name, f) in metrics {
        let values: Vec<f64> = folds.iter().filter_map(f).collect();
        if !values.is_empty() {
            out.insert(name.to_string(), mean_std(&values));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(k: usize) -> Vec<String> {
        (0..k).map(|c| format!("c{c}")).collect()
    }

    #[test]
    fn auc_counts_ties_half_and_needs_both_classes() {
        assert_eq!(binary_auc(&[false, true], &[0.1, 0.9]), Some(1.0));
        assert_eq!(binary_auc(&[true, false], &[0.1, 0.9]), Some(0.0));
        assert_eq!(binary_auc(&[true, false], &[0.5, 0.5]), Some(0.5));
        // pos {0.8, 0.4}, neg {0.4, 0.2}: pairs (0.8>0.4) (0.8>0.2) (0.4=0.4 → ½) (0.4>0.2) → 3.5/4.
        assert_eq!(binary_auc(&[true, true, false, false], &[0.8, 0.4, 0.4, 0.2]), Some(0.875));
        assert_eq!(binary_auc(&[true, true], &[0.1, 0.2]), None);
    }

    #[test]
    fn specificity_is_tn_over_tn_plus_fp_not_npv() {
        // True: [0,0,0,1]; predicted: [0,0,1,1]. Class 0: TP 2, FN 1, FP 0, TN 1.
        let probs = vec![vec![0.9, 0.1], vec![0.8, 0.2], vec![0.3, 0.7], vec![0.2, 0.8]];
        let m = compute(&[0, 0, 0, 1], &probs, &names(2));
        assert_eq!(m.per_class[0].specificity, Some(1.0)); // TN/(TN+FP) = 1/1; NPV would be 1/2
        assert_eq!(m.per_class[1].specificity, Some(2.0 / 3.0));
        assert_eq!(m.confusion, vec![vec![2, 1], vec![0, 1]]);
        assert_eq!(m.accuracy, 0.75);
    }

    #[test]
    fn mean_std_uses_sample_std() {
        let s = mean_std(&[1.0, 2.0, 3.0]);
        assert_eq!(s.mean, 2.0);
        assert_eq!(s.std, 1.0);
    }

    #[test]
    fn macro_means_cover_only_classes_present_in_the_data() {
        // Class 2 has no image but is predicted once (a 3-class model evaluated with
        // `--classes c0,c1`). scikit-learn, labels=[0, 1]: recall 0.75, specificity 1, F1 5/6.
        let probs = vec![vec![0.8, 0.1, 0.1], vec![0.2, 0.2, 0.6], vec![0.1, 0.8, 0.1], vec![0.1, 0.7, 0.2]];
        let m = compute(&[0, 0, 1, 1], &probs, &names(3));
        assert_eq!(m.per_class.len(), 3);
        assert_eq!(m.per_class[2].support, 0);
        assert_eq!(m.sensitivity, Some(0.75));
        assert_eq!(m.specificity, Some(1.0));
        assert!((m.f1.unwrap() - 5.0 / 6.0).abs() < 1e-12, "{:?}", m.f1);
        // Macro AUC over the classes with positives and negatives (0 and 1).
        assert_eq!(m.per_class[2].auc, None);
        // The absent class's sensitivity is undefined, not 0; predicted once, its precision is
        // 0/1 and its F1 2TP/(2TP+FP+FN) = 0/1, as scikit-learn's f1_score gives per class.
        assert_eq!(m.per_class[2].sensitivity, None);
        assert_eq!((m.per_class[2].precision, m.per_class[2].f1), (Some(0.0), Some(0.0)));
    }

    #[test]
    fn a_one_class_set_has_no_specificity_and_uncounted_classes_leave_the_means() {
        // Every image is class 0: no negatives for class 0, so no specificity at all.
        let probs = vec![vec![0.8, 0.2], vec![0.3, 0.7]];
        let m = compute(&[0, 0], &probs, &names(2));
        assert_eq!(m.per_class[0].specificity, None);
        assert_eq!(m.specificity, None);
        assert_eq!(m.auc, None);
        assert_eq!(m.accuracy, 0.5);
        // Class 1 never predicted: no precision.
        let m = compute(&[0, 1], &[vec![0.9, 0.1], vec![0.6, 0.4]], &names(2));
        assert_eq!(m.per_class[1].precision, None);
        // Class 2 present but not counted (e.g. absent from training): out of the macro means.
        let probs = vec![vec![0.8, 0.1, 0.1], vec![0.1, 0.8, 0.1], vec![0.1, 0.8, 0.1]];
        let m = compute_over(&[0, 1, 2], &probs, &names(3), &[true, true, false]);
        assert_eq!(m.sensitivity, Some(1.0));
        assert_eq!(m.per_class[2].sensitivity, Some(0.0));
        // Nothing counted: no macro mean at all.
        let none = compute_over(&[2], &[vec![0.1, 0.1, 0.8]], &names(3), &[true, true, false]);
        assert_eq!((none.sensitivity, none.f1, none.accuracy), (None, None, 1.0));
        assert!((m.accuracy - 2.0 / 3.0).abs() < 1e-12);
        let aucs = [m.per_class[0].auc.unwrap(), m.per_class[1].auc.unwrap()];
        assert_eq!(m.auc, Some((aucs[0] + aucs[1]) / 2.0));
    }

    #[test]
    fn undefined_ratios_are_none_and_left_out_of_the_means() {
        // A COVID-only cohort (every true label is class 0): class 0 has no negatives, so its
        // specificity is undefined, and so is the macro specificity (the only class present).
        let probs = vec![vec![0.9, 0.1], vec![0.3, 0.7], vec![0.8, 0.2]];
        let m = compute(&[0, 0, 0], &probs, &names(2));
        assert_eq!(m.per_class[0].specificity, None);
        assert_eq!(m.specificity, None, "not 0: there is no negative to be specific about");
        assert_eq!(m.per_class[0].sensitivity, Some(2.0 / 3.0));
        assert_eq!(m.sensitivity, Some(2.0 / 3.0));
        // Class 1 has no positives (sensitivity undefined) but negatives (specificity 2/3).
        assert_eq!(m.per_class[1].sensitivity, None);
        assert_eq!(m.per_class[1].specificity, Some(2.0 / 3.0));
        // A class never predicted and never true: precision and F1 are 0/0.
        let m = compute(&[0, 0], &[vec![0.9, 0.1], vec![0.8, 0.2]], &names(2));
        assert_eq!((m.per_class[1].precision, m.per_class[1].f1), (None, None));
        assert_eq!(m.f1, Some(1.0));
        let s = summarise(&[m.clone(), m]);
        assert!(!s.contains_key("specificity"), "undefined in every fold: absent, printed n/a");
        assert_eq!(pct_or_na(None), "n/a");
    }

    #[test]
    fn non_finite_scores_are_refused_with_an_error() {
        let probs = vec![vec![f64::NAN, f64::NAN], vec![0.2, 0.8]];
        let e = try_compute(&[0, 1], &probs, &names(2)).unwrap_err().to_string();
        assert!(e.contains("non-finite") && e.contains("row 0"), "{e}");
        let probs = vec![vec![0.5, f64::INFINITY]];
        assert!(try_compute(&[0], &probs, &names(2)).is_err());
        assert!(try_compute(&[0], &[vec![0.5, 0.5]], &names(2)).is_ok());
        assert!(try_compute(&[5], &[vec![0.5, 0.5]], &names(2)).is_err());
    }
}
