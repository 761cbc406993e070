//! Soft-distance regularisation (paper §3.4, Alg. 1; spec §3) and the Table 8 alternative.
//!
//! Authors' code (default): `L = CE(z_raw, y) + Σ_k mean|softmax(z_k) − q|` over the augmented
//! branches, where `q` is the detached `softmax(z_raw)` when its argmax is right and its
//! confidence ≥ 0.7, otherwise the 0.01-smoothed one-hot (`1 − K·0.01` on the label, 0.01
//! elsewhere). The augmented branches get no cross-entropy.
use serde::{Deserialize, Serialize};
use tch::{Kind, Reduction, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LossVariant {
    /// The authors' code: argmax-and-confidence switch, smoothed target, summed L1 terms.
    SoftDistance,
    /// The paper's Algorithm 1: switch on confidence only (> θ), hard one-hot target, mean of
    /// the distance terms.
    PaperSoftDistance,
    /// Table 8's "L2" row as coded: the mean of the cross-entropies of all branches.
    MeanCe,
}

/// The name used in configs and the README (`soft-distance`, `paper-soft-distance`, `mean-ce`).
impl std::fmt::Display for LossVariant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LossVariant::SoftDistance => "soft-distance",
            LossVariant::PaperSoftDistance => "paper-soft-distance",
            LossVariant::MeanCe => "mean-ce",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LossConfig {
    pub variant: LossVariant,
    /// Confidence threshold of the switch (0.7).
    pub threshold: f64,
    /// Label smoothing of the fallback target (0.01).
    pub smoothing: f64,
}

impl Default for LossConfig {
    fn default() -> Self {
        LossConfig { variant: LossVariant::SoftDistance, threshold: 0.7, smoothing: 0.01 }
    }
}

/// The loss and its parts, for logging.
pub struct LossParts {
    pub total: Tensor,
    /// Cross-entropy of the raw branch.
    pub ce: Tensor,
}

/// `z_raw: [B, K]`, `z_aux`: one `[B, K]` per augmented branch, `y: [B]` int64.
pub fn soft_distance_loss(z_raw: &Tensor, z_aux: &[Tensor], y: &Tensor, cfg: &LossConfig) -> LossParts {
    let z_raw = z_raw.to_kind(Kind::Float);
    let k = z_raw.size()[1];
    let ce = z_raw.cross_entropy_for_logits(y);
    if z_aux.is_empty() {
        return LossParts { total: ce.shallow_clone(), ce };
    }
    let total = match cfg.variant {
        LossVariant::MeanCe => {
            let sum = z_aux.iter().fold(ce.shallow_clone(), |acc, z| acc + z.to_kind(Kind::Float).cross_entropy_for_logits(y));
            sum / (1 + z_aux.len()) as f64
        }
        LossVariant::SoftDistance | LossVariant::PaperSoftDistance => {
            let p0 = z_raw.softmax(1, Kind::Float).detach(); // [B, K]
            let (conf, pred) = p0.max_dim(1, false); // [B], [B]
            let paper = cfg.variant == LossVariant::PaperSoftDistance;
            let (trusted, fallback) = if paper {
                (conf.gt(cfg.threshold), p0.zeros_like().scatter_value(1, &y.unsqueeze(1), 1.0))
            } else {
                let ok = pred.eq_tensor(y).logical_and(&conf.ge(cfg.threshold));
                let alt = p0.full_like(cfg.smoothing).scatter_value(1, &y.unsqueeze(1), 1.0 - k as f64 * cfg.smoothing);
                (ok, alt)
            };
            let q = p0.where_self(&trusted.unsqueeze(1), &fallback); // [B, K]
            let distances = z_aux.iter().map(|z| z.to_kind(Kind::Float).softmax(1, Kind::Float).l1_loss(&q, Reduction::Mean));
            let sum = distances.fold(Tensor::zeros([], (Kind::Float, z_raw.device())), |acc, d| acc + d);
            let reg = if paper { sum / z_aux.len() as f64 } else { sum };
            &ce + reg
        }
    };
    LossParts { total, ce }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn t(v: &[f32], b: i64, k: i64) -> Tensor {
        Tensor::from_slice(v).view([b, k])
    }

    fn close(a: &Tensor, b: f64) {
        let a = a.double_value(&[]);
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }

    /// softmax of a row, in f64, for the hand computations.
    fn softmax(z: &[f64]) -> Vec<f64> {
        let m = z.iter().cloned().fold(f64::MIN, f64::max);
        let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|v| v / s).collect()
    }

    #[test]
    fn confident_correct_rows_use_their_own_softmax_others_the_smoothed_label() {
        // Row 0: confident and correct (softmax ≈ [0.98, 0.01, 0.01]); row 1: wrong.
        let z_raw = [5.0, 0.3, 0.3, 0.0, 2.0, 0.0];
        let z_aux = [1.0, 0.0, 0.0, 0.0, 0.0, 1.0];
        let y = Tensor::from_slice(&[0i64, 0]);
        let cfg = LossConfig::default();
        let out = soft_distance_loss(&t(&z_raw.map(|v| v as f32), 2, 3), &[t(&z_aux.map(|v| v as f32), 2, 3)], &y, &cfg);
        let p0 = softmax(&z_raw[0..3]);
        let q1 = [0.97, 0.01, 0.01]; // 1 − K·0.01 with K = 3
        let a0 = softmax(&z_aux[0..3]);
        let a1 = softmax(&z_aux[3..6]);
        let l1: f64 = (0..3).map(|c| (a0[c] - p0[c]).abs() + (a1[c] - q1[c]).abs()).sum::<f64>() / 6.0;
        let ce = (-(softmax(&z_raw[0..3])[0]).ln() - softmax(&z_raw[3..6])[0].ln()) / 2.0;
        close(&out.ce, ce);
        close(&out.total, ce + l1);
    }

    #[test]
    fn terms_are_summed_over_branches_and_aux_branches_get_gradients() {
        let z_raw = Tensor::from_slice(&[0.1f32, 0.2, 0.3, 0.4]).view([2, 2]);
        let y = Tensor::from_slice(&[1i64, 0]);
        let za = Tensor::from_slice(&[1.0f32, -1.0, 0.5, 0.5]).view([2, 2]).set_requires_grad(true);
        let zb = za.detach().copy().set_requires_grad(true);
        let one = soft_distance_loss(&z_raw, &[za.shallow_clone()], &y, &LossConfig::default());
        let two = soft_distance_loss(&z_raw, &[za.shallow_clone(), zb.shallow_clone()], &y, &LossConfig::default());
        let d = one.total.double_value(&[]) - one.ce.double_value(&[]);
        close(&(two.total - two.ce), 2.0 * d);
        one.total.backward();
        assert!(za.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }

    #[test]
    fn the_raw_target_is_detached() {
        let mut z_raw = Tensor::from_slice(&[4.0f32, 0.0]).view([1, 2]).set_requires_grad(true);
        let y = Tensor::from_slice(&[0i64]);
        let za = Tensor::from_slice(&[0.0f32, 0.0]).view([1, 2]);
        let out = soft_distance_loss(&z_raw, &[za], &y, &LossConfig::default());
        let ce = soft_distance_loss(&z_raw, &[], &y, &LossConfig::default());
        out.total.backward();
        let g_total = z_raw.grad().copy();
        z_raw.zero_grad();
        ce.total.backward();
        // The distance term reaches z_raw only through the detached target: same gradient.
        assert!(g_total.allclose(&z_raw.grad(), 1e-7, 1e-7, false));
    }

    #[test]
    fn paper_variant_and_mean_ce() {
        let z_raw = t(&[0.0, 2.0], 1, 2); // confident (0.88) but wrong for y = 0
        let y = Tensor::from_slice(&[0i64]);
        let za = t(&[0.0, 0.0], 1, 2);
        // Paper: confidence alone decides → q = softmax(z_raw) = [0.119, 0.881].
        let p = soft_distance_loss(&z_raw, &[za.shallow_clone()], &y, &LossConfig { variant: LossVariant::PaperSoftDistance, ..Default::default() });
        let s = softmax(&[0.0, 2.0]);
        close(&(p.total - p.ce), ((0.5 - s[0]).abs() + (0.5 - s[1]).abs()) / 2.0);
        // Mean CE: (CE(raw) + CE(aux)) / 2.
        let m = soft_distance_loss(&z_raw, &[za], &y, &LossConfig { variant: LossVariant::MeanCe, ..Default::default() });
        close(&m.total, (-s[0].ln() + 2f64.ln()) / 2.0);
        let _ = Device::Cpu;
    }
}
