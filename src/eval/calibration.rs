//! Calibrated probabilities: temperature scaling (Guo et al., "On Calibration of Modern Neural
//! Networks", ICML 2017, §4.2) and the measures that say how well probabilities are calibrated:
//! the expected calibration error (ECE; 15 equal-width bins of the top-label confidence, as in
//! Guo et al. §2 and their code), the reliability diagram behind it, and the Brier score.
//!
//! Temperature scaling divides every logit by one number T > 0 fitted on held-out images (the
//! validation split) by minimising their negative log-likelihood. It never changes which class
//! is largest, so accuracy and argmax decisions stay as they were; only the confidence moves.
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Bins of the ECE and the reliability diagram (Guo et al. use 15).
pub const ECE_BINS: usize = 15;
/// The fitted temperature is kept within these bounds (a validation split that the model
/// separates perfectly would otherwise drive T towards 0).
pub const MIN_TEMPERATURE: f64 = 0.05;
pub const MAX_TEMPERATURE: f64 = 20.0;

/// How a model's probabilities are made (the `calibration.method` setting).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CalibrationMethod {
    /// Temperature scaling fitted on the validation split.
    #[default]
    Temperature,
    /// Raw softmax.
    None,
}

/// The calibration a model file carries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Logits are divided by this before the softmax (1: raw softmax).
    pub temperature: f64,
    /// Held-out images it was fitted on.
    pub images: usize,
    /// Negative log-likelihood of those images before and after.
    pub nll_before: f64,
    pub nll_after: f64,
    /// ECE of those images before and after.
    pub ece_before: f64,
    pub ece_after: f64,
}

/// Softmax of `logits / temperature`, in f64 (stable: the largest logit is subtracted first).
pub fn softmax_t(logits: &[f64], temperature: f64) -> Vec<f64> {
    let m = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = logits.iter().map(|&z| ((z - m) / temperature).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// Mean negative log-likelihood of `labels` under `softmax(logits · beta)` and its first two
/// derivatives in `beta` (= 1/T): `d = E_p[z] − z_y`, `dd = Var_p[z]`.
fn nll_and_derivatives(logits: &[Vec<f64>], labels: &[usize], beta: f64) -> (f64, f64, f64) {
    let (mut nll, mut d, mut dd) = (0.0, 0.0, 0.0);
    for (z, &y) in logits.iter().zip(labels) {
        let p = softmax_t(z, 1.0 / beta);
        let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = beta * m + z.iter().map(|&v| (beta * (v - m)).exp()).sum::<f64>().ln();
        nll += lse - beta * z[y];
        let mean: f64 = p.iter().zip(z).map(|(p, z)| p * z).sum();
        let second: f64 = p.iter().zip(z).map(|(p, z)| p * z * z).sum();
        d += mean - z[y];
        dd += (second - mean * mean).max(0.0);
    }
    let n = logits.len() as f64;
    (nll / n, d / n, dd / n)
}

/// Mean negative log-likelihood of `labels` under `softmax(logits / temperature)`.
pub fn nll(logits: &[Vec<f64>], labels: &[usize], temperature: f64) -> f64 {
    nll_and_derivatives(logits, labels, 1.0 / temperature).0
}

/// Fits the temperature on held-out `logits` and `labels` (Guo et al. §4.2): the T in
/// [[`MIN_TEMPERATURE`], [`MAX_TEMPERATURE`]] minimising the mean negative log-likelihood. The
/// NLL is convex in β = 1/T, so its derivative is monotone: Newton steps on β, safeguarded by a
/// bisection bracket, find the root (or the bound it lies beyond).
pub fn fit_temperature(logits: &[Vec<f64>], labels: &[usize]) -> Result<Calibration> {
    if logits.is_empty() {
        return Err(Error::Data("temperature scaling needs at least one held-out image".into()));
    }
    if logits.iter().flatten().any(|v| !v.is_finite()) {
        return Err(Error::Data("temperature scaling: the held-out logits are not all finite".into()));
    }
    if let Some(&y) = labels.iter().find(|&&y| logits.iter().any(|z| y >= z.len())) {
        return Err(Error::Data(format!("temperature scaling: label {y} is not a class of the logits")));
    }
    let (mut lo, mut hi) = (1.0 / MAX_TEMPERATURE, 1.0 / MIN_TEMPERATURE);
    let beta = if nll_and_derivatives(logits, labels, lo).1 >= 0.0 {
        lo
    } else if nll_and_derivatives(logits, labels, hi).1 <= 0.0 {
        hi
    } else {
        let mut b = 1.0f64.clamp(lo, hi);
        for _ in 0..100 {
            let (_, d, dd) = nll_and_derivatives(logits, labels, b);
            if d.abs() < 1e-12 {
                break;
            }
            if d > 0.0 { hi = b } else { lo = b }
            let newton = b - d / dd;
            b = if dd > 0.0 && newton > lo && newton < hi { newton } else { 0.5 * (lo + hi) };
            if hi - lo < 1e-12 * b {
                break;
            }
        }
        b
    };
    let temperature = 1.0 / beta;
    let probs = |t: f64| logits.iter().map(|z| softmax_t(z, t)).collect::<Vec<_>>();
    Ok(Calibration {
        temperature,
        images: logits.len(),
        nll_before: nll(logits, labels, 1.0),
        nll_after: nll(logits, labels, temperature),
        ece_before: reliability(&probs(1.0), labels).ece,
        ece_after: reliability(&probs(temperature), labels).ece,
    })
}

/// One bin of a reliability diagram.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReliabilityBin {
    /// The bin is (lower, upper] of the top-label confidence.
    pub lower: f64,
    pub upper: f64,
    pub count: usize,
    /// Mean top-label confidence and accuracy of its images (`None` for an empty bin).
    pub confidence: Option<f64>,
    pub accuracy: Option<f64>,
}

/// A reliability diagram and its expected calibration error.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reliability {
    pub bins: Vec<ReliabilityBin>,
    /// Σ_b |B_b|/n · |acc(B_b) − conf(B_b)| (0 for an empty set).
    pub ece: f64,
}

