//! Localisation maps from MA-Net's own computation (issue 20): the paper's class-agnostic mean of
//! the M attention maps (§3.2, Fig. 7), each scale's maps before they are pooled (14×14 from
//! layer3, 28×28 from layer2, at a 224 input), and class-specific maps that weight each attention
//! map by what it contributes to the class's logit through the BAP classifier: the BAP analogue
//! of CAM (Zhou et al. 2016, Eq. 2, `M_c(x, y) = Σ_k w_k^c f_k(x, y)`). The evidence map
//! ([`evidence_map`]) goes one step further and splits the logit itself over the locations of
//! the finest attention head. [`MapGrid`] says where each map's cells sit on the input.
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

/// Where a localisation map's cells sit on the network's input, so that the map is laid on the
/// image where the network looked (issue 20).
///
/// Along a side of `side` cells spanning the input, cell i's centre is at `i + centre` cells. A
/// plain grid has it in the middle of the cell (`centre = 0.5`, what `F.interpolate(bilinear,
/// align_corners=False)` and `cv2.resize` assume). A ResNet's maps do not: each of its stride-2
/// layers (the stem's 7×7 convolution, the 3×3 max pool, the 3×3 convolution or 1×1 shortcut that
/// opens layer2–4, each padded by `k / 2`) centres output j on input `2j`, so cell i of a
/// stride-`s` map is centred on input pixel `s·i` (`i + 0.5/s` cells), not on `s·i + (s − 1)/2`.
/// Laid on the plain grid, such a map sits `(s − 1)/2` pixels right of and below where the network
/// looked: 7.5 px at stride 16, 15.5 px at stride 32 (the unit test
/// `model::magsd::tests::a_resnet_cell_is_centred_where_its_map_grid_says` measures the receptive
/// field's centre).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MapGrid {
    /// Cells per side.
    pub side: usize,
    /// Where each cell's centre is, in cells from its top-left corner.
    pub centre: f32,
}

impl Default for MapGrid {
    fn default() -> Self {
        MapGrid::plain(0)
    }
}

impl MapGrid {
    /// Cells centred in their squares.
    pub fn plain(side: usize) -> Self {
        MapGrid { side, centre: 0.5 }
    }

    /// A ResNet's stride-`input / side` map (see [`MapGrid`]).
    pub fn resnet(side: usize, input: usize) -> Self {
        MapGrid { side, centre: 0.5 * side as f32 / input.max(1) as f32 }
    }

    /// The position on the map, in cells (cell i's centre at `i`), of the point at fraction `f`
    /// of the image's side, clamped to the outermost centres.
    pub fn position(self, f: f32) -> f32 {
        (f * self.side as f32 - self.centre).clamp(0.0, self.side.saturating_sub(1) as f32)
    }
}

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
    /// The class's logit split exactly over the finest attention head's grid (S/16 per side
    /// with scales 7+14, S/8 with 7+14+28): where the evidence for the class comes from.
    Evidence,
}

impl MapKind {
    pub const ALL: [MapKind; 7] =
        [MapKind::Mean, MapKind::Class, MapKind::Scale14, MapKind::Scale28, MapKind::Class14, MapKind::Class28, MapKind::Evidence];

