//! ResNet backbones with torchvision's structure and parameter names (`conv1.weight`,
//! `layer1.0.conv1.weight`, `layer1.0.downsample.0.weight`, ...), so torchvision checkpoints load
//! without a renaming table. He et al., "Deep Residual Learning for Image Recognition" (2015);
//! code follows `torchvision/models/resnet.py` (stride on the 3×3 conv of the bottleneck, "ResNet
//! v1.5").
use tch::nn::{self, Module, ModuleT};
use tch::Tensor;

use super::config::{Block, ResNetConfig};
use super::init::{batch_norm2d, conv_default, conv_kaiming};

/// A bias-free k×k conv as torchvision builds it (`conv3x3`/`conv1x1`), with torchvision's
/// initialisation: Kaiming-normal, fan-out, ReLU.
fn conv(p: nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64) -> nn::Conv2D {
    conv_kaiming(p, c_in, c_out, k, stride, k / 2, false)
}

#[derive(Debug)]
struct Residual {
    convs: Vec<(nn::Conv2D, nn::BatchNorm)>,
    downsample: Option<(nn::Conv2D, nn::BatchNorm)>,
}

impl Residual {
    fn new(p: &nn::Path, block: Block, c_in: i64, planes: i64, stride: i64) -> Self {
        let c_out = planes * block.expansion();
        let layer = |i: usize, a: i64, b: i64, k: i64, s: i64| {
            (conv(p / format!("conv{i}"), a, b, k, s), batch_norm2d(p / format!("bn{i}"), b, 1e-5))
        };
        let convs = match block {
            Block::Basic => vec![layer(1, c_in, planes, 3, stride), layer(2, planes, planes, 3, 1)],
            Block::Bottleneck => vec![
                layer(1, c_in, planes, 1, 1),
                layer(2, planes, planes, 3, stride),
                layer(3, planes, c_out, 1, 1),
            ],
        };
        let downsample = (stride != 1 || c_in != c_out).then(|| {
            let d = p / "downsample";
            (conv(&d / 0, c_in, c_out, 1, stride), batch_norm2d(&d / 1, c_out, 1e-5))
        });
        Residual { convs, downsample }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let last = self.convs.len() - 1;
        let mut y = x.shallow_clone();
        for (i, (c, bn)) in self.convs.iter().enumerate() {
            y = bn.forward_t(&c.forward(&y), train);
            if i < last {
                y = y.relu();
            }
        }
        let shortcut = match &self.downsample {
            Some((c, bn)) => bn.forward_t(&c.forward(x), train),
            None => x.shallow_clone(),
        };
        (y + shortcut).relu()
    }
}

/// The backbone without its average pool and fully connected layer.
#[derive(Debug)]
pub struct ResNet {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    layers: [Vec<Residual>; 4],
}

/// Feature maps of the last three stages.
pub struct Features {
    /// layer2 output `[B, C2, S/8, S/8]` (512×28×28 for ResNet50 at 224).
    pub f2: Tensor,
    /// layer3 output `[B, C3, S/16, S/16]` (1024×14×14).
    pub f3: Tensor,
    /// layer4 output `[B, C4, S/32, S/32]` (2048×7×7).
    pub f4: Tensor,
}

impl ResNet {
    /// Builds the backbone under `p` (use the root path for torchvision names).
    ///
    /// Initialisation follows the reference (spec §1.1): every conv that torchvision builds is
    /// Kaiming-normal (fan-out), every BatchNorm γ 1 / β 0. With 3 input channels the stem is
    /// torchvision's; with any other count the reference replaces it with a fresh
    /// `nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)` after torchvision's constructor ran, so it
    /// keeps PyTorch's default conv initialisation (U(±1/√fan_in)), and so does this stem.
    pub fn new(p: &nn::Path, cfg: &ResNetConfig, in_channels: i64) -> Self {
        let conv1 = if in_channels == 3 {
            conv(p / "conv1", in_channels, cfg.stem_width, 7, 2)
        } else {
            conv_default(p / "conv1", in_channels, cfg.stem_width, 7, 2, 3, false)
        };
        let bn1 = batch_norm2d(p / "bn1", cfg.stem_width, 1e-5);
        let mut c_in = cfg.stem_width;
        let layers = std::array::from_fn(|stage| {
            let lp = p / format!("layer{}", stage + 1);
            let stride = if stage == 0 { 1 } else { 2 };
            (0..cfg.layers[stage])
                .map(|b| {
                    let r = Residual::new(&(&lp / b), cfg.block, c_in, cfg.widths[stage], if b == 0 { stride } else { 1 });
                    c_in = cfg.widths[stage] * cfg.block.expansion();
                    r
                })
                .collect()
        });
        ResNet { conv1, bn1, layers }
    }

    /// `x: [B, in_channels, S, S]` → the layer2, layer3 and layer4 feature maps.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Features {
        let stage = |x: Tensor, i: usize| self.layers[i].iter().fold(x, |y, r| r.forward_t(&y, train));
        let x = self.bn1.forward_t(&self.conv1.forward(x), train).relu(); // [B, 64, S/2, S/2]
        let x = x.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false); // -> [B, 64, S/4, S/4]
        let f1 = stage(x, 0); // [B, 256, S/4, S/4]
        let f2 = stage(f1, 1); // [B, 512, S/8, S/8]
        let f3 = stage(f2.shallow_clone(), 2); // [B, 1024, S/16, S/16]
        let f4 = stage(f3.shallow_clone(), 3); // [B, 2048, S/32, S/32]
        Features { f2, f3, f4 }
    }
}

impl ResNet {
    /// `x: [B, in_channels, S, S]` → the outputs of layer1..layer4 (`[B, C_i, S/4 … S/32]`),
    /// for the feature pyramid baseline (`crate::model::baselines::fpn`).
    pub fn forward_stages(&self, x: &Tensor, train: bool) -> [Tensor; 4] {
        let x = self.bn1.forward_t(&self.conv1.forward(x), train).relu(); // [B, 64, S/2, S/2]
        let mut y = x.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false); // -> [B, 64, S/4, S/4]
        std::array::from_fn(|i| {
            y = self.layers[i].iter().fold(y.shallow_clone(), |y, r| r.forward_t(&y, train)); // [B, C_i, S/2^(i+2), ...]
            y.shallow_clone()
        })
    }
}
