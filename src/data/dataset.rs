//! Datasets: an ImageFolder root (one folder per class) or a CSV manifest.
//!
//! `--data` takes either everywhere. A folder that holds a `manifest.csv` is read through that
//! manifest; any other folder is an ImageFolder root, whose class names are its sub-folders in
//! sorted order and whose images are every PNG/JPEG/DICOM-looking file below them (by
//! extension `png`, `jpg`, `jpeg`, `dcm`, `dicom`, or none, as DICOM files often have none).
//!
//! A manifest needs a `path` column (relative to the manifest's folder, or absolute) and the
//! label column (`label` unless told otherwise, e.g. `label3`). `patient_id` is used for
//! patient-level splits when present; images without one count as their own patient. Every
//! other column is kept as metadata (`source_repo`, `dataset`, `mask`, ...), so results can be
//! broken down by it.
//!
//! A manifest path must stay inside the manifest's folder (the data root): `../../etc/passwd`
//! or an absolute path elsewhere is refused with an error naming the line, unless
//! [`DatasetOptions::allow_outside_root`] is set (`--allow-outside-root`). The check is on the
//! path as written (lexical), so a data root reached through a symbolic link still works.
//! Rows whose file does not exist, and every row of an image listed under two different labels,
//! are skipped, counted and listed in [`Dataset::skipped`].
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// One labelled image.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Where to read it.
    pub path: PathBuf,
    /// The path as the dataset names it (manifest cell, or relative to the ImageFolder root):
    /// the key that split files store.
    pub name: String,
    /// Index into [`Dataset::classes`].
    pub label: usize,
    /// `patient_id` if the source gives one.
    pub patient_id: Option<String>,
    /// Other manifest columns.
    pub meta: BTreeMap<String, String>,
}

impl Sample {
    /// The grouping key for patient-level splits: the patient id, or the image itself.
    pub fn patient_key(&self) -> String {
        match &self.patient_id {
            Some(p) => format!("patient:{p}"),
            None => format!("image:{}", self.name),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    ImageFolder,
    Manifest,
}

/// `image-folder` or `manifest`, as in `metrics.json`.
impl std::fmt::Display for SourceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SourceKind::ImageFolder => "image-folder",
            SourceKind::Manifest => "manifest",
        })
    }
}

/// How to read a dataset.
#[derive(Clone, Debug)]
pub struct DatasetOptions {
    /// Manifest column holding the label (default `label`).
    pub label_column: String,
    /// Keep only these classes, in this order; `None` keeps every label found (sorted).
    pub classes: Option<Vec<String>>,
    /// Accept manifest paths outside the manifest's folder (absolute or with `..`).
    pub allow_outside_root: bool,
}

impl Default for DatasetOptions {
    fn default() -> Self {
        DatasetOptions { label_column: "label".into(), classes: None, allow_outside_root: false }
    }
}

/// An image the dataset names but that cannot be used (e.g. a manifest row whose file is
/// missing): it is never silently dropped, but counted and listed in reports.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}

#[derive(Clone, Debug)]
pub struct Dataset {
    /// The folder or manifest file given.
    pub source: PathBuf,
    pub kind: SourceKind,
    pub classes: Vec<String>,
    pub samples: Vec<Sample>,
    /// Rows/files left out because their label is not among the chosen classes: label → count.
    pub excluded: BTreeMap<String, usize>,
    /// Rows or files that could not be used, each naming the row/file and the reason.
    pub problems: Vec<String>,
    /// Images that the source lists but that cannot be used: missing files (of the chosen
    /// classes) and images listed under two labels, also described in `problems`; and after
    /// [`Dataset::drop_undecodable`], the files that do not decode.
    pub skipped: Vec<Skipped>,
}

const IMAGE_EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "dcm", "dicom"];

/// True when a file name has an image extension or none (the folder scan's test; content is
/// checked when the image is read).
fn has_image_name(path: &Path) -> bool {
    match path.extension().and_then(|e| e.to_str()) {
        None => true,
        Some(e) => IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()),
    }
}

fn is_hidden(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'))
}

