//! The one prediction path for new images: decode, preprocess, forward (with the localisation
//! map), calibration and the unusual-image checks and operating points
//! ([`Reliability::assess`]), and the boxes of the map. `magsd predict`, `magsd serve` (its web
//! API and KServe) and `magsd bench --only predict` call [`Predictor`] and only format its result.
//!
//! Two ways to run the network, chosen once when the predictor is built:
//! * exact ([`Precision::Exact`]): the network as trained, float32, eager, NCHW: the same numbers
//!   as `magsd eval` and as magsd before the fast path existed;
//! * fast ([`Precision::Fast`], the default): the backbone's BatchNorms folded into their
//!   convolutions (exact in real arithmetic, float32 rounding apart), NCHW. Probabilities differ
//!   from the exact path by float32 rounding only. (Channels-last was measured too and left out:
//!   on the 2-core development CPU it made a single-image predict 5 % slower than exact; see
//!   BENCHMARKS.md, "CPU inference (issue 21 part 0)".)
use std::path::Path;
use std::time::Instant;

use tch::{Device, Kind, Tensor};

use crate::data::decode::{GrayImage, decode_file};
use crate::data::input_stats::{ImageFeatures, features_of};
use crate::data::loader::InputPipeline;
use crate::error::{Error, Result};
use crate::eval::evaluate::{forward_map, rows_f64};
use crate::eval::localize::{BBox, Threshold, predict_boxes};
use crate::eval::reliability::{Assessment, Reliability};
use crate::model::MapKind;
use crate::model::weights::LoadedModel;

/// How the network runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Precision {
    /// BatchNorm folded into the convolutions. Float32, NCHW.
    #[default]
    Fast,
    /// The network as trained, float32, eager, NCHW: bit-identical to `magsd eval`'s forward.
    Exact,
    /// Measured by `magsd bench --only predict` only, on CPUs with AVX-512 BF16
    /// ([`cpu_has_bf16`]): every weight but the classifier's in bfloat16 (BatchNorm unfolded),
    /// the input cast to bfloat16, channels-last; the classifier and what follows in float32.
    Bf16Cpu,
}

/// True when this CPU has AVX-512 BF16 instructions (detected at run time), which oneDNN's
/// bfloat16 convolutions use.
pub fn cpu_has_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[derive(Clone, Copy, Debug)]
pub struct PredictorOptions {
    pub device: Device,
    pub precision: Precision,
    /// bf16 autocast (CUDA).
    pub bf16: bool,
    /// The map behind the boxes (and a heatmap).
    pub map: MapKind,
    /// The attention threshold of the boxes.
    pub threshold: Threshold,
}

/// One decoded and preprocessed image, ready for [`Predictor::predict_batch`].
pub struct Prepared {
    /// `[1, 1, S, S]` model input, float32, CPU.
    pub input: Tensor,
    pub image: GrayImage,
    /// The pixel statistics the pixel screen checks.
    pub features: ImageFeatures,
}

/// What the model says about one image.
#[derive(Clone, Debug)]
pub struct ImagePrediction {
    /// Calibrated probabilities, the predicted class, the unusual verdict and the operating
    /// points' decisions.
    pub assessment: Assessment,
    /// The raw logits (before calibration).
    pub logits: Vec<f64>,
    /// The localisation map (`PredictorOptions::map`), `attention_grid.side²` values, row-major.
    pub attention: Vec<f32>,
    pub attention_grid: crate::model::MapGrid,
    /// The map's boxes at the image's own size (empty when the size was not given).
    pub boxes: Vec<BBox>,
}

/// Where a batch's time went.
#[derive(Clone, Copy, Debug, Default)]
pub struct PredictTimes {
    /// The forward pass, from the copy to the device until the logits are on the host.
    pub forward_s: f64,
    /// Copying the other outputs back, the assessment and the boxes.
    pub output_s: f64,
}

