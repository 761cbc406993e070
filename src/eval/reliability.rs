//! How far to trust a model's answer for one image: what a model file carries beside its weights
//! (the pixel screen's statistics, the feature-space detector, the temperature, the operating
//! points) and [`Reliability::assess`], which turns one image's logits and feature into the
//! answer every front door formats: calibrated probabilities, the predicted class, the `unusual`
//! flag with its reasons, and the operating-point decisions. A non-finite output is an error,
//! never a class.
//!
//! Model files written before this existed load as before; their answers say that they carry no
//! calibration, detector or operating point.
use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::calibration::{Calibration, CalibrationReport, softmax_t};
use super::evaluate::Predictions;
use super::metrics::argmax;
use super::ood::{OodDetector, OodVerdict};
use super::operating_point::{OperatingPoint, OperatingPointResult};
use crate::data::dataset::Dataset;
use crate::data::input_stats::{ImageFeatures, InputStats, STATS_KEY};
use crate::error::{Error, Result};
use crate::model::weights::NamedTensors;

/// Metadata key of [`ReliabilityInfo`] in a model file.
pub const RELIABILITY_KEY: &str = "magsd.reliability";
pub const RELIABILITY_VERSION: u32 = 1;

/// The banner shown with an unusual image's answer (the web page, reports, `predict`).
pub const UNUSUAL_BANNER: &str =
    "this image does not look like the X-rays this model was trained on; its prediction is not meaningful";

/// What training fitted on held-out images, stored as JSON in the model file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReliabilityInfo {
    pub version: u32,
    /// Temperature scaling; `None`: probabilities are raw softmax, and `calibration_note` says why.
    pub calibration: Option<Calibration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration_note: Option<String>,
    pub operating_points: Vec<OperatingPoint>,
    /// Why the file has no feature-space detector, when it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ood_note: Option<String>,
    /// Held-out (validation) images everything above was fitted on; 0 when there were none.
    pub held_out_images: usize,
    pub training_images: usize,
}

/// What a server's model card says about trusting the answers (plain data, unlike
/// [`Reliability`], whose detector holds tensors).
#[derive(Clone, Debug, Serialize)]
pub struct ReliabilitySummary {
    /// How the probabilities are made, in words.
    pub probabilities: String,
    /// Logits are divided by this before the softmax (1: raw softmax).
    pub temperature: f64,
    /// What the `unusual` flag rests on, in words.
    pub unusual_inputs: String,
    /// The feature-space detector's settings and threshold (`None`: the file has none).
    pub ood: Option<super::ood::OodInfo>,
    pub operating_points: Vec<OperatingPoint>,
}

/// Everything a loaded model file says about trusting its answers.
#[derive(Debug, Default)]
pub struct Reliability {
    /// `None` for files written before magsd stored it.
    pub info: Option<ReliabilityInfo>,
    pub detector: Option<OodDetector>,
    /// The pixel screen (`None` in files written before it, or models saved by other means).
    pub input_stats: Option<InputStats>,
}

/// One operating point's decision on one image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub class: String,
    pub positive: bool,
    pub threshold: f64,
    /// "covid19: positive at the 95 %-sensitivity point".
    pub text: String,
}

/// The `unusual` verdict of one image: the pixel screen, then the feature-space detector.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Unusual {
    pub unusual: bool,
    /// Why, one line per check that flagged it (empty when it is not unusual).
    pub reasons: Vec<String>,
    /// The detector's score and threshold (`None`: the model file has no detector).
    pub ood: Option<OodVerdict>,
    /// Which checks ran ("pixel screen", "feature detector"): an image is only as checked as this.
    pub checks: Vec<String>,
}

/// The answer for one image, before any front door formats it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Assessment {
    /// Calibrated probabilities (raw softmax when the model has no temperature).
    pub probabilities: Vec<f64>,
    pub predicted: usize,
    pub unusual: Unusual,
    pub decisions: Vec<Decision>,
}

