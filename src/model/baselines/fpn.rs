//! Feature Pyramid Network (Lin et al., "Feature Pyramid Networks for Object Detection", CVPR
//! 2017) on a ResNet50 backbone, used as a classifier: lateral 1×1 convolutions bring
//! layer1..layer4 (C2..C5) to 256 channels, a top-down path adds each level to the
//! nearest-neighbour ×2 upsampling of the level above, and a 3×3 convolution smooths each sum
//! into P2..P5 (paper §3). Classification head (our choice; the paper has none): global average
//! pooling of each of P2..P5, concatenated (`[B, 4·256]`), one linear layer `fc`. The backbone
//! keeps torchvision's ResNet names, so `--pretrained` ResNet50 checkpoints load into it; the
//! pyramid (`fpn.inner_blocks.i`, `fpn.layer_blocks.i`, as torchvision's
//! `FeaturePyramidNetwork`) and `fc` start fresh.
use tch::nn::{self, Module};
use tch::Tensor;

use super::init::{conv_kaiming, linear};
use crate::model::config::ResNetConfig;
use crate::model::pooling::global_avg_pool;
use crate::model::resnet::ResNet;

/// Channels of every pyramid level (the paper's d = 256).
const D: i64 = 256;

#[derive(Debug)]
pub struct Fpn {
    backbone: ResNet,
    /// Lateral 1×1 convolutions for C2..C5.
    inner: Vec<nn::Conv2D>,
    /// 3×3 output convolutions for P2..P5.
    layer: Vec<nn::Conv2D>,
    fc: nn::Linear,
}

impl Fpn {
    pub fn new(p: &nn::Path, in_channels: i64, num_classes: i64) -> Self {
        let cfg = ResNetConfig::resnet50();
        let e = cfg.block.expansion();
        let f = p / "fpn";
        let inner = (0..4).map(|i| conv_kaiming(&(&f / "inner_blocks" / i), cfg.widths[i] * e, D, 1, 1, 0, true)).collect();
        let layer = (0..4).map(|i| conv_kaiming(&(&f / "layer_blocks" / i), D, D, 3, 1, 1, true)).collect();
        Fpn { backbone: ResNet::new(p, &cfg, in_channels), inner, layer, fc: linear(&(p / "fc"), 4 * D, num_classes, true) }
    }

    /// Logits `[B, K]` and P2, the finest pyramid level `[B, 256, S/4, S/4]`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> (Tensor, Tensor) {
        let c = self.backbone.forward_stages(x, train); // C2..C5: [B, 256·2^i, S/2^(i+2), ...]
        let mut top = self.inner[3].forward(&c[3]); // [B, 256, S/32, S/32]
        let mut p = vec![self.layer[3].forward(&top)]; // P5
        for i in (0..3).rev() {
            let lateral = self.inner[i].forward(&c[i]); // [B, 256, h, w]
            let (h, w) = (lateral.size()[2], lateral.size()[3]);
            top = lateral + top.upsample_nearest2d([h, w], None, None); // [B, 256, h/2, w/2] -> [B, 256, h, w]
            p.push(self.layer[i].forward(&top)); // P4, P3, P2
        }
        let pooled: Vec<Tensor> = p.iter().rev().map(global_avg_pool).collect(); // 4 × [B, 256], P2..P5
        let logits = self.fc.forward(&Tensor::cat(&pooled, 1)); // [B, 1024] -> [B, K]
        (logits, p.pop().expect("four levels"))
    }
}