/// Decodes and preprocesses one file (once: the model input and the pixel statistics come from
/// the same plane). Needs no model, so it can run on its own thread while the network runs.
pub fn prepare(pipeline: &InputPipeline, path: &Path) -> Result<Prepared> {
    let image = decode_file(path, &pipeline.limits)?;
    let plane = pipeline.eval_plane(&image);
    let features = features_of(&image, &plane);
    let s = pipeline.preprocess.size as i64;
    let input = Tensor::from_slice(&plane.data).view([1, 1, s, s]); // [1, 1, S, S]
    Ok(Prepared { input, image, features })
}

/// A loaded model ready to predict, with what its file says about trusting it.
pub struct Predictor {
    model: LoadedModel,
    reliability: Reliability,
    classes: Vec<String>,
    pipeline: InputPipeline,
    opts: PredictorOptions,
    channels_last: bool,
}

impl Predictor {
    /// The map it draws (`PredictorOptions::map`).
    pub fn map(&self) -> MapKind {
        self.opts.map
    }

    /// Takes the model over; with [`Precision::Fast`] its BatchNorms are folded (the model is
    /// then for inference only).
    pub fn new(mut model: LoadedModel, reliability: Reliability, pipeline: InputPipeline, opts: PredictorOptions) -> Self {
        let channels_last = opts.precision == Precision::Bf16Cpu && opts.device == Device::Cpu;
        if opts.precision == Precision::Bf16Cpu {
            crate::device::vars_to_channels_last(&model.vs);
            tch::no_grad(|| {
                for (name, mut v) in model.vs.variables() {
                    if v.is_floating_point() && !name.starts_with("classifier.") {
                        let half = v.to_kind(Kind::BFloat16);
                        v.set_data(&half);
                    }
                }
            });
        }
        if opts.precision == Precision::Fast {
            model.model.fold_batch_norm();
        }
        let classes = model.model.config.class_labels();
        Predictor { model, reliability, classes, pipeline, opts, channels_last }
    }

    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    pub fn model(&self) -> &LoadedModel {
        &self.model
    }

    pub fn reliability(&self) -> &Reliability {
        &self.reliability
    }

    pub fn options(&self) -> &PredictorOptions {
        &self.opts
    }

    /// The input pipeline, for [`prepare`] on another thread.
    pub fn pipeline(&self) -> &InputPipeline {
        &self.pipeline
    }

    /// [`prepare`] with this predictor's pipeline.
    pub fn prepare(&self, path: &Path) -> Result<Prepared> {
        prepare(&self.pipeline, path)
    }

    /// Runs `x: [B, 1, S, S]` (CPU, float32) as one batch. `images[i]` are image i's pixel
    /// statistics (None for an input that came preprocessed) and `sizes[i]` its `(width,
    /// height)` for the boxes (None: no boxes). The outer error is the batch's (the network
    /// failed); an inner one is that image's (a non-finite output).
    pub fn predict_batch(
        &self,
        x: &Tensor,
        images: &[Option<&ImageFeatures>],
        sizes: &[Option<(usize, usize)>],
        times: &mut PredictTimes,
    ) -> Result<Vec<Result<ImagePrediction>>> {
        let n = x.size()[0] as usize;
        if images.len() != n || sizes.len() != n {
            return Err(Error::Config(format!("predict_batch: {n} inputs, {} image statistics, {} sizes", images.len(), sizes.len())));
        }
        let start = Instant::now();
        let x = if self.opts.precision == Precision::Bf16Cpu { x.to_kind(Kind::BFloat16) } else { x.shallow_clone() };
        let f = forward_map(&self.model.model, &x, self.opts.device, self.opts.bf16, self.channels_last, self.opts.map)?; // [B, K], [B, 1, h, w], [B, D]
        // The forward pass ends when its outputs are on the host.
        let logits = rows_f64(&f.logits)?;
        times.forward_s = start.elapsed().as_secs_f64();
        let start = Instant::now();
        let (grid, side) = (f.grid, f.grid.side);
        let features = f.features.to_device(Device::Cpu);
        let att: Vec<f32> = Vec::try_from(f.attention.to_device(Device::Cpu).to_kind(Kind::Float).contiguous().flatten(0, -1))?;
        let out = (0..n)
            .map(|i| {
                let assessment = self.reliability.assess(&logits[i], Some(&features.get(i as i64)), images[i], &self.classes)?;
                let attention = att[i * side * side..(i + 1) * side * side].to_vec();
                let boxes = sizes[i].map(|(w, h)| predict_boxes(&attention, grid, w, h, self.opts.threshold)).unwrap_or_default();
                Ok(ImagePrediction { assessment, logits: logits[i].clone(), attention, attention_grid: grid, boxes })
            })
            .collect();
        times.output_s = start.elapsed().as_secs_f64();
        Ok(out)
    }

