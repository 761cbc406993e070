//! How an epoch draws its training images (`data.sampling`): the default shuffle, or one of two
//! source-aware samplers measured as shortcut mitigations (issue 22; not defaults).
//!
//! The balanced samplers draw with replacement, each image with a weight, `len` draws per epoch
//! (the same number of steps as the shuffle):
//! * `source-balanced`: weight 1 / (training images of its source), so every source contributes
//!   the same share of an epoch;
//! * `source-class-balanced`: weight 1 / (training images of its source and class), so every
//!   (source, class) cell that exists contributes the same share: inside a source, no class is
//!   more frequent than another, and "this source, so this class" stops paying.
//!
//! The source is the metadata column `data.source_column` (`source_repo` by default); an image
//! without it belongs to the source "". The draws are seeded by (seed, epoch), so a resumed run
//! repeats them.
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::data::dataset::Dataset;
use crate::rng::Rng;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sampling {
    /// Every training image once per epoch in a seeded shuffle (repeated to fill a fixed epoch length).
    #[default]
    Shuffle,
    /// With replacement, every source the same share.
    SourceBalanced,
    /// With replacement, every (source, class) cell the same share.
    SourceClassBalanced,
}

impl Sampling {
    pub fn is_shuffle(&self) -> bool {
        *self == Sampling::Shuffle
    }
}

/// The default source column of the balanced samplers.
pub fn default_source_column() -> String {
    "source_repo".into()
}

/// Each training image's draw weight under `sampling` (`None` for the shuffle).
pub fn weights(ds: &Dataset, train_idx: &[usize], sampling: Sampling, column: &str) -> Option<Vec<f64>> {
    let key = |i: usize| -> (String, Option<usize>) {
        let source = ds.samples[i].meta.get(column).cloned().unwrap_or_default();
        match sampling {
            Sampling::SourceClassBalanced => (source, Some(ds.samples[i].label)),
            _ => (source, None),
        }
    };
    if sampling.is_shuffle() {
        return None;
    }
    let mut counts: HashMap<(String, Option<usize>), usize> = HashMap::new();
    for &i in train_idx {
        *counts.entry(key(i)).or_default() += 1;
    }
    Some(train_idx.iter().map(|&i| 1.0 / counts[&key(i)] as f64).collect())
}

/// `len` draws with replacement from `train_idx` with `weights` (same order), seeded by
/// (seed, epoch).
pub fn weighted_order(train_idx: &[usize], weights: &[f64], seed: u64, epoch: usize, len: usize) -> Vec<usize> {
    let mut cumulative = Vec::with_capacity(weights.len());
    let mut total = 0.0;
    for w in weights {
        total += w;
        cumulative.push(total);
    }
    let mut rng = Rng::derive(seed, &[2, epoch as u64, 0x5A3F]);
    (0..len)
        .map(|_| {
            let u = rng.uniform() * total;
            let k = cumulative.partition_point(|&c| c <= u).min(train_idx.len() - 1);
            train_idx[k]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::dataset::{Sample, SourceKind};

    fn dataset(cells: &[(&str, usize, usize)]) -> Dataset {
        let mut samples = Vec::new();
        for &(source, label, n) in cells {
            for _ in 0..n {
                samples.push(Sample {
                    path: "x".into(),
                    name: format!("{}", samples.len()),
                    label,
                    patient_id: None,
                    meta: [("source_repo".to_string(), source.to_string())].into(),
                });
            }
        }
        Dataset {
            source: "m.csv".into(),
            kind: SourceKind::Manifest,
            classes: vec!["a".into(), "b".into()],
            samples,
            excluded: Default::default(),
            problems: vec![],
            skipped: vec![],
        }
    }

    #[test]
    fn balanced_sampling_gives_every_cell_its_share() {
        // Source x: 90 of class a, 10 of b; source y: 20 of b.
        let ds = dataset(&[("x", 0, 90), ("x", 1, 10), ("y", 1, 20)]);
        let idx: Vec<usize> = (0..ds.samples.len()).collect();
        assert_eq!(weights(&ds, &idx, Sampling::Shuffle, "source_repo"), None);
        let share = |sampling: Sampling| {
            let w = weights(&ds, &idx, sampling, "source_repo").unwrap();
            let order = weighted_order(&idx, &w, 1, 0, 30_000);
            assert_eq!(order, weighted_order(&idx, &w, 1, 0, 30_000), "seeded");
            let mut cell = [0usize; 3];
            for i in order {
                cell[if i < 90 { 0 } else if i < 100 { 1 } else { 2 }] += 1;
            }
            cell.map(|c| c as f64 / 30_000.0)
        };
        let s = share(Sampling::SourceClassBalanced);
        assert!(s.iter().all(|v| (v - 1.0 / 3.0).abs() < 0.02), "{s:?}");
        let s = share(Sampling::SourceBalanced);
        assert!((s[0] + s[1] - 0.5).abs() < 0.02 && (s[2] - 0.5).abs() < 0.02, "{s:?}");
        assert!((s[0] / (s[0] + s[1]) - 0.9).abs() < 0.03, "within a source, the classes keep their ratio: {s:?}");
    }
}
