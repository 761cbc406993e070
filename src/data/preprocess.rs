//! Deterministic preprocessing, as the authors' pipeline does it (MAGSD-SPEC.md §6):
//! resize to the model size (bilinear, aspect ratio not kept) → CLAHE (clip 4.0, 4×4 tiles) →
//! [training augmentation, `augment.rs`] → z-score.
//!
//! Resize and CLAHE reproduce OpenCV's integer arithmetic so that our inputs are the reference's
//! inputs: both are bit-exact with OpenCV 5.0 on the golden cases (`tests/golden_preprocess.rs`). 16-bit images are resized in floating point and narrowed to 8 bits with
//! `round(v · 255 / 65535)` just before CLAHE; without CLAHE they keep their precision.
use serde::{Deserialize, Serialize};

use super::decode::{GrayImage, Pixels};

/// A single-channel float image, row-major, values on the 0–255 scale before z-scoring.
#[derive(Clone, Debug, PartialEq)]
pub struct Plane {
    pub width: usize,
    pub height: usize,
    pub data: Vec<f32>,
}

impl Plane {
    pub fn new(width: usize, height: usize, data: Vec<f32>) -> Self {
        assert_eq!(data.len(), width * height, "plane size");
        Plane { width, height, data }
    }

    pub fn filled(width: usize, height: usize, v: f32) -> Self {
        Plane { width, height, data: vec![v; width * height] }
    }

    pub fn at(&self, x: usize, y: usize) -> f32 {
        self.data[y * self.width + x]
    }
}

/// Z-score normalisation of the final image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ZScore {
    /// One mean and standard deviation over the whole image (the paper's description).
    #[default]
    PerImage,
    /// Each column standardised on its own: `sklearn.preprocessing.scale(img)`, which is what
    /// the authors' code does (`covid19.py:547-551`).
    PerColumn,
    /// No normalisation (values stay on the 0–255 scale).
    None,
}

/// The name used on the command line and in the README (`per-image`, `per-column`, `none`).
impl std::fmt::Display for ZScore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ZScore::PerImage => "per-image",
            ZScore::PerColumn => "per-column",
            ZScore::None => "none",
        })
    }
}

/// CLAHE parameters; the defaults are the authors' `createCLAHE(4.0, (4, 4))`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClaheConfig {
    pub clip_limit: f64,
    pub tiles_x: usize,
    pub tiles_y: usize,
}

impl Default for ClaheConfig {
    fn default() -> Self {
        ClaheConfig { clip_limit: 4.0, tiles_x: 4, tiles_y: 4 }
    }
}

/// The deterministic part of the input pipeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PreprocessConfig {
    /// Side of the square model input (224 in the paper).
    pub size: usize,
    /// `None` turns CLAHE off (Table 4's "w/o CLAHE" ablation).
    pub clahe: Option<ClaheConfig>,
    pub zscore: ZScore,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        PreprocessConfig { size: 224, clahe: Some(ClaheConfig::default()), zscore: ZScore::PerImage }
    }
}

impl PreprocessConfig {
    /// Resize and CLAHE: the part that is the same every epoch (and so can be cached).
    pub fn prepare(&self, img: &GrayImage) -> Pixels {
        let (w, h, s) = (img.width, img.height, self.size);
        match (&img.pixels, &self.clahe) {
            (Pixels::U8(p), None) => Pixels::U8(resize_linear_u8(p, w, h, s, s)),
            (Pixels::U8(p), Some(c)) => Pixels::U8(clahe(&resize_linear_u8(p, w, h, s, s), s, s, c)),
            (Pixels::U16(p), None) => Pixels::U16(resize_linear_u16(p, w, h, s, s)),
            (Pixels::U16(p), Some(c)) => {
                let narrowed = narrow_to_u8(&resize_linear_u16(p, w, h, s, s));
                Pixels::U8(clahe(&narrowed, s, s, c))
            }
        }
    }

    /// The prepared pixels as a float plane on the 0–255 scale (16-bit data divided by 257).
    pub fn to_plane(&self, prepared: &Pixels) -> Plane {
        let s = self.size;
        let data = match prepared {
            Pixels::U8(p) => p.iter().map(|&v| v as f32).collect(),
            Pixels::U16(p) => p.iter().map(|&v| v as f32 / 257.0).collect(),
        };
        Plane::new(s, s, data)
    }
}

