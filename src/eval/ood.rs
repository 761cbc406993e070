//! Out-of-distribution detection in feature space: is an image like the X-rays the model was
//! trained on?
//!
//! The feature of an image ([`crate::eval::evaluate::Forward::features`]) is its model input
//! averaged over an 8 × 8 grid (64 numbers: where the image is dark and where bright), followed
//! by the global average of each backbone stage's output (layer1 to layer4 of MA-Net's ResNet; a
//! baseline's last feature map alone): 544 numbers for the tiny network, 3904 for ResNet50. Global
//! averages discard where things are; the coarse layout keeps it, so an inverted X-ray (bright
//! lungs) or one rotated by 90° is far from the training images even when the network's own
//! features are weak (a model trained briefly on few images). Lee et al. likewise combine
//! several depths (their "feature ensemble").
//! The detector stored in model files is the Mahalanobis distance of Lee et al. ("A Simple
//! Unified Framework for Detecting Out-of-Distribution Samples and Adversarial Attacks",
//! NeurIPS 2018, Eq. 2): class means and one covariance shared by the classes ("tied"), both
//! from the training images; an image's score is its distance to the closest class mean,
//! `min_c (f − μ_c)ᵀ Σ⁻¹ (f − μ_c)`. Larger is more unusual. Our choices:
//!
//! - Each number is first divided by its within-class standard deviation (floored at 10⁻³ of the
//!   mean one, so that a channel silent on every training image cannot divide by zero), then Σ
//!   is the Ledoit–Wolf shrinkage of the within-class covariance towards a multiple of the
//!   identity (scikit-learn's `ledoit_wolf` on the standardised numbers; tested against it), so
//!   that it can be inverted with fewer training images than numbers. Standardising first makes
//!   the shrinkage target the diagonal: the 8 × 8 layout and the stages' averages have very
//!   different scales, and shrinking towards one common variance would wash out the small ones.
//! - One joint Gaussian over the concatenated stages (rather than one per stage and a weighted
//!   sum, whose weights Lee et al. fit on out-of-distribution examples we do not have).
//! - Only the leading `r` eigenvectors of Σ are stored (at most [`MAX_BASIS_FLOATS`] numbers,
//!   4 MB: all 544 for the tiny network, 268 of 3904 for ResNet50); the other eigenvalues are
//!   replaced by their mean, as probabilistic PCA does, so the distance keeps its residual part
//!   (the part of `f − μ` outside the leading subspace, which ViM, Wang et al. CVPR 2022, found
//!   the most telling for far-away inputs). With all eigenvectors kept the distance is exact.
//!
//! Alternatives are implemented for comparison (`magsd ood-eval`, with `--fit-data` for those
//! that need the training features): the energy score `−logsumexp(logits)` (Liu et al., NeurIPS
//! 2020), the distance to the k-th nearest training feature after L2 normalisation (Sun et al.,
//! ICML 2022), and the same Mahalanobis distance on layer4 alone. BENCHMARKS.md has the
//! measurements behind the choice.
//!
//! The threshold is the finite-sample (conformal) quantile of held-out in-distribution images'
//! scores at a stated rate (the true-positive rate, default 95 %): a new image drawn like them
//! is at or below it with at least that probability ([`threshold_at_tpr`]). An image is unusual
//! when its score is above it. Metrics are OpenOOD's (`openood/evaluators/metrics.py`): AUROC with in-distribution as
//! the positive class (ties counted half), and the FPR at 95 % TPR: the fraction of
//! out-of-distribution images scored below the threshold that accepts 95 % of the
//! in-distribution ones.
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::model::weights::{NamedTensors, OOD_PREFIX};

