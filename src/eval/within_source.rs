//! Within-source metrics (issue 22): does the model tell the classes apart inside one source, or
//! only tell the sources apart?
//!
//! The shared cxr set's classes are confounded with their sources (viral and bacterial are
//! almost all one pediatric collection, COVID-19 is all adult). A model that recognises the
//! source scores well overall without reading the disease. Only the sources that hold at least
//! two classes ("mixed" sources) can show the difference, so the figures here pool those:
//!
//! * **within-source ACC**: the accuracy over the images of the mixed sources;
//! * **within-source macro-F1**: each mixed source's macro-F1 (over the classes present in that
//!   source), averaged with weights equal to the sources' image counts;
//! * **within-source AUC**: for each class, the share of (positive, negative) image pairs *from
//!   the same source* in which the positive image gets the higher score for that class (ties
//!   count half) — the one-vs-rest AUC restricted to within-source pairs, which is each mixed
//!   source's AUC weighted by its number of such pairs; then the unweighted mean over the classes
//!   with at least one such pair (for two classes, class 1's, as the overall AUC).
//!
//! A source holding one class gives no within-source pair and no second class to confuse: it is
//! listed, and left out (`n/a` for everything that needs two classes). The overall figures are
//! given beside them, with 95 % percentile bootstrap intervals from the same resamples of
//! patients (`eval::stats::bootstrap_ci`, seeded).
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::metrics::{binary_auc, compute_over};
use super::stats::{BootstrapCi, bootstrap_ci};

/// Bootstrap resamples of the within-source and overall intervals in `eval` and training reports.
pub const RESAMPLES: usize = 1000;

/// One source and the classes of its images.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceClasses {
    pub source: String,
    pub images: usize,
    /// The classes with at least one image from this source, in class order.
    pub classes: Vec<String>,
}

/// Within-source and overall figures for one metadata column (see the module docs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WithinSource {
    pub column: String,
    /// Sources holding at least two classes: the within-source figures pool these.
    pub mixed: Vec<SourceClasses>,
    /// Sources holding one class (n/a for everything that needs two).
    pub single_class: Vec<SourceClasses>,
    /// Images of the mixed sources.
    pub images: usize,
    pub accuracy: Option<BootstrapCi>,
    pub f1: Option<BootstrapCi>,
    pub auc: Option<BootstrapCi>,
    pub overall_accuracy: Option<BootstrapCi>,
    pub overall_f1: Option<BootstrapCi>,
    pub overall_auc: Option<BootstrapCi>,
}

/// What the statistics see: one entry per image.
pub struct Scored<'a> {
    pub labels: &'a [usize],
    pub probs: &'a [Vec<f64>],
    /// Each image's source (the column's value).
    pub sources: &'a [String],
    /// Each image's patient (the bootstrap resamples patients).
    pub patients: &'a [String],
    pub classes: &'a [String],
    /// Classes counted in the macro means (see `metrics::compute_over`).
    pub counted: &'a [bool],
}