impl Dataset {
    /// Opens a folder (ImageFolder, or through its `manifest.csv`) or a manifest CSV file.
    pub fn open(path: &Path, opts: &DatasetOptions) -> Result<Dataset> {
        let meta = std::fs::metadata(path).at(path)?;
        if meta.is_dir() {
            let manifest = path.join("manifest.csv");
            if manifest.is_file() {
                Self::from_manifest(&manifest, opts)
            } else {
                Self::from_image_folder(path, opts)
            }
        } else {
            Self::from_manifest(path, opts)
        }
    }

    fn from_image_folder(root: &Path, opts: &DatasetOptions) -> Result<Dataset> {
        let mut found: Vec<String> = Vec::new();
        for entry in std::fs::read_dir(root).at(root)? {
            let entry = entry.at(root)?;
            // A class folder may be a link to a folder (taken once: the walk below follows no
            // further folder links, so no loop can form).
            let ft = entry.file_type().at(entry.path())?;
            let is_dir = ft.is_dir() || (ft.is_symlink() && entry.path().is_dir());
            if is_dir && !is_hidden(&entry.path()) {
                found.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        found.sort();
        if found.is_empty() {
            return Err(Error::Data(format!(
                "{}: no class sub-folders and no manifest.csv: expected an ImageFolder root \
                 (one folder per class) or a manifest",
                root.display()
            )));
        }
        let classes = choose_classes(&found, opts, root)?;
        let mut samples = Vec::new();
        let mut excluded = BTreeMap::new();
        let mut problems = Vec::new();
        for folder in &found {
            let mut files = Vec::new();
            let mut linked_dirs = Vec::new();
            walk_files(&root.join(folder), &mut files, &mut linked_dirs)?;
            files.sort();
            if !linked_dirs.is_empty() {
                linked_dirs.sort();
                problems.push(format!(
                    "{}: {} linked folder(s) not followed (e.g. {}); link the images or the class folder itself instead",
                    root.join(folder).display(),
                    linked_dirs.len(),
                    linked_dirs[0].display()
                ));
            }
            let label = classes.iter().position(|c| c == folder);
            let (images, others): (Vec<_>, Vec<_>) = files.into_iter().partition(|f| has_image_name(f));
            if !others.is_empty() {
                problems.push(format!(
                    "{}: {} file(s) skipped, not named like images (e.g. {})",
                    root.join(folder).display(),
                    others.len(),
                    others[0].display()
                ));
            }
            match label {
                None => {
                    excluded.insert(folder.clone(), images.len());
                }
                Some(label) => samples.extend(images.into_iter().map(|path| Sample {
                    name: path.strip_prefix(root).unwrap_or(&path).to_string_lossy().into_owned(),
                    path,
                    label,
                    patient_id: None,
                    meta: BTreeMap::from([("folder".to_string(), folder.clone())]),
                })),
            }
        }
        Ok(Dataset {
            source: root.to_path_buf(),
            kind: SourceKind::ImageFolder,
            classes,
            samples,
            excluded,
            problems,
            skipped: Vec::new(),
        })
    }

    fn from_manifest(csv_path: &Path, opts: &DatasetOptions) -> Result<Dataset> {
        let base = csv_path.parent().unwrap_or(Path::new("."));
        let text = crate::files::read(csv_path, crate::files::MAX_TEXT_BYTES, "manifest")?;
        let mut reader = csv::ReaderBuilder::new().flexible(false).from_reader(text.as_slice());
        let headers = reader
            .headers()
            .map_err(|e| Error::bad_file(csv_path, format!("cannot read manifest header: {e}")))?
            .clone();
        let col = |name: &str| headers.iter().position(|h| h.trim() == name);
        let columns = headers.iter().collect::<Vec<_>>().join(", ");
        let path_col = col("path").ok_or_else(|| {
            Error::bad_file(csv_path, format!("manifest has no 'path' column (columns: {columns})"))
        })?;
        let label_col = col(&opts.label_column).ok_or_else(|| {
            Error::bad_file(
                csv_path,
                format!("manifest has no '{}' column for labels (columns: {columns})", opts.label_column),
            )
        })?;
        let patient_col = col("patient_id");

        struct Row {
            path: PathBuf,
            name: String,
            label: String,
            patient_id: Option<String>,
            meta: BTreeMap<String, String>,
        }
        let mut rows = Vec::new();
        let mut problems = Vec::new();
        for (i, record) in reader.records().enumerate() {
            let line = i + 2; // 1-based, after the header
            let record = record.map_err(|e| Error::bad_file(csv_path, format!("line {line}: {e}")))?;
            let cell = |c: usize| record.get(c).unwrap_or("").trim().to_string();
            let name = cell(path_col);
            let label = cell(label_col);
            if name.is_empty() {
                problems.push(format!("{}: line {line}: empty path, row skipped", csv_path.display()));
                continue;
            }
            if label.is_empty() {
                problems.push(format!("{}: line {line}: empty '{}', row skipped", csv_path.display(), opts.label_column));
                continue;
            }
            if !opts.allow_outside_root && !stays_inside(base, Path::new(&name)) {
                return Err(Error::bad_file(
                    csv_path,
                    format!(
                        "line {line}: path '{name}' leads outside the manifest's folder {}; \
                         refusing it (pass --allow-outside-root if that is intended)",
                        folder_name(base).display()
                    ),
                ));
            }
            let path = if Path::new(&name).is_absolute() { PathBuf::from(&name) } else { base.join(&name) };
            let patient_id = patient_col.map(cell).filter(|p| !p.is_empty());
            let meta = headers
                .iter()
                .enumerate()
                .filter(|(c, _)| *c != path_col && Some(*c) != patient_col)
                .map(|(c, h)| (h.trim().to_string(), cell(c)))
                .collect();
            rows.push(Row { path, name, label, patient_id, meta });
        }
        // One image listed under two labels would count in both classes (and sit in two folds'
        // labels): every row of it is left out, and named.
        let key = |r: &Row| std::fs::canonicalize(&r.path).unwrap_or_else(|_| r.path.clone());
        let mut labels_of: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
        for r in &rows {
            let l = labels_of.entry(key(r)).or_default();
            if !l.contains(&r.label) {
                l.push(r.label.clone());
            }
        }
        let mut skipped = Vec::new();
        let mut reported = std::collections::HashSet::new();
        rows.retain(|r| {
            let labels = &labels_of[&key(r)];
            if labels.len() < 2 {
                return true;
            }
            if reported.insert(key(r)) {
                let reason = format!("listed under {} labels ({}); left out", labels.len(), labels.join(", "));
                problems.push(format!("{}: {reason}", r.name));
                skipped.push(Skipped { path: r.path.display().to_string(), reason });
            }
            false
        });
        let mut found: Vec<String> = rows.iter().map(|r| r.label.clone()).collect();
        found.sort();
        found.dedup();
        let classes = choose_classes(&found, opts, csv_path)?;
        let mut samples = Vec::new();
        let mut excluded = BTreeMap::new();
        for r in rows {
            match classes.iter().position(|c| *c == r.label) {
                None => *excluded.entry(r.label).or_insert(0) += 1,
                Some(label) => {
                    if !r.path.is_file() {
                        problems.push(format!("{}: listed in the manifest but not found, skipped", r.path.display()));
                        skipped.push(Skipped {
                            path: r.path.display().to_string(),
                            reason: "listed in the manifest but not found".into(),
                        });
                        continue;
                    }
                    samples.push(Sample { path: r.path, name: r.name, label, patient_id: r.patient_id, meta: r.meta });
                }
            }
        }
        Ok(Dataset {
            source: csv_path.to_path_buf(),
            kind: SourceKind::Manifest,
            classes,
            samples,
            excluded,
            problems,
            skipped,
        })
    }

    /// Decodes every image (in parallel) and leaves out those that do not decode (empty, text,
    /// 0×0, a header without pixels, ...), each moved to `skipped` with the reason "not an
    /// image: " and the decoder's words; returns how many were left out.
    pub fn drop_undecodable(&mut self, limits: &crate::data::decode::DecodeLimits) -> usize {
        use rayon::prelude::*;
        let failed: Vec<Option<String>> = self
            .samples
            .par_iter()
            .map(|s| {
                crate::data::decode::decode_file(&s.path, limits).err().map(|e| match e {
                    Error::BadFile { reason, .. } => reason,
                    e => e.to_string(),
                })
            })
            .collect();
        let mut n = 0;
        let mut kept = Vec::with_capacity(self.samples.len());
        for (s, err) in std::mem::take(&mut self.samples).into_iter().zip(failed) {
            match err {
                None => kept.push(s),
                Some(e) => {
                    n += 1;
                    self.skipped.push(Skipped { path: s.path.display().to_string(), reason: format!("not an image: {e}") });
                }
            }
        }
        self.samples = kept;
        n
    }

    /// Images per class, in class order.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        for s in &self.samples {
            counts[s.label] += 1;
        }
        counts
    }

