//! MA-Net, the MAG-SD network (paper §3.2; spec §1): ResNet backbone → multiscale attention
//! generator → classification head; and [`MagSd`], the one network type the trainer, evaluation,
//! prediction and serving use, which holds MA-Net or a baseline (`super::baselines`).
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::attention::AttentionGenerator;
use super::baselines::Baseline;
use super::config::{Arch, Head, MagSdConfig};
use super::init::linear;
use super::maps::{MapKind, bap_map_weights, cam, weighted_map};
use super::pooling::{bilinear_attention_pool, global_avg_pool, global_max_pool};
use super::resnet::{Features, ResNet};
use super::MagSdOutput;

/// The network magsd trains: MA-Net (MAG-SD) or a baseline, chosen by `config.arch`.
#[derive(Debug)]
pub struct MagSd {
    pub config: MagSdConfig,
    net: Network,
}

// One value per model, built once: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Network {
    MaNet(MaNet),
    Baseline(Baseline),
}

#[derive(Debug)]
struct MaNet {
    backbone: ResNet,
    attention: AttentionGenerator,
    classifier: nn::Linear,
}

impl MagSd {
    /// Builds the network with fresh weights in `vs`. MA-Net: backbone at the root (torchvision
    /// names), attention heads under `attention.`, the classifier as `classifier.`; a baseline:
    /// see its file in `super::baselines`.
    pub fn new(vs: &nn::Path, config: MagSdConfig) -> crate::Result<Self> {
        config.validate()?;
        if config.arch != Arch::Magsd {
            return Ok(MagSd { net: Network::Baseline(Baseline::new(vs, &config)), config });
        }
        let (_, _, c4) = config.resnet.channels();
        let backbone = ResNet::new(vs, &config.resnet, config.in_channels);
        let attention = AttentionGenerator::new(&(vs / "attention"), &config);
        let classifier = match config.head {
            // Linear(M·C → K, bias=False) applied to 100·BAP (spec §1.3), PyTorch's default init.
            Head::Bap => linear(vs / "classifier", config.num_maps * c4, config.num_classes, false),
            Head::Gap | Head::Gmp => linear(vs / "classifier", c4, config.num_classes, true),
        };
        Ok(MagSd { config, net: Network::MaNet(MaNet { backbone, attention, classifier }) })
    }

    /// `x: [B, in_channels, S, S]`. `train` selects batch statistics in BatchNorm (and updates
    /// the running ones); `false` uses the running statistics.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> MagSdOutput {
        match &self.net {
            Network::MaNet(net) => self.manet_forward(net, x, train).0,
            Network::Baseline(b) => b.forward_t(x, train),
        }
    }

    /// The forward pass and, for MA-Net, each scale's maps before pooling and what the
    /// classifier reads (`[B, M·C]` for BAP, `[B, C]` for GAP/GMP).
    fn manet_forward(&self, net: &MaNet, x: &Tensor, train: bool) -> (MagSdOutput, Vec<Tensor>, Tensor) {
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
        (MagSdOutput { logits, attention, features: f.f4, stages }, scales, pooled)
    }

    /// The forward pass and a localisation map `[B, 1, h, w]` (f32, ≥ 0) of the kind asked for
    /// (`super::maps`), for `class[b]` (int64 `[B]`) or, when `None`, each image's predicted class.
    /// A baseline has only its own map (`MapKind::Mean`); a GAP/GMP head's class map is CAM on
    /// layer4, and it has no finer class maps.
    pub fn forward_map(&self, x: &Tensor, train: bool, kind: MapKind, class: Option<&Tensor>) -> crate::Result<(MagSdOutput, Tensor)> {
        let net = match &self.net {
            Network::MaNet(net) => net,
            Network::Baseline(b) => {
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
            (_, Head::Bap) => {
                let shares = bap_map_weights(&pooled, &net.classifier.ws, &class, self.config.num_maps); // [B, M]
                let maps = if kind == MapKind::Class { out.attention.shallow_clone() } else { of_scale(kind.refinement())?.shallow_clone() };
                weighted_map(&shares, &maps)
            }
        };
        Ok((out, map))
    }
}