impl Scored<'_> {
    fn subset(&self, idx: &[usize]) -> (Vec<usize>, Vec<Vec<f64>>) {
        (idx.iter().map(|&i| self.labels[i]).collect(), idx.iter().map(|&i| self.probs[i].clone()).collect())
    }

    /// Accuracy of the images `idx`.
    fn accuracy(&self, idx: &[usize]) -> Option<f64> {
        let (y, p) = self.subset(idx);
        (!idx.is_empty()).then(|| compute_over(&y, &p, self.classes, self.counted).accuracy)
    }

    fn macro_f1(&self, idx: &[usize]) -> Option<f64> {
        let (y, p) = self.subset(idx);
        compute_over(&y, &p, self.classes, self.counted).f1
    }

    fn macro_auc(&self, idx: &[usize]) -> Option<f64> {
        let (y, p) = self.subset(idx);
        compute_over(&y, &p, self.classes, self.counted).auc
    }

    /// `idx` split by source (sorted by source name).
    fn by_source(&self, idx: &[usize]) -> Vec<Vec<usize>> {
        let mut m: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for &i in idx {
            m.entry(self.sources[i].as_str()).or_default().push(i);
        }
        m.into_values().collect()
    }

    /// Image-weighted mean of the sources' macro-F1 (sources without one are left out).
    pub fn within_f1(&self, idx: &[usize]) -> Option<f64> {
        let (mut sum, mut weight) = (0.0, 0usize);
        for part in self.by_source(idx) {
            if let Some(f) = self.macro_f1(&part) {
                sum += f * part.len() as f64;
                weight += part.len();
            }
        }
        (weight > 0).then(|| sum / weight as f64)
    }

    /// The class-`c` AUC over within-source pairs: (concordant pairs, pairs).
    fn within_pairs(&self, parts: &[Vec<usize>], c: usize) -> (f64, f64) {
        let (mut concordant, mut pairs) = (0.0, 0.0);
        for part in parts {
            let positive: Vec<bool> = part.iter().map(|&i| self.labels[i] == c).collect();
            let scores: Vec<f64> = part.iter().map(|&i| self.probs[i][c]).collect();
            let n_pos = positive.iter().filter(|&&p| p).count() as f64;
            let n_neg = positive.len() as f64 - n_pos;
            if let Some(auc) = binary_auc(&positive, &scores) {
                concordant += auc * n_pos * n_neg;
                pairs += n_pos * n_neg;
            }
        }
        (concordant, pairs)
    }

    /// Macro AUC over within-source pairs (class 1's for two classes); `None` without such pairs.
    pub fn within_auc(&self, idx: &[usize]) -> Option<f64> {
        let parts = self.by_source(idx);
        let k = self.classes.len();
        let auc_of = |c: usize| {
            let (concordant, pairs) = self.within_pairs(&parts, c);
            (pairs > 0.0).then(|| concordant / pairs)
        };
        if k == 2 {
            return auc_of(1).filter(|_| self.counted[0] && self.counted[1]);
        }
        let aucs: Vec<f64> = (0..k).filter(|&c| self.counted[c]).filter_map(auc_of).collect();
        (!aucs.is_empty()).then(|| aucs.iter().sum::<f64>() / aucs.len() as f64)
    }
}

/// Items grouped by patient, in a fixed order (for the bootstrap).
fn patient_groups(s: &Scored, idx: &[usize]) -> Vec<Vec<usize>> {
    let mut m: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for &i in idx {
        m.entry(s.patients[i].as_str()).or_default().push(i);
    }
    m.into_values().collect()
}

/// The sources of `s` with the classes of their images, in source order.
pub fn source_classes(s: &Scored) -> Vec<SourceClasses> {
    let mut m: BTreeMap<&str, (usize, Vec<bool>)> = BTreeMap::new();
    for (i, src) in s.sources.iter().enumerate() {
        let e = m.entry(src.as_str()).or_insert_with(|| (0, vec![false; s.classes.len()]));
        e.0 += 1;
        e.1[s.labels[i]] = true;
    }
    m.into_iter()
        .map(|(source, (images, present))| SourceClasses {
            source: source.to_string(),
            images,
            classes: s.classes.iter().zip(present).filter(|(_, p)| *p).map(|(c, _)| c.clone()).collect(),
        })
        .collect()
}