impl Reliability {
    /// Reads what a model file carries (its metadata and the tensors set aside when it loaded).
    pub fn from_file_parts(metadata: &HashMap<String, String>, extra: &NamedTensors, path: &Path) -> Result<Self> {
        let info = metadata
            .get(RELIABILITY_KEY)
            .map(|s| serde_json::from_str::<ReliabilityInfo>(s).map_err(|e| Error::bad_file(path, format!("{RELIABILITY_KEY} unreadable: {e}"))))
            .transpose()?;
        if let Some(i) = &info {
            if i.version > RELIABILITY_VERSION {
                return Err(Error::bad_file(path, format!("{RELIABILITY_KEY} has version {}; this magsd reads up to {RELIABILITY_VERSION}", i.version)));
            }
            if let Some(c) = &i.calibration
                && !(c.temperature.is_finite() && c.temperature > 0.0)
            {
                return Err(Error::bad_file(path, format!("its temperature {} is not a positive number", c.temperature)));
            }
        }
        let input_stats = metadata
            .get(STATS_KEY)
            .map(|s| InputStats::parse(s).map_err(|e| Error::bad_file(path, format!("{STATS_KEY} unreadable: {e}"))))
            .transpose()?;
        let detector = OodDetector::from_file_parts(metadata, extra, path)?;
        Ok(Reliability { info, detector, input_stats })
    }

    /// Reads it from a loaded model.
    pub fn of(m: &crate::model::weights::LoadedModel, path: &Path) -> Result<Self> {
        Self::from_file_parts(&m.metadata, &m.extra, path)
    }

    /// The temperature the probabilities use (1: raw softmax).
    pub fn temperature(&self) -> f64 {
        self.info.as_ref().and_then(|i| i.calibration.as_ref()).map_or(1.0, |c| c.temperature)
    }

    pub fn operating_points(&self) -> &[OperatingPoint] {
        self.info.as_ref().map_or(&[], |i| &i.operating_points)
    }

    /// How the probabilities are made, in one line.
    pub fn calibration_text(&self) -> String {
        match &self.info {
            None => "raw softmax (this model file has no calibration: it was made before magsd fitted one)".into(),
            Some(i) => match (&i.calibration, &i.calibration_note) {
                (Some(c), _) => format!(
                    "temperature-scaled softmax (T = {:.3}, fitted on {} validation images; ECE there {:.3} → {:.3})",
                    c.temperature, c.images, c.ece_before, c.ece_after
                ),
                (None, Some(note)) => format!("raw softmax ({note})"),
                (None, None) => "raw softmax".into(),
            },
        }
    }

    /// What the `unusual` flag rests on, in one line.
    pub fn ood_text(&self) -> String {
        let screen = if self.input_stats.is_some() { "the pixel screen" } else { "no pixel screen (not in this model file)" };
        match (&self.detector, self.info.as_ref().and_then(|i| i.ood_note.as_ref())) {
            (Some(d), _) => format!(
                "{screen} and a feature-space detector (Mahalanobis distance, {} dims; threshold accepts at least {:.0} % of {} {})",
                d.info.dims,
                100.0 * d.info.tpr,
                d.info.threshold_images,
                match d.info.threshold_source {
                    super::ood::ThresholdSource::Validation => "validation images, and of new images like them",
                    super::ood::ThresholdSource::Training => "training images (no validation split, so held-out X-rays are flagged more often)",
                }
            ),
            (None, Some(note)) => format!("{screen} only: no feature-space detector ({note})"),
            (None, None) => format!("{screen} only: no feature-space detector (this model file was made before magsd fitted one)"),
        }
    }

    pub fn summary(&self) -> ReliabilitySummary {
        ReliabilitySummary {
            probabilities: self.calibration_text(),
            temperature: self.temperature(),
            unusual_inputs: self.ood_text(),
            ood: self.detector.as_ref().map(|d| d.info.clone()),
            operating_points: self.operating_points().to_vec(),
        }
    }

    /// The lines every output that describes the model shows.
    pub fn describe(&self) -> Vec<String> {
        let mut out = vec![format!("Probabilities: {}.", self.calibration_text()), format!("Unusual inputs: {}.", self.ood_text())];
        let ops = self.operating_points();
        if ops.is_empty() {
            out.push("Operating points: none (decisions are the most probable class).".into());
        } else {
            for p in ops {
                out.push(format!(
                    "Operating point: {} positive when its probability ≥ {:.4} (the {} %-{} point, chosen on {} validation images).",
                    p.class,
                    p.threshold,
                    (100.0 * p.target.value()).round(),
                    p.target.name(),
                    p.images
                ));
            }
        }
        out
    }

