//! Summary statistics of the images a model was trained from: the cheap first check of
//! whether an input looks like them (`magsd predict`, `eval` and `serve` run it before the
//! feature-space detector of `crate::eval::ood`).
//!
//! Three numbers describe an image: the mean and the standard deviation of its decoded pixels on
//! an 8-bit scale (16-bit images are scaled by 255/65535), and the gradient energy of its model
//! input (after resize, CLAHE and z-score): the mean of squared differences between
//! horizontally and vertically neighbouring pixels. All three are ≥ 0 and spread over orders of
//! magnitude, so they are summarised in log space, `ln(v + EPS)`: a model file stores, for each,
//! the mean, standard deviation, minimum and maximum of the logs over (a sample of) its training
//! images. An input is unusual when a log lies outside the training range widened by [`WIDEN`]
//! standard deviations on each side. In log space the lower bound is a real bound: a constant
//! image (spread 0, gradient energy 0) is always outside it. (Before version 2 the bounds were
//! `min − 3·std` in linear space, which is negative for the spread and the gradient energy, so
//! they could only flag from above; a white, grey or red image passed.) Files with the old
//! statistics are read by converting them to log space to first order (the log's spread taken as
//! std/mean). This is a coarse screen, not an out-of-distribution detector: an input that passes
//! it may still be unlike the training data.
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::dataset::Dataset;
use super::decode::{GrayImage, Pixels, decode_file};
use super::loader::InputPipeline;
use super::preprocess::Plane;

/// Metadata key under which a model file stores its [`InputStats`] as JSON.
pub const STATS_KEY: &str = "magsd.input_stats";
/// How many training standard deviations (of the logs) beyond the training range count as unusual.
pub const WIDEN: f64 = 3.0;
/// Added before taking logs, so that 0 has one: far below anything an X-ray gives.
pub const EPS: f64 = 1e-6;
/// Version of the stored statistics (2: log space).
pub const STATS_VERSION: u32 = 2;
/// At most this many training images are measured (evenly spaced over the dataset).
pub const MAX_IMAGES: usize = 256;

/// One number of one image, summarised over the training images (of `ln(v + EPS)` from version 2).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeatureStats {
    pub mean: f64,
    pub std: f64,
    pub min: f64,
    pub max: f64,
}

/// The three numbers of one image (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ImageFeatures {
    pub intensity_mean: f64,
    pub intensity_std: f64,
    pub gradient_energy: f64,
}

/// What a model file says about its training inputs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputStats {
    /// 2: the summaries are of logs. Absent (1) in files written before: linear summaries.
    #[serde(default = "version_one")]
    pub version: u32,
    /// Images measured.
    pub images: usize,
    pub intensity_mean: FeatureStats,
    pub intensity_std: FeatureStats,
    pub gradient_energy: FeatureStats,
}

/// The three numbers of a decoded image under `pipeline` (no augmentation).
pub fn image_features(img: &GrayImage, pipeline: &InputPipeline) -> ImageFeatures {
    features_of(img, &pipeline.eval_plane(img))
}

/// The three numbers of a decoded image and its model input `plane` (`InputPipeline::eval_plane`).
pub fn features_of(img: &GrayImage, plane: &Plane) -> ImageFeatures {
    let (scale, values): (f64, Vec<f64>) = match &img.pixels {
        Pixels::U8(v) => (1.0, v.iter().map(|&x| f64::from(x)).collect()),
        Pixels::U16(v) => (255.0 / 65535.0, v.iter().map(|&x| f64::from(x)).collect()),
    };
    let n = values.len().max(1) as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    let (w, h) = (plane.width, plane.height);
    let (mut sum, mut count) = (0.0f64, 0usize);
    for y in 0..h {
        for x in 0..w {
            let v = f64::from(plane.at(x, y));
            if x + 1 < w {
                sum += (f64::from(plane.at(x + 1, y)) - v).powi(2);
                count += 1;
            }
            if y + 1 < h {
                sum += (f64::from(plane.at(x, y + 1)) - v).powi(2);
                count += 1;
            }
        }
    }
    ImageFeatures {
        intensity_mean: mean * scale,
        intensity_std: var.sqrt() * scale,
        gradient_energy: if count > 0 { sum / count as f64 } else { 0.0 },
    }
}

