//! Summary statistics of the images a model was trained from, so that `magsd predict` can warn
//! when an input looks unlike them (e.g. a real X-ray given to a phantom-trained model).
//!
//! Three numbers describe an image: the mean and the standard deviation of its decoded pixels on
//! an 8-bit scale (16-bit images are scaled by 255/65535), and the gradient energy of its model
//! input (after resize, CLAHE and z-score): the mean of squared differences between
//! horizontally and vertically neighbouring pixels. A model file stores, for each number, the
//! mean, standard deviation, minimum and maximum over (a sample of) its training images. An
//! input is called unusual when a number lies outside the training range widened by
//! [`WIDEN`] standard deviations on each side. This is a coarse screen, not an
//! out-of-distribution detector: an input that passes it may still be unlike the training data.
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::dataset::Dataset;
use super::decode::{GrayImage, Pixels, decode_file};
use super::loader::InputPipeline;

/// Metadata key under which a model file stores its [`InputStats`] as JSON.
pub const STATS_KEY: &str = "magsd.input_stats";
/// How many training standard deviations beyond the training range count as unusual.
pub const WIDEN: f64 = 3.0;
/// At most this many training images are measured (evenly spaced over the dataset).
pub const MAX_IMAGES: usize = 256;

/// One number of one image, summarised over the training images.
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
    /// Images measured.
    pub images: usize,
    pub intensity_mean: FeatureStats,
    pub intensity_std: FeatureStats,
    pub gradient_energy: FeatureStats,
}

/// The three numbers of a decoded image under `pipeline` (no augmentation).
pub fn image_features(img: &GrayImage, pipeline: &InputPipeline) -> ImageFeatures {
    let (scale, values): (f64, Vec<f64>) = match &img.pixels {
        Pixels::U8(v) => (1.0, v.iter().map(|&x| f64::from(x)).collect()),
        Pixels::U16(v) => (255.0 / 65535.0, v.iter().map(|&x| f64::from(x)).collect()),
    };
    let n = values.len().max(1) as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    let plane = pipeline.eval_plane(img);
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
        let col = |g: fn(&ImageFeatures) -> f64| summarise(&f.iter().map(|x| g(x)).collect::<Vec<_>>());
        Some(InputStats {
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
        let features: Vec<ImageFeatures> = picks
            .par_iter()
            .filter_map(|&i| decode_file(&ds.samples[i].path, &pipeline.limits).ok())
            .map(|img| image_features(&img, pipeline))
            .collect();
        Self::from_features(&features)
    }

    /// Why an image looks unlike the training images (empty: it does not, by this screen).
    pub fn unusual(&self, f: &ImageFeatures) -> Vec<String> {
        let mut out = Vec::new();
        for (name, v, s) in [
            ("mean intensity", f.intensity_mean, &self.intensity_mean),
            ("intensity spread", f.intensity_std, &self.intensity_std),
            ("gradient energy", f.gradient_energy, &self.gradient_energy),
        ] {
            let (lo, hi) = (s.min - WIDEN * s.std, s.max + WIDEN * s.std);
            if !v.is_finite() || v < lo || v > hi {
                out.push(format!("{name} {v:.3} (training images: {:.3} to {:.3})", s.min, s.max));
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
        assert_eq!(stats.images, 3);
        assert!(stats.unusual(&f(112.0, 44.0, 0.11)).is_empty());
        let why = stats.unusual(&f(112.0, 44.0, 2.0));
        assert_eq!(why.len(), 1, "{why:?}");
        assert!(why[0].starts_with("gradient energy"), "{why:?}");
        assert_eq!(stats.unusual(&f(f64::NAN, 44.0, 0.11)).len(), 1);
        assert!(InputStats::from_features(&[]).is_none());
    }
}
