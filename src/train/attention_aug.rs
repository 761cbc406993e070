//! Attention-guided augmentation (paper §3.3, Eq. 3–4; spec §2), batched on the tensor's
//! device with no host round trip: map sampling, attention mix-up, attention dimming and
//! attention patching.
//!
//! Authors' code semantics by default: per image three maps are drawn with replacement with
//! probability ∝ sqrt(map mass); thresholds are relative to each map's maximum over the low-res
//! grid; the map is upsampled bilinearly (align_corners = false); the box of the thresholded
//! region is padded by 0.1·size with Python's `int()` truncation. The paper's variants (min-max
//! normalised maps, dimming ×0.1 inside / ×1 outside) are [`AttentionAugConfig::paper`].
//!
//! Every random number of a step (map draws, thresholds, patch positions) is drawn on the host
//! from our keyed [`Rng`] and uploaded once as [`StepRandom`]: results then depend only on the
//! seed, never on libtorch's process-wide generator or on what else runs in the process.
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::rng::Rng;

/// Which attention-guided augmentations a training step uses (Table 7 ablations).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum AttentionAug {
    Mixup,
    Dimming,
    Patching,
}

/// The name used in configs and the README (`mixup`, `dimming`, `patching`).
impl std::fmt::Display for AttentionAug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AttentionAug::Mixup => "mixup",
            AttentionAug::Dimming => "dimming",
            AttentionAug::Patching => "patching",
        })
    }
}

/// A list of augmentations as people write it: `mixup, dimming, patching` (`none` when empty).
pub fn augmentation_list(augs: &[AttentionAug]) -> String {
    if augs.is_empty() {
        return "none".into();
    }
    augs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
}

/// How maps are scaled before thresholding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MapNorm {
    /// Raw maps, threshold θ·max (the authors' code).
    Raw,
    /// Min-max normalised maps, threshold θ on [0, 1] (the paper's "normalized map").
    MinMax,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AttentionAugConfig {
    /// θ range of attention mix-up, relative to the map's maximum.
    pub mixup_theta: (f64, f64),
    /// Weight γ of the original image in mix-up (Eq. 3); the authors fix 0.6.
    pub mixup_gamma: f64,
    pub dim_theta: (f64, f64),
    /// Factor for pixels with attention ≥ θ (authors 0.001, paper 0.1).
    pub dim_inside: f64,
    /// Factor for the other pixels (authors 1.001, paper 1.0).
    pub dim_outside: f64,
    pub patch_theta: (f64, f64),
    /// Box padding as a fraction of the image side (mix-up and patching).
    pub pad: f64,
    pub map_norm: MapNorm,
}

impl Default for AttentionAugConfig {
    fn default() -> Self {
        Self::authors_code()
    }
}

impl AttentionAugConfig {
    /// The authors' code (train_new.py:65-76, utils.py:121-224).
    pub fn authors_code() -> Self {
        AttentionAugConfig {
            mixup_theta: (0.4, 0.6),
            mixup_gamma: 0.6,
            dim_theta: (0.2, 0.5),
            dim_inside: 0.001,
            dim_outside: 1.001,
            patch_theta: (0.4, 0.6),
            pad: 0.1,
            map_norm: MapNorm::Raw,
        }
    }

    /// The paper's Eq. 4 dimming (×0.1 inside, ×1 outside) on min-max normalised maps.
    pub fn paper() -> Self {
        AttentionAugConfig { dim_inside: 0.1, dim_outside: 1.0, map_norm: MapNorm::MinMax, ..Self::authors_code() }
    }
}

/// Draws maps with replacement with probability ∝ sqrt(Σ_hw A_m + 1e-12) (model.py:93-100),
/// by inverse CDF of the uniforms `u: [B, n]`. `attention: [B, M, h, w]` → `[B, n, h, w]`
/// (detached, float32).
pub fn sample_maps(attention: &Tensor, u: &Tensor) -> Tensor {
    let a = attention.detach().to_kind(Kind::Float);
    let (b, m, h, w) = a.size4().expect("attention [B, M, h, w]");
    let n = u.size()[1];
    let weight = (a.sum_dim_intlist(&[2i64, 3][..], false, Kind::Float) + 1e-12).sqrt().to_kind(Kind::Double); // [B, M]
    let cdf = weight.cumsum(1, Kind::Double) / weight.sum_dim_intlist(&[1i64][..], true, Kind::Double); // [B, M]
    let below = cdf.unsqueeze(1).lt_tensor(&u.to_kind(Kind::Double).unsqueeze(2)); // [B, n, M]
    let idx = below.sum_dim_intlist(&[2i64][..], false, Kind::Int64).clamp_max(m - 1); // [B, n]
    a.gather(1, &idx.view([b, n, 1, 1]).expand([b, n, h, w], false), false)
}