    /// Number of distinct patients (images without an id count as their own).
    pub fn patient_count(&self) -> usize {
        self.samples.iter().map(|s| s.patient_key()).collect::<std::collections::HashSet<_>>().len()
    }

    /// A dataset of the given samples (same classes).
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        Dataset {
            samples: indices.iter().map(|&i| self.samples[i].clone()).collect(),
            excluded: BTreeMap::new(),
            problems: Vec::new(),
            skipped: Vec::new(),
            ..self.clone()
        }
    }

    /// The same images relabelled to `classes` (a model's class order); images whose label is
    /// not among them are left out and counted in `excluded`.
    pub fn with_classes(&self, classes: &[String]) -> Dataset {
        let mut excluded = self.excluded.clone();
        let mut samples = Vec::new();
        for s in &self.samples {
            let name = &self.classes[s.label];
            match classes.iter().position(|c| c == name) {
                Some(label) => samples.push(Sample { label, ..s.clone() }),
                None => *excluded.entry(name.clone()).or_insert(0) += 1,
            }
        }
        Dataset { classes: classes.to_vec(), samples, excluded, ..self.clone() }
    }

    /// The folder relative paths in the data are resolved against (masks, images).
    pub fn base_dir(&self) -> PathBuf {
        match self.kind {
            SourceKind::Manifest => self.source.parent().unwrap_or(Path::new(".")).to_path_buf(),
            SourceKind::ImageFolder => self.source.clone(),
        }
    }

    /// Metadata columns worth breaking results down by, where present: the source collection
    /// and dataset, because source confounding is the first thing to rule out.
    pub fn default_breakdown(&self) -> Vec<String> {
        ["source_repo", "dataset"]
            .iter()
            .filter(|c| self.samples.first().is_some_and(|s| s.meta.contains_key(**c)))
            .map(|c| c.to_string())
            .collect()
    }

    /// Counts of a metadata column's values per class: value → counts in class order.
    pub fn breakdown(&self, column: &str) -> BTreeMap<String, Vec<usize>> {
        let mut out: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for s in &self.samples {
            let v = s.meta.get(column).cloned().unwrap_or_default();
            out.entry(v).or_insert_with(|| vec![0; self.classes.len()])[s.label] += 1;
        }
        out
    }
}

