//! Saliency methods compared side by side on the same model (issue 20): MA-Net's own maps
//! (`crate::model::maps`), Grad-CAM and Grad-CAM++ on layer4 or layer3 (on tch's autograd), and two
//! maps without information (uniform, a centre prior). [`compare`] scores each against the lesion
//! masks (box IoU, pointing game, energy pointing game, saliency AUROC) and without masks (the
//! deletion curve, and whether the map follows the image when it is mirrored), with bootstrap
//! intervals over images.
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::data::dataset::Dataset;
use crate::data::loader::Loader;
use crate::error::{Error, Result};
use crate::eval::localize::{
    GroundTruth, Threshold, boxes_mask, component_boxes, energy_pointing_game, flip_lr, image_size, iou, pearson, pointing_game,
    saliency_auroc, threshold_mask, upsample,
};
use crate::eval::stats::{BootstrapCi, bootstrap_ci};
use crate::model::{MapGrid, MapKind, Network};

/// The backbone stage a gradient method reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layer {
    Layer3,
    Layer4,
}

/// A way to draw a localisation map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Method {
    /// One of MA-Net's own maps.
    Map(MapKind),
    /// Grad-CAM (Selvaraju et al. 2017, Eq. 1–2).
    GradCam(Layer),
    /// Grad-CAM++ (Chattopadhay et al. 2018, Eq. 19), as pytorch-grad-cam computes it.
    GradCamPlusPlus(Layer),
    /// The same value everywhere: what a map without information scores.
    Uniform,
    /// A Gaussian centred on the image (σ = a quarter of the side): a position prior alone.
    CentrePrior,
}

impl Method {
    pub fn name(self) -> String {
        match self {
            Method::Map(k) => k.name().to_string(),
            Method::GradCam(Layer::Layer4) => "gradcam".into(),
            Method::GradCam(Layer::Layer3) => "gradcam-layer3".into(),
            Method::GradCamPlusPlus(Layer::Layer4) => "gradcam++".into(),
            Method::GradCamPlusPlus(Layer::Layer3) => "gradcam++-layer3".into(),
            Method::Uniform => "uniform".into(),
            Method::CentrePrior => "centre".into(),
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s.trim() {
            "gradcam" | "gradcam-layer4" => Method::GradCam(Layer::Layer4),
            "gradcam-layer3" => Method::GradCam(Layer::Layer3),
            "gradcam++" | "gradcam++-layer4" => Method::GradCamPlusPlus(Layer::Layer4),
            "gradcam++-layer3" => Method::GradCamPlusPlus(Layer::Layer3),
            "uniform" => Method::Uniform,
            "centre" | "center" => Method::CentrePrior,
            other => Method::Map(other.parse().map_err(|_| {
                Error::Config(format!(
                    "--method '{other}': use mean, class, scale14, scale28, class14, class28, evidence, gradcam, gradcam-layer3, \
                     gradcam++, gradcam++-layer3, uniform or centre"
                ))
            })?),
        })
    }

    /// A comma-separated list.
    pub fn parse_list(s: &str) -> Result<Vec<Self>> {
        let mut out: Vec<Method> = Vec::new();
        for m in s.split(',').filter(|m| !m.trim().is_empty()) {
            let m = Method::parse(m)?;
            if !out.contains(&m) {
                out.push(m);
            }
        }
        Ok(out)
    }
}