/// The three numbers of the dataset's images at `indices` (in parallel), `None` for an image
/// that cannot be read.
pub fn measure(ds: &Dataset, indices: &[usize], pipeline: &InputPipeline) -> Vec<Option<ImageFeatures>> {
    indices
        .par_iter()
        .map(|&i| decode_file(&ds.samples[i].path, &pipeline.limits).ok().map(|img| image_features(&img, pipeline)))
        .collect()
}

fn version_one() -> u32 {
    1
}

fn log(v: f64) -> f64 {
    (v.max(0.0) + EPS).ln()
}

fn summarise(v: &[f64]) -> FeatureStats {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
    FeatureStats {
        mean,
        std,
        min: v.iter().copied().fold(f64::INFINITY, f64::min),
        max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    }
}

impl InputStats {
    /// Summarises the features of some images; `None` when there are none (or none finite).
    pub fn from_features(features: &[ImageFeatures]) -> Option<Self> {
        let f: Vec<&ImageFeatures> = features
            .iter()
            .filter(|f| f.intensity_mean.is_finite() && f.intensity_std.is_finite() && f.gradient_energy.is_finite())
            .collect();
        if f.is_empty() {
            return None;
        }
        let col = |g: fn(&ImageFeatures) -> f64| summarise(&f.iter().map(|x| log(g(x))).collect::<Vec<_>>());
        Some(InputStats {
            version: STATS_VERSION,
            images: f.len(),
            intensity_mean: col(|x| x.intensity_mean),
            intensity_std: col(|x| x.intensity_std),
            gradient_energy: col(|x| x.gradient_energy),
        })
    }

    /// Measures up to [`MAX_IMAGES`] of the dataset's images, evenly spaced; unreadable images
    /// are left out. `None` when no image could be read.
    pub fn collect(ds: &Dataset, pipeline: &InputPipeline) -> Option<Self> {
        let n = ds.samples.len();
        let take = n.min(MAX_IMAGES);
        let picks: Vec<usize> = (0..take).map(|i| i * n / take.max(1)).collect();
        let features: Vec<ImageFeatures> = measure(ds, &picks, pipeline).into_iter().flatten().collect();
        Self::from_features(&features)
    }

    /// Reads the statistics a model file stores; version 1 (linear) is converted to log space.
    pub fn parse(json: &str) -> serde_json::Result<Self> {
        let s: InputStats = serde_json::from_str(json)?;
        Ok(if s.version >= 2 { s } else { s.to_log_space() })
    }

    /// Version 1's linear summaries as log-space ones, to first order: the log of the mean,
    /// minimum and maximum, and std/mean as the spread of the logs.
    fn to_log_space(&self) -> Self {
        let conv = |f: &FeatureStats| FeatureStats {
            mean: log(f.mean),
            std: if f.mean > 0.0 { f.std / f.mean } else { 0.0 },
            min: log(f.min),
            max: log(f.max),
        };
        InputStats {
            version: STATS_VERSION,
            images: self.images,
            intensity_mean: conv(&self.intensity_mean),
            intensity_std: conv(&self.intensity_std),
            gradient_energy: conv(&self.gradient_energy),
        }
    }

    /// The range of one number an image may have, in its own (linear) units.
    pub fn bounds(s: &FeatureStats) -> (f64, f64) {
        let (lo, hi) = (s.min - WIDEN * s.std, s.max + WIDEN * s.std);
        ((lo.exp() - EPS).max(0.0), hi.exp() - EPS)
    }

