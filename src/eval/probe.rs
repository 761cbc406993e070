//! Linear probes on a model's features (issue 22): can the source of an image be read from what
//! the network computes, and can the class be read within one source?
//!
//! The features are the global average of the network's last feature map (`NetworkOutput::
//! features`, layer4 for MA-Net, 256 numbers for the tiny preset and 2048 for ResNet50: what a
//! GAP head classifies, and what the BAP head pools under its attention maps), on the held-out
//! images. A probe is a cross-validated multinomial logistic regression (`eval::logistic`,
//! standardised features, C = 1): scikit-learn's `GroupKFold` over patients (at most 5 folds),
//! each fold predicted by a probe fitted on the others.
//!
//! * The **source probe** predicts the source (a `--by` column's value) of every image; its
//!   accuracy is compared with the majority-source rate (always guessing the largest source).
//! * The **class probe** is fitted inside each source that holds at least two classes, and its
//!   accuracy there compared with that source's majority-class rate.
//!
//! A probe's *skill* is how much of the way from the majority rate to 100 % it goes:
//! (accuracy − majority) / (1 − majority). The **shortcut signature** is a source probe with
//! skill ≥ [`SOURCE_SKILL_HIGH`] together with a pooled within-source class probe with skill ≤
//! [`CLASS_SKILL_LOW`]: the features say where an image came from, not what it shows.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::logistic::{FitOptions, LogisticRegression, Scaler};
use crate::data::split::group_kfold_assign;

/// At most this many cross-validation folds per probe.
pub const FOLDS: usize = 5;
/// Source-probe skill at or above which the source counts as readable from the features.
pub const SOURCE_SKILL_HIGH: f64 = 0.75;
/// Within-source class-probe skill at or below which the class counts as unreadable.
pub const CLASS_SKILL_LOW: f64 = 0.25;

/// A cross-validated probe's result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeScore {
    pub images: usize,
    /// Cross-validation folds (grouped by patient).
    pub folds: usize,
    /// Distinct targets (sources or classes).
    pub targets: usize,
    pub accuracy: f64,
    /// The share of the most frequent target.
    pub majority_rate: f64,
    pub majority: String,
}

impl ProbeScore {
    /// (accuracy − majority) / (1 − majority); `None` when one target is everything.
    pub fn skill(&self) -> Option<f64> {
        (self.majority_rate < 1.0).then(|| (self.accuracy - self.majority_rate) / (1.0 - self.majority_rate))
    }
}

/// The class probe inside one source that holds at least two classes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassWithin {
    pub source: String,
    /// `None` when the source has too few patients (fewer than two) to cross-validate.
    pub probe: Option<ProbeScore>,
}

/// Both probes for one metadata column.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceProbe {
    pub column: String,
    /// Feature dimension.
    pub features: usize,
    /// The source probe over all images; `None` with one source or too few patients.
    pub source: Option<ProbeScore>,
    pub class_within: Vec<ClassWithin>,
    /// The class probes of every mixed source together: correct predictions and majority
    /// counts summed over the sources.
    pub class_within_pooled: Option<ProbeScore>,
    pub shortcut_signature: bool,
}

/// What the probes see: one entry per image.
pub struct ProbeInput<'a> {
    /// `[n, d]` features.
    pub features: &'a [Vec<f32>],
    pub labels: &'a [usize],
    pub classes: &'a [String],
    pub sources: &'a [String],
    pub patients: &'a [String],
}

