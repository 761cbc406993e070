//! After training: fit what a model file carries about trusting its answers, and store it in the
//! file (`crate::eval::reliability`).
//!
//! - The out-of-distribution detector's class means and covariance come from the training
//!   images' features (never augmented); its threshold from the validation split's scores at
//!   `ood.tpr`. Without a validation split the threshold is set on the training images and the
//!   file says so (the network has seen them, so new X-rays are flagged more often than stated).
//! - The temperature (`calibration.method = "temperature"`) is fitted on the validation split's
//!   logits; without a validation split the probabilities stay raw softmax and the file says why.
//! - Each operating point is chosen on the validation split's calibrated probabilities; without
//!   a validation split it is refused before training starts ([`check`]).
use std::path::Path;

use tch::{Device, Tensor};

use super::config::TrainConfig;
use crate::data::loader::Loader;
use crate::error::{Error, Result};
use crate::eval::calibration::{CalibrationMethod, fit_temperature, softmax_t};
use crate::eval::evaluate::{PredictOptions, Predictions, predict};
use crate::eval::ood::{Mahalanobis, OOD_KEY, OodDetector, OodMethod, ThresholdSource};
use crate::eval::operating_point::{OperatingPointSpec, choose};
use crate::eval::reliability::{RELIABILITY_KEY, RELIABILITY_VERSION, ReliabilityInfo};
use crate::model::Network;
use crate::model::weights::{OOD_PREFIX, load_model, load_tensors, save_tensors};

/// Refuses, before anything is trained, operating points that cannot be chosen: without a
/// validation split, or for a class the data does not have.
pub fn check(cfg: &TrainConfig, classes: &[String], has_validation: bool) -> Result<()> {
    for p in &cfg.calibration.operating_points {
        let spec = OperatingPointSpec::parse(p)?;
        spec.class_index(classes)?;
        if !has_validation {
            return Err(Error::Config(format!(
                "operating point {spec}: it is chosen on the validation split, and this run has none \
                 (set validation.fraction, e.g. --set validation.fraction=0.1)"
            )));
        }
    }
    Ok(())
}

/// Features `[n, d]` of predictions made with `keep_features`.
fn features(p: &Predictions) -> Tensor {
    let d = p.features.first().map_or(0, Vec::len);
    let flat: Vec<f32> = p.features.iter().flatten().copied().collect();
    Tensor::from_slice(&flat).view([p.features.len() as i64, d as i64])
}

/// Fits the detector, the temperature and the operating points of the model in `model_path`
/// (see the module docs) and writes them into that file.
pub fn fit_and_store(
    model_path: &Path,
    loader: &Loader,
    train_idx: &[usize],
    val_idx: &[usize],
    cfg: &TrainConfig,
    device: Device,
) -> Result<ReliabilityInfo> {
    let m = load_model(model_path, device)?;
    let opts = PredictOptions { keep_features: cfg.ood.method != OodMethod::None, ..cfg.predict_options() };
    let val = predict(&m.model, loader, val_idx, device, &opts)?;
    let mut info = ReliabilityInfo { version: RELIABILITY_VERSION, held_out_images: val.indices.len(), ..Default::default() };
    let classes = m.model.config.class_labels();

    match (cfg.calibration.method, val.indices.is_empty()) {
        (CalibrationMethod::None, _) => info.calibration_note = Some("calibration.method = none".into()),
        (CalibrationMethod::Temperature, true) => {
            info.calibration_note = Some("not calibrated: the run had no validation split to fit a temperature on".into())
        }
        (CalibrationMethod::Temperature, false) => info.calibration = Some(fit_temperature(&val.logits, &val.labels)?),
    }
    let t = info.calibration.as_ref().map_or(1.0, |c| c.temperature);
    for p in &cfg.calibration.operating_points {
        let spec = OperatingPointSpec::parse(p)?;
        let k = spec.class_index(&classes)?;
        let scores: Vec<f64> = val.logits.iter().map(|z| softmax_t(z, t)[k]).collect();
        let positive: Vec<bool> = val.labels.iter().map(|&y| y == k).collect();
        info.operating_points.push(choose(&spec, &scores, &positive)?);
    }

    let detector = match cfg.ood.method {
        OodMethod::None => {
            info.ood_note = Some("ood.method = none".into());
            None
        }
        OodMethod::Mahalanobis => Some(fit_detector(&m.model, loader, train_idx, &val, cfg, device, &mut info)?),
    };
    store(model_path, &info, detector.as_ref())?;
    Ok(info)
}

fn fit_detector(
    model: &Network,
    loader: &Loader,
    train_idx: &[usize],
    val: &Predictions,
    cfg: &TrainConfig,
    device: Device,
    info: &mut ReliabilityInfo,
) -> Result<OodDetector> {
    let opts = PredictOptions { keep_features: true, ..cfg.predict_options() };
    let train = predict(model, loader, train_idx, device, &opts)?;
    info.training_images = train.indices.len();
    let fitted = Mahalanobis::fit(&features(&train), &train.labels)?;
    let (scores, source) = if val.indices.is_empty() {
        (fitted.score(&features(&train)), ThresholdSource::Training)
    } else {
        (fitted.score(&features(val)), ThresholdSource::Validation)
    };
    OodDetector::new(fitted, &scores, cfg.ood.tpr, source)
}

/// Writes `info` and the detector into the model file (replacing any earlier ones).
pub fn store(model_path: &Path, info: &ReliabilityInfo, detector: Option<&OodDetector>) -> Result<()> {
    let (mut tensors, mut meta) = load_tensors(model_path)?;
    tensors.retain(|(n, _)| !n.starts_with(OOD_PREFIX));
    meta.insert(RELIABILITY_KEY.into(), serde_json::to_string(info).expect("serialises"));
    match detector {
        Some(d) => {
            meta.insert(OOD_KEY.into(), serde_json::to_string(&d.info).expect("serialises"));
            tensors.extend(d.model.tensors());
        }
        None => {
            meta.remove(OOD_KEY);
        }
    }
    save_tensors(model_path, &tensors, meta)
}
