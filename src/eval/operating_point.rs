//! Operating points: a decision threshold on one class's probability, chosen on the validation
//! split to reach a stated sensitivity or specificity (`--operating-point covid19:sensitivity=0.95`),
//! stored in the model file and applied next to the probabilities ("covid19: positive at the
//! 95 %-sensitivity point"). The decision is one-vs-rest: positive when the class's (calibrated)
//! probability is at least the threshold, whatever the argmax says.
use serde::{Deserialize, Serialize};

use super::stats::{BootstrapCi, bootstrap_ci};
use crate::error::{Error, Result};

/// What the threshold is chosen to reach on the validation split.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "metric", content = "value")]
pub enum Target {
    /// At least this fraction of the class's validation images are called positive.
    Sensitivity(f64),
    /// At least this fraction of the other validation images are called negative.
    Specificity(f64),
}

impl Target {
    pub fn name(&self) -> &'static str {
        match self {
            Target::Sensitivity(_) => "sensitivity",
            Target::Specificity(_) => "specificity",
        }
    }

    pub fn value(&self) -> f64 {
        match *self {
            Target::Sensitivity(v) | Target::Specificity(v) => v,
        }
    }
}

/// An operating point asked for: `CLASS:sensitivity=0.95` or `CLASS:specificity=0.9`.
#[derive(Clone, Debug, PartialEq)]
pub struct OperatingPointSpec {
    pub class: String,
    pub target: Target,
}

impl OperatingPointSpec {
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::Config(format!("operating point '{s}': {why}; write CLASS:sensitivity=0.95 or CLASS:specificity=0.9"));
        let (class, rest) = s.rsplit_once(':').ok_or_else(|| bad("no ':'"))?;
        let (metric, value) = rest.split_once('=').ok_or_else(|| bad("no '='"))?;
        let v: f64 = value.trim().parse().map_err(|_| bad("the value is not a number"))?;
        if !(v.is_finite() && v > 0.0 && v <= 1.0) {
            return Err(bad("the value must be in (0, 1]"));
        }
        let target = match metric.trim() {
            "sensitivity" | "sen" | "tpr" => Target::Sensitivity(v),
            "specificity" | "spc" | "tnr" => Target::Specificity(v),
            _ => return Err(bad("the metric must be sensitivity or specificity")),
        };
        let class = class.trim();
        if class.is_empty() {
            return Err(bad("no class"));
        }
        Ok(OperatingPointSpec { class: class.to_string(), target })
    }

    /// The class's index among `classes`, or an error naming them.
    pub fn class_index(&self, classes: &[String]) -> Result<usize> {
        classes.iter().position(|c| *c == self.class).ok_or_else(|| {
            Error::Config(format!("operating point for '{}': not a class of this model ({})", self.class, classes.join(", ")))
        })
    }
}

impl std::fmt::Display for OperatingPointSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}={}", self.class, self.target.name(), self.target.value())
    }
}

/// A chosen operating point, as the model file stores it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OperatingPoint {
    pub class: String,
    pub target: Target,
    /// Positive when the class's probability is at least this.
    pub threshold: f64,
    /// Validation images it was chosen on, and how many of them were of the class.
    pub images: usize,
    pub positives: usize,
    /// What it achieved there.
    pub validation_sensitivity: Option<f64>,
    pub validation_specificity: Option<f64>,
}

impl OperatingPoint {
    /// "covid19: positive at the 95 %-sensitivity point".
    pub fn describe(&self, positive: bool) -> String {
        format!(
            "{}: {} at the {} %-{} point",
            self.class,
            if positive { "positive" } else { "negative" },
            fmt_percent(self.target.value()),
            self.target.name()
        )
    }

    pub fn decide(&self, probability: f64) -> bool {
        probability >= self.threshold
    }
}

