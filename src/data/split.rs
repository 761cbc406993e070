//! Patient-level, class-stratified k-fold splits, source-grouped folds and a held-out source,
//! saved to JSON so a run can be repeated exactly, and the check that no patient and no image
//! (same bytes) is in two places.
//!
//! The authors drew five unseeded random folds over images (spec §4.2); with several images per
//! patient that leaks patients between training and test. Here every patient's images go to
//! one fold. A patient is stratified by the label most of their images carry (ties: the lower
//! class index). Patients are shuffled with the seed, then placed largest group first into the
//! fold that has the fewest images of their class so far (ties: fewest images, then lowest fold).
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::Path;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::dataset::Dataset;
use crate::error::{Error, Result};
use crate::rng::Rng;

/// How the folds of a run are made ([`make_split`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Grouping {
    /// Patient-level, class-stratified k-fold ([`stratified_patient_kfold`]).
    #[default]
    Patient,
    /// scikit-learn's `GroupKFold` over the values of a metadata column ([`group_kfold`]): every
    /// value (e.g. every source) in exactly one fold.
    Column { column: String },
    /// Two parts: the images whose `column` is `value` (part 0, the test part) and all others
    /// (part 1, the training part); only part 0 is held out.
    HeldOut { column: String, value: String },
}

impl Grouping {
    pub fn is_patient(&self) -> bool {
        *self == Grouping::Patient
    }

    /// How many parts are held out in turn: `k` folds, or the one held-out value.
    pub fn folds_to_run(&self, k: usize) -> usize {
        match self {
            Grouping::HeldOut { .. } => 1,
            _ => k,
        }
    }

    /// "patient-level 5-fold cross-validation", "5 folds grouped by source_repo", ...
    pub fn describe(&self, k: usize) -> String {
        match self {
            Grouping::Patient => format!("{k}-fold patient-level cross-validation"),
            Grouping::Column { column } => {
                format!("{k}-fold cross-validation grouped by {column} (every {column} value in exactly one fold)")
            }
            Grouping::HeldOut { column, value } => format!("held-out {column} '{value}' (trained on every other {column})"),
        }
    }
}

/// The folds of `indices` for `grouping`: `k` folds, or for [`Grouping::HeldOut`] the test part
/// and the training part.
pub fn make_split(ds: &Dataset, indices: &[usize], grouping: &Grouping, k: usize, seed: u64) -> Result<Folds> {
    match grouping {
        Grouping::Patient => stratified_patient_kfold(ds, indices, k, seed),
        Grouping::Column { column } => group_kfold(ds, indices, k, column),
        Grouping::HeldOut { column, value } => held_out_value(ds, indices, column, value).map(|f| Folds { seed, folds: f }),
    }
}

/// The value of metadata `column` for each of `indices`; an error naming the columns there are
/// when no image has it.
fn column_values(ds: &Dataset, indices: &[usize], column: &str) -> Result<Vec<String>> {
    if !indices.iter().any(|&i| ds.samples[i].meta.contains_key(column)) {
        let columns: Vec<&String> = ds.samples.first().map(|s| s.meta.keys().collect()).unwrap_or_default();
        return Err(Error::Config(format!(
            "{}: no column '{column}' to group by (metadata columns: {})",
            ds.source.display(),
            if columns.is_empty() { "none".to_string() } else { columns.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", ") }
        )));
    }
    Ok(indices.iter().map(|&i| ds.samples[i].meta.get(column).cloned().unwrap_or_default()).collect())
}

/// Refuses a grouping in which one patient's images carry different values of `column`: the
/// groups could not then keep patients together.
fn check_patients_within_groups(ds: &Dataset, indices: &[usize], values: &[String], column: &str) -> Result<()> {
    let mut seen: HashMap<String, &str> = HashMap::new();
    for (&i, v) in indices.iter().zip(values) {
        let key = ds.samples[i].patient_key();
        if let Some(other) = seen.insert(key.clone(), v.as_str())
            && other != v
        {
            return Err(Error::Data(format!(
                "{}: {key} has images with {column} '{other}' and '{v}' (e.g. {}); grouping by {column} would put \
                 one patient in two parts",
                ds.source.display(),
                ds.samples[i].name
            )));
        }
    }
    Ok(())
}