    /// The pixel screen's reasons for an image (empty when it passes, or the file has no screen).
    pub fn screen_reasons(&self, f: &ImageFeatures) -> Vec<String> {
        self.input_stats.as_ref().map(|s| s.unusual(f)).unwrap_or_default()
    }

    /// One image's answer from its raw `logits`, its pooled `feature` `[d]` (for the detector)
    /// and the pixel statistics of its decoded image (for the pixel screen; `None` when there is
    /// no decoded image, as for KServe's preprocessed tensors). An error when the logits are not
    /// all finite.
    pub fn assess(&self, logits: &[f64], feature: Option<&Tensor>, image: Option<&ImageFeatures>, classes: &[String]) -> Result<Assessment> {
        if logits.is_empty() || logits.iter().any(|v| !v.is_finite()) {
            return Err(Error::Model(format!(
                "the model's output is not finite ({logits:?}): its weights are broken (e.g. a diverged training run); no class is given"
            )));
        }
        let probabilities = softmax_t(logits, self.temperature());
        let predicted = argmax(&probabilities);
        let mut unusual = Unusual::default();
        if let (Some(_), Some(f)) = (&self.input_stats, image) {
            unusual.checks.push("pixel screen".into());
            let why = self.screen_reasons(f);
            if !why.is_empty() {
                unusual.reasons.push(format!("{PIXEL_REASON} the training X-rays: {}", why.join("; ")));
            }
        }
        if let (Some(d), Some(f)) = (&self.detector, feature) {
            if f.numel() != d.info.dims {
                return Err(Error::Model(format!(
                    "the model file's detector expects {} features but the network gives {}: the file is inconsistent",
                    d.info.dims,
                    f.numel()
                )));
            }
            unusual.checks.push("feature detector".into());
            let v = d.judge(&f.view([1, -1])).remove(0);
            if v.unusual {
                unusual.reasons.push(format!(
                    "its features are far from the training X-rays (distance {:.1} above the threshold {:.1}, which at least {:.0} % of {} images stay below)",
                    v.score,
                    v.threshold,
                    100.0 * d.info.tpr,
                    match d.info.threshold_source {
                        super::ood::ThresholdSource::Validation => "validation",
                        super::ood::ThresholdSource::Training => "training",
                    }
                ));
            }
            unusual.ood = Some(v);
        }
        unusual.unusual = !unusual.reasons.is_empty();
        let decisions = self
            .operating_points()
            .iter()
            .filter_map(|p| {
                let k = classes.iter().position(|c| *c == p.class)?;
                let positive = p.decide(probabilities[k]);
                Some(Decision { class: p.class.clone(), positive, threshold: p.threshold, text: p.describe(positive) })
            })
            .collect();
        Ok(Assessment { probabilities, predicted, unusual, decisions })
    }
}

/// Calibration of one set of predictions before (raw softmax) and after the model's temperature.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalibrationComparison {
    pub temperature: f64,
    pub before: CalibrationReport,
    pub after: CalibrationReport,
}

impl CalibrationComparison {
    /// From each image's raw logits and true label.
    pub fn new(logits: &[Vec<f64>], labels: &[usize], temperature: f64) -> Self {
        let probs = |t: f64| logits.iter().map(|z| softmax_t(z, t)).collect::<Vec<_>>();
        CalibrationComparison {
            temperature,
            before: CalibrationReport::new(&probs(1.0), labels),
            after: CalibrationReport::new(&probs(temperature), labels),
        }
    }
}

/// An evaluated image that was flagged unusual.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlaggedImage {
    pub path: String,
    pub reasons: Vec<String>,
}

/// How many evaluated images were flagged, and by which check.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnusualSummary {
    /// What the flag rests on (`Reliability::ood_text`).
    pub checks: String,
    pub images: usize,
    pub flagged: usize,
    pub by_pixel_screen: usize,
    pub by_detector: usize,
    pub flagged_images: Vec<FlaggedImage>,
}

