//! MA-Net, the MAG-SD network (paper §3.2; spec §1): ResNet backbone → multiscale attention
//! generator → classification head; and [`MagSd`], the one network type the trainer, evaluation,
//! prediction and serving use, which holds MA-Net or a baseline (`super::baselines`).
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::attention::AttentionGenerator;
use super::baselines::Baseline;
use super::config::{Arch, Head, MagSdConfig};
use super::init::linear;
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
        let net = match &self.net {
            Network::MaNet(net) => net,
            Network::Baseline(b) => return b.forward_t(x, train),
        };
        let [f1, f2, f3, f4] = net.backbone.forward_stages(x, train);
        let f = Features { f2, f3, f4 };
        let attention = net.attention.forward_t(&f, train);
        let pooled = match self.config.head {
            Head::Bap => bilinear_attention_pool(&f.f4, &attention) * 100.0, // [B, M*C]
            Head::Gap => global_avg_pool(&f.f4),                              // [B, C]
            Head::Gmp => global_max_pool(&f.f4),                              // [B, C]
        };
        let logits = net.classifier.forward(&pooled.to_kind(Kind::Float)); // [B, K]
        let stages = vec![f1, f.f2, f.f3, f.f4.shallow_clone()];
        MagSdOutput { logits, attention, features: f.f4, stages }
    }
}