/// The random numbers of one training step, uniform in [0, 1), on the images' device.
pub struct StepRandom {
    /// `[B, 3]`: the uniforms that choose (through [`sample_maps`]'s inverse CDF) the map of
    /// mix-up, dimming and patching.
    pub maps: Tensor,
    /// `[B, 3]`: the thresholds θ of mix-up, dimming and patching (scaled to their ranges later).
    pub theta: Tensor,
    /// `[B, 2]`: the patch position (row, column).
    pub offset: Tensor,
}

impl StepRandom {
    pub fn draw(rng: &mut Rng, b: i64, device: Device) -> Self {
        let u: Vec<f64> = (0..b * 8).map(|_| rng.uniform()).collect();
        let all = crate::device::upload(&Tensor::from_slice(&u).view([b, 8]), device); // one upload (non-blocking on CUDA)
        StepRandom { maps: all.narrow(1, 0, 3), theta: all.narrow(1, 3, 3), offset: all.narrow(1, 6, 2) }
    }

    /// Draws given as explicit values, to replay another implementation's step (the parity test
    /// replays the PyTorch reference's). `map_indices: [B, 3]` int64 are the chosen maps; each
    /// becomes the uniform at the middle of its interval of the inverse CDF that [`sample_maps`]
    /// builds from `attention: [B, M, h, w]`, so that [`sample_maps`] picks exactly that map.
    /// `theta: [B, 3]` and `offset: [B, 2]` are the uniforms as [`StepRandom::draw`] makes them.
    pub fn from_choices(attention: &Tensor, map_indices: &Tensor, theta: &Tensor, offset: &Tensor) -> Self {
        let a = attention.detach().to_kind(Kind::Float);
        let weight = (a.sum_dim_intlist(&[2i64, 3][..], false, Kind::Float) + 1e-12).sqrt().to_kind(Kind::Double); // [B, M]
        let cdf = weight.cumsum(1, Kind::Double) / weight.sum_dim_intlist(&[1i64][..], true, Kind::Double); // [B, M]
        let idx = map_indices.to_kind(Kind::Int64).to_device(a.device()); // [B, 3]
        let hi = cdf.gather(1, &idx, false);
        let lo = cdf.gather(1, &(&idx - 1).clamp_min(0), false).where_self(&idx.gt(0), &hi.zeros_like());
        let device = a.device();
        StepRandom {
            maps: (lo + hi) / 2.0,
            theta: theta.to_kind(Kind::Double).to_device(device),
            offset: offset.to_kind(Kind::Double).to_device(device),
        }
    }
}

/// One map per image `[B, 1, h, w]` scaled as `norm` says, upsampled to `[B, 1, S, S]`, and
/// the absolute thresholds `[B, 1, 1, 1]` for θ = lo + (hi − lo)·u, `u: [B]` uniform.
fn upsample_and_threshold(map: &Tensor, u: &Tensor, size: i64, theta: (f64, f64), norm: MapNorm) -> (Tensor, Tensor) {
    let map = map.to_kind(Kind::Float);
    let b = map.size()[0];
    let map = match norm {
        MapNorm::Raw => map,
        MapNorm::MinMax => {
            let lo = map.amin([2i64, 3], true);
            let hi = map.amax([2i64, 3], true);
            (&map - &lo) / (hi - &lo).clamp_min(1e-12)
        }
    };
    let up = map.upsample_bilinear2d([size, size], false, None, None); // [B, 1, h, w] -> [B, 1, S, S]
    let theta = (u.to_kind(Kind::Double) * (theta.1 - theta.0) + theta.0).to_kind(Kind::Float);
    let max = map.amax([1i64, 2, 3], false); // max over the low-res grid, as the reference
    (up, (theta * max).view([b, 1, 1, 1]))
}