/// Edge `i` of the bins, as NumPy's `linspace(0, 1, ECE_BINS + 1)` computes it (`i · (1/15)`,
/// the last exactly 1), so that a confidence on an edge falls where the reference puts it.
fn bin_edge(i: usize) -> f64 {
    if i >= ECE_BINS { 1.0 } else { i as f64 * (1.0 / ECE_BINS as f64) }
}

/// The top-label reliability diagram over [`ECE_BINS`] equal-width bins and its ECE, as Guo et
/// al. define it: an image's confidence is its largest probability, its prediction the first
/// class with it, and it falls into the bin with `lower < confidence ≤ upper`.
pub fn reliability(probs: &[Vec<f64>], labels: &[usize]) -> Reliability {
    let nb = ECE_BINS;
    let mut sum_conf = vec![0.0; nb];
    let mut sum_acc = vec![0.0; nb];
    let mut count = vec![0usize; nb];
    for (p, &y) in probs.iter().zip(labels) {
        let k = super::metrics::argmax(p);
        let c = p[k];
        let b = (0..nb).find(|&b| c > bin_edge(b) && c <= bin_edge(b + 1)).unwrap_or(0);
        sum_conf[b] += c;
        sum_acc[b] += f64::from(u8::from(k == y));
        count[b] += 1;
    }
    let n = probs.len();
    let mut ece = 0.0;
    let bins = (0..nb)
        .map(|b| {
            let (conf, acc) = if count[b] > 0 {
                let (c, a) = (sum_conf[b] / count[b] as f64, sum_acc[b] / count[b] as f64);
                ece += count[b] as f64 / n as f64 * (a - c).abs();
                (Some(c), Some(a))
            } else {
                (None, None)
            };
            ReliabilityBin { lower: bin_edge(b), upper: bin_edge(b + 1), count: count[b], confidence: conf, accuracy: acc }
        })
        .collect();
    Reliability { bins, ece }
}

/// The multi-class Brier score: the mean over images of Σ_k (p_k − 1[y = k])², in [0, 2]
/// (Brier 1950; scikit-learn's `brier_score_loss(y, P, labels=range(K), scale_by_half=False)`).
/// `None` for an empty set.
pub fn brier(probs: &[Vec<f64>], labels: &[usize]) -> Option<f64> {
    if probs.is_empty() {
        return None;
    }
    let total: f64 = probs
        .iter()
        .zip(labels)
        .map(|(p, &y)| p.iter().enumerate().map(|(k, &v)| (v - f64::from(u8::from(k == y))).powi(2)).sum::<f64>())
        .sum();
    Some(total / probs.len() as f64)
}

/// Calibration measures of one set of predictions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalibrationReport {
    pub images: usize,
    pub ece: f64,
    pub brier: Option<f64>,
    pub reliability: Reliability,
}

impl CalibrationReport {
    pub fn new(probs: &[Vec<f64>], labels: &[usize]) -> Self {
        let reliability = reliability(probs, labels);
        CalibrationReport { images: probs.len(), ece: reliability.ece, brier: brier(probs, labels), reliability }
    }