/// Every method the model supports, in the order of the comparison table.
pub fn available(model: &Network) -> Vec<Method> {
    use crate::model::{Arch, Head};
    let c = &model.config;
    let mut out = vec![Method::Map(MapKind::Mean)];
    if c.arch == Arch::Magsd {
        let bap = c.head == Head::Bap;
        out.push(Method::Map(MapKind::Class));
        if c.scales.uses_14() {
            out.push(Method::Map(MapKind::Scale14));
            if bap {
                out.push(Method::Map(MapKind::Class14));
            }
        }
        if c.scales.uses_28() {
            out.push(Method::Map(MapKind::Scale28));
            if bap {
                out.push(Method::Map(MapKind::Class28));
            }
        }
        if bap {
            out.push(Method::Map(MapKind::Evidence));
        }
    }
    out.extend([Method::GradCam(Layer::Layer4), Method::GradCamPlusPlus(Layer::Layer4)]);
    if c.arch == Arch::Magsd {
        out.extend([Method::GradCam(Layer::Layer3), Method::GradCamPlusPlus(Layer::Layer3)]);
    }
    out.extend([Method::Uniform, Method::CentrePrior]);
    out
}

/// Where `method`'s `side × side` maps sit on an `input × input` input: the network's grid
/// ([`Network::map_grid`]) for its own maps and Grad-CAM, the plain grid for the two priors.
pub fn grid(model: &Network, method: Method, side: usize, input: usize) -> MapGrid {
    match method {
        Method::Uniform | Method::CentrePrior => MapGrid::plain(side),
        Method::Map(_) | Method::GradCam(_) | Method::GradCamPlusPlus(_) => model.map_grid(side, input),
    }
}

/// Each map of `maps` (`[B, 1, h, w]`, on `grid`) laid on the `s × s` input, `[B, s·s]` on the CPU.
pub fn on_input(maps: &Tensor, grid: MapGrid, s: usize) -> Result<Vec<Vec<f32>>> {
    let flat: Vec<f32> = Vec::try_from(maps.to_device(Device::Cpu).to_kind(Kind::Float).flatten(0, -1))?;
    let n = grid.side * grid.side;
    Ok(flat.chunks(n.max(1)).map(|m| upsample(m, grid, s, s)).collect())
}

/// Maps `[B, 1, h, w]` (f32, ≥ 0, on the CPU) of `method` for `x` (`[B, C, S, S]`, on `device`)
/// and `class[b]` (int64 `[B]`, on `device`). Model in eval mode (BatchNorm running statistics),
/// f32.
pub fn saliency(model: &Network, x: &Tensor, method: Method, class: &Tensor) -> Result<Tensor> {
    let b = x.size()[0];
    let s = x.size()[2];
    let map = match method {
        Method::Map(kind) => tch::no_grad(|| model.forward_map(x, false, kind, Some(class)).map(|(_, m)| m))?,
        Method::Uniform => Tensor::ones([b, 1, s / 32, s / 32], (Kind::Float, x.device())),
        Method::CentrePrior => {
            let side = s / 8;
            let c = (side as f64 - 1.0) / 2.0;
            let sigma = side as f64 / 4.0;
            let v: Vec<f32> = (0..side * side)
                .map(|i| {
                    let (y, xx) = ((i / side) as f64, (i % side) as f64);
                    (-((y - c).powi(2) + (xx - c).powi(2)) / (2.0 * sigma * sigma)).exp() as f32
                })
                .collect();
            Tensor::from_slice(&v).reshape([1, 1, side, side]).repeat([b, 1, 1, 1])
        }
        Method::GradCam(layer) | Method::GradCamPlusPlus(layer) => {
            let plus = matches!(method, Method::GradCamPlusPlus(_));
            grad_cam(model, x, layer, plus, class)?
        }
    };
    Ok(map.to_kind(Kind::Float).to_device(Device::Cpu))
}