/// `base` as a user can read it: the manifest's folder of `manifest.csv` is `.`, not ``.
fn folder_name(base: &Path) -> &Path {
    if base.as_os_str().is_empty() { Path::new(".") } else { base }
}

/// Whether manifest path `name` stays inside `base` (lexically: `..` may not climb above it;
/// an absolute path must start with `base`, itself made absolute).
fn stays_inside(base: &Path, name: &Path) -> bool {
    if name.is_absolute() {
        let Ok(cwd) = std::env::current_dir() else { return false };
        let root = normalise(&cwd.join(base));
        return normalise(name).is_some_and(|n| root.is_some_and(|r| n.starts_with(r)));
    }
    normalise(name).is_some()
}

/// `a/./b/../c` → `a/c`; `None` when `..` climbs above the start (or above `/`).
fn normalise(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    let mut depth = 0usize;
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if depth == 0 {
                    return None;
                }
                depth -= 1;
                out.pop();
            }
            Component::Normal(x) => {
                depth += 1;
                out.push(x);
            }
            Component::RootDir | Component::Prefix(_) => out.push(c.as_os_str()),
        }
    }
    Some(out)
}

fn choose_classes(found: &[String], opts: &DatasetOptions, source: &Path) -> Result<Vec<String>> {
    match &opts.classes {
        None => Ok(found.to_vec()),
        Some(wanted) => {
            let missing: Vec<&String> = wanted.iter().filter(|c| !found.contains(c)).collect();
            if !missing.is_empty() {
                return Err(Error::Data(format!(
                    "{}: class(es) {:?} not found; the labels there are {:?}",
                    source.display(),
                    missing,
                    found
                )));
            }
            Ok(wanted.clone())
        }
    }
}