/// What `metrics.json` and the reports say about trusting the evaluated predictions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalReliability {
    /// How the probabilities the metrics use were made (`Reliability::calibration_text`).
    pub probabilities: String,
    pub calibration: CalibrationComparison,
    pub unusual: UnusualSummary,
    /// Achieved sensitivity and specificity of each operating point, with bootstrap intervals.
    pub operating_points: Vec<OperatingPointResult>,
}

impl Reliability {
    /// The answer for every image of `p` (its logits, its features when kept, and `images`, the
    /// pixel statistics of each row's decoded image); `p.probs` becomes the calibrated
    /// probabilities. An error when any output is not finite.
    pub fn assess_predictions(&self, p: &mut Predictions, images: &[Option<ImageFeatures>], classes: &[String]) -> Result<Vec<Assessment>> {
        let d = p.features.first().map_or(0, Vec::len) as i64;
        let mut out = Vec::with_capacity(p.logits.len());
        for (row, z) in p.logits.iter().enumerate() {
            let feature = p.features.get(row).map(|f| Tensor::from_slice(f).view([d]));
            let a = self.assess(z, feature.as_ref(), images.get(row).and_then(Option::as_ref), classes).map_err(|e| {
                Error::Model(format!("{e} (image {} of {})", row + 1, p.logits.len()))
            })?;
            out.push(a);
        }
        p.probs = out.iter().map(|a| a.probabilities.clone()).collect();
        Ok(out)
    }

    /// Calibration before and after, the unusual images, and the operating points' achieved
    /// sensitivity and specificity (patients resampled for the intervals) of a labelled set.
    pub fn evaluate_set(&self, p: &Predictions, assessed: &[Assessment], ds: &Dataset) -> EvalReliability {
        let mut flagged = Vec::new();
        let (mut by_screen, mut by_detector) = (0, 0);
        for (row, a) in assessed.iter().enumerate() {
            if a.unusual.unusual {
                flagged.push(FlaggedImage { path: ds.samples[p.indices[row]].name.clone(), reasons: a.unusual.reasons.clone() });
            }
            by_screen += usize::from(a.unusual.reasons.iter().any(|r| r.starts_with(PIXEL_REASON)));
            by_detector += usize::from(a.unusual.ood.as_ref().is_some_and(|v| v.unusual));
        }
        let mut groups: std::collections::BTreeMap<String, Vec<usize>> = Default::default();
        for (row, &i) in p.indices.iter().enumerate() {
            groups.entry(ds.samples[i].patient_key()).or_default().push(row);
        }
        let groups: Vec<Vec<usize>> = groups.into_values().collect();
        let operating_points = self
            .operating_points()
            .iter()
            .filter_map(|op| {
                let k = ds.classes.iter().position(|c| *c == op.class)?;
                let scores: Vec<f64> = p.probs.iter().map(|q| q[k]).collect();
                let positive: Vec<bool> = p.labels.iter().map(|&y| y == k).collect();
                Some(super::operating_point::evaluate(op, &scores, &positive, &groups))
            })
            .collect();
        EvalReliability {
            probabilities: self.calibration_text(),
            calibration: CalibrationComparison::new(&p.logits, &p.labels, self.temperature()),
            unusual: UnusualSummary {
                checks: self.ood_text(),
                images: assessed.len(),
                flagged: flagged.len(),
                by_pixel_screen: by_screen,
                by_detector,
                flagged_images: flagged,
            },
            operating_points,
        }
    }
}

/// Predicts `indices` of the loader's dataset with the model file's calibration and checks:
/// [`super::evaluate::predict`] keeping features, the pixel screen on each image, then
/// [`Reliability::assess_predictions`] (so the returned probabilities are calibrated) and
/// [`Reliability::evaluate_set`].
pub fn predict_assessed(
    model: &crate::model::Network,
    reliability: &Reliability,
    loader: &crate::data::loader::Loader,
    indices: &[usize],
    device: tch::Device,
    opts: &super::evaluate::PredictOptions,
) -> Result<(Predictions, EvalReliability)> {
    // Features for the detector; kept in the result only when the caller asked for them.
    let caller_keeps = opts.keep_features;
    let opts = super::evaluate::PredictOptions { keep_features: caller_keeps || reliability.detector.is_some(), ..*opts };
    let mut p = super::evaluate::predict(model, loader, indices, device, &opts)?;
    let ds = loader.dataset().clone();
    let screen = if reliability.input_stats.is_some() {
        crate::data::input_stats::measure(&ds, &p.indices, loader.pipeline())
    } else {
        vec![None; p.indices.len()]
    };
    let assessed = reliability.assess_predictions(&mut p, &screen, &model.config.class_labels())?;
    let summary = reliability.evaluate_set(&p, &assessed, &ds);
    if !caller_keeps {
        p.features.clear();
    }
    Ok((p, summary))
}