/// Fold of each group for scikit-learn's `GroupKFold(n_splits=k)` (1.9, no shuffle), given each
/// item's group: groups in sorted order (`np.unique`), taken largest first (a stable sort of the
/// sizes, reversed: among equal sizes the later name first), each into the fold with the fewest
/// items so far (the lowest such fold). Returns the fold of every item; `None` with fewer
/// groups than folds.
pub fn group_kfold_assign(groups: &[String], k: usize) -> Option<Vec<usize>> {
    let mut names: Vec<&String> = groups.iter().collect();
    names.sort();
    names.dedup();
    if k == 0 || names.len() < k {
        return None;
    }
    let index: HashMap<&String, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let mut sizes = vec![0usize; names.len()];
    for g in groups {
        sizes[index[g]] += 1;
    }
    let mut order: Vec<usize> = (0..names.len()).collect();
    order.sort_by_key(|&g| sizes[g]); // stable, as np.argsort(kind="stable")
    order.reverse();
    let mut per_fold = vec![0usize; k];
    let mut fold_of_group = vec![0usize; names.len()];
    for g in order {
        let lightest = (0..k).min_by_key(|&f| (per_fold[f], f)).expect("k > 0");
        per_fold[lightest] += sizes[g];
        fold_of_group[g] = lightest;
    }
    Some(groups.iter().map(|g| fold_of_group[index[g]]).collect())
}

/// scikit-learn's `GroupKFold` over the values of metadata `column` (see [`group_kfold_assign`]):
/// every value in exactly one fold, folds balanced by image count. Not stratified: a fold may
/// hold only some of the classes. An image without the column counts as the value "".
pub fn group_kfold(ds: &Dataset, indices: &[usize], k: usize, column: &str) -> Result<Folds> {
    if k < 2 {
        return Err(Error::Config(format!("k-fold needs k >= 2, got {k}")));
    }
    let values = column_values(ds, indices, column)?;
    check_patients_within_groups(ds, indices, &values, column)?;
    let assign = group_kfold_assign(&values, k).ok_or_else(|| {
        let mut distinct = values.clone();
        distinct.sort();
        distinct.dedup();
        Error::Data(format!(
            "{}: {} value(s) of {column} ({}) cannot fill {k} folds grouped by {column}: use --folds {} or fewer",
            ds.source.display(),
            distinct.len(),
            distinct.join(", "),
            distinct.len()
        ))
    })?;
    let mut folds = vec![Vec::new(); k];
    for (&i, f) in indices.iter().zip(assign) {
        folds[f].push(i);
    }
    for f in &mut folds {
        f.sort_unstable();
    }
    Ok(Folds { seed: 0, folds })
}

/// The images whose `column` is `value` (the test part) and all the others (the training part).
fn held_out_value(ds: &Dataset, indices: &[usize], column: &str, value: &str) -> Result<Vec<Vec<usize>>> {
    let values = column_values(ds, indices, column)?;
    check_patients_within_groups(ds, indices, &values, column)?;
    let (mut test, mut train) = (Vec::new(), Vec::new());
    for (&i, v) in indices.iter().zip(&values) {
        if v == value { test.push(i) } else { train.push(i) }
    }
    if test.is_empty() {
        let mut distinct: Vec<&String> = values.iter().collect();
        distinct.sort();
        distinct.dedup();
        return Err(Error::Config(format!(
            "--test-source {value}: no image has {column} '{value}'; the values are: {}",
            distinct.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        )));
    }
    if train.is_empty() {
        return Err(Error::Config(format!("--test-source {value}: every image has {column} '{value}'; nothing is left to train on")));
    }
    Ok(vec![test, train])
}