/// Metadata key of the detector's settings in a model file.
pub const OOD_KEY: &str = "magsd.ood";
/// Version of the stored detector.
pub const OOD_VERSION: u32 = 1;
/// The stored eigenvector basis holds at most this many numbers (4 MB in f32).
pub const MAX_BASIS_FLOATS: usize = 1 << 20;
/// Relative slack of the threshold: a batch of images and the same image alone give features
/// that differ in their last digits, and the threshold is itself one image's score.
pub const THRESHOLD_TOLERANCE: f64 = 1e-4;
/// A number's standard deviation is at least this fraction of the mean standard deviation.
pub const MIN_RELATIVE_STD: f64 = 1e-3;
/// Default in-distribution acceptance rate of the threshold.
pub const DEFAULT_TPR: f64 = 0.95;

const MEANS: &str = "ood.means";
const SCALE: &str = "ood.scale";
const BASIS: &str = "ood.basis";
const EIGENVALUES: &str = "ood.eigenvalues";

/// The `ood.method` setting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OodMethod {
    /// Mahalanobis distance to the closest class mean (stored in the model file).
    #[default]
    Mahalanobis,
    /// No detector (predictions carry no feature-space check).
    None,
}

/// Where a detector's threshold came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ThresholdSource {
    /// Held-out images (the validation split).
    Validation,
    /// The training images themselves (no validation split): the network has seen them, so new
    /// in-distribution images are flagged more often than the stated rate.
    Training,
}

/// What the model file's metadata says about the detector (its tensors are stored beside it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OodInfo {
    pub version: u32,
    pub method: String,
    /// What the feature is, in words.
    pub feature: String,
    pub dims: usize,
    /// Eigenvectors kept, and the mean of the eigenvalues left out (0 when all are kept).
    pub rank: usize,
    pub residual_variance: f64,
    /// Ledoit–Wolf shrinkage intensity.
    pub shrinkage: f64,
    /// Training images the means and the covariance come from.
    pub training_images: usize,
    /// Unusual when the score exceeds this.
    pub threshold: f64,
    /// The stated TPR (a new image like the threshold images is accepted with at least this
    /// probability when there are enough of them, see [`threshold_at_tpr`]) and how many there were.
    pub tpr: f64,
    pub threshold_images: usize,
    pub threshold_source: ThresholdSource,
}

/// The Mahalanobis detector (see the module docs).
#[derive(Debug)]
pub struct Mahalanobis {
    /// `[K, d]` class means (classes with training images only).
    pub means: Tensor,
    /// `[d]` the within-class standard deviation each number is divided by.
    pub scale: Tensor,
    /// `[d, r]` leading eigenvectors of the shrunk covariance, and `[r]` their eigenvalues.
    pub basis: Tensor,
    pub eigenvalues: Tensor,
    pub residual_variance: f64,
    pub shrinkage: f64,
    pub training_images: usize,
}

/// Scikit-learn's `ledoit_wolf_shrinkage` of centred rows `x` `[n, d]`: the weight α of
/// `μ·I` in `(1 − α)·S + α·μ·I`, with `S = xᵀx / n` and `μ = tr(S)/d`.
pub fn ledoit_wolf_shrinkage(x: &Tensor) -> f64 {
    let (n, d) = (x.size()[0] as f64, x.size()[1] as f64);
    if d <= 1.0 {
        return 0.0;
    }
    let s = x.transpose(0, 1).matmul(x) / n; // [d, d]
    let mu = s.trace().double_value(&[]) / d;
    let sum_s2 = s.square().sum(Kind::Double).double_value(&[]);
    let norms4 = x.square().sum_dim_intlist(&[1i64][..], false, Kind::Double).square().sum(Kind::Double).double_value(&[]);
    let delta = (sum_s2 - d * mu * mu) / d;
    let beta = ((norms4 / n - sum_s2) / (n * d)).min(delta);
    if beta == 0.0 || delta == 0.0 { 0.0 } else { beta / delta }
}

impl Mahalanobis {
    /// Fits class means and the shrunk tied covariance on training `features` `[n, d]` with
    /// their `labels`, keeping at most [`MAX_BASIS_FLOATS`] numbers of eigenvectors. An error
    /// with fewer than two images or non-finite features.
    pub fn fit(features: &Tensor, labels: &[usize]) -> Result<Self> {
        Self::fit_capped(features, labels, MAX_BASIS_FLOATS)
    }