/// Grad-CAM and Grad-CAM++ on a backbone stage `A` (`[B, C, h, w]`) for the logit `y_k` (the
/// raw score, as pytorch-grad-cam's `ClassifierOutputTarget`), with `g = ∂y_k/∂A`:
/// Grad-CAM `L = ReLU(Σ_c α_c A_c)`, `α_c = mean_{ij} g_{cij}` (Selvaraju et al. 2017, Eq. 1–2);
/// Grad-CAM++ `α_c = Σ_{ij} ReLU(g_{cij}) · a_{cij}`, `a = g² / (2g² + Σ_{ij}A_c · g³ + 1e-6)`
/// where `g ≠ 0`, else 0 (Chattopadhay et al. 2018, Eq. 19 with exponential scores, as
/// pytorch-grad-cam 1.5 computes it). Returned unnormalised (`[B, 1, h, w]`, ≥ 0); the metrics
/// here do not depend on a positive scale.
pub fn grad_cam(model: &Network, x: &Tensor, layer: Layer, plus_plus: bool, class: &Tensor) -> Result<Tensor> {
    // The input requires a gradient, so that the graph exists even for frozen weights.
    let x = x.to_kind(Kind::Float).detach().set_requires_grad(true);
    let out = tch::with_grad(|| model.forward_t(&x, false));
    let stage = match (layer, out.stages.len()) {
        (Layer::Layer4, n) => &out.stages[n - 1],
        (Layer::Layer3, 4) => &out.stages[2],
        (Layer::Layer3, _) => {
            return Err(Error::Config(format!("Grad-CAM on layer3: a {} has no layer3; use gradcam", model.config.network_name())));
        }
    };
    let a = stage.to_kind(Kind::Float);
    let score = out.logits.to_kind(Kind::Float).gather(1, &class.unsqueeze(1), false).sum(Kind::Float);
    let g = Tensor::run_backward(&[score], &[&a], false, false).remove(0); // [B, C, h, w]
    let a = a.detach();
    let weights = if plus_plus {
        let g2 = g.square();
        let g3 = &g2 * &g;
        let sum_a = a.sum_dim_intlist(&[2i64, 3][..], true, Kind::Float); // [B, C, 1, 1]
        let aij = &g2 / (&g2 * 2.0 + sum_a * g3 + 1e-6);
        let aij = aij.where_self(&g.ne(0.0), &Tensor::zeros_like(&aij));
        (g.relu() * aij).sum_dim_intlist(&[2i64, 3][..], false, Kind::Float) // [B, C]
    } else {
        g.mean_dim(&[2i64, 3][..], false, Kind::Float) // [B, C]
    };
    Ok((weights.unsqueeze(-1).unsqueeze(-1) * a).sum_dim_intlist(&[1i64][..], true, Kind::Float).relu()) // [B, 1, h, w]
}

/// Steps of the deletion curve.
pub const DELETION_STEPS: i64 = 10;

/// The deletion curve (Petsiuk et al. 2018, RISE §4.1) of each image: its pixels removed (set to
/// the image's mean) in the order of its map, most salient first, in `DELETION_STEPS` equal
/// steps; the area under the class's probability against the share removed (trapezoids, 0..1).
/// Lower is better: a faithful map removes the evidence first. Ties in the map are removed in
/// raster order. `on_input[b]` is image b's map laid on the `S × S` input ([`on_input`]).
pub fn deletion_auc(model: &Network, x: &Tensor, on_input: &[Vec<f32>], class: &Tensor) -> Result<Vec<f64>> {
    let (b, _, s, _) = x.size4()?;
    let n = s * s;
    let up = Tensor::from_slice(&on_input.concat()).reshape([b, n]).to_device(x.device()); // [B, S*S]
    let rank = up.argsort(1, true).argsort(1, false).reshape([b, 1, s, s]); // 0 = most salient
    let fill = x.mean_dim(&[1i64, 2, 3][..], true, Kind::Float).to_kind(x.kind()); // [B, 1, 1, 1]
    let mut probs = Vec::with_capacity(DELETION_STEPS as usize + 1);
    tch::no_grad(|| -> Result<()> {
        for step in 0..=DELETION_STEPS {
            let removed = rank.lt(step * n / DELETION_STEPS); // [B, 1, S, S]
            let xs = fill.expand_as(x).where_self(&removed.expand_as(x), x);
            let p = model.forward_t(&xs, false).logits.to_kind(Kind::Float).softmax(1, Kind::Float);
            let p: Vec<f32> = Vec::try_from(p.gather(1, &class.unsqueeze(1), false).flatten(0, -1).to_device(Device::Cpu))?;
            probs.push(p);
        }
        Ok(())
    })?;
    let steps = DELETION_STEPS as f64;
    Ok((0..b as usize)
        .map(|i| {
            let ys: Vec<f64> = probs.iter().map(|p| f64::from(p[i])).collect();
            (ys.iter().sum::<f64>() - (ys[0] + ys[ys.len() - 1]) / 2.0) / steps
        })
        .collect())
}