    /// The report of several disjoint sets taken together (the folds of a cross-validation):
    /// bins merged by their counts, so the ECE is exactly that of the pooled images; the Brier
    /// score weighted by images.
    pub fn pool(reports: &[&CalibrationReport]) -> Self {
        let images: usize = reports.iter().map(|r| r.images).sum();
        let bins: Vec<ReliabilityBin> = (0..ECE_BINS)
            .map(|b| {
                let count: usize = reports.iter().map(|r| r.reliability.bins[b].count).sum();
                let sum = |f: fn(&ReliabilityBin) -> Option<f64>| {
                    reports.iter().map(|r| &r.reliability.bins[b]).filter_map(|x| Some(f(x)? * x.count as f64)).sum::<f64>()
                };
                let mean = |f| (count > 0).then(|| sum(f) / count as f64);
                ReliabilityBin {
                    lower: bin_edge(b),
                    upper: bin_edge(b + 1),
                    count,
                    confidence: mean(|x| x.confidence),
                    accuracy: mean(|x| x.accuracy),
                }
            })
            .collect();
        let ece = bins
            .iter()
            .filter_map(|b| Some(b.count as f64 / images.max(1) as f64 * (b.accuracy? - b.confidence?).abs()))
            .sum();
        let brier = (images > 0).then(|| reports.iter().filter_map(|r| Some(r.brier? * r.images as f64)).sum::<f64>() / images as f64);
        CalibrationReport { images, ece, brier, reliability: Reliability { bins, ece } }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temperature_one_is_softmax_and_scaling_keeps_the_argmax() {
        let z = [2.0, -1.0, 0.5];
        let p = softmax_t(&z, 1.0);
        let e: Vec<f64> = z.iter().map(|v: &f64| v.exp()).collect();
        let s: f64 = e.iter().sum();
        for (a, b) in p.iter().zip(&e) {
            assert!((a - b / s).abs() < 1e-15);
        }
        let q = softmax_t(&z, 3.0);
        assert_eq!(super::super::metrics::argmax(&q), 0);
        assert!(q[0] < p[0], "a higher temperature softens");
    }

    #[test]
    fn an_overconfident_model_gets_a_temperature_above_one_that_lowers_nll_and_ece() {
        // Logits 4× too large for labels drawn from softmax(z): the fitted T should be near 4.
        let mut rng = crate::rng::Rng::new(5);
        let (mut logits, mut labels) = (Vec::new(), Vec::new());
        for _ in 0..4000 {
            let z: Vec<f64> = (0..3).map(|_| rng.range(-2.0, 2.0)).collect();
            let p = softmax_t(&z, 1.0);
            let u = rng.range(0.0, 1.0);
            let y = if u < p[0] { 0 } else if u < p[0] + p[1] { 1 } else { 2 };
            logits.push(z.iter().map(|v| 4.0 * v).collect::<Vec<f64>>());
            labels.push(y);
        }
        let c = fit_temperature(&logits, &labels).unwrap();
        assert!((c.temperature - 4.0).abs() < 0.4, "{}", c.temperature);
        assert!(c.nll_after < c.nll_before && c.ece_after < c.ece_before, "{c:?}");
        // The derivative of the NLL vanishes at the fitted temperature.
        let d = nll_and_derivatives(&logits, &labels, 1.0 / c.temperature).1;
        assert!(d.abs() < 1e-9, "{d}");
    }

    #[test]
    fn a_perfectly_separated_set_stops_at_the_lower_bound_and_bad_logits_are_errors() {
        let logits = vec![vec![5.0, 0.0], vec![0.0, 5.0]];
        let c = fit_temperature(&logits, &[0, 1]).unwrap();
        assert_eq!(c.temperature, MIN_TEMPERATURE);
        assert!(fit_temperature(&[], &[]).is_err());
        assert!(fit_temperature(&[vec![f64::NAN, 0.0]], &[0]).is_err());
        assert!(fit_temperature(&[vec![0.0, 1.0]], &[2]).is_err());
    }

    #[test]
    fn ece_weights_each_bin_by_its_share_of_images() {
        // Two images at confidence 0.9 (one right), one at 0.5 (right): bins 13 and 7.
        let probs = vec![vec![0.9, 0.1], vec![0.9, 0.1], vec![0.5, 0.5]];
        let r = reliability(&probs, &[0, 1, 0]);
        assert_eq!((r.bins[13].count, r.bins[7].count), (2, 1));
        assert_eq!(r.bins[0].confidence, None, "an empty bin has no mean");
        let want = 2.0 / 3.0 * (0.9f64 - 0.5).abs() + 1.0 / 3.0 * (0.5f64 - 1.0).abs();
        assert!((r.ece - want).abs() < 1e-15, "{} vs {want}", r.ece);
        assert_eq!(brier(&[vec![1.0, 0.0]], &[1]), Some(2.0));
        assert_eq!(brier(&[], &[]), None);
    }

    #[test]
    fn pooled_reports_equal_the_report_of_the_pooled_images() {
        let (a, ya) = (vec![vec![0.9, 0.1], vec![0.6, 0.4], vec![0.2, 0.8]], vec![0, 1, 1]);
        let (b, yb) = (vec![vec![0.95, 0.05], vec![0.55, 0.45]], vec![0, 0]);
        let pooled = CalibrationReport::pool(&[&CalibrationReport::new(&a, &ya), &CalibrationReport::new(&b, &yb)]);
        let all: Vec<Vec<f64>> = a.iter().chain(&b).cloned().collect();
        let direct = CalibrationReport::new(&all, &[ya, yb].concat());
        assert_eq!(pooled.images, 5);
        assert!((pooled.ece - direct.ece).abs() < 1e-12 && (pooled.brier.unwrap() - direct.brier.unwrap()).abs() < 1e-12);
    }
}