    /// [`Mahalanobis::fit`] with the basis capped at `max_floats` numbers.
    pub fn fit_capped(features: &Tensor, labels: &[usize], max_floats: usize) -> Result<Self> {
        let f = features.to_device(Device::Cpu).to_kind(Kind::Double);
        let (n, d) = (f.size()[0] as usize, f.size()[1] as usize);
        if n < 2 || labels.len() != n {
            return Err(Error::Data(format!("the out-of-distribution detector needs at least 2 training images with labels, got {n}")));
        }
        if !bool::try_from(f.isfinite().all()).unwrap_or(false) {
            return Err(Error::Data("the training images' features are not all finite: the model is broken".into()));
        }
        let mut classes: Vec<usize> = labels.to_vec();
        classes.sort_unstable();
        classes.dedup();
        let mut means = Vec::new();
        let mut centred = f.copy();
        for &c in &classes {
            let rows: Vec<i64> = (0..n).filter(|&i| labels[i] == c).map(|i| i as i64).collect();
            let idx = Tensor::from_slice(&rows);
            let mean = f.index_select(0, &idx).mean_dim(&[0i64][..], true, Kind::Double); // [1, d]
            let _ = centred.index_copy_(0, &idx, &(f.index_select(0, &idx) - &mean));
            means.push(mean);
        }
        let means = Tensor::cat(&means, 0); // [K, d]
        let std = centred.square().mean_dim(&[0i64][..], false, Kind::Double).sqrt(); // [d]
        let floor = MIN_RELATIVE_STD * std.mean(Kind::Double).double_value(&[]);
        let scale = std.clamp_min(floor.max(f64::MIN_POSITIVE));
        let centred = centred / &scale;
        let alpha = ledoit_wolf_shrinkage(&centred);
        let s = centred.transpose(0, 1).matmul(&centred) / n as f64; // [d, d]
        let mu = s.trace().double_value(&[]) / d as f64;
        let shrunk = &s * (1.0 - alpha) + Tensor::eye(d as i64, (Kind::Double, Device::Cpu)) * (alpha * mu);
        let (evals, evecs) = shrunk.linalg_eigh("L"); // ascending
        let evals = evals.flip([0]).clamp_min(f64::MIN_POSITIVE);
        let evecs = evecs.flip([1]);
        let rank = d.min((max_floats / d.max(1)).max(1));
        let residual_variance = if rank < d { evals.narrow(0, rank as i64, (d - rank) as i64).mean(Kind::Double).double_value(&[]) } else { 0.0 };
        Ok(Mahalanobis {
            means: means.to_kind(Kind::Float),
            scale: scale.to_kind(Kind::Float),
            basis: evecs.narrow(1, 0, rank as i64).to_kind(Kind::Float).contiguous(),
            eigenvalues: evals.narrow(0, 0, rank as i64).to_kind(Kind::Float).contiguous(),
            residual_variance,
            shrinkage: alpha,
            training_images: n,
        })
    }

    pub fn dims(&self) -> usize {
        self.means.size()[1] as usize
    }

    /// Squared distances of `features` `[B, d]` to the closest class mean, `[B]` (f64, CPU).
    pub fn score(&self, features: &Tensor) -> Vec<f64> {
        let f = features.to_device(Device::Cpu).to_kind(Kind::Double);
        let means = self.means.to_kind(Kind::Double);
        let basis = self.basis.to_kind(Kind::Double);
        let inv = self.eigenvalues.to_kind(Kind::Double).reciprocal();
        let diff = (f.unsqueeze(1) - means.unsqueeze(0)) / self.scale.to_kind(Kind::Double); // [B, K, d], standardised
        let proj = diff.matmul(&basis); // [B, K, r]
        let proj_sq = proj.square();
        let mut q = (&proj_sq * &inv).sum_dim_intlist(&[2i64][..], false, Kind::Double); // [B, K]
        if self.residual_variance > 0.0 {
            let outside = diff.square().sum_dim_intlist(&[2i64][..], false, Kind::Double)
                - proj_sq.sum_dim_intlist(&[2i64][..], false, Kind::Double);
            q += outside.clamp_min(0.0) / self.residual_variance;
        }
        let best = q.amin(&[1i64][..], false); // [B]
        Vec::<f64>::try_from(best).unwrap_or_default()
    }