/// Per-image scores of one method; `None` where a score is undefined for that image.
#[derive(Clone, Debug, Default)]
struct Scores {
    iou: Vec<Option<f64>>,
    pointing: Vec<Option<f64>>,
    energy: Vec<Option<f64>>,
    auroc: Vec<Option<f64>>,
    flip: Vec<Option<f64>>,
    deletion: Vec<Option<f64>>,
}

/// One method's scores over the images: each a mean with its bootstrap interval over images
/// (`None`, printed `n/a`, where no image defines it).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MethodScores {
    pub method: String,
    /// The map's native side at this model's input (it is upsampled bilinearly to the image).
    pub native_side: usize,
    /// Images with a lesion mask or box (the mask metrics' n); all images enter the mask-free ones.
    pub images_with_truth: usize,
    pub images: usize,
    pub box_iou: Option<BootstrapCi>,
    pub pointing_game: Option<BootstrapCi>,
    pub energy_pointing_game: Option<BootstrapCi>,
    pub saliency_auroc: Option<BootstrapCi>,
    /// Pearson correlation between the map of the mirrored image and the mirrored map, both laid
    /// on the input ([`grid`]; 1 = the map follows the image).
    pub flip_consistency: Option<BootstrapCi>,
    /// Area under the deletion curve of the class's probability (lower is better).
    pub deletion_auc: Option<BootstrapCi>,
}

/// The comparison [`compare`] writes into `metrics.json` and the report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SaliencyComparison {
    pub threshold: Threshold,
    /// The class each map is drawn for.
    pub class: String,
    pub bootstrap_resamples: usize,
    pub methods: Vec<MethodScores>,
}

const RESAMPLES: usize = 1000;

fn ci(values: &[Option<f64>], seed: u64) -> Option<BootstrapCi> {
    let defined: Vec<f64> = values.iter().flatten().copied().collect();
    let groups: Vec<Vec<usize>> = (0..defined.len()).map(|i| vec![i]).collect();
    bootstrap_ci(&groups, RESAMPLES, seed, 0.95, |items| {
        (!items.is_empty()).then(|| items.iter().map(|&i| defined[i]).sum::<f64>() / items.len() as f64)
    })
}

