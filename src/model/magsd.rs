//! MA-Net, the MAG-SD network (paper §3.2; spec §1): ResNet backbone → multiscale attention
//! generator → classification head.
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::attention::AttentionGenerator;
use super::config::{Head, MagSdConfig};
use super::init::linear;
use super::pooling::{bilinear_attention_pool, global_avg_pool, global_max_pool};
use super::resnet::ResNet;

/// What one forward pass returns.
pub struct MagSdOutput {
    /// `[B, K]` class scores (before softmax).
    pub logits: Tensor,
    /// `[B, M, S/32, S/32]` attention maps, all ≥ 0 (7×7 at 224).
    pub attention: Tensor,
    /// `[B, C4, S/32, S/32]` layer4 features (2048 channels for ResNet50).
    pub features: Tensor,
}

impl MagSdOutput {
    /// The mean over the M maps, `[B, 1, S/32, S/32]`: what evaluation and localisation use.
    pub fn mean_attention(&self) -> Tensor {
        self.attention.to_kind(Kind::Float).mean_dim(&[1i64][..], true, None)
    }
}

#[derive(Debug)]
pub struct MagSd {
    pub config: MagSdConfig,
    backbone: ResNet,
    attention: AttentionGenerator,
    classifier: nn::Linear,
}

impl MagSd {
    /// Builds the network with fresh weights in `vs`: backbone at the root (torchvision names),
    /// attention heads under `attention.`, the classifier as `classifier.`.
    pub fn new(vs: &nn::Path, config: MagSdConfig) -> crate::Result<Self> {
        config.validate()?;
        let (_, _, c4) = config.resnet.channels();
        let backbone = ResNet::new(vs, &config.resnet, config.in_channels);
        let attention = AttentionGenerator::new(&(vs / "attention"), &config);
        let classifier = match config.head {
            // Linear(M·C → K, bias=False) applied to 100·BAP (spec §1.3), PyTorch's default init.
            Head::Bap => linear(vs / "classifier", config.num_maps * c4, config.num_classes, false),
            Head::Gap | Head::Gmp => linear(vs / "classifier", c4, config.num_classes, true),
        };
        Ok(MagSd { config, backbone, attention, classifier })
    }

    /// `x: [B, in_channels, S, S]`. `train` selects batch statistics in BatchNorm (and updates
    /// the running ones); `false` uses the running statistics.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> MagSdOutput {
        let f = self.backbone.forward_t(x, train);
        let attention = self.attention.forward_t(&f, train);
        let pooled = match self.config.head {
            Head::Bap => bilinear_attention_pool(&f.f4, &attention) * 100.0, // [B, M*C]
            Head::Gap => global_avg_pool(&f.f4),                              // [B, C]
            Head::Gmp => global_max_pool(&f.f4),                              // [B, C]
        };
        let logits = self.classifier.forward(&pooled.to_kind(Kind::Float)); // [B, K]
        MagSdOutput { logits, attention, features: f.f4 }
    }
}
