//! The paper's baseline networks (Table 3), each in its own file citing its paper, built and
//! run through one enum so that `crate::model::Network` can hold any of them.
//!
//! Every baseline returns MA-Net's outputs: logits, its last convolutional feature map, and as
//! `attention` a class-agnostic activation map — the channel mean of those features after ReLU,
//! `[B, 1, h, w]`, ≥ 0 (U-Net's full-resolution map averaged 4×4) — so that localisation, heat
//! maps and overlays work for every network.
//! That map is not a learned attention (it is neither class-specific like Grad-CAM nor trained
//! to attend); BCNN(Attention) is the exception and returns its learned maps.
pub mod bcnn;
pub mod covid_net;
pub mod fpn;
pub mod inception;
pub mod init;
pub mod resnet_classifier;
pub mod unet;
pub mod vgg;

use tch::{Kind, Tensor, nn};

use super::config::{Arch, NetworkConfig, ResNetConfig};
use super::NetworkOutput;

/// One of the baselines, built for a config whose `arch` is not `magsd`.
// One value per model, built once: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Baseline {
    Vgg16(vgg::Vgg16),
    ResNet(resnet_classifier::ResNetClassifier),
    InceptionV3(inception::InceptionV3),
    CovidNet(covid_net::CovidNet),
    Bcnn(bcnn::Bcnn),
    Fpn(fpn::Fpn),
    UNet(unet::UNet),
}

impl Baseline {
    /// Builds `cfg.arch` with fresh weights under `p` (torchvision names at the root where the
    /// network has a torchvision counterpart). `cfg` must be valid and not MA-Net.
    pub fn new(p: &nn::Path, cfg: &NetworkConfig) -> Self {
        let (c, k) = (cfg.in_channels, cfg.num_classes);
        match cfg.arch {
            Arch::Vgg16 => Baseline::Vgg16(vgg::Vgg16::new(p, c, k)),
            Arch::Resnet18 => Baseline::ResNet(resnet_classifier::ResNetClassifier::new(p, &ResNetConfig::resnet18(), c, k)),
            Arch::Resnet50 => Baseline::ResNet(resnet_classifier::ResNetClassifier::new(p, &ResNetConfig::resnet50(), c, k)),
            Arch::InceptionV3 => Baseline::InceptionV3(inception::InceptionV3::new(p, c, k)),
            Arch::CovidNet => Baseline::CovidNet(covid_net::CovidNet::new(p, c, k, cfg.image_size)),
            Arch::Bcnn => Baseline::Bcnn(bcnn::Bcnn::new(p, cfg, false)),
            Arch::BcnnAttention => Baseline::Bcnn(bcnn::Bcnn::new(p, cfg, true)),
            Arch::Fpn => Baseline::Fpn(fpn::Fpn::new(p, c, k)),
            Arch::Unet => Baseline::UNet(unet::UNet::new(p, c, k)),
            Arch::Magsd => unreachable!("MA-Net is built by Network::new"),
        }
    }

    /// `x: [B, in_channels, S, S]`; `train` selects batch statistics and dropout.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> NetworkOutput {
        let (logits, features) = match self {
            Baseline::Vgg16(m) => m.forward_t(x, train),
            Baseline::ResNet(m) => m.forward_t(x, train),
            Baseline::InceptionV3(m) => m.forward_t(x, train),
            Baseline::CovidNet(m) => m.forward_t(x, train),
            Baseline::Fpn(m) => m.forward_t(x, train),
            Baseline::UNet(m) => {
                // The decoder's map has the input's side; 4×4-averaged like FPN's P2 (S/4), so
                // that kept maps stay small (56×56 instead of 224×224 floats per image).
                let (logits, features) = m.forward_t(x, train);
                let attention = activation_map(&features).avg_pool2d([4, 4], [4, 4], [0, 0], false, true, None); // [B, 1, S, S] -> [B, 1, S/4, S/4]
                return NetworkOutput { logits, attention, stages: vec![features.shallow_clone()], features };
            }
            Baseline::Bcnn(m) => {
                let (logits, attention, features) = m.forward_t(x, train);
                if let Some(attention) = attention {
                    return NetworkOutput { logits, attention, stages: vec![features.shallow_clone()], features };
                }
                (logits, features)
            }
        };
        NetworkOutput { logits, attention: activation_map(&features), stages: vec![features.shallow_clone()], features }
    }
}

/// The class-agnostic activation map `[B, C, h, w] -> [B, 1, h, w]`: channel mean after ReLU.
pub fn activation_map(features: &Tensor) -> Tensor {
    features.relu().to_kind(Kind::Float).mean_dim(&[1i64][..], true, None)
}
