//! Localisation maps from MA-Net's own computation (issue 20): the paper's class-agnostic mean of
//! the M attention maps (§3.2, Fig. 7), each scale's maps before they are pooled (14×14 from
//! layer3, 28×28 from layer2, at a 224 input), and class-specific maps that weight each attention
//! map by what it contributes to the class's logit through the BAP classifier: the BAP analogue
//! of CAM (Zhou et al. 2016, Eq. 2, `M_c(x, y) = Σ_k w_k^c f_k(x, y)`).
//!
//! Why the weights are exact: with `v = 100 · BAP(f, A)` (`super::pooling`, `[M·C]`, m-major) and
//! the bias-free classifier `W: [K, M·C]`, the logit of class k splits over the maps,
//!
//! `z_k = Σ_m s_{k,m}`,  `s_{k,m} = Σ_c W[k, m·C + c] · v[m·C + c]`,
//!
//! so `s_{k,m}` is map m's share of the logit, and the class map is
//! `L_k = ReLU(Σ_m s_{k,m} · A_m)` (the ReLU as in Grad-CAM, Selvaraju et al. 2017, Eq. 2: only
//! evidence for the class is kept). `class` uses the summed 7×7 maps `A`, `class14` / `class28`
//! the same weights on the 14×14 / 28×28 maps of that scale's head.
use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// Which map `predict`, `eval`, `localize` and `serve` show.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum MapKind {
    /// Mean of the M attention maps (the paper's map; S/32 per side: 7×7 at 224, 3×3 at 96).
    #[default]
    Mean,
    /// BAP-CAM: the M maps weighted by their share of the class's logit (S/32 per side).
    Class,
    /// Mean of the layer3 head's maps before pooling (S/16 per side: 14×14 at 224).
    Scale14,
    /// Mean of the layer2 head's maps before pooling (S/8 per side; needs scales 7+14+28).
    Scale28,
    /// BAP-CAM weights on the layer3 head's maps (S/16 per side).
    Class14,
    /// BAP-CAM weights on the layer2 head's maps (S/8 per side; needs scales 7+14+28).
    Class28,
}

impl MapKind {
    pub const ALL: [MapKind; 6] = [MapKind::Mean, MapKind::Class, MapKind::Scale14, MapKind::Scale28, MapKind::Class14, MapKind::Class28];

    pub fn name(self) -> &'static str {
        match self {
            MapKind::Mean => "mean",
            MapKind::Class => "class",
            MapKind::Scale14 => "scale14",
            MapKind::Scale28 => "scale28",
            MapKind::Class14 => "class14",
            MapKind::Class28 => "class28",
        }
    }

    /// What the map is, for captions and reports.
    pub fn describe(self) -> &'static str {
        match self {
            MapKind::Mean => "mean of the attention maps",
            MapKind::Class => "class map (attention maps weighted by their share of the class logit)",
            MapKind::Scale14 => "mean of the layer3 (14×14 at 224) attention maps",
            MapKind::Scale28 => "mean of the layer2 (28×28 at 224) attention maps",
            MapKind::Class14 => "class map on the layer3 attention maps",
            MapKind::Class28 => "class map on the layer2 attention maps",
        }
    }

    /// Whether the map depends on the class it is drawn for.
    pub fn is_class_specific(self) -> bool {
        matches!(self, MapKind::Class | MapKind::Class14 | MapKind::Class28)
    }

    /// How many times finer than the 7×7 (S/32) grid the map is.
    pub(crate) fn refinement(self) -> i64 {
        match self {
            MapKind::Mean | MapKind::Class => 1,
            MapKind::Scale14 | MapKind::Class14 => 2,
            MapKind::Scale28 | MapKind::Class28 => 4,
        }
    }
}

impl std::fmt::Display for MapKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for MapKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        MapKind::ALL
            .into_iter()
            .find(|k| k.name() == s.trim())
            .ok_or_else(|| Error::Config(format!("map '{s}': use one of mean, class, scale14, scale28, class14, class28")))
    }
}

