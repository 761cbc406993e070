//! `magsd ood-eval`: how well a model file's `unusual` flag separates held-out chest X-rays
//! (in-distribution) from images that are not valid inputs (`crate::data::ood_sets`, and folders
//! the user gives, e.g. natural photographs and non-chest medical images), with OpenOOD's AUROC
//! and FPR at 95 % TPR (`super::ood::ood_metrics`) for the stored detector and, for
//! comparison, the energy score and the k-nearest-neighbour distance.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use super::evaluate::{forward, rows_f64};
use super::ood::{Knn, Mahalanobis, OodMetrics, energy, ood_metrics};
use super::reliability::Reliability;
use crate::data::decode::GrayImage;
use crate::data::input_stats::image_features;
use crate::data::loader::InputPipeline;
use crate::error::Result;
use crate::model::Network;

/// Scores of one image.
#[derive(Clone, Debug)]
pub struct ImageScores {
    /// The stored detector's distance (`None`: the model file has none).
    pub mahalanobis: Option<f64>,
    pub energy: f64,
    /// Distance to the k-th nearest training feature, and the Mahalanobis distance on layer4
    /// alone (when training features were given).
    pub knn: Option<f64>,
    pub layer4: Option<f64>,
    /// Flagged by the pixel screen, by the detector, and by either (what magsd reports).
    pub screen: bool,
    pub detector: bool,
    pub unusual: bool,
}

/// Detectors fitted on training features at evaluation time, for comparison with the stored one.
pub struct Comparison {
    pub knn: Knn,
    /// Mahalanobis on the last `C4` numbers of the feature (layer4's average) alone.
    pub layer4: Mahalanobis,
    pub c4: usize,
}

impl Comparison {
    /// Fits both on training `features` `[n, d]` with their `labels`; `c4` is layer4's width.
    pub fn fit(features: &Tensor, labels: &[usize], k: usize, c4: usize) -> Result<Self> {
        let d = features.size()[1];
        let c4 = c4.min(d as usize);
        Ok(Comparison {
            knn: Knn::fit(features, k),
            layer4: Mahalanobis::fit(&features.narrow(1, d - c4 as i64, c4 as i64), labels)?,
            c4,
        })
    }
}

/// Runs `images` through the model in batches and scores each one.
pub fn score_images(
    model: &Network,
    reliability: &Reliability,
    comparison: Option<&Comparison>,
    pipeline: &InputPipeline,
    images: &[GrayImage],
    device: Device,
    batch: usize,
) -> Result<Vec<ImageScores>> {
    let s = pipeline.preprocess.size as i64;
    let classes = model.config.class_labels();
    let mut out = Vec::with_capacity(images.len());
    for chunk in images.chunks(batch.max(1)) {
        let planes: Vec<f32> = chunk.iter().flat_map(|img| pipeline.eval_plane(img).data).collect();
        let x = Tensor::from_slice(&planes).view([chunk.len() as i64, 1, s, s]);
        let f = forward(model, &x, device, false, false);
        let feats = f.features.to_device(Device::Cpu);
        let logits = rows_f64(&f.logits)?;
        let knn_scores = comparison.map(|c| c.knn.score(&feats));
        let d = feats.size()[1];
        let layer4_scores = comparison.map(|c| c.layer4.score(&feats.narrow(1, d - c.c4 as i64, c.c4 as i64)));
        for (i, img) in chunk.iter().enumerate() {
            let feature = feats.get(i as i64);
            let pix = image_features(img, pipeline);
            // A broken model (non-finite logits) is an error, as everywhere.
            let a = reliability.assess(&logits[i], Some(&feature), Some(&pix), &classes)?;
            let screen = !reliability.screen_reasons(&pix).is_empty();
            let (mahalanobis, detector) = match &a.unusual.ood {
                Some(v) => (Some(v.score), v.unusual),
                None => (None, false),
            };
            out.push(ImageScores {
                mahalanobis,
                energy: energy(&logits[i]),
                knn: knn_scores.as_ref().map(|k| k[i]),
                layer4: layer4_scores.as_ref().map(|k| k[i]),
                screen,
                detector,
                unusual: a.unusual.unusual,
            });
        }
    }
    Ok(out)
}

/// Near: still an X-ray-like picture (phantoms, transformed X-rays); far: nothing like one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Distance {
    Far,
    Near,
    InDistribution,
}