/// Within-source and overall figures of `s` for `column`, with intervals from `resamples`
/// bootstrap resamples of patients (seeded by `seed`: one stream per statistic).
pub fn within_source(column: &str, s: &Scored, resamples: usize, seed: u64) -> WithinSource {
    let (mixed, single_class): (Vec<SourceClasses>, Vec<SourceClasses>) = source_classes(s).into_iter().partition(|sc| sc.classes.len() >= 2);
    let in_mixed: Vec<usize> = (0..s.labels.len()).filter(|&i| mixed.iter().any(|m| m.source == s.sources[i])).collect();
    let all: Vec<usize> = (0..s.labels.len()).collect();
    let (mixed_groups, all_groups) = (patient_groups(s, &in_mixed), patient_groups(s, &all));
    let stream = |k: u64| crate::rng::mix(seed, &[0x5041_4952, k]);
    let ci = |groups: &[Vec<usize>], k: u64, stat: &dyn Fn(&[usize]) -> Option<f64>| {
        if groups.is_empty() { None } else { bootstrap_ci(groups, resamples, stream(k), 0.95, stat) }
    };
    WithinSource {
        column: column.to_string(),
        images: in_mixed.len(),
        accuracy: ci(&mixed_groups, 0, &|idx| s.accuracy(idx)),
        f1: ci(&mixed_groups, 1, &|idx| s.within_f1(idx)),
        auc: ci(&mixed_groups, 2, &|idx| s.within_auc(idx)),
        overall_accuracy: ci(&all_groups, 0, &|idx| s.accuracy(idx)),
        overall_f1: ci(&all_groups, 1, &|idx| s.macro_f1(idx)),
        overall_auc: ci(&all_groups, 2, &|idx| s.macro_auc(idx)),
        mixed,
        single_class,
    }
}

