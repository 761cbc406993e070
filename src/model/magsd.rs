//! MA-Net, the MAG-SD network (paper §3.2; spec §1): ResNet backbone → multiscale attention
//! generator → classification head; and [`Network`], the one network type the trainer, evaluation,
//! prediction and serving use, which holds MA-Net or a baseline (`super::baselines`).
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::attention::AttentionGenerator;
use super::baselines::Baseline;
use super::config::{Arch, Head, NetworkConfig};
use super::init::linear;
use super::maps::{MapKind, bap_map_weights, cam, evidence_map, weighted_map};
use super::pooling::{bilinear_attention_pool, global_avg_pool, global_max_pool};
use super::resnet::{Features, ResNet};
use super::NetworkOutput;

/// The network magsd trains: MA-Net (MAG-SD) or a baseline, chosen by `config.arch`.
#[derive(Debug)]
pub struct Network {
    pub config: NetworkConfig,
    net: Variant,
}

// One value per model, built once: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Variant {
    MaNet(MaNet),
    Baseline(Baseline),
}

#[derive(Debug)]
struct MaNet {
    backbone: ResNet,
    attention: AttentionGenerator,
    classifier: nn::Linear,
}

impl Network {
    /// Builds the network with fresh weights in `vs`. MA-Net: backbone at the root (torchvision
    /// names), attention heads under `attention.`, the classifier as `classifier.`; a baseline:
    /// see its file in `super::baselines`.
    pub fn new(vs: &nn::Path, config: NetworkConfig) -> crate::Result<Self> {
        config.validate()?;
        if config.arch != Arch::Magsd {
            return Ok(Network { net: Variant::Baseline(Baseline::new(vs, &config)), config });
        }
        let (_, _, c4) = config.resnet.channels();
        let backbone = ResNet::new(vs, &config.resnet, config.in_channels);
        let attention = AttentionGenerator::new(&(vs / "attention"), &config);
        let classifier = match config.head {
            // Linear(M·C → K, bias=False) applied to 100·BAP (spec §1.3), PyTorch's default init.
            Head::Bap => linear(vs / "classifier", config.num_maps * c4, config.num_classes, false),
            Head::Gap | Head::Gmp => linear(vs / "classifier", c4, config.num_classes, true),
        };
        Ok(Network { config, net: Variant::MaNet(MaNet { backbone, attention, classifier }) })
    }

    /// Folds the backbone's BatchNorms into its convolutions, for inference only
    /// (`super::resnet::ResNet::fold_batch_norm`; the attention heads' BatchNorms stay). MA-Net
    /// only: a baseline is left as it is. Returns the number of BatchNorms folded.
    pub fn fold_batch_norm(&mut self) -> usize {
        match &mut self.net {
            Variant::MaNet(net) => net.backbone.fold_batch_norm(),
            Variant::Baseline(_) => 0,
        }
    }