    /// One prepared image through [`Predictor::predict_batch`], with its boxes.
    pub fn predict_prepared(&self, p: &Prepared) -> Result<ImagePrediction> {
        let size = (p.image.width, p.image.height);
        let mut times = PredictTimes::default();
        self.predict_batch(&p.input, &[Some(&p.features)], &[Some(size)], &mut times)?.remove(0)
    }

    /// The whole path for one file: decode, preprocess, forward, assessment, boxes.
    pub fn predict_file(&self, path: &Path) -> Result<(ImagePrediction, Prepared)> {
        let p = self.prepare(path)?;
        Ok((self.predict_prepared(&p)?, p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NetworkConfig;
    use crate::model::weights::{load_model, save_model};

    fn predictor(dir: &Path, precision: Precision) -> Predictor {
        let path = dir.join("m.safetensors");
        if !path.exists() {
            tch::manual_seed(11);
            let vs = tch::nn::VarStore::new(Device::Cpu);
            let _ = crate::model::Network::new(&vs.root(), NetworkConfig::tiny(3)).unwrap();
            save_model(&path, &vs, &NetworkConfig::tiny(3)).unwrap();
        }
        let m = load_model(&path, Device::Cpu).unwrap();
        let reliability = Reliability::of(&m, &path).unwrap();
        let pipeline = InputPipeline { preprocess: m.model.config.preprocess(), ..Default::default() };
        let opts = PredictorOptions { device: Device::Cpu, precision, bf16: false, map: MapKind::Mean, threshold: Threshold::Relative(0.5) };
        Predictor::new(m, reliability, pipeline, opts)
    }

    /// The exact path is bit-identical to evaluation's forward (`forward_map` on the model as
    /// loaded); the fast path is within float32 rounding of it.
    #[test]
    fn exact_path_is_bit_identical_and_fast_path_close() {
        let dir = tempfile::tempdir().unwrap();
        let exact = predictor(dir.path(), Precision::Exact);
        let fast = predictor(dir.path(), Precision::Fast);
        let s = exact.model().model.config.image_size;
        let x = Tensor::randn([3, 1, s, s], (Kind::Float, Device::Cpu));
        let m = load_model(&dir.path().join("m.safetensors"), Device::Cpu).unwrap();
        let reference = rows_f64(&forward_map(&m.model, &x, Device::Cpu, false, false, MapKind::Mean).unwrap().logits).unwrap();
        let mut t = PredictTimes::default();
        let none = [None, None, None];
        let e = exact.predict_batch(&x, &none, &[None; 3], &mut t).unwrap();
        let f = fast.predict_batch(&x, &none, &[None; 3], &mut t).unwrap();
        for i in 0..3 {
            let (e, f) = (e[i].as_ref().unwrap(), f[i].as_ref().unwrap());
            assert_eq!(e.logits, reference[i], "exact path differs from the forward pass");
            for (a, b) in e.assessment.probabilities.iter().zip(&f.assessment.probabilities) {
                assert!((a - b).abs() < 1e-5, "fast path probability {b} vs exact {a}");
            }
        }
    }
}