    /// The tensors a model file stores (under [`OOD_PREFIX`]).
    pub fn tensors(&self) -> NamedTensors {
        vec![
            (MEANS.into(), self.means.shallow_clone()),
            (SCALE.into(), self.scale.shallow_clone()),
            (BASIS.into(), self.basis.shallow_clone()),
            (EIGENVALUES.into(), self.eigenvalues.shallow_clone()),
        ]
    }
}

/// A fitted detector with its threshold, as model files carry it.
#[derive(Debug)]
pub struct OodDetector {
    pub info: OodInfo,
    pub model: Mahalanobis,
}

/// One image's verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OodVerdict {
    pub score: f64,
    pub threshold: f64,
    pub unusual: bool,
}

impl OodDetector {
    /// Sets the threshold on held-out in-distribution `scores` at `tpr` (see [`threshold_at_tpr`]).
    pub fn new(model: Mahalanobis, held_out_scores: &[f64], tpr: f64, source: ThresholdSource) -> Result<Self> {
        let threshold = threshold_at_tpr(held_out_scores, tpr)?;
        let info = OodInfo {
            version: OOD_VERSION,
            method: "mahalanobis".into(),
            feature: "the model input averaged over 8×8, then the global average of each backbone stage".into(),
            dims: model.dims(),
            rank: model.basis.size()[1] as usize,
            residual_variance: model.residual_variance,
            shrinkage: model.shrinkage,
            training_images: model.training_images,
            threshold,
            tpr,
            threshold_images: held_out_scores.len(),
            threshold_source: source,
        };
        Ok(OodDetector { info, model })
    }

    /// The verdicts for `features` `[B, d]`: unusual above the threshold (scores within
    /// [`THRESHOLD_TOLERANCE`] of it count as at it). A non-finite score (a broken model) is unusual.
    pub fn judge(&self, features: &Tensor) -> Vec<OodVerdict> {
        let t = self.info.threshold;
        self.model
            .score(features)
            .into_iter()
            .map(|s| OodVerdict { score: s, threshold: t, unusual: !s.is_finite() || s > t + THRESHOLD_TOLERANCE * t.abs() })
            .collect()
    }

    /// Reads the detector a model file stores: `None` when it has none (files made before the
    /// detector existed, or with `ood.method = "none"`).
    pub fn from_file_parts(metadata: &std::collections::HashMap<String, String>, extra: &NamedTensors, path: &std::path::Path) -> Result<Option<Self>> {
        let Some(json) = metadata.get(OOD_KEY) else {
            return Ok(None);
        };
        let info: OodInfo = serde_json::from_str(json).map_err(|e| Error::bad_file(path, format!("{OOD_KEY} unreadable: {e}")))?;
        if info.version > OOD_VERSION {
            return Err(Error::bad_file(path, format!("its detector has version {}; this magsd reads up to {OOD_VERSION}", info.version)));
        }
        let get = |name: &str| {
            extra
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.to_kind(Kind::Float))
                .ok_or_else(|| Error::bad_file(path, format!("{OOD_KEY} is set but tensor {name} is missing")))
        };
        let model = Mahalanobis {
            means: get(MEANS)?,
            scale: get(SCALE)?,
            basis: get(BASIS)?,
            eigenvalues: get(EIGENVALUES)?,
            residual_variance: info.residual_variance,
            shrinkage: info.shrinkage,
            training_images: info.training_images,
        };
        let d = info.dims as i64;
        let shapes_ok = model.means.dim() == 2
            && model.means.size()[1] == d
            && model.scale.size() == [d]
            && model.basis.size() == [d, info.rank as i64]
            && model.eigenvalues.size() == [info.rank as i64];
        let positive = bool::try_from(model.eigenvalues.gt(0.0).all()).unwrap_or(false)
            && bool::try_from(model.scale.gt(0.0).all()).unwrap_or(false);
        if !shapes_ok || !positive || !info.threshold.is_finite() || info.residual_variance.is_nan() || info.residual_variance < 0.0 {
            return Err(Error::bad_file(path, "its out-of-distribution detector is inconsistent (shapes, eigenvalues or threshold)"));
        }
        debug_assert!(OOD_PREFIX.len() < MEANS.len());
        Ok(Some(OodDetector { info, model }))
    }
}