/// One set's row of the report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SetResult {
    pub name: String,
    pub distance: Distance,
    pub images: usize,
    /// Flagged by the pixel screen, by the detector at its stored threshold, and by either.
    pub flagged_screen: usize,
    pub flagged_detector: usize,
    pub flagged: usize,
    /// Score name → AUROC / FPR@95TPR against the in-distribution images (absent for them).
    pub metrics: BTreeMap<String, OodMetrics>,
}

/// What `magsd ood-eval` writes (`ood-eval.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OodEvalReport {
    pub model: String,
    pub in_distribution: String,
    pub knn_k: Option<usize>,
    pub sets: Vec<SetResult>,
    /// Images of the in-distribution data that could not be read (left out).
    pub unreadable: Vec<String>,
}

/// The score names reported, in order.
pub const MAHALANOBIS: &str = "mahalanobis";
pub const ENERGY: &str = "energy";
pub const KNN: &str = "knn";
pub const LAYER4: &str = "mahalanobis-layer4";

fn score_lists(s: &[ImageScores]) -> BTreeMap<&'static str, Vec<f64>> {
    let mut m = BTreeMap::new();
    if s.iter().all(|x| x.mahalanobis.is_some()) {
        m.insert(MAHALANOBIS, s.iter().filter_map(|x| x.mahalanobis).collect());
    }
    m.insert(ENERGY, s.iter().map(|x| x.energy).collect());
    if s.iter().all(|x| x.knn.is_some()) {
        m.insert(KNN, s.iter().filter_map(|x| x.knn).collect());
    }
    if s.iter().all(|x| x.layer4.is_some()) {
        m.insert(LAYER4, s.iter().filter_map(|x| x.layer4).collect());
    }
    m
}

/// One row: flag counts, and each score's metrics against `id` (none for the ID row itself).
pub fn set_result(name: &str, distance: Distance, scores: &[ImageScores], id: Option<&[ImageScores]>) -> SetResult {
    let mut metrics = BTreeMap::new();
    if let Some(id) = id {
        let (a, b) = (score_lists(id), score_lists(scores));
        for (k, ood) in &b {
            if let Some(idv) = a.get(k) {
                metrics.insert(k.to_string(), ood_metrics(idv, ood));
            }
        }
    }
    SetResult {
        name: name.to_string(),
        distance,
        images: scores.len(),
        flagged_screen: scores.iter().filter(|s| s.screen).count(),
        flagged_detector: scores.iter().filter(|s| s.detector).count(),
        flagged: scores.iter().filter(|s| s.unusual).count(),
        metrics,
    }
}

impl OodEvalReport {
    /// The report as a Markdown table.
    pub fn markdown(&self) -> String {
        let names: Vec<&str> = [MAHALANOBIS, LAYER4, KNN, ENERGY]
            .into_iter()
            .filter(|n| self.sets.iter().any(|s| s.metrics.contains_key(*n)))
            .collect();
        let label = |n: &str| if n == KNN { format!("kNN (k={})", self.knn_k.unwrap_or(0)) } else { n.to_string() };
        let mut out = format!(
            "Model: {}\nIn-distribution: {}\n\n| set | kind | images | flagged (screen / detector / either) |",
            self.model, self.in_distribution
        );
        for n in &names {
            out += &format!(" {} AUROC | {} FPR@95TPR |", label(n), label(n));
        }
        out += &format!("\n|---|---|---|---|{}\n", "---|---|".repeat(names.len()));
        let pct = |a: usize, b: usize| if b == 0 { "n/a".to_string() } else { format!("{:.1} %", 100.0 * a as f64 / b as f64) };
        let opt = |v: Option<f64>, scale: f64| v.map(|x| format!("{:.3}", scale * x)).unwrap_or_else(|| "n/a".into());
        for s in &self.sets {
            out += &format!(
                "| {} | {} | {} | {} / {} / {} |",
                s.name,
                match s.distance {
                    Distance::Far => "far",
                    Distance::Near => "near",
                    Distance::InDistribution => "in-distribution",
                },
                s.images,
                pct(s.flagged_screen, s.images),
                pct(s.flagged_detector, s.images),
                pct(s.flagged, s.images)
            );
            for n in &names {
                let m = s.metrics.get(*n);
                out += &format!(" {} | {} |", opt(m.and_then(|m| m.auroc), 1.0), opt(m.and_then(|m| m.fpr_at_95_tpr), 1.0));
            }
            out += "\n";
        }
        out += "\nAUROC: in-distribution positive, ties half; FPR@95TPR: the share of the set scored as more in-distribution \
                than the threshold that keeps 95 % of the in-distribution images (OpenOOD's definitions). \
                \"flagged\" is what magsd reports at the model file's own threshold.\n";
        out
    }
}