/// `k` folds of sample indices into a dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct Folds {
    pub seed: u64,
    pub folds: Vec<Vec<usize>>,
}

/// Patient-level stratified k-fold split of `indices` (sample indices of `ds`).
pub fn stratified_patient_kfold(ds: &Dataset, indices: &[usize], k: usize, seed: u64) -> Result<Folds> {
    if k < 2 {
        return Err(Error::Config(format!("k-fold needs k >= 2, got {k}")));
    }
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for &i in indices {
        groups.entry(ds.samples[i].patient_key()).or_default().push(i);
    }
    if groups.len() < k {
        return Err(Error::Data(format!(
            "{} patient(s) cannot fill {k} folds: use fewer folds or more data",
            groups.len()
        )));
    }
    let n_classes = ds.classes.len();
    let mut patients: Vec<(usize, Vec<usize>)> = groups
        .into_values()
        .map(|members| {
            let mut counts = vec![0usize; n_classes];
            for &i in &members {
                counts[ds.samples[i].label] += 1;
            }
            let stratum = (0..n_classes).max_by_key(|&c| (counts[c], std::cmp::Reverse(c))).unwrap_or(0);
            (stratum, members)
        })
        .collect();
    Rng::derive(seed, &[0x5EED_F01D]).shuffle(&mut patients);
    patients.sort_by_key(|(_, m)| std::cmp::Reverse(m.len())); // stable: ties keep the shuffle

    let mut per_class = vec![vec![0usize; n_classes]; k];
    let mut sizes = vec![0usize; k];
    let mut folds = vec![Vec::new(); k];
    for (stratum, members) in patients {
        let f = (0..k).min_by_key(|&f| (per_class[f][stratum], sizes[f], f)).unwrap();
        per_class[f][stratum] += members.len();
        sizes[f] += members.len();
        folds[f].extend(members);
    }
    for f in &mut folds {
        f.sort_unstable();
    }
    Ok(Folds { seed, folds })
}

/// Splits `indices` into (train, held-out) at the patient level with about `fraction` held out,
/// stratified: the held-out part is fold 0 of a `round(1 / fraction)`-fold split.
pub fn holdout_split(ds: &Dataset, indices: &[usize], fraction: f64, seed: u64) -> Result<(Vec<usize>, Vec<usize>)> {
    if !(0.0 < fraction && fraction < 1.0) {
        return Err(Error::Config(format!("held-out fraction must be in (0, 1), got {fraction}")));
    }
    let k = ((1.0 / fraction).round() as usize).max(2);
    let folds = stratified_patient_kfold(ds, indices, k, seed)?;
    let held = folds.folds[0].clone();
    let rest = folds.folds[1..].concat();
    let mut rest = rest;
    rest.sort_unstable();
    Ok((rest, held))
}

/// The split as saved on disk: image names (as the dataset names them) per fold.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SplitFile {
    pub seed: u64,
    pub k: usize,
    /// How the parts were made (files written before grouped folds existed are patient-level).
    #[serde(default, skip_serializing_if = "Grouping::is_patient")]
    pub grouping: Grouping,
    /// The dataset it was made from, for the reader's information.
    pub source: String,
    pub classes: Vec<String>,
    pub folds: Vec<Vec<String>>,
}

impl SplitFile {
    pub fn new(ds: &Dataset, folds: &Folds) -> Self {
        SplitFile {
            seed: folds.seed,
            k: folds.folds.len(),
            grouping: Grouping::Patient,
            source: ds.source.display().to_string(),
            classes: ds.classes.clone(),
            folds: folds
                .folds
                .iter()
                .map(|f| f.iter().map(|&i| ds.samples[i].name.clone()).collect())
                .collect(),
        }
    }