impl WithinSource {
    /// `lower` when the within-source interval of macro-F1 (or AUC where F1 is undefined) lies
    /// below the overall estimate, `no clear gap` otherwise, `n/a` without mixed sources.
    pub fn gap(&self) -> &'static str {
        let pick = [(&self.f1, &self.overall_f1), (&self.auc, &self.overall_auc)];
        match pick.iter().find_map(|(w, o)| Some((w.as_ref()?, o.as_ref()?))) {
            None => "n/a",
            Some((w, o)) if w.high < o.estimate => "lower",
            Some(_) => "no clear gap",
        }
    }

    /// One plain sentence on what the gap between the overall and the within-source figures
    /// means (macro-F1, or AUC where F1 is undefined).
    pub fn verdict(&self) -> String {
        if self.mixed.is_empty() {
            return format!(
                "No {} holds images of two classes, so these results cannot tell recognising the disease from \
                 recognising the {}: every within-source figure is n/a.",
                self.column, self.column
            );
        }
        let pick = [("macro-F1", &self.f1, &self.overall_f1), ("AUC", &self.auc, &self.overall_auc)];
        let Some((name, within, overall)) = pick.iter().find_map(|(n, w, o)| Some((*n, w.as_ref()?, o.as_ref()?))) else {
            return "The within-source figures are undefined here (too few images of a second class).".into();
        };
        let pct = |v: f64| format!("{:.1} %", 100.0 * v);
        if self.gap() == "lower" {
            format!(
                "Within a {col}, {name} is {} (95 % CI {}–{}) against {} overall: the model separates the classes less well \
                 inside one {col} than across them, so part of its overall score comes from recognising the {col}, not the disease.",
                pct(within.estimate),
                pct(within.low),
                pct(within.high),
                pct(overall.estimate),
                col = self.column
            )
        } else {
            format!(
                "Within a {col}, {name} is {} (95 % CI {}–{}) against {} overall: no clear gap, so the overall figure does not \
                 rest on telling the {col}s apart (this says nothing about {col}s absent from the data).",
                pct(within.estimate),
                pct(within.low),
                pct(within.high),
                pct(overall.estimate),
                col = self.column
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(k: usize) -> Vec<String> {
        (0..k).map(|c| format!("c{c}")).collect()
    }

    /// Two sources, each mostly one class; scores that only know the source.
    fn shortcut() -> (Vec<usize>, Vec<Vec<f64>>, Vec<String>, Vec<String>) {
        let mut y = Vec::new();
        let mut p = Vec::new();
        let mut src = Vec::new();
        for (s, main) in [(0usize, 0usize), (1, 1)] {
            for i in 0..20 {
                let label = if i < 16 { main } else { 1 - main };
                y.push(label);
                // The score for class 1 depends on the source only (plus a tiny jitter).
                let q = if s == 1 { 0.8 } else { 0.2 } + 0.001 * ((i * 7) % 5) as f64;
                p.push(vec![1.0 - q, q]);
                src.push(format!("s{s}"));
            }
        }
        let patients = (0..y.len()).map(|i| format!("p{i}")).collect();
        (y, p, src, patients)
    }

    #[test]
    fn a_source_reader_is_at_chance_within_sources_and_good_overall() {
        let (y, p, src, pat) = shortcut();
        let classes = names(2);
        let s = Scored { labels: &y, probs: &p, sources: &src, patients: &pat, classes: &classes, counted: &[true, true] };
        let w = within_source("source", &s, 200, 1);
        assert_eq!(w.mixed.len(), 2);
        assert!(w.single_class.is_empty());
        let (within, overall) = (w.auc.as_ref().unwrap(), w.overall_auc.as_ref().unwrap());
        assert!((within.estimate - 0.5).abs() < 0.2, "within-source AUC {}", within.estimate);
        assert!(overall.estimate > 0.75, "overall AUC {}", overall.estimate);
        // Per source: predicts its majority class: F1 of (0.889 for the main class, 0 for the other) / 2.
        let f1 = w.f1.as_ref().unwrap().estimate;
        assert!((f1 - (2.0 * 16.0 / (2.0 * 16.0 + 4.0)) / 2.0).abs() < 1e-12, "{f1}");
        assert!(w.overall_f1.as_ref().unwrap().estimate > 0.75);
        assert!(w.verdict().contains("less well"), "{}", w.verdict());
    }

    #[test]
    fn within_source_auc_counts_only_pairs_from_one_source() {
        // Source a: pos 0.9, neg 0.1 (1 concordant pair). Source b: pos 0.2, negs 0.3, 0.1
        // (pairs: 0.2<0.3 discordant, 0.2>0.1 concordant). Pooled: 2 of 3 pairs.
        let y = vec![1, 0, 1, 0, 0];
        let p: Vec<Vec<f64>> = [0.9, 0.1, 0.2, 0.3, 0.1].iter().map(|&q| vec![1.0 - q, q]).collect();
        let src: Vec<String> = ["a", "a", "b", "b", "b"].iter().map(|s| s.to_string()).collect();
        let pat: Vec<String> = (0..5).map(|i| i.to_string()).collect();
        let classes = names(2);
        let s = Scored { labels: &y, probs: &p, sources: &src, patients: &pat, classes: &classes, counted: &[true, true] };
        let all: Vec<usize> = (0..5).collect();
        assert!((s.within_auc(&all).unwrap() - 2.0 / 3.0).abs() < 1e-12);
        // Across sources the pair (0.9 pos from a, 0.3 neg from b) etc. would count: overall AUC differs.
        assert!((s.macro_auc(&all).unwrap() - 5.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn one_class_sources_are_listed_and_left_out() {
        let y = vec![0, 0, 1, 0, 1];
        let p: Vec<Vec<f64>> = [0.1, 0.2, 0.9, 0.4, 0.6].iter().map(|&q| vec![1.0 - q, q]).collect();
        let src: Vec<String> = ["only0", "only0", "mixed", "mixed", "mixed"].iter().map(|s| s.to_string()).collect();
        let pat: Vec<String> = (0..5).map(|i| i.to_string()).collect();
        let classes = names(2);
        let s = Scored { labels: &y, probs: &p, sources: &src, patients: &pat, classes: &classes, counted: &[true, true] };
        let w = within_source("source", &s, 50, 0);
        assert_eq!(w.single_class, vec![SourceClasses { source: "only0".into(), images: 2, classes: vec!["c0".into()] }]);
        assert_eq!(w.mixed.len(), 1);
        assert_eq!(w.images, 3);
        assert_eq!(w.accuracy.as_ref().unwrap().estimate, 1.0);
        // Only one-class sources: n/a everywhere, and said so.
        let src1: Vec<String> = ["a", "a", "b", "a", "b"].iter().map(|s| s.to_string()).collect();
        let y1 = vec![0, 0, 1, 0, 1];
        let s1 = Scored { labels: &y1, sources: &src1, ..s };
        let w = within_source("source", &s1, 50, 0);
        assert!(w.mixed.is_empty() && w.accuracy.is_none() && w.f1.is_none() && w.auc.is_none());
        assert!(w.overall_auc.is_some());
        assert!(w.verdict().contains("n/a"), "{}", w.verdict());
    }
}