    /// Why an image looks unlike the training images (empty: it does not, by this screen).
    pub fn unusual(&self, f: &ImageFeatures) -> Vec<String> {
        let mut out = Vec::new();
        for (name, v, s) in [
            ("mean intensity", f.intensity_mean, &self.intensity_mean),
            ("intensity spread", f.intensity_std, &self.intensity_std),
            ("gradient energy", f.gradient_energy, &self.gradient_energy),
        ] {
            let l = log(v);
            if !v.is_finite() || l < s.min - WIDEN * s.std || l > s.max + WIDEN * s.std {
                let (lo, hi) = Self::bounds(s);
                out.push(format!("{name} {v:.3} outside {lo:.3} to {hi:.3} (training images: {:.3} to {:.3})", s.min.exp() - EPS, s.max.exp() - EPS));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(m: f64, s: f64, g: f64) -> ImageFeatures {
        ImageFeatures { intensity_mean: m, intensity_std: s, gradient_energy: g }
    }

    #[test]
    fn inputs_far_outside_the_training_range_are_unusual() {
        let stats = InputStats::from_features(&[f(100.0, 40.0, 0.10), f(110.0, 50.0, 0.12), f(120.0, 45.0, 0.14)]).unwrap();
        assert_eq!((stats.images, stats.version), (3, STATS_VERSION));
        assert!(stats.unusual(&f(112.0, 44.0, 0.11)).is_empty());
        let why = stats.unusual(&f(112.0, 44.0, 2.0));
        assert_eq!(why.len(), 1, "{why:?}");
        assert!(why[0].starts_with("gradient energy"), "{why:?}");
        assert_eq!(stats.unusual(&f(f64::NAN, 44.0, 0.11)).len(), 1);
        assert!(InputStats::from_features(&[]).is_none());
    }

    #[test]
    fn constant_images_fall_below_the_lower_bounds() {
        // Training images whose spread (10–69 grey levels) and gradient energy (0.01–0.3) vary
        // widely, as real X-rays' do: the version-1 linear bound min − 3·std is negative for both,
        // so it could never flag a constant image (the bug this replaces).
        let train: Vec<ImageFeatures> =
            (0..60).map(|i| f(90.0 + i as f64, 10.0 + i as f64, 0.01 + 0.005 * i as f64)).collect();
        let linear = |v: Vec<f64>| {
            let m = v.iter().sum::<f64>() / v.len() as f64;
            let sd = (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
            v.iter().copied().fold(f64::INFINITY, f64::min) - WIDEN * sd
        };
        assert!(linear(train.iter().map(|x| x.intensity_std).collect()) < 0.0);
        assert!(linear(train.iter().map(|x| x.gradient_energy).collect()) < 0.0);
        let stats = InputStats::from_features(&train).unwrap();
        for (name, v) in [("intensity spread", &stats.intensity_std), ("gradient energy", &stats.gradient_energy)] {
            assert!(InputStats::bounds(v).0 > 0.0, "{name}: a lower bound of 0 can never be violated");
        }
        // Black, mid-grey and white images (and a red one, which decodes to a constant grey).
        for level in [0.0, 128.0, 255.0] {
            let why = stats.unusual(&f(level, 0.0, 0.0));
            assert!(why.iter().any(|w| w.starts_with("intensity spread")), "level {level}: {why:?}");
        }
        // The same training set's images pass.
        assert!(train.iter().all(|x| stats.unusual(x).is_empty()));
    }

    #[test]
    fn version_one_statistics_are_read_in_log_space() {
        let old = r#"{"images": 3,
            "intensity_mean": {"mean": 110.0, "std": 8.0, "min": 100.0, "max": 120.0},
            "intensity_std": {"mean": 45.0, "std": 4.0, "min": 40.0, "max": 50.0},
            "gradient_energy": {"mean": 0.12, "std": 0.016, "min": 0.10, "max": 0.14}}"#;
        let s = InputStats::parse(old).unwrap();
        assert_eq!(s.version, STATS_VERSION);
        assert!(s.unusual(&f(112.0, 44.0, 0.11)).is_empty());
        // The old linear bound for the spread was 40 − 3·4 = 28 > 0, but for the gradient energy
        // 0.10 − 3·0.016 > 0 too; a flat image now fails both in log space.
        assert_eq!(s.unusual(&f(112.0, 0.0, 0.0)).len(), 2);
    }
}