/// The threshold that accepts (score ≤ threshold) a new image drawn like the `n` `scores`' images
/// with probability at least `tpr`: the ⌈tpr·(n+1)⌉-th smallest score, the finite-sample
/// (split-conformal) quantile. A new score and the `n` are exchangeable, so it is below the k-th
/// smallest with probability k/(n+1); the plain ⌈tpr·n⌉-th smallest gives less than `tpr` (98 %
/// instead of 99 % with 100 scores). When ⌈tpr·(n+1)⌉ > n (fewer than 99 scores at 0.99, 19 at
/// 0.95) no score reaches the rate, and the largest is taken: it accepts n/(n+1).
pub fn threshold_at_tpr(scores: &[f64], tpr: f64) -> Result<f64> {
    if scores.is_empty() {
        return Err(Error::Data("no held-out image to set the out-of-distribution threshold on".into()));
    }
    if !(tpr > 0.0 && tpr <= 1.0) {
        return Err(Error::Config(format!("ood.tpr must be in (0, 1], got {tpr}")));
    }
    let mut s: Vec<f64> = scores.iter().copied().filter(|v| v.is_finite()).collect();
    if s.len() != scores.len() {
        return Err(Error::Data("held-out scores are not all finite: the model is broken".into()));
    }
    s.sort_by(f64::total_cmp);
    let k = ((tpr * (s.len() + 1) as f64) - 1e-9).ceil().max(1.0) as usize;
    Ok(s[k.min(s.len()) - 1])
}

/// AUROC and FPR at 95 % TPR of an OOD score (larger = more unusual), OpenOOD's definitions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OodMetrics {
    pub in_distribution: usize,
    pub out_of_distribution: usize,
    /// Area under the ROC curve of telling them apart (in-distribution positive, ties half).
    pub auroc: Option<f64>,
    /// Fraction of out-of-distribution images scored below the 95 %-TPR threshold (OpenOOD's
    /// `fpr_recall`: the threshold is the ⌊0.95·n⌋-th largest in-distribution confidence,
    /// confidence = −score, and an OOD image counts when its confidence is strictly above it).
    pub fpr_at_95_tpr: Option<f64>,
}

/// [`OodMetrics`] of in-distribution scores `id` against out-of-distribution scores `ood`.
pub fn ood_metrics(id: &[f64], ood: &[f64]) -> OodMetrics {
    let positive: Vec<bool> = id.iter().map(|_| true).chain(ood.iter().map(|_| false)).collect();
    let conf: Vec<f64> = id.iter().chain(ood).map(|s| -s).collect();
    let auroc = super::metrics::binary_auc(&positive, &conf);
    let fpr = (!id.is_empty() && !ood.is_empty())
        .then(|| {
            let mut c: Vec<f64> = id.iter().map(|s| -s).collect();
            c.sort_by(f64::total_cmp);
            let recall_num = (0.95 * c.len() as f64).floor() as usize;
            // NumPy's `sorted[-recall_num]`; with recall_num = 0 that is `sorted[0]`.
            let thresh = if recall_num == 0 { c[0] } else { c[c.len() - recall_num] };
            ood.iter().filter(|s| -**s > thresh).count() as f64 / ood.len() as f64
        });
    OodMetrics { in_distribution: id.len(), out_of_distribution: ood.len(), auroc, fpr_at_95_tpr: fpr }
}

