//! Running a trained model over a dataset: each image exactly once, never augmented, in eval
//! mode (BatchNorm running statistics), prediction from the raw image's logits as the authors
//! report (spec §5). Images that cannot be read are listed and skipped, unless strict; every
//! image asked for is accounted for, either predicted or listed as a failure.
use tch::{Device, Kind, Tensor};

use crate::data::loader::Loader;
use crate::device::{autocast_bf16, channels_last};
use crate::error::{Error, Result};
use crate::model::{MapGrid, MapKind, Network};

#[derive(Clone, Copy, Debug, Default)]
pub struct PredictOptions {
    pub batch_size: usize,
    pub bf16: bool,
    pub channels_last: bool,
    /// Keep each image's localisation map (for localisation and overlays).
    pub keep_attention: bool,
    /// Which map that is (`crate::model::maps`; the mean attention map by default).
    pub map: MapKind,
    /// Keep each image's feature ([`Forward::features`]): for the out-of-distribution detector,
    /// and its last [`Predictions::penultimate_width`] numbers for the source probe (`eval::probe`).
    pub keep_features: bool,
    /// Fail, listing them all, when any image is unreadable or decoded with a warning (e.g. a
    /// truncated JPEG), instead of skipping or using it.
    pub strict: bool,
}

/// Per-image outputs, in the order of `indices`.
#[derive(Clone, Debug, Default)]
pub struct Predictions {
    /// Dataset indices that were predicted.
    pub indices: Vec<usize>,
    pub labels: Vec<usize>,
    /// Softmax probabilities.
    pub probs: Vec<Vec<f64>>,
    /// The logits they come from (for calibration).
    pub logits: Vec<Vec<f64>>,
    /// Global averages of the backbone's stages per image (when asked for; see [`Forward`]).
    pub features: Vec<Vec<f32>>,
    /// How many of the last numbers of each feature are the last feature map's global average.
    pub penultimate_width: usize,
    /// Localisation map per image (`PredictOptions::map`, for the predicted class where it
    /// depends on the class), `side × side`, row-major (when asked for).
    pub attention: Vec<Vec<f32>>,
    /// Where the maps' cells sit on the input (`attention_grid.side²` values each).
    pub attention_grid: MapGrid,
    /// Images that could not be read: (dataset index, reason).
    pub failures: Vec<(usize, String)>,
    /// Images used although their decoder warned (e.g. a truncated JPEG): (dataset index, warning).
    pub warnings: Vec<(usize, String)>,
}

impl Predictions {
    /// Each image's global average of the last feature map (the source probe's input), when
    /// features were kept.
    pub fn penultimate(&self) -> Vec<Vec<f32>> {
        self.features.iter().map(|f| f[f.len().saturating_sub(self.penultimate_width)..].to_vec()).collect()
    }

    /// Mean cross-entropy of the predictions (for validation curves).
    pub fn mean_ce(&self) -> f64 {
        let n = self.probs.len().max(1) as f64;
        self.probs.iter().zip(&self.labels).map(|(p, &y)| -(p[y].max(1e-12)).ln()).sum::<f64>() / n
    }
}

/// What one forward pass in eval mode gives for a batch (on the model's device).
pub struct Forward {
    /// `[B, K]` logits and their softmax, f32.
    pub logits: Tensor,
    pub probs: Tensor,
    /// `[B, 1, h, w]` localisation map ([`forward_map`]'s kind; the mean attention map for [`forward`]).
    pub attention: Tensor,
    /// Where `attention`'s cells sit on the input.
    pub grid: MapGrid,
    /// `[B, C·G² + Σ C_i]`, f32, what `crate::eval::ood` scores: the model input averaged over a
    /// G × G grid ([`INPUT_GRID`]), then the global average of each backbone stage's output (a
    /// baseline's last feature map alone), concatenated.
    pub features: Tensor,
    /// How many of the last numbers of `features` are the global average of the last feature map
    /// (the penultimate features the classifier reads; the source probe's input).
    pub penultimate_width: usize,
}

/// The model input's layout enters the out-of-distribution feature averaged over this grid.
pub const INPUT_GRID: i64 = 8;

/// Forward pass in eval mode without gradients, with the mean attention map.
pub fn forward(model: &Network, x: &Tensor, device: Device, bf16: bool, cl: bool) -> Forward {
    forward_map(model, x, device, bf16, cl, MapKind::Mean).expect("every network has its mean map")
}