/// Cross-validated predictions of `targets` (indices) of `rows` from their features, folds
/// grouped by patient. `None` with fewer than two patients.
fn cross_validate(input: &ProbeInput, rows: &[usize], targets: &[usize]) -> Option<(Vec<usize>, usize)> {
    let groups: Vec<String> = rows.iter().map(|&r| input.patients[r].clone()).collect();
    let mut distinct = groups.clone();
    distinct.sort();
    distinct.dedup();
    let k = FOLDS.min(distinct.len());
    if k < 2 {
        return None;
    }
    let fold_of = group_kfold_assign(&groups, k)?;
    let d = input.features.first().map(|f| f.len()).unwrap_or(0) as i64;
    let x_all = Tensor::from_slice(&rows.iter().flat_map(|&r| input.features[r].iter().map(|&v| f64::from(v))).collect::<Vec<f64>>())
        .reshape([rows.len() as i64, d]);
    let mut predicted = vec![0usize; rows.len()];
    for f in 0..k {
        let (test, train): (Vec<usize>, Vec<usize>) = (0..rows.len()).partition(|&i| fold_of[i] == f);
        // The targets seen in training, renumbered 0.. for the fit.
        let mut seen: Vec<usize> = train.iter().map(|&i| targets[i]).collect();
        seen.sort_unstable();
        seen.dedup();
        if seen.len() < 2 {
            for &i in &test {
                predicted[i] = seen[0];
            }
            continue;
        }
        let index = |t: usize| seen.iter().position(|&s| s == t).expect("a seen target");
        let pick = |idx: &[usize]| x_all.index_select(0, &Tensor::from_slice(&idx.iter().map(|&i| i as i64).collect::<Vec<i64>>()));
        let x_train = pick(&train);
        let scaler = Scaler::fit(&x_train);
        let y: Vec<usize> = train.iter().map(|&i| index(targets[i])).collect();
        let model = LogisticRegression::fit(&scaler.transform(&x_train), &y, seen.len(), FitOptions::default());
        for (&i, p) in test.iter().zip(model.predict(&scaler.transform(&pick(&test)))) {
            predicted[i] = seen[p];
        }
    }
    Some((predicted, k))
}

/// Scores a probe of `targets` (indices into `names`) over `rows`.
fn probe(input: &ProbeInput, rows: &[usize], targets: &[usize], names: &[String]) -> Option<ProbeScore> {
    let (predicted, folds) = cross_validate(input, rows, targets)?;
    let correct = predicted.iter().zip(targets).filter(|(p, t)| p == t).count();
    let mut counts = vec![0usize; names.len()];
    for &t in targets {
        counts[t] += 1;
    }
    let majority = (0..names.len()).max_by_key(|&t| (counts[t], std::cmp::Reverse(t))).unwrap_or(0);
    Some(ProbeScore {
        images: rows.len(),
        folds,
        targets: counts.iter().filter(|&&c| c > 0).count(),
        accuracy: correct as f64 / rows.len() as f64,
        majority_rate: counts[majority] as f64 / rows.len() as f64,
        majority: names[majority].clone(),
    })
}

/// The source probe and the within-source class probes for `column`.
pub fn source_probe(column: &str, input: &ProbeInput) -> SourceProbe {
    let n = input.labels.len();
    let mut names: Vec<String> = input.sources.to_vec();
    names.sort();
    names.dedup();
    let source_idx: Vec<usize> = input.sources.iter().map(|s| names.binary_search(s).expect("a listed source")).collect();
    let all: Vec<usize> = (0..n).collect();
    let source = (names.len() >= 2).then(|| probe(input, &all, &source_idx, &names)).flatten();

    let mut rows_of: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, s) in input.sources.iter().enumerate() {
        rows_of.entry(s.as_str()).or_default().push(i);
    }
    let mut class_within = Vec::new();
    let (mut correct, mut majority, mut images, mut folds) = (0.0, 0.0, 0usize, 0usize);
    for (src, rows) in rows_of {
        let labels: Vec<usize> = rows.iter().map(|&r| input.labels[r]).collect();
        let mut present = labels.clone();
        present.sort_unstable();
        present.dedup();
        if present.len() < 2 {
            continue;
        }
        let p = probe(input, &rows, &labels, input.classes);
        if let Some(p) = &p {
            correct += p.accuracy * p.images as f64;
            majority += p.majority_rate * p.images as f64;
            images += p.images;
            folds = folds.max(p.folds);
        }
        class_within.push(ClassWithin { source: src.to_string(), probe: p });
    }
    let class_within_pooled = (images > 0).then(|| ProbeScore {
        images,
        folds,
        targets: input.classes.len(),
        accuracy: correct / images as f64,
        majority_rate: majority / images as f64,
        majority: "each source's own".into(),
    });
    let high = source.as_ref().and_then(ProbeScore::skill).is_some_and(|s| s >= SOURCE_SKILL_HIGH);
    let low = class_within_pooled.as_ref().and_then(ProbeScore::skill).is_some_and(|s| s <= CLASS_SKILL_LOW);
    SourceProbe {
        column: column.to_string(),
        features: input.features.first().map(Vec::len).unwrap_or(0),
        source,
        class_within,
        class_within_pooled,
        shortcut_signature: high && low,
    }
}

