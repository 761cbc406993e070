//! Bilinear CNN (Lin, RoyChowdhury & Maji, "Bilinear CNN Models for Fine-grained Visual
//! Recognition", ICCV 2015) in its symmetric form B-CNN[M,M]: VGG16's conv5_3 features (after
//! ReLU, before pool5) pooled as the outer product with themselves averaged over locations,
//! signed square root, L2 normalisation, one linear layer `fc` (`[B, 512²] → [B, K]`).
//!
//! BCNN(Attention), the paper's Table 3 variant, replaces the self outer product by MAG-SD's
//! multiscale attention (`crate::model::attention`, spec §1.2) on conv5_3 and conv4_3 (and
//! conv3_3 for scales 7+14+28; the scale names keep MA-Net's meaning of "deepest map, then
//! twice its side, then four times"), and bilinear attention pooling (spec §1.3, ×100 and a
//! bias-free classifier as MA-Net) of the conv5_3 features. The trunk keeps torchvision's VGG16
//! names (`features.N`), so VGG16 checkpoints load into it.
use tch::nn::{self, Module};
use tch::Tensor;

use super::init::linear;
use super::vgg::VggFeatures;
use crate::model::attention::AttentionGenerator;
use crate::model::config::NetworkConfig;
use crate::model::pooling::bilinear_attention_pool;
use crate::model::resnet::Features;

#[derive(Debug)]
pub struct Bcnn {
    features: VggFeatures,
    /// Present for BCNN(Attention).
    attention: Option<AttentionGenerator>,
    fc: nn::Linear,
}

impl Bcnn {
    pub fn new(p: &nn::Path, cfg: &NetworkConfig, with_attention: bool) -> Self {
        let features = VggFeatures::new(p, cfg.in_channels);
        if with_attention {
            let attention = AttentionGenerator::for_channels(&(p / "attention"), (256, 512, 512), cfg.num_maps, cfg.scales);
            let fc = linear(&(p / "classifier"), cfg.num_maps * 512, cfg.num_classes, false);
            Bcnn { features, attention: Some(attention), fc }
        } else {
            Bcnn { features, attention: None, fc: linear(&(p / "fc"), 512 * 512, cfg.num_classes, true) }
        }
    }

    /// Logits `[B, K]`, the attention maps of BCNN(Attention) (`[B, M, S/16, S/16]`, ≥ 0) or
    /// `None` for BCNN, and the conv5_3 features `[B, 512, S/16, S/16]`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> (Tensor, Option<Tensor>, Tensor) {
        let m = self.features.forward(x);
        match &self.attention {
            None => {
                // B-CNN: the bilinear pool of conv5_3 with itself is BAP with A = F.
                let pooled = bilinear_attention_pool(&m.conv5_3, &m.conv5_3); // [B, 512·512]
                (self.fc.forward(&pooled), None, m.conv5_3)
            }
            Some(generator) => {
                let f = Features { f2: m.conv3_3, f3: m.conv4_3, f4: m.conv5_3 };
                let a = generator.forward_t(&f, train); // [B, M, S/16, S/16]
                let pooled = bilinear_attention_pool(&f.f4, &a) * 100.0; // [B, M·512]
                (self.fc.forward(&pooled), Some(a), f.f4)
            }
        }
    }
}