/// Each attention map's share of the logit of `class[b]`: `s[b, m] = Σ_c W[k_b, m·C + c] · v[b, m·C + c]`
/// with `v = pooled` (what the classifier reads, `[B, M·C]`) and `weight` `[K, M·C]`. The shares
/// sum to the logit (the classifier has no bias).
pub fn bap_map_weights(pooled: &Tensor, weight: &Tensor, class: &Tensor, maps: i64) -> Tensor {
    let b = pooled.size()[0];
    let w = weight.to_kind(Kind::Float).index_select(0, class); // [K, M*C] -> [B, M*C]
    (w * pooled.to_kind(Kind::Float)).reshape([b, maps, -1]).sum_dim_intlist(&[2i64][..], false, Kind::Float) // [B, M, C] -> [B, M]
}

/// `ReLU(Σ_m s[b, m] · A[b, m])`: `[B, M] × [B, M, h, w] -> [B, 1, h, w]`.
pub fn weighted_map(shares: &Tensor, attention: &Tensor) -> Tensor {
    let a = attention.to_kind(Kind::Float);
    (shares.unsqueeze(-1).unsqueeze(-1) * a).sum_dim_intlist(&[1i64][..], true, Kind::Float).relu()
}

/// CAM for a GAP/GMP head (Zhou et al. 2016, Eq. 2): `ReLU(Σ_c W[k, c] · f[c])`, `[B, 1, h, w]`.
pub fn cam(features: &Tensor, weight: &Tensor, class: &Tensor) -> Tensor {
    let w = weight.to_kind(Kind::Float).index_select(0, class); // [B, C]
    weighted_map(&w, features)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::pooling::bilinear_attention_pool;

    #[test]
    fn the_shares_sum_to_the_logit_and_the_class_map_is_the_weighted_sum() {
        tch::manual_seed(3);
        let (b, c, m, k) = (2, 5, 3, 4);
        let f = Tensor::randn([b, c, 2, 2], (Kind::Float, tch::Device::Cpu));
        let a = Tensor::rand([b, m, 2, 2], (Kind::Float, tch::Device::Cpu));
        let w = Tensor::randn([k, m * c], (Kind::Float, tch::Device::Cpu));
        let pooled = bilinear_attention_pool(&f, &a) * 100.0; // [B, M*C]
        let logits = pooled.matmul(&w.tr()); // [B, K]
        let class = Tensor::from_slice(&[3i64, 1]);
        let s = bap_map_weights(&pooled, &w, &class, m);
        let z: Vec<f32> = Vec::try_from(logits.gather(1, &class.unsqueeze(1), false).flatten(0, -1)).unwrap();
        let sum: Vec<f32> = Vec::try_from(s.sum_dim_intlist(&[1i64][..], false, Kind::Float)).unwrap();
        for (z, s) in z.iter().zip(&sum) {
            assert!((z - s).abs() < 1e-3 * z.abs().max(1.0), "logit {z} vs sum of shares {s}");
        }
        // By hand: two maps over a 1×2 grid, shares 2 and -1.
        let a = Tensor::from_slice(&[1.0f32, 0.0, 1.0, 3.0]).reshape([1, 2, 1, 2]);
        let s = Tensor::from_slice(&[2.0f32, -1.0]).reshape([1, 2]);
        let l: Vec<f32> = Vec::try_from(weighted_map(&s, &a).flatten(0, -1)).unwrap();
        assert_eq!(l, vec![1.0, 0.0]); // [2·1 − 1·1, ReLU(2·0 − 1·3)]
    }

    #[test]
    fn names_round_trip() {
        for k in MapKind::ALL {
            assert_eq!(k.name().parse::<MapKind>().unwrap(), k);
        }
        assert!("max".parse::<MapKind>().is_err());
    }
}