/// k-nearest-neighbour distance on L2-normalised features (Sun et al. 2022), for comparison.
pub struct Knn {
    /// `[n, d]` normalised training features.
    pub bank: Tensor,
    pub k: usize,
}

fn l2_normalise(f: &Tensor) -> Tensor {
    let f = f.to_device(Device::Cpu).to_kind(Kind::Float);
    let norm = f.square().sum_dim_intlist(&[1i64][..], true, Kind::Float).sqrt().clamp_min(1e-12);
    f / norm
}

impl Knn {
    pub fn fit(features: &Tensor, k: usize) -> Self {
        Knn { bank: l2_normalise(features), k: k.max(1) }
    }

    /// Distance to the k-th nearest training feature, `[B]`.
    pub fn score(&self, features: &Tensor) -> Vec<f64> {
        let q = l2_normalise(features);
        let k = self.k.min(self.bank.size()[0] as usize).max(1) as i64;
        let sim = q.matmul(&self.bank.transpose(0, 1)); // [B, n]
        let d = (sim * -2.0 + 2.0).clamp_min(0.0).sqrt();
        let (kth, _) = d.topk(k, 1, false, true); // ascending
        Vec::<f64>::try_from(kth.select(1, k - 1).to_kind(Kind::Double)).unwrap_or_default()
    }
}