    /// The same split, recorded as made by `grouping`.
    pub fn grouped(self, grouping: &Grouping) -> Self {
        SplitFile { grouping: grouping.clone(), ..self }
    }

    /// The file's bytes (pretty JSON).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("split serialises")
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        crate::error::write_atomic(path, &self.to_json())
    }

    pub fn load(path: &Path) -> Result<Self> {
        let bytes = crate::files::read(path, crate::files::MAX_TEXT_BYTES, "split file")?;
        serde_json::from_slice(&bytes).map_err(|e| Error::bad_file(path, format!("not a magsd split file: {e}")))
    }

    /// Maps the saved names back to sample indices of `ds`; every name must be there.
    pub fn resolve(&self, ds: &Dataset, path: &Path) -> Result<Folds> {
        if self.classes != ds.classes {
            return Err(Error::bad_file(
                path,
                format!("split was made for classes {:?}, the data has {:?}", self.classes, ds.classes),
            ));
        }
        let by_name: HashMap<&str, usize> = ds.samples.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();
        let mut folds = Vec::new();
        for f in &self.folds {
            let mut idx = Vec::with_capacity(f.len());
            for name in f {
                idx.push(*by_name.get(name.as_str()).ok_or_else(|| {
                    Error::bad_file(path, format!("split lists '{name}', which is not in the data"))
                })?);
            }
            folds.push(idx);
        }
        Ok(Folds { seed: self.seed, folds })
    }
}

/// What [`check_split`] verified.
#[derive(Clone, Debug, Serialize)]
pub struct SplitCheck {
    pub parts: usize,
    pub images: usize,
    pub patients: usize,
    pub images_hashed: usize,
}