/// Padded box of each mask `[B, S, S]` (bool): `(y0, y1, x0, x1)`, each `[B]` int64,
/// end-exclusive, as `max(int(r_min − pad), 0)` / `min(int(r_max + pad), S)` with Python's
/// truncating `int()` (spec §2). An empty mask gives the whole image.
pub fn padded_boxes(mask: &Tensor, pad_ratio: f64) -> (Tensor, Tensor, Tensor, Tensor) {
    let (_, h, w) = mask.size3().expect("mask [B, S, S]");
    let dev = mask.device();
    let (pad_h, pad_w) = (pad_ratio * h as f64, pad_ratio * w as f64);
    // For n ≥ 0: int(n − p) = n − ceil(p) (clamped at 0 anyway) and int(n + p) = n + floor(p).
    let (lo_h, hi_h) = (pad_h.ceil() as i64, pad_h.floor() as i64);
    let (lo_w, hi_w) = (pad_w.ceil() as i64, pad_w.floor() as i64);
    let rows = mask.any_dim(2, false); // [B, S]
    let cols = mask.any_dim(1, false); // [B, S]
    let ar_h = Tensor::arange(h, (Kind::Int64, dev));
    let ar_w = Tensor::arange(w, (Kind::Int64, dev));
    // Scalars stay scalars (no host-to-device copy: nothing in a step waits for the host).
    let first = |any: &Tensor, ar: &Tensor, n: i64| ar.where_scalarother(any, n).amin([1i64], false);
    let last = |any: &Tensor, ar: &Tensor| ar.where_scalarother(any, -1i64).amax([1i64], false);
    let (r0, r1) = (first(&rows, &ar_h, h), last(&rows, &ar_h));
    let (c0, c1) = (first(&cols, &ar_w, w), last(&cols, &ar_w));
    let found = r1.ge(0);
    let r0 = r0.where_scalarother(&found, 0i64);
    let r1 = r1.where_scalarother(&found, h - 1);
    let c0 = c0.where_scalarother(&found, 0i64);
    let c1 = c1.where_scalarother(&found, w - 1);
    ((r0 - lo_h).clamp_min(0), (r1 + hi_h).clamp_max(h), (c0 - lo_w).clamp_min(0), (c1 + hi_w).clamp_max(w))
}

/// Source indices and weights of `F.interpolate(bilinear, align_corners=False)` from the
/// per-image range `[lo, hi)` to `n_out` samples (spec §2.5), all `[B, n_out]`.
fn linear_axis(lo: &Tensor, hi: &Tensor, n_out: i64) -> (Tensor, Tensor, Tensor, Tensor) {
    let n_in = hi - lo; // [B]
    let scale = n_in.to_kind(Kind::Float) / n_out as f64;
    let d = Tensor::arange(n_out, (Kind::Float, lo.device())) + 0.5;
    let src = (scale.unsqueeze(1) * d.unsqueeze(0) - 0.5).clamp_min(0.0); // [B, n_out]
    let last = (&n_in - 1).unsqueeze(1);
    let i0 = src.to_kind(Kind::Int64).minimum(&last);
    let i1 = &i0 + i0.lt_tensor(&last).to_kind(Kind::Int64);
    let l1 = &src - i0.to_kind(Kind::Float);
    let l0 = 1.0 - &l1;
    let lo = lo.unsqueeze(1);
    (&lo + i0, &lo + i1, l0, l1)
}

/// `img[b, :, rows[b, i], cols[b, j]]` → `[B, C, n, m]`.
fn gather2d(img: &Tensor, rows: &Tensor, cols: &Tensor) -> Tensor {
    let (b, c, _, w) = img.size4().expect("images [B, C, H, W]");
    let (n, m) = (rows.size()[1], cols.size()[1]);
    let t = img.gather(2, &rows.view([b, 1, n, 1]).expand([b, c, n, w], false), false); // [B, C, n, W]
    t.gather(3, &cols.view([b, 1, 1, m]).expand([b, c, n, m], false), false) // [B, C, n, m]
}