    /// `x: [B, in_channels, S, S]`. `train` selects batch statistics in BatchNorm (and updates
    /// the running ones); `false` uses the running statistics.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> NetworkOutput {
        match &self.net {
            Variant::MaNet(net) => self.manet_forward(net, x, train).0,
            Variant::Baseline(b) => b.forward_t(x, train),
        }
    }

    /// The forward pass and, for MA-Net, each scale's maps before pooling and what the
    /// classifier reads (`[B, M·C]` for BAP, `[B, C]` for GAP/GMP).
    fn manet_forward(&self, net: &MaNet, x: &Tensor, train: bool) -> (NetworkOutput, Vec<Tensor>, Tensor) {
        let [f1, f2, f3, f4] = net.backbone.forward_stages(x, train);
        let f = Features { f2, f3, f4 };
        let scales = net.attention.forward_scales(&f, train);
        let attention = AttentionGenerator::combine(&scales);
        let pooled = match self.config.head {
            Head::Bap => bilinear_attention_pool(&f.f4, &attention) * 100.0, // [B, M*C]
            Head::Gap => global_avg_pool(&f.f4),                              // [B, C]
            Head::Gmp => global_max_pool(&f.f4),                              // [B, C]
        }
        .to_kind(Kind::Float);
        let logits = net.classifier.forward(&pooled); // [B, K]
        let stages = vec![f1, f.f2, f.f3, f.f4.shallow_clone()];
        (NetworkOutput { logits, attention, features: f.f4, stages }, scales, pooled)
    }

    /// The map shown when none is asked for: the evidence map where the network has one (MA-Net
    /// with a BAP head; it localised best on the demo's phantoms, BENCHMARKS.md), otherwise the
    /// mean map (a baseline's own activation map).
    pub fn default_map(&self) -> MapKind {
        match (&self.net, self.config.head) {
            (Variant::MaNet(_), Head::Bap) => MapKind::Evidence,
            _ => MapKind::Mean,
        }
    }

    /// Where the cells of this network's `side × side` maps sit on an `input × input` input
    /// ([`super::maps::MapGrid`]): MA-Net's ResNet backbone and the ResNet classifiers centre
    /// cell i on input pixel `stride · i`; the other baselines keep the plain grid (not measured).
    pub fn map_grid(&self, side: usize, input: usize) -> super::maps::MapGrid {
        use super::config::Arch;
        match self.config.arch {
            Arch::Magsd | Arch::Resnet18 | Arch::Resnet50 => super::maps::MapGrid::resnet(side, input),
            _ => super::maps::MapGrid::plain(side),
        }
    }

    /// The forward pass and a localisation map `[B, 1, h, w]` (f32, ≥ 0) of the kind asked for
    /// (`super::maps`), for `class[b]` (int64 `[B]`) or, when `None`, each image's predicted class.
    /// A baseline has only its own map (`MapKind::Mean`); a GAP/GMP head's class map is CAM on
    /// layer4, and it has no finer class maps.
    pub fn forward_map(&self, x: &Tensor, train: bool, kind: MapKind, class: Option<&Tensor>) -> crate::Result<(NetworkOutput, Tensor)> {
        let net = match &self.net {
            Variant::MaNet(net) => net,
            Variant::Baseline(b) => {
                let out = b.forward_t(x, train);
                if kind != MapKind::Mean {
                    return Err(crate::Error::Config(format!(
                        "--map {kind}: a {} has only its own activation map; use --map mean",
                        self.config.network_name()
                    )));
                }
                let map = out.mean_attention();
                return Ok((out, map));
            }
        };
        let (out, scales, pooled) = self.manet_forward(net, x, train);
        let class = match class {
            Some(c) => c.shallow_clone(),
            None => out.logits.argmax(1, false),
        };
        let of_scale = |k: i64| {
            let side = scales[0].size()[2] * k;
            scales.iter().find(|s| s.size()[2] == side).ok_or_else(|| {
                crate::Error::Config(format!(
                    "--map {kind}: this model has no {side}×{side} attention head (scales {})",
                    self.config.scales.name()
                ))
            })
        };
        let map = match (kind, self.config.head) {
            (MapKind::Mean, _) => out.mean_attention(),
            (MapKind::Scale14 | MapKind::Scale28, _) => of_scale(kind.refinement())?.to_kind(Kind::Float).mean_dim(&[1i64][..], true, None),
            (MapKind::Class, Head::Gap | Head::Gmp) => cam(&out.features, &net.classifier.ws, &class),
            (_, Head::Gap | Head::Gmp) => {
                return Err(crate::Error::Config(format!("--map {kind}: a {} head has only the layer4 class map (--map class)", self.config.head)));
            }
            (MapKind::Evidence, Head::Bap) => evidence_map(&scales, &out.features, &net.classifier.ws, &class),
            (_, Head::Bap) => {
                let shares = bap_map_weights(&pooled, &net.classifier.ws, &class, self.config.num_maps); // [B, M]
                let maps = if kind == MapKind::Class { out.attention.shallow_clone() } else { of_scale(kind.refinement())?.shallow_clone() };
                weighted_map(&shares, &maps)
            }
        };
        Ok((out, map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Folding BatchNorm into the convolutions gives the same eval-mode outputs as the unfolded
    /// network, up to float32 rounding. Trained-like running statistics and affine parameters are
    /// drawn at random, so that a folding with a wrong sign, ε or axis cannot pass.
    #[test]
    fn folded_batch_norm_gives_the_same_outputs() {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let mut model = Network::new(&vs.root(), NetworkConfig::tiny(3)).unwrap();
        tch::no_grad(|| {
            for (name, mut t) in vs.variables() {
                let c = t.size();
                let r = Tensor::rand(&c[..], (Kind::Float, tch::Device::Cpu));
                if name.ends_with("running_var") {
                    t.copy_(&(r * 2.0 + 0.1));
                } else if name.ends_with("running_mean") || (name.contains("bn") || name.contains("downsample.1")) && name.ends_with("bias") {
                    t.copy_(&(r - 0.5));
                } else if (name.contains("bn") || name.contains("downsample.1")) && name.ends_with("weight") {
                    t.copy_(&(r + 0.5));
                }
            }
        });
        let s = model.config.image_size;
        let x = Tensor::randn([2, model.config.in_channels, s, s], (Kind::Float, tch::Device::Cpu));
        let before = tch::no_grad(|| model.forward_t(&x, false));
        let folded = model.fold_batch_norm();
        assert!(folded > 0, "nothing folded");
        let after = tch::no_grad(|| model.forward_t(&x, false));
        let close = |a: &Tensor, b: &Tensor, what: &str| {
            let diff = (a - b).abs().max().double_value(&[]);
            let scale = a.abs().max().double_value(&[]).max(1e-6);
            // float32 rounding through a few layers: a relative 1e-4 of the largest value.
            assert!(diff <= 1e-4 * scale, "{what}: max difference {diff} at scale {scale}");
        };
        close(&before.logits, &after.logits, "logits");
        close(&before.attention, &after.attention, "attention");
        close(&before.features, &after.features, "features");
        // A fold of an already folded network changes nothing.
        model.fold_batch_norm();
        let again = tch::no_grad(|| model.forward_t(&x, false));
        assert!(again.logits.equal(&after.logits));
    }

    /// Where a ResNet map's cell looks: with every weight positive (so the network is linear and
    /// its receptive fields symmetric), the centroid over 16 images of the input gradient of one
    /// interior cell of layer3 (stride 16) and layer4 (stride 32) is input pixel `stride · i`,
    /// where `Network::map_grid` puts the cell's centre, and not the middle of the cell's square
    /// (`stride · i + (stride − 1)/2`, the plain grid's), which is 7.5 and 15.5 px away.
    #[test]
    fn a_resnet_cell_is_centred_where_its_map_grid_says() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let mut config = NetworkConfig::tiny(2);
        config.image_size = 256;
        let model = Network::new(&vs.root(), config).unwrap();
        tch::no_grad(|| {
            for (name, mut t) in vs.variables() {
                let v = if name.ends_with("running_var") { 1.0 } else if name.ends_with("running_mean") || name.ends_with("bias") { 0.0 } else { 0.05 };
                let _ = t.fill_(v);
            }
        });
        let s = 256i64;
        // A positive input with some texture: on a constant one, the max pool's ties all go to the
        // top-left element of each window and pull every gradient 2 px up and left.
        tch::manual_seed(11);
        let x = (Tensor::rand([16, 1, s, s], (Kind::Float, tch::Device::Cpu)) * 0.1 + 1.0).set_requires_grad(true);
        let out = model.forward_t(&x, false);
        for (stage, stride) in [(2usize, 16i64), (3, 32)] {
            let f = &out.stages[stage];
            let side = f.size()[2];
            let i = side / 2;
            let cell = f.narrow(2, i, 1).narrow(3, i, 1).sum(Kind::Float);
            let g = Tensor::run_backward(&[cell], &[&x], true, false).remove(0).abs().sum_dim_intlist(&[0i64, 1][..], false, Kind::Float); // [S, S]
            let total = g.sum(Kind::Double).double_value(&[]);
            assert!(total > 0.0, "stride {stride}: no gradient reaches the input");
            let coords = Tensor::arange(s, (Kind::Double, tch::Device::Cpu));
            let cx = (g.sum_dim_intlist(&[0i64][..], false, Kind::Double) * &coords).sum(Kind::Double).double_value(&[]) / total;
            let cy = (g.sum_dim_intlist(&[1i64][..], false, Kind::Double) * &coords).sum(Kind::Double).double_value(&[]) / total;
            let grid = model.map_grid(side as usize, s as usize);
            // Cell i's centre in pixel indices (pixel p covers [p, p + 1)).
            let centre = (i as f64 + f64::from(grid.centre)) * (s / side) as f64 - 0.5;
            // The max pool's picks make it noisy by about half a pixel; the plain grid is 7.5 px away or more.
            assert!((cx - centre).abs() < 1.5 && (cy - centre).abs() < 1.5, "stride {stride}: gradient centroid ({cx:.2}, {cy:.2}), grid centre {centre:.2}");
            assert!((cx - (stride * i) as f64).abs() < 1.5, "stride {stride}: centroid {cx:.2}, expected {}", stride * i);
        }
    }
}
