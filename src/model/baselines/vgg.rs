//! VGG16 (Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
//! Recognition", ICLR 2015, configuration D) with torchvision's structure and parameter names
//! (`features.N.weight`, `classifier.N.weight`), so torchvision's `vgg16` checkpoints load
//! without a renaming table. The 13-convolution trunk is shared with BCNN (`super::bcnn`).
use tch::nn::{self, Module};
use tch::Tensor;

use super::init::conv_kaiming;

/// Configuration D: output channels of each 3×3 convolution, 0 for a 2×2 max pool.
const CFG_D: [i64; 18] = [64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0];

#[derive(Debug)]
enum Layer {
    /// 3×3 convolution (padding 1, bias) followed by ReLU.
    Conv(nn::Conv2D),
    MaxPool,
}

/// torchvision's `vgg16().features`: 13 convolutions with ReLU, 5 max pools. Index `N` of
/// `features.N` counts every conv, ReLU and pool as torchvision's `nn.Sequential` does.
#[derive(Debug)]
pub struct VggFeatures {
    layers: Vec<Layer>,
}

/// The trunk's maps that the baselines use (after ReLU).
pub struct VggMaps {
    /// conv3_3 `[B, 256, S/4, S/4]`.
    pub conv3_3: Tensor,
    /// conv4_3 `[B, 512, S/8, S/8]`.
    pub conv4_3: Tensor,
    /// conv5_3 `[B, 512, S/16, S/16]` (14×14 at 224): BCNN's features.
    pub conv5_3: Tensor,
    /// After the fifth pool `[B, 512, S/32, S/32]`: VGG16's last feature map.
    pub pool5: Tensor,
}

impl VggFeatures {
    /// Builds `features.*` under `p` (the root for torchvision names).
    pub fn new(p: &nn::Path, in_channels: i64) -> Self {
        let f = p / "features";
        let (mut idx, mut c_in, mut layers) = (0, in_channels, Vec::new());
        for c_out in CFG_D {
            if c_out == 0 {
                layers.push(Layer::MaxPool);
                idx += 1;
            } else {
                layers.push(Layer::Conv(conv_kaiming(&(&f / idx), c_in, c_out, 3, 1, 1, true)));
                c_in = c_out;
                idx += 2; // the conv and its ReLU
            }
        }
        VggFeatures { layers }
    }

    /// `x: [B, in_channels, S, S]` → the maps of [`VggMaps`].
    pub fn forward(&self, x: &Tensor) -> VggMaps {
        let mut y = x.shallow_clone();
        let mut convs = 0;
        let (mut c33, mut c43, mut c53) = (None, None, None);
        for layer in &self.layers {
            y = match layer {
                Layer::Conv(c) => c.forward(&y).relu(), // [B, C, h, w] -> [B, C', h, w]
                Layer::MaxPool => y.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false), // [B, C, h, w] -> [B, C, h/2, w/2]
            };
            if matches!(layer, Layer::Conv(_)) {
                convs += 1;
                match convs {
                    7 => c33 = Some(y.shallow_clone()),
                    10 => c43 = Some(y.shallow_clone()),
                    13 => c53 = Some(y.shallow_clone()),
                    _ => {}
                }
            }
        }
        VggMaps {
            conv3_3: c33.expect("13 convolutions"),
            conv4_3: c43.expect("13 convolutions"),
            conv5_3: c53.expect("13 convolutions"),
            pool5: y,
        }
    }
}

/// `nn.Linear` as torchvision's VGG initialises it: weight N(0, 0.01), bias 0.
fn vgg_linear(p: nn::Path, c_in: i64, c_out: i64) -> nn::Linear {
    let cfg = nn::LinearConfig {
        ws_init: nn::Init::Randn { mean: 0.0, stdev: 0.01 },
        bs_init: Some(nn::Init::Const(0.0)),
        bias: true,
    };
    nn::linear(p, c_in, c_out, cfg)
}

/// VGG16: the trunk, a 7×7 adaptive average pool, and three fully connected layers
/// (4096, 4096, K) with ReLU and dropout 0.5.
#[derive(Debug)]
pub struct Vgg16 {
    pub features: VggFeatures,
    fc: [nn::Linear; 3],
}

impl Vgg16 {
    pub fn new(p: &nn::Path, in_channels: i64, num_classes: i64) -> Self {
        let c = p / "classifier";
        let fc = [vgg_linear(&c / 0, 512 * 7 * 7, 4096), vgg_linear(&c / 3, 4096, 4096), vgg_linear(&c / 6, 4096, num_classes)];
        Vgg16 { features: VggFeatures::new(p, in_channels), fc }
    }

    /// Logits `[B, K]` and the last feature map (pool5, `[B, 512, S/32, S/32]`).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> (Tensor, Tensor) {
        let f = self.features.forward(x).pool5; // [B, 512, S/32, S/32]
        let h = f.adaptive_avg_pool2d([7, 7]).flatten(1, -1); // -> [B, 512, 7, 7] -> [B, 25088]
        let h = self.fc[0].forward(&h).relu().dropout(0.5, train); // [B, 4096]
        let h = self.fc[1].forward(&h).relu().dropout(0.5, train); // [B, 4096]
        (self.fc[2].forward(&h), f) // [B, K]
    }
}