/// Taps of bilinear resampling with half-pixel centres and clamped edges (PyTorch's
/// `align_corners=False`), in float32: for each output index, the two source indices and the
/// weight of the second, `src = max((d + 0.5)·n_in/n_out − 0.5, 0)` (spec §2.5).
pub fn half_pixel_taps(n_in: usize, n_out: usize) -> Vec<(usize, usize, f32)> {
    let scale = n_in as f32 / n_out as f32;
    (0..n_out)
        .map(|d| {
            let src = ((d as f32 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (src as usize).min(n_in - 1);
            let i1 = (i0 + 1).min(n_in - 1);
            (i0, i1, src - i0 as f32)
        })
        .collect()
}

/// 16 → 8 bits: `round(v · 255 / 65535)`, i.e. `(v + 128) / 257` rounded.
pub fn narrow_to_u8(p: &[u16]) -> Vec<u8> {
    p.iter().map(|&v| ((v as u32 * 255 + 32767) / 65535) as u8).collect()
}

/// OpenCV's fixed-point scale for interpolation weights (`INTER_RESIZE_COEF_BITS = 11`).
const COEF_BITS: i32 = 11;
const COEF_SCALE: f32 = (1 << COEF_BITS) as f32;

/// OpenCV's `INTER_LINEAR` source coordinate `(float)((d + 0.5) * scale - 0.5)` of each
/// output index, split into its floor and fraction.
fn linear_coords(n_in: usize, n_out: usize) -> impl Iterator<Item = (i64, f32)> {
    // OpenCV stores the inverse scale and inverts it back: `1. / (n_out / n_in)`.
    let scale = 1.0 / (n_out as f64 / n_in as f64);
    (0..n_out).map(move |d| {
        let f = ((d as f64 + 0.5) * scale - 0.5) as f32;
        let s = f.floor();
        (s as i64, f - s)
    })
}

/// Horizontal taps: outside the image OpenCV clamps both the index and the weight
/// (`sx < 0` → `sx = 0, fx = 0`; `sx >= n - 1` → `sx = n - 1, fx = 0`).
fn linear_taps_x(n_in: usize, n_out: usize) -> Vec<(usize, usize, f32)> {
    linear_coords(n_in, n_out)
        .map(|(s, frac)| {
            if s < 0 {
                (0, 0, 0.0)
            } else if s >= n_in as i64 - 1 {
                (n_in - 1, n_in - 1, 0.0)
            } else {
                (s as usize, s as usize + 1, frac)
            }
        })
        .collect()
}

/// Vertical taps: OpenCV clamps only the two source rows and keeps the fraction, so the first
/// and last output rows blend a row with itself using unequal fixed-point weights.
fn linear_taps_y(n_in: usize, n_out: usize) -> Vec<(usize, usize, f32)> {
    let clamp = |i: i64| i.clamp(0, n_in as i64 - 1) as usize;
    linear_coords(n_in, n_out).map(|(s, frac)| (clamp(s), clamp(s + 1), frac)).collect()
}

/// `cv::saturate_cast<short>(float)`: round half to even.
fn fixed_weights(frac: f32) -> (i32, i32) {
    (((1.0 - frac) * COEF_SCALE).round_ties_even() as i32, (frac * COEF_SCALE).round_ties_even() as i32)
}

/// `cv2.resize(img, (dw, dh), interpolation=INTER_LINEAR)` on 8-bit data, OpenCV's fixed-point
/// path: horizontal pass in 11-bit weights, vertical pass with the SSE arithmetic
/// `((S0>>4)·b0 >> 16) + ((S1>>4)·b1 >> 16) + 2) >> 2` that x86 builds run.
/// Same size returns a copy, as OpenCV does.
pub fn resize_linear_u8(src: &[u8], w: usize, h: usize, dw: usize, dh: usize) -> Vec<u8> {
    assert_eq!(src.len(), w * h);
    if (w, h) == (dw, dh) {
        return src.to_vec();
    }
    let xt: Vec<(usize, usize, i32, i32)> = linear_taps_x(w, dw)
        .into_iter()
        .map(|(s0, s1, f)| {
            let (a0, a1) = fixed_weights(f);
            (s0, s1, a0, a1)
        })
        .collect();
    // Horizontal pass of every source row.
    let rows: Vec<Vec<i32>> = (0..h)
        .map(|y| {
            let row = &src[y * w..(y + 1) * w];
            xt.iter().map(|&(s0, s1, a0, a1)| row[s0] as i32 * a0 + row[s1] as i32 * a1).collect()
        })
        .collect();
    let mut out = vec![0u8; dw * dh];
    for (dy, (sy0, sy1, fy)) in linear_taps_y(h, dh).into_iter().enumerate() {
        let (b0, b1) = fixed_weights(fy);
        let (r0, r1) = (&rows[sy0], &rows[sy1]);
        for dx in 0..dw {
            let t0 = (((r0[dx] >> 4) as i16 as i32) * b0) >> 16;
            let t1 = (((r1[dx] >> 4) as i16 as i32) * b1) >> 16;
            out[dy * dw + dx] = ((t0 + t1 + 2) >> 2).clamp(0, 255) as u8;
        }
    }
    out
}

/// Bilinear resize of 16-bit data with OpenCV's float weights, rounded to nearest.
pub fn resize_linear_u16(src: &[u16], w: usize, h: usize, dw: usize, dh: usize) -> Vec<u16> {
    assert_eq!(src.len(), w * h);
    if (w, h) == (dw, dh) {
        return src.to_vec();
    }
    let xt = linear_taps_x(w, dw);
    let yt = linear_taps_y(h, dh);
    let mut out = vec![0u16; dw * dh];
    for (dy, &(sy0, sy1, fy)) in yt.iter().enumerate() {
        for (dx, &(sx0, sx1, fx)) in xt.iter().enumerate() {
            let row = |y: usize| src[y * w + sx0] as f32 * (1.0 - fx) + src[y * w + sx1] as f32 * fx;
            let v = row(sy0) * (1.0 - fy) + row(sy1) * fy;
            out[dy * dw + dx] = v.round_ties_even().clamp(0.0, 65535.0) as u16;
        }
    }
    out
}

/// OpenCV's `BORDER_REFLECT_101` index for `i` in `[0, n + pad)`.
fn reflect101(i: usize, n: usize) -> usize {
    if i < n { i } else { 2 * (n - 1) - i }
}

/// Contrast-limited adaptive histogram equalisation, bit-exact with OpenCV's
/// `createCLAHE(clip_limit, (tiles_x, tiles_y)).apply(img)` on 8-bit images
/// (MAGSD-SPEC.md §6.3 gives the algorithm step by step).
pub fn clahe(src: &[u8], w: usize, h: usize, cfg: &ClaheConfig) -> Vec<u8> {
    assert_eq!(src.len(), w * h);
    let (tx, ty) = (cfg.tiles_x, cfg.tiles_y);
    // Sizes not divisible by the grid are padded on the right/bottom with BORDER_REFLECT_101.
    let ext_w = if w.is_multiple_of(tx) { w } else { w + tx - w % tx };
    let ext_h = if h.is_multiple_of(ty) { h } else { h + ty - h % ty };
    let (tw, th) = (ext_w / tx, ext_h / ty);
    let tile_area = (tw * th) as i32;
    const BINS: usize = 256;
    let clip = if cfg.clip_limit > 0.0 {
        ((cfg.clip_limit * tile_area as f64 / BINS as f64) as i32).max(1)
    } else {
        0
    };
    let lut_scale = (BINS - 1) as f32 / tile_area as f32;

    let mut luts = vec![[0u8; BINS]; tx * ty];
    for j in 0..ty {
        for i in 0..tx {
            let mut hist = [0i32; BINS];
            for y in j * th..(j + 1) * th {
                let row = reflect101(y, h) * w;
                for x in i * tw..(i + 1) * tw {
                    hist[src[row + reflect101(x, w)] as usize] += 1;
                }
            }
            if clip > 0 {
                let mut clipped = 0;
                for v in hist.iter_mut() {
                    if *v > clip {
                        clipped += *v - clip;
                        *v = clip;
                    }
                }
                let batch = clipped / BINS as i32;
                let mut residual = clipped - batch * BINS as i32;
                for v in hist.iter_mut() {
                    *v += batch;
                }
                if residual != 0 {
                    let step = (BINS as i32 / residual).max(1) as usize;
                    let mut k = 0;
                    while k < BINS && residual > 0 {
                        hist[k] += 1;
                        k += step;
                        residual -= 1;
                    }
                }
            }
            let lut = &mut luts[j * tx + i];
            let mut sum = 0i32;
            for (k, v) in hist.iter().enumerate() {
                sum += v;
                lut[k] = (sum as f32 * lut_scale).round_ties_even().clamp(0.0, 255.0) as u8;
            }
        }
    }

    // Bilinear blend of the four neighbouring tiles' LUTs, in float32 as OpenCV does.
    let inv_tw = 1.0f32 / tw as f32;
    let inv_th = 1.0f32 / th as f32;
    let xs: Vec<(usize, usize, f32)> = (0..w)
        .map(|x| {
            let txf = x as f32 * inv_tw - 0.5;
            let t1 = txf.floor();
            let xa = txf - t1;
            let t1 = t1 as i64;
            ((t1.max(0)) as usize, ((t1 + 1).min(tx as i64 - 1)) as usize, xa)
        })
        .collect();
    let mut out = vec![0u8; w * h];
    for y in 0..h {
        let tyf = y as f32 * inv_th - 0.5;
        let t1 = tyf.floor();
        let ya = tyf - t1;
        let ya1 = 1.0f32 - ya;
        let t1 = t1 as i64;
        let (ty1, ty2) = (t1.max(0) as usize, (t1 + 1).min(ty as i64 - 1) as usize);
        for x in 0..w {
            let (tx1, tx2, xa) = xs[x];
            let xa1 = 1.0f32 - xa;
            let v = src[y * w + x] as usize;
            let l11 = luts[ty1 * tx + tx1][v] as f32;
            let l12 = luts[ty1 * tx + tx2][v] as f32;
            let l21 = luts[ty2 * tx + tx1][v] as f32;
            let l22 = luts[ty2 * tx + tx2][v] as f32;
            let res = (l11 * xa1 + l12 * xa) * ya1 + (l21 * xa1 + l22 * xa) * ya;
            out[y * w + x] = res.round_ties_even().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

/// Standardises a plane in place. Zero-variance images (or columns) are only mean-centred,
/// as scikit-learn does.
pub fn zscore(p: &mut Plane, mode: ZScore) {
    /// Standardises the samples at `idx` (population standard deviation).
    fn standardise(data: &mut [f32], idx: impl Iterator<Item = usize> + Clone) {
        let n = idx.clone().count() as f64;
        let mean = idx.clone().map(|i| data[i] as f64).sum::<f64>() / n;
        let var = idx.clone().map(|i| (data[i] as f64 - mean).powi(2)).sum::<f64>() / n;
        // scikit-learn treats a scale below 10·eps as zero and leaves it at 1.
        let std = match var.sqrt() {
            s if s < 10.0 * f64::EPSILON => 1.0,
            s => s,
        };
        for i in idx {
            data[i] = ((data[i] as f64 - mean) / std) as f32;
        }
    }
    let (w, n) = (p.width, p.data.len());
    match mode {
        ZScore::None => {}
        ZScore::PerImage => standardise(&mut p.data, 0..n),
        ZScore::PerColumn => {
            for x in 0..w {
                standardise(&mut p.data, (x..n).step_by(w));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_same_size_is_identity_and_constant_stays_constant() {
        let src: Vec<u8> = (0..12).map(|v| v as u8 * 20).collect();
        assert_eq!(resize_linear_u8(&src, 4, 3, 4, 3), src);
        let flat = vec![77u8; 30];
        assert!(resize_linear_u8(&flat, 6, 5, 13, 9).iter().all(|&v| v == 77));
        let flat16 = vec![4000u16; 30];
        assert!(resize_linear_u16(&flat16, 6, 5, 3, 11).iter().all(|&v| v == 4000));
    }

    #[test]
    fn resize_upsamples_a_ramp_between_its_ends() {
        let src = vec![0u8, 100, 200, 250];
        let out = resize_linear_u8(&src, 4, 1, 8, 1);
        assert_eq!(out[0], 0);
        assert_eq!(out[7], 250);
        assert!(out.windows(2).all(|w| w[0] <= w[1]), "{out:?}");
    }

    #[test]
    fn narrow_rounds_to_nearest() {
        assert_eq!(narrow_to_u8(&[0, 128, 129, 257, 65535]), vec![0, 0, 1, 1, 255]);
    }

    #[test]
    fn zscore_per_image_and_per_column() {
        let mut p = Plane::new(2, 2, vec![0.0, 10.0, 20.0, 30.0]);
        zscore(&mut p, ZScore::PerImage);
        let mean: f32 = p.data.iter().sum::<f32>() / 4.0;
        let var: f32 = p.data.iter().map(|v| v * v).sum::<f32>() / 4.0;
        assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5);

        let mut p = Plane::new(2, 2, vec![0.0, 5.0, 20.0, 5.0]);
        zscore(&mut p, ZScore::PerColumn);
        assert_eq!(p.data, vec![-1.0, 0.0, 1.0, 0.0]); // column 1 is constant: centred only
    }

    #[test]
    fn clahe_of_constant_image_is_constant() {
        let flat = vec![90u8; 64 * 64];
        let out = clahe(&flat, 64, 64, &ClaheConfig::default());
        assert!(out.iter().all(|&v| v == out[0]));
    }
}