/// Scores every method on the images `indices` of `ds`, each map drawn for the image's predicted
/// class. The mask metrics are computed at the image's own size, on the map upsampled
/// bilinearly; images without ground truth (or with an empty one) enter only the flip and
/// deletion scores.
#[allow(clippy::too_many_arguments)]
pub fn compare(
    model: &Network,
    loader: &Loader,
    ds: &Dataset,
    indices: &[usize],
    gt: &GroundTruth,
    methods: &[Method],
    threshold: Threshold,
    device: Device,
    batch_size: usize,
) -> Result<SaliencyComparison> {
    let base = ds.base_dir();
    let mut scores = vec![Scores::default(); methods.len()];
    let mut sides = vec![0usize; methods.len()];
    for batch in loader.batches(indices.to_vec(), batch_size.max(1), None, 1) {
        if batch.indices.is_empty() {
            continue;
        }
        let x = batch.images.to_device(device).to_kind(Kind::Float);
        let flipped = x.flip([3]);
        let class = tch::no_grad(|| model.forward_t(&x, false).logits.argmax(1, false));
        // The ground truth of each image at its own size, read once for all methods.
        let mut truths = Vec::with_capacity(batch.indices.len());
        for &i in &batch.indices {
            let s = &ds.samples[i];
            let (w, h) = image_size(&s.path)?;
            truths.push((w, h, gt.mask(s, &base, w, h)?.filter(|m| m.iter().any(|&v| v))));
        }
        for (mi, &method) in methods.iter().enumerate() {
            let map = saliency(model, &x, method, &class)?;
            let map_flipped = saliency(model, &flipped, method, &class)?;
            let side = map.size()[2] as usize;
            let input = x.size()[2] as usize;
            let grid = grid(model, method, side, input);
            let (on, on_flipped) = (on_input(&map, grid, input)?, on_input(&map_flipped, grid, input)?);
            let deletion = deletion_auc(model, &x, &on, &class)?;
            sides[mi] = side;
            let flat: Vec<f32> = Vec::try_from(map.flatten(0, -1))?;
            let sc = &mut scores[mi];
            for (j, (w, h, truth)) in truths.iter().enumerate() {
                let m = &flat[j * side * side..(j + 1) * side * side];
                sc.flip.push(pearson(&flip_lr(&on_flipped[j], input), &on[j]));
                sc.deletion.push(Some(deletion[j]));
                let Some(truth) = truth else { continue };
                let up = upsample(m, grid, *w, *h);
                let boxes = component_boxes(&threshold_mask(&up, threshold), *w, *h);
                sc.iou.push(Some(iou(&boxes_mask(&boxes, *w, *h), truth).unwrap_or(0.0)));
                sc.pointing.push(pointing_game(&up, truth));
                sc.energy.push(energy_pointing_game(&up, truth));
                sc.auroc.push(saliency_auroc(&up, truth));
            }
        }
    }
    let methods = methods
        .iter()
        .zip(scores)
        .zip(sides)
        .map(|((m, s), side)| MethodScores {
            method: m.name(),
            native_side: side,
            images_with_truth: s.iou.len(),
            images: s.flip.len(),
            box_iou: ci(&s.iou, 1),
            pointing_game: ci(&s.pointing, 2),
            energy_pointing_game: ci(&s.energy, 3),
            saliency_auroc: ci(&s.auroc, 4),
            flip_consistency: ci(&s.flip, 5),
            deletion_auc: ci(&s.deletion, 6),
        })
        .collect();
    Ok(SaliencyComparison { threshold, class: "predicted".into(), bootstrap_resamples: RESAMPLES, methods })
}

/// `0.467 [0.41, 0.52]`, or `n/a`.
pub fn ci_text(c: &Option<BootstrapCi>) -> String {
    c.as_ref().map(|c| format!("{:.3} [{:.3}, {:.3}]", c.estimate, c.low, c.high)).unwrap_or_else(|| "n/a".into())
}

/// The comparison as a table (Markdown rows).
pub fn table(c: &SaliencyComparison) -> Vec<Vec<String>> {
    c.methods
        .iter()
        .map(|m| {
            vec![
                m.method.clone(),
                format!("{0}×{0}", m.native_side),
                ci_text(&m.box_iou),
                ci_text(&m.pointing_game),
                ci_text(&m.energy_pointing_game),
                ci_text(&m.saliency_auroc),
                ci_text(&m.flip_consistency),
                ci_text(&m.deletion_auc),
            ]
        })
        .collect()
}

/// The table's header.
pub const TABLE_HEADER: [&str; 8] =
    ["method", "native map", "box IoU", "pointing game", "energy pointing", "saliency AUROC", "flip consistency", "deletion AUC (lower better)"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_names_round_trip() {
        let all = "mean,class,scale14,scale28,class14,class28,gradcam,gradcam-layer3,gradcam++,gradcam++-layer3,uniform,centre";
        let m = Method::parse_list(all).unwrap();
        assert_eq!(m.iter().map(|m| m.name()).collect::<Vec<_>>().join(","), all);
        assert!(Method::parse("saliency").is_err());
    }
}
