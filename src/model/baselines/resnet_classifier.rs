//! ResNet18 and ResNet50 as plain classifiers (He et al., "Deep Residual Learning for Image
//! Recognition", CVPR 2016): the backbone of `crate::model::resnet`, global average pooling and
//! one linear layer `fc`, as torchvision's `resnet18`/`resnet50`, whose checkpoints load by name.
use tch::nn::{self, Module};
use tch::Tensor;

use super::init::linear;
use crate::model::config::ResNetConfig;
use crate::model::pooling::global_avg_pool;
use crate::model::resnet::ResNet;

#[derive(Debug)]
pub struct ResNetClassifier {
    backbone: ResNet,
    fc: nn::Linear,
}

impl ResNetClassifier {
    pub fn new(p: &nn::Path, cfg: &ResNetConfig, in_channels: i64, num_classes: i64) -> Self {
        let (_, _, c4) = cfg.channels();
        ResNetClassifier { backbone: ResNet::new(p, cfg, in_channels), fc: linear(&(p / "fc"), c4, num_classes, true) }
    }

    /// Logits `[B, K]` and the layer4 features `[B, C4, S/32, S/32]`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> (Tensor, Tensor) {
        let f4 = self.backbone.forward_t(x, train).f4; // [B, C4, S/32, S/32]
        let logits = self.fc.forward(&global_avg_pool(&f4)); // [B, C4] -> [B, K]
        (logits, f4)
    }
}