/// The files below `dir` (links to files included); links to folders are not followed (a link
/// back up would loop) but collected in `linked_dirs`, so the caller can say so.
fn walk_files(dir: &Path, out: &mut Vec<PathBuf>, linked_dirs: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        let path = entry.path();
        if is_hidden(&path) {
            continue;
        }
        let ft = entry.file_type().at(&path)?;
        if ft.is_dir() {
            walk_files(&path, out, linked_dirs)?;
        } else if ft.is_file() || (ft.is_symlink() && path.is_file()) {
            out.push(path);
        } else if ft.is_symlink() && path.is_dir() {
            linked_dirs.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    #[test]
    fn image_folder_takes_linked_class_folders_and_names_linked_subfolders() {
        let d = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        touch(&elsewhere.path().join("1.png"));
        touch(&d.path().join("root/a/2.png"));
        std::os::unix::fs::symlink(elsewhere.path(), d.path().join("root/b")).unwrap();
        // A loop below a class folder: not followed, and said.
        std::os::unix::fs::symlink(d.path().join("root/a"), d.path().join("root/a/again")).unwrap();
        let ds = Dataset::open(&d.path().join("root"), &DatasetOptions::default()).unwrap();
        assert_eq!(ds.classes, ["a", "b"]);
        assert_eq!(ds.samples.len(), 2, "one image per class, the loop not followed");
        assert!(ds.problems.iter().any(|p| p.contains("linked folder") && p.contains("again")), "{:?}", ds.problems);
    }

    #[test]
    fn image_folder_classes_are_sorted_subfolders() {
        let d = tempfile::tempdir().unwrap();
        touch(&d.path().join("b/1.png"));
        touch(&d.path().join("b/sub/2.jpg"));
        touch(&d.path().join("a/3.dcm"));
        touch(&d.path().join("a/notes.txt"));
        touch(&d.path().join(".hidden/4.png"));
        let ds = Dataset::open(d.path(), &DatasetOptions::default()).unwrap();
        assert_eq!(ds.kind, SourceKind::ImageFolder);
        assert_eq!(ds.classes, vec!["a", "b"]);
        assert_eq!(ds.class_counts(), vec![1, 2]);
        assert_eq!(ds.problems.len(), 1, "{:?}", ds.problems);
        assert_eq!(ds.patient_count(), 3);

        let only_b = DatasetOptions { classes: Some(vec!["b".into()]), ..Default::default() };
        let ds = Dataset::open(d.path(), &only_b).unwrap();
        assert_eq!(ds.class_counts(), vec![2]);
        assert_eq!(ds.excluded.get("a"), Some(&1));
    }

    #[test]
    fn manifest_keeps_metadata_patients_and_chosen_label_column() {
        let d = tempfile::tempdir().unwrap();
        for f in ["i/1.jpg", "i/2.jpg", "i/3.jpg"] {
            touch(&d.path().join(f));
        }
        let csv = d.path().join("manifest.csv");
        std::fs::write(
            &csv,
            "path,label,label3,patient_id,source_repo\n\
             i/1.jpg,viral,pneu,p1,x\n\
             i/2.jpg,bacterial,pneu,p1,y\n\
             i/3.jpg,normal,normal,,x\n\
             i/missing.jpg,normal,normal,p9,x\n",
        )
        .unwrap();
        let ds = Dataset::open(d.path(), &DatasetOptions::default()).unwrap();
        assert_eq!(ds.kind, SourceKind::Manifest);
        assert_eq!(ds.classes, vec!["bacterial", "normal", "viral"]);
        assert_eq!(ds.samples.len(), 3);
        assert_eq!(ds.problems.len(), 1);
        assert!(ds.problems[0].contains("missing.jpg"));
        assert_eq!(ds.skipped.len(), 1);
        assert!(ds.skipped[0].path.ends_with("missing.jpg"));
        assert_eq!(ds.patient_count(), 2);
        assert_eq!(ds.samples[0].meta["source_repo"], "x");
        assert_eq!(ds.breakdown("source_repo")["x"], vec![0, 1, 1]);

        let l3 = DatasetOptions { label_column: "label3".into(), ..Default::default() };
        let ds = Dataset::open(&csv, &l3).unwrap();
        assert_eq!(ds.classes, vec!["normal", "pneu"]);
        assert_eq!(ds.class_counts(), vec![1, 2]);

        let bad = DatasetOptions { label_column: "nope".into(), ..Default::default() };
        let e = Dataset::open(&csv, &bad).unwrap_err().to_string();
        assert!(e.contains("manifest.csv") && e.contains("no 'nope' column"), "{e}");
        let e = Dataset::open(&csv, &DatasetOptions { classes: Some(vec!["covid".into()]), ..Default::default() })
            .unwrap_err()
            .to_string();
        assert!(e.contains("covid"), "{e}");
    }

    #[test]
    fn an_image_listed_under_two_labels_is_left_out_and_named() {
        let d = tempfile::tempdir().unwrap();
        for f in ["i/1.jpg", "i/2.jpg", "i/3.jpg"] {
            touch(&d.path().join(f));
        }
        std::fs::write(
            d.path().join("manifest.csv"),
            "path,label\ni/1.jpg,a\ni/2.jpg,b\n./i/1.jpg,b\ni/3.jpg,a\ni/3.jpg,a\n",
        )
        .unwrap();
        let ds = Dataset::open(d.path(), &DatasetOptions::default()).unwrap();
        // i/1.jpg is in neither class; the same label twice (i/3.jpg) is not a conflict.
        assert_eq!(ds.class_counts(), vec![2, 1]);
        assert!(ds.samples.iter().all(|s| !s.name.ends_with("1.jpg")));
        assert_eq!(ds.skipped.len(), 1, "{:?}", ds.skipped);
        assert!(ds.problems.iter().any(|p| p.contains("1.jpg") && p.contains("2 labels (a, b)")), "{:?}", ds.problems);
    }

    #[test]
    fn manifest_paths_outside_the_data_root_are_refused_unless_allowed() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("data");
        touch(&root.join("i/1.jpg"));
        touch(&d.path().join("secret.jpg"));
        let outside_abs = d.path().join("secret.jpg").display().to_string();
        let inside_abs = root.join("i/1.jpg").display().to_string();
        for (bad, ok) in [("../secret.jpg", false), ("i/../../secret.jpg", false), (outside_abs.as_str(), false), ("i/./../i/1.jpg", true), (inside_abs.as_str(), true)] {
            // Same label on both rows: the accepted paths name i/1.jpg again, and one image under
            // two labels would be left out (see the test above).
            std::fs::write(root.join("manifest.csv"), format!("path,label\ni/1.jpg,a\n{bad},a\n")).unwrap();
            let r = Dataset::open(&root, &DatasetOptions::default());
            if ok {
                assert_eq!(r.unwrap().samples.len(), 2, "{bad}");
            } else {
                let e = r.unwrap_err().to_string();
                assert!(e.contains("line 3") && e.contains("outside") && e.contains("--allow-outside-root"), "{e}");
                let ds = Dataset::open(&root, &DatasetOptions { allow_outside_root: true, ..Default::default() }).unwrap();
                assert_eq!(ds.samples.len(), 2, "{bad}");
            }
        }
    }
}