    pub fn name(self) -> &'static str {
        match self {
            MapKind::Mean => "mean",
            MapKind::Class => "class",
            MapKind::Scale14 => "scale14",
            MapKind::Scale28 => "scale28",
            MapKind::Class14 => "class14",
            MapKind::Class28 => "class28",
            MapKind::Evidence => "evidence",
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
            MapKind::Evidence => "evidence map (the class logit split over the finest attention grid)",
        }
    }

    /// Whether the map depends on the class it is drawn for.
    pub fn is_class_specific(self) -> bool {
        matches!(self, MapKind::Class | MapKind::Class14 | MapKind::Class28 | MapKind::Evidence)
    }

    /// How many times finer than the 7×7 (S/32) grid the head a map reads is (`forward_map` picks
    /// the head by it; the evidence map, on the finest head the model has, is found otherwise).
    pub(crate) fn refinement(self) -> i64 {
        match self {
            MapKind::Mean | MapKind::Class => 1,
            MapKind::Scale14 | MapKind::Class14 => 2,
            MapKind::Scale28 | MapKind::Class28 => 4,
            // Not a single head's grid: `forward_map` puts it on the finest head the model has.
            MapKind::Evidence => 1,
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
            .ok_or_else(|| Error::Config(format!("map '{s}': use one of mean, class, scale14, scale28, class14, class28, evidence")))
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

/// The logit of `class[b]` split exactly over the grid of the finest attention head: the
/// evidence map (issue 20).
///
/// BAP pools `v_{m,c} = (1/HW) Σ_p A_m(p) F_c(p)` over the layer4 grid p, and the classifier
/// reads `100 · u / ‖u‖` with `u = sign(v) · sqrt(|v|)` (`super::pooling`), so
///
/// `z_k = Σ_{m,c} g_{m,c} · Σ_p A_m(p) F_c(p)`,  `g_{m,c} = 100 · W[k, m·C + c] · u_{m,c} / (‖u‖ · HW · v_{m,c})`
///
/// (0 where `v_{m,c} = 0`: every `A_m(p) F_c(p)` is then 0, both being ≥ 0). Each location's
/// term `e_m(p) · A_m(p)`, `e_m(p) = Σ_c g_{m,c} F_c(p)`, is its exact share of the logit, as
/// CAM's `Σ_c w_c f_c(x, y)` is for a GAP head (Zhou et al. 2016, Eq. 2). `A` is the sum of the
/// scales' maps, the 14×14 (28×28) ones average-pooled 2×2 (4×4) (`super::attention`), so the
/// term splits further over each scale's own cells: a cell q of scale s (k² cells per layer4
/// cell p) gets `att_s,m(q) · e_m(p) / k²`. A coarser scale's terms are spread over the finest
/// grid's cells around the same point of the input, r finest cells per coarse cell: coarse cell i
/// is centred where finest cell `r·i` is (`MapGrid`), and gives finest cell `r·i + d` the share
/// `(r − |d|) / r²` along each axis (a triangle; what would fall off the top or left edge goes to
/// the edge cell), so the map still sums to the logit. As in Grad-CAM (Selvaraju et al. 2017, Eq. 2)
/// only evidence for the class is kept (ReLU).
pub fn evidence_map(scales: &[Tensor], features: &Tensor, weight: &Tensor, class: &Tensor) -> Tensor {
    logit_split(scales, features, weight, class).relu()
}

/// The signed split of [`evidence_map`], before the ReLU: it sums to the logit.
///
/// `scales`: each head's maps `[B, M, k·h, k·w]` (`att7` first), `features`: layer4 `[B, C, h, w]`,
/// `weight`: the classifier `[K, M·C]`. Returns `[B, 1, K·h, K·w]` for the finest `K`.
pub fn logit_split(scales: &[Tensor], features: &Tensor, weight: &Tensor, class: &Tensor) -> Tensor {
    let f = features.to_kind(Kind::Float);
    let (b, c, h, w) = f.size4().expect("features [B, C, h, w]");
    let scales: Vec<Tensor> = scales.iter().map(|s| s.to_kind(Kind::Float)).collect();
    let m = scales[0].size()[1];
    let hw = h * w;
    let a = crate::model::attention::AttentionGenerator::combine(&scales).reshape([b, m, hw]);
    let f = f.reshape([b, c, hw]);
    let v = a.matmul(&f.transpose(1, 2)) / hw as f64; // [B, M, C]
    let u = v.sign() * (v.abs() + 1e-12).sqrt();
    let norm = u.reshape([b, m * c]).norm_scalaropt_dim(2.0, [1i64], true).clamp_min(1e-12).unsqueeze(-1); // [B, 1, 1]
    let ratio = (&u / v.where_scalarother(&v.ne(0.0), 1.0)) * v.ne(0.0).to_kind(Kind::Float); // u/v, 0 where v = 0
    let wk = weight.to_kind(Kind::Float).index_select(0, class).reshape([b, m, c]);
    let g = wk * ratio * 100.0 / (norm * hw as f64); // [B, M, C]
    let e = g.matmul(&f).reshape([b, m, h, w]); // [B, M, h, w]
    let finest = scales.iter().map(|s| s.size()[2] / h).max().unwrap_or(1);
    let mut out = Tensor::zeros([b, 1, finest * h, finest * w], (Kind::Float, f.device()));
    for s in &scales {
        let k = s.size()[2] / h;
        let e_up = e.upsample_nearest2d([k * h, k * w], None, None); // e of each cell's layer4 parent
        let share = (s * e_up).sum_dim_intlist(&[1i64][..], true, Kind::Float) / (k * k) as f64; // [B, 1, kh, kw]
        let (rows, cols) = (spread_matrix(k * h, finest / k, f.device()), spread_matrix(k * w, finest / k, f.device()));
        out += rows.matmul(&share).matmul(&cols.tr()); // [fh, kh] × [B, 1, kh, kw] × [kw, fw]
    }
    out
}

/// `[n·r, n]`: column i spreads coarse cell i over the fine cells `r·i + d`, `|d| < r`, with the
/// shares `(r − |d|) / r²` (they sum to 1), what falls before fine cell 0 going to it.
fn spread_matrix(n: i64, r: i64, device: tch::Device) -> Tensor {
    let mut p = vec![0f32; (n * r * n) as usize];
    for i in 0..n {
        for d in 1 - r..r {
            let j = (r * i + d).max(0);
            p[(j * n + i) as usize] += (r - d.abs()) as f32 / (r * r) as f32;
        }
    }
    Tensor::from_slice(&p).reshape([n * r, n]).to_device(device)
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

    /// The evidence map's signed split sums to the class's logit, computed the way the network
    /// computes it (BAP of the summed scales, ×100, bias-free classifier), for one, two and three
    /// scales; and it has the finest head's side.
    #[test]
    fn the_evidence_split_sums_to_the_logit() {
        use crate::model::attention::AttentionGenerator;
        tch::manual_seed(5);
        let opts = (Kind::Float, tch::Device::Cpu);
        let (b, c, m, k, h) = (2, 6, 3, 4, 2);
        let f = Tensor::rand([b, c, h, h], opts); // ≥ 0, as after a ReLU
        let w = Tensor::randn([k, m * c], opts);
        let class = Tensor::from_slice(&[2i64, 0]);
        let all = [Tensor::rand([b, m, h, h], opts), Tensor::rand([b, m, 2 * h, 2 * h], opts), Tensor::rand([b, m, 4 * h, 4 * h], opts)];
        for n in 1..=3 {
            let scales: Vec<Tensor> = all[..n].iter().map(|t| t.shallow_clone()).collect();
            let pooled = bilinear_attention_pool(&f, &AttentionGenerator::combine(&scales)) * 100.0;
            let z: Vec<f32> = Vec::try_from(pooled.matmul(&w.tr()).gather(1, &class.unsqueeze(1), false).flatten(0, -1)).unwrap();
            let split = logit_split(&scales, &f, &w, &class);
            let side = [h, 2 * h, 4 * h][n - 1];
            assert_eq!(split.size(), [b, 1, side, side], "{n} scales");
            let sum: Vec<f32> = Vec::try_from(split.sum_dim_intlist(&[1i64, 2, 3][..], false, Kind::Float)).unwrap();
            for (z, s) in z.iter().zip(&sum) {
                assert!((z - s).abs() < 1e-3 * z.abs().max(1.0), "{n} scales: logit {z} vs sum of the split {s}");
            }
            let ev = evidence_map(&scales, &f, &w, &class);
            assert!(f64::try_from(ev.min()).unwrap() >= 0.0);
        }
        // A zero attention map (v = 0 for its features) adds nothing and is not a NaN.
        let scales = vec![Tensor::zeros([b, m, h, h], opts)];
        let split = logit_split(&scales, &f, &w, &class);
        assert_eq!(f64::try_from(split.abs().max()).unwrap(), 0.0);
    }
}