/// Fails loudly if an image is in two parts, a patient's images are in two parts, or two
/// images anywhere in the parts have the same bytes.
pub fn check_split(ds: &Dataset, parts: &[Vec<usize>]) -> Result<SplitCheck> {
    let mut owner: HashMap<usize, usize> = HashMap::new();
    let mut patient_part: HashMap<String, usize> = HashMap::new();
    let mut problems = Vec::new();
    for (p, part) in parts.iter().enumerate() {
        for &i in part {
            if let Some(q) = owner.insert(i, p) {
                problems.push(format!("image {} is in parts {q} and {p}", ds.samples[i].name));
            }
            let key = ds.samples[i].patient_key();
            match patient_part.get(&key) {
                Some(&q) if q != p => problems.push(format!(
                    "{key} is in parts {q} and {p} (e.g. image {})",
                    ds.samples[i].name
                )),
                Some(_) => {}
                None => {
                    patient_part.insert(key, p);
                }
            }
        }
    }
    // Same bytes: hash every file, then confirm candidate pairs byte for byte.
    let all: Vec<usize> = owner.keys().copied().collect();
    let hashes: Vec<(u64, u64, usize)> = all
        .par_iter()
        .map(|&i| {
            let path = &ds.samples[i].path;
            let bytes = crate::files::read_image(path)?;
            let mut h = std::collections::hash_map::DefaultHasher::new();
            bytes.hash(&mut h);
            Ok((h.finish(), bytes.len() as u64, i))
        })
        .collect::<Result<_>>()?;
    let mut by_hash: HashMap<(u64, u64), Vec<usize>> = HashMap::new();
    for (h, len, i) in hashes {
        by_hash.entry((h, len)).or_default().push(i);
    }
    for group in by_hash.values().filter(|g| g.len() > 1) {
        let first = crate::files::read_image(&ds.samples[group[0]].path)?;
        for &j in &group[1..] {
            if crate::files::read_image(&ds.samples[j].path)? == first {
                problems.push(format!(
                    "images {} and {} have the same bytes",
                    ds.samples[group[0]].name, ds.samples[j].name
                ));
            }
        }
    }
    if !problems.is_empty() {
        let n = problems.len();
        problems.truncate(20);
        return Err(Error::Data(format!(
            "split check failed ({n} problem(s)):\n  {}{}",
            problems.join("\n  "),
            if n > 20 { "\n  ..." } else { "" }
        )));
    }
    Ok(SplitCheck { parts: parts.len(), images: owner.len(), patients: patient_part.len(), images_hashed: all.len() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::dataset::{DatasetOptions, Sample, SourceKind};

    /// A dataset of distinct tiny files: `n` patients of class i % k with 1–3 images each.
    fn synthetic(dir: &Path, n: usize, classes: usize) -> Dataset {
        let mut samples = Vec::new();
        for p in 0..n {
            for j in 0..(1 + p % 3) {
                let path = dir.join(format!("{p}_{j}.bin"));
                std::fs::write(&path, format!("{p}/{j}")).unwrap();
                samples.push(Sample {
                    name: format!("{p}_{j}.bin"),
                    path,
                    label: p % classes,
                    patient_id: Some(format!("p{p}")),
                    meta: Default::default(),
                });
            }
        }
        Dataset {
            source: dir.to_path_buf(),
            kind: SourceKind::Manifest,
            classes: (0..classes).map(|c| format!("c{c}")).collect(),
            samples,
            excluded: Default::default(),
            problems: vec![],
            skipped: vec![],
        }
    }

    #[test]
    fn folds_are_patient_disjoint_stratified_seeded_and_complete() {
        let d = tempfile::tempdir().unwrap();
        let ds = synthetic(d.path(), 60, 3);
        let all: Vec<usize> = (0..ds.samples.len()).collect();
        let f = stratified_patient_kfold(&ds, &all, 5, 1).unwrap();
        assert_eq!(f, stratified_patient_kfold(&ds, &all, 5, 1).unwrap());
        assert_ne!(f, stratified_patient_kfold(&ds, &all, 5, 2).unwrap());
        let mut seen: Vec<usize> = f.folds.concat();
        seen.sort();
        assert_eq!(seen, all);
        check_split(&ds, &f.folds).unwrap();
        // Class c has 20 patients of c + 1 images: 20, 40, 60 images → 4, 8, 12 per fold,
        // give or take one patient.
        for fold in &f.folds {
            let mut c = [0usize; 3];
            for &i in fold {
                c[ds.samples[i].label] += 1;
            }
            for (class, n) in c.into_iter().enumerate() {
                let want = 4 * (class + 1);
                assert!(n.abs_diff(want) <= class + 1, "{c:?}");
            }
        }
    }

    #[test]
    fn split_file_round_trips() {
        let d = tempfile::tempdir().unwrap();
        let ds = synthetic(d.path(), 20, 2);
        let all: Vec<usize> = (0..ds.samples.len()).collect();
        let f = stratified_patient_kfold(&ds, &all, 4, 9).unwrap();
        let path = d.path().join("split.json");
        SplitFile::new(&ds, &f).save(&path).unwrap();
        let back = SplitFile::load(&path).unwrap().resolve(&ds, &path).unwrap();
        assert_eq!(back, f);
    }

    #[test]
    fn check_catches_patient_leak_and_duplicate_bytes() {
        let d = tempfile::tempdir().unwrap();
        let mut ds = synthetic(d.path(), 6, 2);
        // Patient p1 has images 1 and 2: put them in different parts.
        let e = check_split(&ds, &[vec![0, 1], vec![2, 3]]).unwrap_err().to_string();
        assert!(e.contains("patient:p1"), "{e}");
        // Same bytes under another name and patient.
        std::fs::write(&ds.samples[5].path, std::fs::read(&ds.samples[0].path).unwrap()).unwrap();
        ds.samples[5].patient_id = Some("other".into());
        let e = check_split(&ds, &[vec![0], vec![5]]).unwrap_err().to_string();
        assert!(e.contains("same bytes"), "{e}");
        let _ = DatasetOptions::default();
    }

    /// `synthetic` with a `source` column: patient p in source p % sources.
    fn with_sources(dir: &Path, n: usize, classes: usize, sources: usize) -> Dataset {
        let mut ds = synthetic(dir, n, classes);
        for s in &mut ds.samples {
            let p: usize = s.patient_id.as_ref().unwrap()[1..].parse().unwrap();
            s.meta.insert("source".into(), format!("s{}", p % sources));
        }
        ds
    }

    #[test]
    fn grouped_folds_never_split_a_source_and_keep_patients_whole() {
        let d = tempfile::tempdir().unwrap();
        let ds = with_sources(d.path(), 40, 2, 7);
        let all: Vec<usize> = (0..ds.samples.len()).collect();
        let grouping = Grouping::Column { column: "source".into() };
        let f = make_split(&ds, &all, &grouping, 3, 0).unwrap();
        assert_eq!(f.folds.len(), 3);
        check_split(&ds, &f.folds).unwrap();
        let mut seen: Vec<usize> = f.folds.concat();
        seen.sort();
        assert_eq!(seen, all);
        for s in 0..7 {
            let name = format!("s{s}");
            let holding: Vec<usize> = (0..3).filter(|&k| f.folds[k].iter().any(|&i| ds.samples[i].meta["source"] == name)).collect();
            assert_eq!(holding.len(), 1, "source {name} is in folds {holding:?}");
        }
        // More folds than sources: an error naming them.
        let e = make_split(&ds, &all, &grouping, 8, 0).unwrap_err().to_string();
        assert!(e.contains("7 value(s) of source") && e.contains("--folds 7"), "{e}");
        // An unknown column, and a patient in two sources, are refused.
        let e = make_split(&ds, &all, &Grouping::Column { column: "nope".into() }, 2, 0).unwrap_err().to_string();
        assert!(e.contains("no column 'nope'") && e.contains("source"), "{e}");
        let mut leaky = ds.clone();
        let i = leaky.samples.iter().position(|s| s.patient_id.as_deref() == Some("p1")).unwrap();
        leaky.samples[i + 1].meta.insert("source".into(), "elsewhere".into());
        let e = make_split(&leaky, &all, &grouping, 2, 0).unwrap_err().to_string();
        assert!(e.contains("patient:p1") && e.contains("two parts"), "{e}");
    }

    #[test]
    fn a_held_out_source_is_the_test_part_and_the_rest_trains() {
        let d = tempfile::tempdir().unwrap();
        let ds = with_sources(d.path(), 12, 2, 3);
        let all: Vec<usize> = (0..ds.samples.len()).collect();
        let g = Grouping::HeldOut { column: "source".into(), value: "s1".into() };
        let f = make_split(&ds, &all, &g, 5, 0).unwrap();
        assert_eq!(f.folds.len(), 2);
        assert!(f.folds[0].iter().all(|&i| ds.samples[i].meta["source"] == "s1"));
        assert!(f.folds[1].iter().all(|&i| ds.samples[i].meta["source"] != "s1"));
        assert_eq!(f.folds[0].len() + f.folds[1].len(), all.len());
        assert_eq!(g.folds_to_run(5), 1);
        let e = make_split(&ds, &all, &Grouping::HeldOut { column: "source".into(), value: "s9".into() }, 1, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("s9") && e.contains("s0, s1, s2"), "{e}");
    }

    #[test]
    fn holdout_is_patient_level_and_near_the_fraction() {
        let d = tempfile::tempdir().unwrap();
        let ds = synthetic(d.path(), 50, 2);
        let all: Vec<usize> = (0..ds.samples.len()).collect();
        let (train, held) = holdout_split(&ds, &all, 0.2, 3).unwrap();
        check_split(&ds, &[train.clone(), held.clone()]).unwrap();
        assert_eq!(train.len() + held.len(), all.len());
        let frac = held.len() as f64 / all.len() as f64;
        assert!((0.12..0.28).contains(&frac), "{frac}");
    }
}