/// Forward pass in eval mode without gradients, with the localisation map `map` drawn for each
/// image's predicted class; an error when the network has no such map.
pub fn forward_map(model: &Network, x: &Tensor, device: Device, bf16: bool, cl: bool, map: MapKind) -> Result<Forward> {
    tch::no_grad(|| {
        let x = x.to_device(device);
        let x = if cl { channels_last(&x) } else { x };
        let (out, attention) = autocast_bf16(bf16, device, || model.forward_map(&x, false, map, None))?;
        let logits = out.logits.to_kind(Kind::Float);
        // The input's layout, [B, C, S, S] -> [B, C·G²], then each stage [B, C_i, h_i, w_i] -> [B, C_i].
        let b = x.size()[0];
        let mut pooled = vec![x.to_kind(Kind::Float).adaptive_avg_pool2d([INPUT_GRID, INPUT_GRID]).reshape([b, -1])];
        pooled.extend(out.stages.iter().map(|t| t.to_kind(Kind::Float).mean_dim(&[2i64, 3][..], false, Kind::Float)));
        let features = Tensor::cat(&pooled, 1); // [B, C·G² + Σ C_i]
        // The last stage is the last feature map (`out.features`).
        let penultimate_width = out.features.size()[1] as usize;
        let grid = model.map_grid(attention.size()[2] as usize, x.size()[2] as usize);
        Ok(Forward { probs: logits.softmax(1, Kind::Float), logits, attention: attention.to_kind(Kind::Float), grid, features, penultimate_width })
    })
}

/// Forward pass in eval mode without gradients: `(probabilities [B, K], mean attention [B, 1, h, w])`.
pub fn infer(model: &Network, x: &Tensor, device: Device, bf16: bool, cl: bool) -> (Tensor, Tensor) {
    let f = forward(model, x, device, bf16, cl);
    (f.probs, f.attention)
}

/// Rows of a `[B, K]` tensor as f64 vectors.
pub fn rows_f64(t: &Tensor) -> Result<Vec<Vec<f64>>> {
    let k = t.size()[1] as usize;
    let flat: Vec<f64> = Vec::try_from(t.to_device(Device::Cpu).to_kind(Kind::Double).flatten(0, -1))?;
    Ok(flat.chunks(k.max(1)).map(<[f64]>::to_vec).collect())
}

/// Predicts `indices` of the loader's dataset with `model` on `device`.
pub fn predict(model: &Network, loader: &Loader, indices: &[usize], device: Device, opts: &PredictOptions) -> Result<Predictions> {
    let mut out = Predictions::default();
    let ds = loader.dataset().clone();
    for batch in loader.batches(indices.to_vec(), opts.batch_size.max(1), None, 2) {
        out.failures.extend(batch.failures);
        out.warnings.extend(batch.warnings);
        if batch.indices.is_empty() {
            continue;
        }
        let f = forward_map(model, &batch.images, device, opts.bf16, opts.channels_last, opts.map)?;
        let att = f.attention;
        for ((p, z), &i) in rows_f64(&f.probs)?.into_iter().zip(rows_f64(&f.logits)?).zip(&batch.indices) {
            out.indices.push(i);
            out.labels.push(ds.samples[i].label);
            out.probs.push(p);
            out.logits.push(z);
        }
        if opts.keep_features {
            let c = f.features.size()[1] as usize;
            let flat: Vec<f32> = Vec::try_from(f.features.to_device(Device::Cpu).flatten(0, -1))?;
            out.features.extend(flat.chunks(c).map(<[f32]>::to_vec));
            out.penultimate_width = f.penultimate_width;
        }
        if opts.keep_attention {
            let side = f.grid.side;
            out.attention_grid = f.grid;
            let flat: Vec<f32> = Vec::try_from(att.to_device(Device::Cpu).flatten(0, -1))?;
            out.attention.extend(flat.chunks(side * side).map(|c| c.to_vec()));
        }
    }
    let accounted = out.indices.len() + out.failures.len();
    if accounted != indices.len() {
        return Err(Error::Data(format!(
            "the input pipeline returned {accounted} of {} images (predicted or failed); refusing to report on a partial set",
            indices.len()
        )));
    }
    if opts.strict && !(out.failures.is_empty() && out.warnings.is_empty()) {
        let list: Vec<&String> = out.failures.iter().chain(&out.warnings).map(|(_, e)| e).collect();
        return Err(Error::Data(format!(
            "--strict: {} image(s) unreadable or decoded with a warning:\n  {}",
            list.len(),
            list.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n  ")
        )));
    }
    Ok(out)
}