/// 0.95 → "95", 0.975 → "97.5".
fn fmt_percent(v: f64) -> String {
    let s = format!("{:.2}", 100.0 * v);
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Sensitivity and specificity of "positive when score ≥ threshold".
pub fn rates(scores: &[f64], positive: &[bool], threshold: f64) -> (Option<f64>, Option<f64>) {
    let (mut tp, mut p, mut tn, mut n) = (0usize, 0usize, 0usize, 0usize);
    for (&s, &is_pos) in scores.iter().zip(positive) {
        if is_pos {
            p += 1;
            tp += usize::from(s >= threshold);
        } else {
            n += 1;
            tn += usize::from(s < threshold);
        }
    }
    ((p > 0).then(|| tp as f64 / p as f64), (n > 0).then(|| tn as f64 / n as f64))
}

/// Chooses the threshold on validation `scores` (the class's probability) of images whose
/// truth is `positive`: for a sensitivity target s, the highest threshold that calls at least
/// ⌈s·P⌉ of the P positives positive (the ⌈s·P⌉-th largest positive score); for a specificity
/// target s, the lowest that calls at least ⌈s·N⌉ of the N negatives negative (just above the
/// ⌈s·N⌉-th smallest negative score). An error when the validation split has no image of the
/// side the target is about.
pub fn choose(spec: &OperatingPointSpec, scores: &[f64], positive: &[bool]) -> Result<OperatingPoint> {
    if let Some(s) = scores.iter().find(|s| !s.is_finite()) {
        return Err(Error::Data(format!("operating point {spec}: a validation score is not finite ({s})")));
    }
    let side = |want: bool| {
        let mut v: Vec<f64> = scores.iter().zip(positive).filter(|(_, p)| **p == want).map(|(s, _)| *s).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let threshold = match spec.target {
        Target::Sensitivity(s) => {
            let pos = side(true);
            if pos.is_empty() {
                return Err(Error::Data(format!("operating point {spec}: the validation split has no image of class {}", spec.class)));
            }
            let k = ((s * pos.len() as f64) - 1e-9).ceil().max(1.0) as usize;
            pos[pos.len() - k]
        }
        Target::Specificity(s) => {
            let neg = side(false);
            if neg.is_empty() {
                return Err(Error::Data(format!("operating point {spec}: the validation split has no image of another class than {}", spec.class)));
            }
            let m = ((s * neg.len() as f64) - 1e-9).ceil().max(1.0) as usize;
            neg[m - 1].next_up()
        }
    };
    let (sen, spc) = rates(scores, positive, threshold);
    Ok(OperatingPoint {
        class: spec.class.clone(),
        target: spec.target,
        threshold,
        images: scores.len(),
        positives: positive.iter().filter(|p| **p).count(),
        validation_sensitivity: sen,
        validation_specificity: spc,
    })
}

/// What an operating point achieved on test data, with patient-level bootstrap intervals.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OperatingPointResult {
    pub point: OperatingPoint,
    pub images: usize,
    pub positives: usize,
    pub sensitivity: Option<f64>,
    pub specificity: Option<f64>,
    pub sensitivity_ci: Option<BootstrapCi>,
    pub specificity_ci: Option<BootstrapCi>,
}

/// Bootstrap settings for [`evaluate`] (as `magsd reproduce` uses for its tables).
pub const RESAMPLES: usize = 1000;
pub const SEED: u64 = 17;

/// Applies `point` to test `scores` (the class's probability per image) with truth `positive`;
/// `groups` are the images of each patient (resampled whole for the 95 % intervals).
pub fn evaluate(point: &OperatingPoint, scores: &[f64], positive: &[bool], groups: &[Vec<usize>]) -> OperatingPointResult {
    let (sensitivity, specificity) = rates(scores, positive, point.threshold);
    let on = |idx: &[usize]| {
        let s: Vec<f64> = idx.iter().map(|&i| scores[i]).collect();
        let p: Vec<bool> = idx.iter().map(|&i| positive[i]).collect();
        rates(&s, &p, point.threshold)
    };
    OperatingPointResult {
        point: point.clone(),
        images: scores.len(),
        positives: positive.iter().filter(|p| **p).count(),
        sensitivity,
        specificity,
        sensitivity_ci: bootstrap_ci(groups, RESAMPLES, SEED, 0.95, |idx| on(idx).0),
        specificity_ci: bootstrap_ci(groups, RESAMPLES, crate::rng::mix(SEED, &[1]), 0.95, |idx| on(idx).1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_bad_ones_say_why() {
        let s = OperatingPointSpec::parse("covid19:sensitivity=0.95").unwrap();
        assert_eq!(s, OperatingPointSpec { class: "covid19".into(), target: Target::Sensitivity(0.95) });
        assert_eq!(s.to_string(), "covid19:sensitivity=0.95");
        assert_eq!(OperatingPointSpec::parse("a:b:specificity=0.9").unwrap().class, "a:b");
        for bad in ["covid19", "covid19:sensitivity", "covid19:sensitivity=1.5", "covid19:recall=0.9", ":sensitivity=0.9", "x:sensitivity=nan"] {
            assert!(OperatingPointSpec::parse(bad).is_err(), "{bad}");
        }
        let classes = vec!["normal".to_string(), "covid19".to_string()];
        assert_eq!(s.class_index(&classes).unwrap(), 1);
        assert!(OperatingPointSpec::parse("flu:sensitivity=0.9").unwrap().class_index(&classes).unwrap_err().to_string().contains("normal, covid19"));
    }

    #[test]
    fn thresholds_reach_their_target_on_the_validation_split_and_no_further() {
        // 20 positives with scores 0.05..1.0, 20 negatives with scores 0.0..0.95.
        let scores: Vec<f64> = (1..=20).map(|i| i as f64 / 20.0).chain((0..20).map(|i| i as f64 / 20.0)).collect();
        let positive: Vec<bool> = (0..40).map(|i| i < 20).collect();
        let p = choose(&OperatingPointSpec::parse("c:sensitivity=0.95").unwrap(), &scores, &positive).unwrap();
        assert_eq!(p.validation_sensitivity, Some(0.95));
        assert_eq!(p.threshold, 0.1, "the 19th largest positive score");
        let p = choose(&OperatingPointSpec::parse("c:specificity=0.9").unwrap(), &scores, &positive).unwrap();
        assert_eq!(p.validation_specificity, Some(0.9));
        assert!(p.threshold > 17.0 / 20.0 && p.threshold < 18.0 / 20.0, "{}", p.threshold);
        assert!(p.decide(0.9) && !p.decide(0.85));
        assert_eq!(p.describe(true), "c: positive at the 90 %-specificity point");
        let none = choose(&OperatingPointSpec::parse("c:sensitivity=0.9").unwrap(), &[0.1, 0.2], &[false, false]);
        assert!(none.unwrap_err().to_string().contains("no image of class c"));
    }

    #[test]
    fn test_rates_come_with_patient_bootstrap_intervals() {
        let scores: Vec<f64> = (0..40).map(|i| (i % 20) as f64 / 20.0).collect();
        let positive: Vec<bool> = (0..40).map(|i| i % 20 >= 10).collect();
        let point = choose(&OperatingPointSpec::parse("c:sensitivity=1.0").unwrap(), &scores, &positive).unwrap();
        let groups: Vec<Vec<usize>> = (0..20).map(|p| vec![2 * p, 2 * p + 1]).collect();
        let r = evaluate(&point, &scores, &positive, &groups);
        assert_eq!(r.sensitivity, Some(1.0));
        let ci = r.specificity_ci.unwrap();
        assert!(ci.low <= r.specificity.unwrap() && r.specificity.unwrap() <= ci.high, "{ci:?}");
        // Only positives: specificity is undefined, not 0.
        let only = evaluate(&point, &[0.9, 0.8], &[true, true], &[vec![0], vec![1]]);
        assert_eq!((only.specificity, only.specificity_ci), (None, None));
    }
}