/// The energy score of Liu et al. (2020), as an OOD score: `−logsumexp(logits)` (T = 1).
pub fn energy(logits: &[f64]) -> f64 {
    let m = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    -(m + logits.iter().map(|z| (z - m).exp()).sum::<f64>().ln())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaussian(n: i64, d: i64, shift: f64, seed: i64) -> Tensor {
        tch::manual_seed(seed);
        Tensor::randn([n, d], (Kind::Double, Device::Cpu)) + shift
    }

    #[test]
    fn with_every_eigenvector_kept_the_distance_is_exact() {
        let f = gaussian(200, 6, 0.0, 1);
        let labels: Vec<usize> = (0..200).map(|i| i % 2).collect();
        let m = Mahalanobis::fit(&f, &labels).unwrap();
        assert_eq!(m.basis.size(), [6, 6]);
        assert_eq!(m.residual_variance, 0.0);
        // Rebuild Σ from the stored parts and compare one distance with the direct formula.
        let x = Tensor::from_slice(&[0.5f64, -1.0, 2.0, 0.0, 1.0, -0.5]).view([1, 6]);
        let basis = m.basis.to_kind(Kind::Double);
        let sigma = basis.matmul(&Tensor::diag_embed(&m.eigenvalues.to_kind(Kind::Double), 0, -2, -1)).matmul(&basis.transpose(0, 1));
        let prec = sigma.inverse();
        let direct: Vec<f64> = (0..2)
            .map(|c| {
                let dlt = (&x - m.means.to_kind(Kind::Double).get(c).view([1, 6])) / m.scale.to_kind(Kind::Double);
                dlt.matmul(&prec).matmul(&dlt.transpose(0, 1)).double_value(&[0, 0])
            })
            .collect();
        let got = m.score(&x)[0];
        let want = direct[0].min(direct[1]);
        assert!((got - want).abs() < 1e-4 * want, "{got} vs {want}");
    }

    #[test]
    fn far_inputs_score_higher_and_the_threshold_accepts_the_stated_share() {
        let train = gaussian(300, 16, 0.0, 2);
        let labels = vec![0usize; 300];
        let m = Mahalanobis::fit(&train, &labels).unwrap();
        let held = m.score(&gaussian(100, 16, 0.0, 3));
        let det = OodDetector::new(m, &held, 0.95, ThresholdSource::Validation).unwrap();
        let accepted = held.iter().filter(|s| **s <= det.info.threshold).count();
        assert_eq!(accepted, 96, "⌈0.95·101⌉ = 96");
        let far = det.judge(&gaussian(50, 16, 4.0, 4));
        assert!(far.iter().all(|v| v.unusual), "shifted by 4σ in every dimension");
        let nan = det.judge(&Tensor::full([1, 16], f64::NAN, (Kind::Double, Device::Cpu)));
        assert!(nan[0].unusual);
        let m = ood_metrics(&held, &far.iter().map(|v| v.score).collect::<Vec<_>>());
        assert_eq!((m.auroc, m.fpr_at_95_tpr), (Some(1.0), Some(0.0)));
    }

    #[test]
    fn a_truncated_basis_keeps_the_residual_and_stays_under_the_size_cap() {
        let (d, cap) = (64usize, 64 * 16);
        let f = gaussian(20, d as i64, 0.0, 5);
        let m = Mahalanobis::fit_capped(&f, &[0; 20], cap).unwrap();
        let r = m.basis.size()[1] as usize;
        assert_eq!(r, 16);
        assert_eq!(MAX_BASIS_FLOATS / 3904, 268, "ResNet50 keeps 268 of its 3904 directions");
        assert!(m.residual_variance > 0.0);
        // A point far along a direction outside the training span is still far.
        let s_in = m.score(&f.narrow(0, 0, 1))[0];
        let s_out = m.score(&(f.narrow(0, 0, 1) + 10.0))[0];
        assert!(s_out > 10.0 * s_in, "{s_out} vs {s_in}");
    }

    #[test]
    fn the_threshold_is_the_conformal_quantile_so_new_images_are_accepted_at_the_stated_rate() {
        // 100 scores at 0.99: the 100th smallest (⌈0.99·101⌉), not the 99th (⌈0.99·100⌉), which
        // a new exchangeable score exceeds with probability 2/101 instead of at most 1 %.
        let scores: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(threshold_at_tpr(&scores, 0.99).unwrap(), 100.0);
        assert_eq!(threshold_at_tpr(&scores, 0.95).unwrap(), 96.0);
        // Too few scores for the rate: the largest.
        assert_eq!(threshold_at_tpr(&scores[..60], 0.99).unwrap(), 60.0);
        // The guarantee, checked on exchangeable draws: with n = 40 at 0.95 (k = 39, 2/41 above;
        // ⌈0.95·40⌉ = 38 would let 3/41 = 7.3 % through) the share of new draws above the
        // threshold, averaged over 2000 thresholds (standard error about 0.1 %), is ≤ 5 %.
        let mut rng = crate::rng::Rng::new(7);
        let (mut above, mut total) = (0usize, 0usize);
        for _ in 0..2000 {
            let fit: Vec<f64> = (0..40).map(|_| rng.below(1 << 30) as f64).collect();
            let t = threshold_at_tpr(&fit, 0.95).unwrap();
            let new: Vec<f64> = (0..20).map(|_| rng.below(1 << 30) as f64).collect();
            above += new.iter().filter(|v| **v > t).count();
            total += new.len();
        }
        let rate = above as f64 / total as f64;
        assert!((0.04..=0.054).contains(&rate), "{rate}");
    }

    #[test]
    fn openood_fpr_counts_ood_strictly_above_the_threshold_confidence() {
        // ID scores 1..=20: confidences −1..−20; ⌊0.95·20⌋ = 19 → threshold = −19 (the 19th
        // largest). OOD scores 18.5 (conf −18.5 > −19: counted) and 19 (not strictly above).
        let id: Vec<f64> = (1..=20).map(f64::from).collect();
        let m = ood_metrics(&id, &[18.5, 19.0, 100.0, 0.5]);
        assert_eq!(m.fpr_at_95_tpr, Some(0.5));
        assert!(threshold_at_tpr(&[], 0.95).is_err());
        assert_eq!(threshold_at_tpr(&id, 0.95).unwrap(), 20.0, "⌈0.95·21⌉ = 20");
        assert_eq!(threshold_at_tpr(&id, 0.9).unwrap(), 19.0, "⌈0.9·21⌉ = 19");
        assert_eq!(threshold_at_tpr(&id, 1.0).unwrap(), 20.0);
        assert!((energy(&[0.0, 0.0]) + 2f64.ln()).abs() < 1e-15);
    }
}
