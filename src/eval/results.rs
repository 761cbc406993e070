//! What an evaluation gives: [`EvalReport`], the contents of `metrics.json` (metrics overall and
//! per group, within-source metrics, source probes, how far to trust the answers), computed from
//! [`Predictions`] of `eval::evaluate`.
use std::collections::BTreeMap;
use std::path::Path;

use crate::data::dataset::Dataset;
use crate::error::{Error, Result, write_atomic};
use crate::eval::evaluate::Predictions;
use crate::eval::metrics::{Metrics, compute_over, try_compute_over};
use crate::eval::probe::{ProbeInput, SourceProbe, source_probe};
use crate::eval::within_source::{self, Scored, WithinSource, within_source};
use crate::eval::overlap::TrainingOverlap;
use crate::model::MapKind;

/// An image that could not be evaluated.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Unreadable {
    pub path: String,
    pub reason: String,
}

/// What `metrics.json` holds.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct EvalReport {
    pub data: String,
    pub classes: Vec<String>,
    pub overall: Metrics,
    /// Metadata column → value → metrics of the images with that value (source confounding).
    pub by: BTreeMap<String, BTreeMap<String, Metrics>>,
    /// Number of images of the data that were not evaluated (= `unreadable.len()`).
    #[serde(default)]
    pub skipped: usize,
    /// Every image of the data that was not evaluated: listed but missing, or unreadable.
    pub unreadable: Vec<Unreadable>,
    /// Images evaluated although their decoder warned (e.g. a truncated JPEG).
    #[serde(default)]
    pub warnings: Vec<Unreadable>,
    /// Set when evaluated images also trained the model (the metrics are then no held-out estimate).
    #[serde(default)]
    pub training_overlap: Option<TrainingOverlap>,
    /// Classes the model was not trained on here (a grouped fold's training part lacked them):
    /// out of the macro means (`metrics::compute_over`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub absent_from_training: Vec<String>,
    /// Per `by` column: pooled within-source metrics beside the overall ones (`eval::within_source`).
    #[serde(default)]
    pub within_source: BTreeMap<String, WithinSource>,
    /// Per `by` column: the source and within-source class probes (`eval::probe`), when the
    /// features were kept.
    #[serde(default)]
    pub probe: BTreeMap<String, SourceProbe>,
    /// Calibration before and after, unusual images, operating points (absent in files written
    /// before magsd reported them).
    #[serde(default)]
    pub reliability: Option<crate::eval::reliability::EvalReliability>,
    /// Which localisation map the overlays and `localization.json` use.
    #[serde(default)]
    pub map: MapKind,
    /// `magsd localize`: saliency methods compared on the same images (`eval::saliency`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saliency: Option<crate::eval::saliency::SaliencyComparison>,
}

impl EvalReport {
    /// Metrics of `p` overall and per group, within-source metrics and (with features) the
    /// probes per group column; an error if any score is not finite.
    pub fn new(ds: &Dataset, p: &Predictions, by: &[String]) -> Result<Self> {
        Self::new_over(ds, p, by, &vec![true; ds.classes.len()])
    }

    /// [`EvalReport::new`] with the macro means over the classes for which `trained` holds
    /// (`metrics::compute_over`); the others are listed in `absent_from_training`.
    pub fn new_over(ds: &Dataset, p: &Predictions, by: &[String], trained: &[bool]) -> Result<Self> {
        let overall = try_compute_over(&p.labels, &p.probs, &ds.classes, trained)?;
        let mut groups = BTreeMap::new();
        for col in by {
            let mut per_value: BTreeMap<String, Vec<usize>> = BTreeMap::new();
            for (row, &i) in p.indices.iter().enumerate() {
                per_value.entry(source_of(ds, i, col)).or_default().push(row);
            }
            let m = per_value
                .into_iter()
                .map(|(v, rows)| {
                    let y: Vec<usize> = rows.iter().map(|&r| p.labels[r]).collect();
                    let pr: Vec<Vec<f64>> = rows.iter().map(|&r| p.probs[r].clone()).collect();
                    (v, compute_over(&y, &pr, &ds.classes, trained))
                })
                .collect();
            groups.insert(col.clone(), m);
        }
        let patients: Vec<String> = p.indices.iter().map(|&i| ds.samples[i].patient_key()).collect();
        let mut within = BTreeMap::new();
        let mut probes = BTreeMap::new();
        let penultimate = p.penultimate();
        for col in by {
            let sources: Vec<String> = p.indices.iter().map(|&i| source_of(ds, i, col)).collect();
            let scored =
                Scored { labels: &p.labels, probs: &p.probs, sources: &sources, patients: &patients, classes: &ds.classes, counted: trained };
            within.insert(col.clone(), within_source(col, &scored, within_source::RESAMPLES, 0));
            if p.features.len() == p.indices.len() && !p.features.is_empty() {
                let input = ProbeInput { features: &penultimate, labels: &p.labels, classes: &ds.classes, sources: &sources, patients: &patients };
                probes.insert(col.clone(), source_probe(col, &input));
            }
        }
        let listed = |v: &[(usize, String)]| -> Vec<Unreadable> {
            v.iter().map(|(i, reason)| Unreadable { path: ds.samples[*i].path.display().to_string(), reason: reason.clone() }).collect()
        };
        let unreadable = listed(&p.failures);
        Ok(EvalReport {
            data: ds.source.display().to_string(),
            classes: ds.classes.clone(),
            overall,
            by: groups,
            skipped: unreadable.len(),
            unreadable,
            warnings: listed(&p.warnings),
            training_overlap: None,
            absent_from_training: ds.classes.iter().zip(trained).filter(|(_, t)| !**t).map(|(c, _)| c.clone()).collect(),
            within_source: within,
            probe: probes,
            reliability: None,
            map: MapKind::Mean,
            saliency: None,
        })
    }

    /// Adds the images the dataset lists but could not offer (missing files) to the skipped ones.
    pub fn add_dataset_skips(&mut self, ds: &Dataset) {
        let missing = ds.skipped.iter().map(|s| Unreadable { path: s.path.clone(), reason: s.reason.clone() });
        self.unreadable.splice(0..0, missing);
        self.skipped = self.unreadable.len();
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomic(path, &serde_json::to_vec_pretty(self).expect("report serialises"))
    }

    pub fn load(path: &Path) -> Result<Self> {
        let bytes = crate::files::read(path, crate::files::MAX_TEXT_BYTES, "metrics file")?;
        serde_json::from_slice(&bytes).map_err(|e| Error::bad_file(path, format!("not a magsd metrics.json: {e}")))
    }
}

/// Sample `i`'s value of metadata `column`, `(empty)` when it has none.
fn source_of(ds: &Dataset, i: usize, column: &str) -> String {
    match ds.samples[i].meta.get(column).map(String::as_str) {
        None | Some("") => "(empty)".into(),
        Some(v) => v.to_string(),
    }
}