impl SourceProbe {
    /// One plain sentence on what the probes found.
    pub fn verdict(&self) -> String {
        let pct = |v: f64| format!("{:.1} %", 100.0 * v);
        let col = &self.column;
        let Some(s) = &self.source else {
            return format!("The source probe is n/a: the images come from one {col} (or too few patients).");
        };
        let source = format!("{} against {} for always guessing the largest {col}", pct(s.accuracy), pct(s.majority_rate));
        let class = self.class_within_pooled.as_ref().map(|c| format!("{} against {} for each {col}'s majority class", pct(c.accuracy), pct(c.majority_rate)));
        match (self.shortcut_signature, class) {
            (true, Some(c)) => format!(
                "Shortcut signature: a linear probe on the model's features tells the {col} of an image ({source}) but not its class \
                 within one {col} ({c}); the features encode where an image came from more than what it shows."
            ),
            (false, Some(c)) => format!(
                "No shortcut signature: the source probe reaches {source}; within one {col} the class probe reaches {c}."
            ),
            (_, None) => format!(
                "The source probe reaches {source}; no {col} holds two classes (with two patients or more), so the class cannot be \
                 probed within a {col} and the shortcut signature cannot be checked."
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_that_encode_only_the_source_show_the_signature() {
        // Two sources, each with both classes; feature 0 = the source, feature 1 = noise.
        let mut rng = crate::rng::Rng::new(3);
        let (mut f, mut y, mut s, mut p) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for i in 0..80 {
            let src = i % 2;
            f.push(vec![src as f32 + 0.05 * rng.range(-1.0, 1.0) as f32, rng.range(-1.0, 1.0) as f32]);
            y.push(if (i / 2) % 4 == 0 { 1 - src } else { src });
            s.push(format!("s{src}"));
            p.push(format!("p{i}"));
        }
        let classes = vec!["a".to_string(), "b".to_string()];
        let input = ProbeInput { features: &f, labels: &y, classes: &classes, sources: &s, patients: &p };
        let r = source_probe("source_repo", &input);
        let src = r.source.as_ref().unwrap();
        assert!(src.accuracy > 0.95, "{src:?}");
        assert_eq!(src.majority_rate, 0.5);
        assert_eq!(r.class_within.len(), 2);
        let pooled = r.class_within_pooled.as_ref().unwrap();
        assert!(pooled.skill().unwrap() <= CLASS_SKILL_LOW, "{pooled:?}");
        assert!(r.shortcut_signature);
        assert!(r.verdict().starts_with("Shortcut signature"), "{}", r.verdict());

        // Now feature 1 carries the class too: the class is readable within a source.
        for (row, &label) in f.iter_mut().zip(&y) {
            row[1] = label as f32 + 0.05 * row[1];
        }
        let input = ProbeInput { features: &f, labels: &y, classes: &classes, sources: &s, patients: &p };
        let r = source_probe("source_repo", &input);
        assert!(r.class_within_pooled.as_ref().unwrap().accuracy > 0.95);
        assert!(!r.shortcut_signature);
    }
}