/// Each image's box `[y0, y1) × [x0, x1)` resized bilinearly to the full size (no antialias).
pub fn crop_resize_batch(img: &Tensor, y0: &Tensor, y1: &Tensor, x0: &Tensor, x1: &Tensor) -> Tensor {
    let (_, _, h, w) = img.size4().expect("images [B, C, H, W]");
    let (r0, r1, ly0, ly1) = linear_axis(y0, y1, h);
    let (c0, c1, lx0, lx1) = linear_axis(x0, x1, w);
    let (ly0, ly1) = (ly0.unsqueeze(1).unsqueeze(3), ly1.unsqueeze(1).unsqueeze(3)); // [B, 1, H, 1]
    let (lx0, lx1) = (lx0.unsqueeze(1).unsqueeze(2), lx1.unsqueeze(1).unsqueeze(2)); // [B, 1, 1, W]
    ly0 * (&lx0 * gather2d(img, &r0, &c0) + &lx1 * gather2d(img, &r0, &c1))
        + ly1 * (&lx0 * gather2d(img, &r1, &c0) + &lx1 * gather2d(img, &r1, &c1))
}

/// Attention mix-up (Eq. 3, spec §2.1): `γ·I + (1 − γ)·resize(crop)`, the crop being the padded
/// box of `up(A) ≥ θ·max A`. `images: [B, C, S, S]`, `map: [B, 1, h, w]`, `u: [B]` draws θ.
pub fn attention_mixup(images: &Tensor, map: &Tensor, u: &Tensor, cfg: &AttentionAugConfig) -> Tensor {
    let x = images.to_kind(Kind::Float);
    let size = x.size()[2];
    let (up, thr) = upsample_and_threshold(map, u, size, cfg.mixup_theta, cfg.map_norm);
    let mask = up.ge_tensor(&thr).squeeze_dim(1); // [B, S, S]
    let (y0, y1, x0, x1) = padded_boxes(&mask, cfg.pad);
    &x * cfg.mixup_gamma + crop_resize_batch(&x, &y0, &y1, &x0, &x1) * (1.0 - cfg.mixup_gamma)
}

/// Attention dimming (Eq. 4, spec §2.2): pixels with `up(A) ≥ θ·max A` × `dim_inside`, the
/// others × `dim_outside`.
pub fn attention_dimming(images: &Tensor, map: &Tensor, u: &Tensor, cfg: &AttentionAugConfig) -> Tensor {
    let x = images.to_kind(Kind::Float);
    let (up, thr) = upsample_and_threshold(map, u, x.size()[2], cfg.dim_theta, cfg.map_norm);
    let keep = up.lt_tensor(&thr).to_kind(Kind::Float); // [B, 1, S, S]
    x * (keep * (cfg.dim_outside - cfg.dim_inside) + cfg.dim_inside)
}

/// Attention patching (spec §2.3): the padded box of `up(A) ≥ θ·max A` pasted, unscaled, at a
/// uniformly random position `oy ∈ [0, S − h], ox ∈ [0, S − w]` of the same image
/// (`oy = ⌊u_y·(S − h + 1)⌋` from `offset: [B, 2]` uniforms).
pub fn attention_patching(images: &Tensor, map: &Tensor, u: &Tensor, offset: &Tensor, cfg: &AttentionAugConfig) -> Tensor {
    let x = images.to_kind(Kind::Float);
    let (b, _, h, w) = x.size4().expect("images [B, C, H, W]");
    let dev = x.device();
    let (up, thr) = upsample_and_threshold(map, u, h, cfg.patch_theta, cfg.map_norm);
    let mask = up.ge_tensor(&thr).squeeze_dim(1);
    let (y0, y1, x0, x1) = padded_boxes(&mask, cfg.pad);
    let (ph, pw) = (&y1 - &y0, &x1 - &x0);
    let offset = offset.to_kind(Kind::Double);
    let oy = (offset.select(1, 0) * (-&ph + (h + 1)).to_kind(Kind::Double)).floor().to_kind(Kind::Int64);
    let ox = (offset.select(1, 1) * (-&pw + (w + 1)).to_kind(Kind::Double)).floor().to_kind(Kind::Int64);
    let yy = Tensor::arange(h, (Kind::Int64, dev)).unsqueeze(0); // [1, S]
    let xx = Tensor::arange(w, (Kind::Int64, dev)).unsqueeze(0);
    let (oy, ox) = (oy.unsqueeze(1), ox.unsqueeze(1)); // [B, 1]
    let in_y = yy.ge_tensor(&oy).logical_and(&yy.lt_tensor(&(&oy + ph.unsqueeze(1)))); // [B, S]
    let in_x = xx.ge_tensor(&ox).logical_and(&xx.lt_tensor(&(&ox + pw.unsqueeze(1))));
    let src_y = (y0.unsqueeze(1) + &yy - &oy).where_self(&in_y, &yy.expand([b, h], false));
    let src_x = (x0.unsqueeze(1) + &xx - &ox).where_self(&in_x, &xx.expand([b, w], false));
    let pasted = gather2d(&x, &src_y, &src_x);
    let inside = in_y.unsqueeze(1).unsqueeze(3).logical_and(&in_x.unsqueeze(1).unsqueeze(2)); // [B, 1, S, S]
    pasted.where_self(&inside, &x)
}