/// How a pixel-screen reason starts (see [`Reliability::assess`]).
const PIXEL_REASON: &str = "its pixels are unlike";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::calibration::Calibration;
    use crate::eval::operating_point::{OperatingPointSpec, choose};

    fn classes() -> Vec<String> {
        vec!["covid19".into(), "normal".into()]
    }

    #[test]
    fn an_old_model_file_answers_with_raw_softmax_and_says_so() {
        let r = Reliability::from_file_parts(&HashMap::new(), &Vec::new(), Path::new("m.safetensors")).unwrap();
        let a = r.assess(&[2.0, 0.0], None, None, &classes()).unwrap();
        assert_eq!(a.probabilities, softmax_t(&[2.0, 0.0], 1.0));
        assert!(!a.unusual.unusual && a.unusual.checks.is_empty());
        assert!(r.calibration_text().contains("made before"), "{}", r.calibration_text());
        assert!(r.ood_text().contains("no feature-space detector"));
    }

    #[test]
    fn non_finite_logits_are_an_error_not_a_class() {
        let r = Reliability::default();
        for bad in [[f64::NAN, f64::NAN], [0.0, f64::INFINITY]] {
            let e = r.assess(&bad, None, None, &classes()).unwrap_err().to_string();
            assert!(e.contains("not finite"), "{e}");
        }
    }

    #[test]
    fn the_temperature_and_operating_points_apply_and_reasons_carry_over() {
        let point = choose(&OperatingPointSpec::parse("covid19:sensitivity=1.0").unwrap(), &[0.3, 0.9, 0.1], &[true, true, false]).unwrap();
        let info = ReliabilityInfo {
            version: RELIABILITY_VERSION,
            calibration: Some(Calibration { temperature: 2.0, images: 3, nll_before: 1.0, nll_after: 0.5, ece_before: 0.2, ece_after: 0.1 }),
            operating_points: vec![point],
            held_out_images: 3,
            ..Default::default()
        };
        let flat = |v: f64| ImageFeatures { intensity_mean: v, intensity_std: v / 2.0, gradient_energy: v / 1000.0 };
        let stats = InputStats::from_features(&[flat(100.0), flat(120.0), flat(110.0)]).unwrap();
        let meta = HashMap::from([
            (RELIABILITY_KEY.to_string(), serde_json::to_string(&info).unwrap()),
            (STATS_KEY.to_string(), serde_json::to_string(&stats).unwrap()),
        ]);
        let r = Reliability::from_file_parts(&meta, &Vec::new(), Path::new("m")).unwrap();
        let white = ImageFeatures { intensity_mean: 255.0, intensity_std: 0.0, gradient_energy: 0.0 };
        let a = r.assess(&[0.0, 1.0], None, Some(&white), &classes()).unwrap();
        assert_eq!(a.probabilities, softmax_t(&[0.0, 1.0], 2.0));
        assert_eq!(a.predicted, 1);
        assert!(a.unusual.unusual && a.unusual.reasons.len() == 1, "{:?}", a.unusual);
        assert_eq!(a.unusual.checks, ["pixel screen"]);
        assert!(!r.assess(&[0.0, 1.0], None, Some(&flat(105.0)), &classes()).unwrap().unusual.unusual);
        // p(covid19) = 1/(1+e^0.5) ≈ 0.38 ≥ 0.3: positive at the 100 %-sensitivity point.
        assert_eq!(a.decisions.len(), 1);
        assert!(a.decisions[0].positive, "{:?}", a.decisions);
        assert_eq!(a.decisions[0].text, "covid19: positive at the 100 %-sensitivity point");
        let bad = HashMap::from([(RELIABILITY_KEY.to_string(), "{\"version\": 1".to_string())]);
        assert!(Reliability::from_file_parts(&bad, &Vec::new(), Path::new("m")).is_err());
    }
}