/// The augmented batches of one step, from the raw pass's attention maps: one tensor per entry
/// of `augs`, in that order. Three maps per image are drawn, [mix-up, dimming, patching], as the
/// reference draws them.
pub fn augment_batch(images: &Tensor, attention: &Tensor, augs: &[AttentionAug], cfg: &AttentionAugConfig, r: &StepRandom) -> Vec<Tensor> {
    if augs.is_empty() {
        return Vec::new();
    }
    tch::no_grad(|| {
        let maps = sample_maps(attention, &r.maps);
        augs.iter()
            .map(|aug| match aug {
                AttentionAug::Mixup => attention_mixup(images, &maps.narrow(1, 0, 1), &r.theta.select(1, 0), cfg),
                AttentionAug::Dimming => attention_dimming(images, &maps.narrow(1, 1, 1), &r.theta.select(1, 1), cfg),
                AttentionAug::Patching => {
                    attention_patching(images, &maps.narrow(1, 2, 1), &r.theta.select(1, 2), &r.offset, cfg)
                }
            })
            .collect()
    })
}

/// Small helper for tests and benchmarks: a `[B, 1, h, w]` map from a flat slice.
pub fn map_from(values: &[f32], b: i64, h: i64, w: i64) -> Tensor {
    Tensor::from_slice(values).view([b, 1, h, w]).to_device(Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(b: i64, s: i64) -> Tensor {
        Tensor::arange(b * s * s, (Kind::Float, Device::Cpu)).view([b, 1, s, s]) / (s * s) as f64
    }

    /// `[B]` uniforms all equal to `v`.
    fn u(b: i64, v: f64) -> Tensor {
        Tensor::full([b], v, (Kind::Double, Device::Cpu))
    }

    fn boxes(mask: &Tensor, pad: f64) -> Vec<Vec<i64>> {
        let (a, b, c, d) = padded_boxes(mask, pad);
        [a, b, c, d].iter().map(|t| Vec::<i64>::try_from(t).unwrap()).collect()
    }

    #[test]
    fn box_arithmetic_follows_python_int_truncation() {
        // 224 px, pad 22.4: rows 30..=40 → y0 = int(30 − 22.4) = 7, y1 = int(40 + 22.4) = 62.
        let mask = Tensor::zeros([1, 224, 224], (Kind::Bool, Device::Cpu));
        let _ = mask.narrow(1, 30, 11).narrow(2, 100, 5).fill_(1);
        assert_eq!(boxes(&mask, 0.1), vec![vec![7], vec![62], vec![77], vec![126]]);
        // A peak on the border: row 0 / col 223 → y0 = 0, x1 = 224 (clamped).
        let mask = Tensor::zeros([1, 224, 224], (Kind::Bool, Device::Cpu));
        let _ = mask.narrow(1, 0, 1).narrow(2, 223, 1).fill_(1);
        assert_eq!(boxes(&mask, 0.1), vec![vec![0], vec![22], vec![200], vec![224]]);
        // r_min = 22 → int(22 − 22.4) = int(−0.4) = 0; r_min = 23 → 0 as well; 24 → 1.
        for (r, want) in [(22, 0), (23, 0), (24, 1)] {
            let mask = Tensor::zeros([1, 224, 224], (Kind::Bool, Device::Cpu));
            let _ = mask.narrow(1, r, 1).narrow(2, 50, 1).fill_(1);
            assert_eq!(boxes(&mask, 0.1)[0], vec![want], "r_min {r}");
        }
        // Empty mask → the whole image.
        let mask = Tensor::zeros([1, 224, 224], (Kind::Bool, Device::Cpu));
        assert_eq!(boxes(&mask, 0.1), vec![vec![0], vec![224], vec![0], vec![224]]);
    }

    #[test]
    fn all_zero_map_mixes_the_whole_image_with_itself() {
        // θ·max = 0, every pixel ≥ 0 → box = whole image → crop_resize_batch is the identity.
        let x = ramp(2, 32);
        let map = Tensor::zeros([2, 1, 4, 4], (Kind::Float, Device::Cpu));
        let cfg = AttentionAugConfig::default();
        let mixed = attention_mixup(&x, &map, &u(2, 0.3), &cfg);
        assert!((mixed - &x).abs().max().double_value(&[]) < 1e-6);
        // Dimming with a zero map: every pixel is "inside" (0 ≥ 0) → × 0.001.
        let dimmed = attention_dimming(&x, &map, &u(2, 0.3), &cfg);
        assert!((dimmed - &x * 0.001).abs().max().double_value(&[]) < 1e-7);
        // Patching the whole image onto itself changes nothing.
        let offset = Tensor::full([2, 2], 0.7, (Kind::Double, Device::Cpu));
        let patched = attention_patching(&x, &map, &u(2, 0.3), &offset, &cfg);
        assert!(patched.equal(&x));
    }

    #[test]
    fn dimming_scales_inside_and_outside_by_the_configured_factors() {
        // One hot cell in the top-left of a 2×2 map over a 64×64 image.
        let map = map_from(&[1.0, 0.0, 0.0, 0.0], 1, 2, 2);
        let x = Tensor::ones([1, 1, 64, 64], (Kind::Float, Device::Cpu));
        let d = attention_dimming(&x, &map, &u(1, 0.5), &AttentionAugConfig::default());
        let v: Vec<f32> = Vec::try_from(d.flatten(0, -1)).unwrap();
        assert!((v[0] - 0.001).abs() < 1e-7, "top-left is dimmed: {}", v[0]);
        assert!((v[64 * 64 - 1] - 1.001).abs() < 1e-6, "bottom-right kept ×1.001: {}", v[64 * 64 - 1]);
        let p = attention_dimming(&x, &map, &u(1, 0.5), &AttentionAugConfig::paper());
        let v: Vec<f32> = Vec::try_from(p.flatten(0, -1)).unwrap();
        assert!((v[0] - 0.1).abs() < 1e-7 && (v[64 * 64 - 1] - 1.0).abs() < 1e-7);
    }

    #[test]
    fn mixup_matches_a_hand_computed_case() {
        // Peak in the top-left cell of a 2×2 map over 20×20; θ = 0.4 + 0.2·0.5 = 0.5.
        let map = map_from(&[1.0, 0.0, 0.0, 0.0], 1, 2, 2);
        let x = ramp(1, 20);
        let got = attention_mixup(&x, &map, &u(1, 0.5), &AttentionAugConfig::default());
        // up(A) along a row from the corner: src = (d + 0.5)/10 − 0.5 → value 1 − src for
        // d ≥ 5, 1 for d < 5; ≥ 0.5 ⇔ src ≤ 0.5 ⇔ d ≤ 9.5 → rows/cols 0..=9.
        // pad = 2 → box [0, min(9 + 2, 20)) = [0, 11) on both axes.
        let y = Tensor::from_slice(&[0i64]);
        let e = Tensor::from_slice(&[11i64]);
        let want = &x * 0.6 + crop_resize_batch(&x, &y, &e, &y, &e) * 0.4;
        assert!((got - want).abs().max().double_value(&[]) < 1e-6);
    }

    #[test]
    fn crop_resize_batch_matches_libtorch_interpolate() {
        let x = Tensor::randn([1, 1, 30, 30], (Kind::Float, Device::Cpu));
        let (y0, y1, x0, x1) = (5, 17, 3, 29);
        let want = x.narrow(2, y0, y1 - y0).narrow(3, x0, x1 - x0).upsample_bilinear2d([30, 30], false, None, None);
        let t = |v: i64| Tensor::from_slice(&[v]);
        let got = crop_resize_batch(&x, &t(y0), &t(y1), &t(x0), &t(x1));
        assert!((got - want).abs().max().double_value(&[]) < 1e-5);
    }

    #[test]
    fn patching_pastes_the_padded_box_unscaled_somewhere_and_keeps_the_rest() {
        let s = 20usize;
        let x = ramp(1, s as i64);
        let xv: Vec<f32> = Vec::try_from(x.flatten(0, -1)).unwrap();
        let map = map_from(&[0.0, 0.0, 0.0, 1.0], 1, 2, 2); // bottom-right peak
        let cfg = AttentionAugConfig { pad: 0.0, ..Default::default() };
        let mut rng = Rng::new(9);
        for seed in 0..5 {
            let r = StepRandom::draw(&mut rng, 1, Device::Cpu);
            let out = attention_patching(&x, &map, &r.theta.select(1, 2), &r.offset, &cfg);
            let out: Vec<f32> = Vec::try_from(out.flatten(0, -1)).unwrap();
            // By symmetry with the mix-up case, the region ≥ θ (θ ∈ [0.4, 0.6]) is rows/cols
            // r0..=19 with r0 ∈ 9..=11. With pad 0 the authors' box is [r0, int(19 + 0)) =
            // [r0, 19): end-exclusive, it drops the last row and column (their off-by-one, kept).
            // Some offset (oy, ox) must explain the output exactly.
            let explains = |r0: usize, oy: usize, ox: usize| {
                let h = s - 1 - r0;
                (0..s * s).all(|i| {
                    let (y, xx) = (i / s, i % s);
                    let inside = y >= oy && y < oy + h && xx >= ox && xx < ox + h;
                    let want = if inside { xv[(y - oy + r0) * s + (xx - ox + r0)] } else { xv[i] };
                    out[i] == want
                })
            };
            let found = (9..=11).any(|r0| (0..=r0 + 1).any(|oy| (0..=r0 + 1).any(|ox| explains(r0, oy, ox))));
            assert!(found, "seed {seed}: output is not the image with its attention box pasted at one place");
        }
    }

    #[test]
    fn map_sampling_prefers_heavy_maps_and_samples_with_replacement() {
        let mut rng = Rng::new(4);
        // Map 0 has mass 100, map 1 mass 1: p ∝ sqrt → 10 : 1.
        let mut a = Tensor::zeros([1, 2, 1, 1], (Kind::Float, Device::Cpu));
        let _ = a.narrow(1, 0, 1).fill_(100.0);
        let _ = a.narrow(1, 1, 1).fill_(1.0);
        let mut heavy = 0;
        for _ in 0..200 {
            let s = sample_maps(&a, &StepRandom::draw(&mut rng, 1, Device::Cpu).maps);
            let v: Vec<f32> = Vec::try_from(s.flatten(0, -1)).unwrap();
            heavy += v.iter().filter(|&&x| x == 100.0).count();
        }
        let frac = heavy as f64 / 600.0;
        assert!((0.85..0.97).contains(&frac), "{frac}"); // 10/11 ≈ 0.909
        // Maps of zero mass (the 1e-12 keeps the CDF defined): uniform; u = 0.6 of 2 maps falls
        // in the second half of the CDF, u = 0.4 in the first. Map 0 is [1, −1], map 1 [−1, 1],
        // both summing to 0, so the value picked tells which map was chosen.
        let zero_mass = Tensor::from_slice(&[1.0f32, -1.0, -1.0, 1.0]).view([1, 2, 1, 2]);
        let chosen = |v: f64| {
            let s = sample_maps(&zero_mass, &Tensor::full([1, 3], v, (Kind::Double, Device::Cpu)));
            assert_eq!(s.size(), vec![1, 3, 1, 2]);
            Vec::<f32>::try_from(s.flatten(0, -1)).unwrap()
        };
        assert_eq!(chosen(0.6), [-1.0, 1.0].repeat(3), "u = 0.6 picks map 1 for all three");
        assert_eq!(chosen(0.4), [1.0, -1.0].repeat(3), "u = 0.4 picks map 0 for all three");
        a = a.zeros_like();
        // Inverse CDF: with masses 100 and 1, p = 10/11 and 1/11; u < 10/11 picks map 0.
        let _ = a.narrow(1, 0, 1).fill_(100.0);
        let _ = a.narrow(1, 1, 1).fill_(1.0);
        let pick = |v: f64| {
            let s = sample_maps(&a, &Tensor::full([1, 1], v, (Kind::Double, Device::Cpu)));
            s.double_value(&[0, 0, 0, 0])
        };
        assert_eq!(pick(0.0), 100.0);
        assert_eq!(pick(0.9), 100.0);
        assert_eq!(pick(0.92), 1.0);
        assert_eq!(pick(0.999_999), 1.0);
    }
}
