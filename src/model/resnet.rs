//! ResNet backbones with torchvision's structure and parameter names (`conv1.weight`,
//! `layer1.0.conv1.weight`, `layer1.0.downsample.0.weight`, ...), so torchvision checkpoints load
//! without a renaming table. He et al., "Deep Residual Learning for Image Recognition" (2015);
//! code follows `torchvision/models/resnet.py` (stride on the 3×3 conv of the bottleneck, "ResNet
//! v1.5").
use tch::nn::{self, Module, ModuleT};
use tch::Tensor;

use super::config::{Block, ResNetConfig};
use super::init::{batch_norm2d, conv_default, conv_kaiming};

/// torchvision's BatchNorm ε.
const BN_EPS: f64 = 1e-5;

/// A bias-free k×k conv as torchvision builds it (`conv3x3`/`conv1x1`), with torchvision's
/// initialisation: Kaiming-normal, fan-out, ReLU.
fn conv(p: nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64) -> nn::Conv2D {
    conv_kaiming(p, c_in, c_out, k, stride, k / 2, false)
}

/// A bias-free convolution followed by BatchNorm (`eps` is the BatchNorm's, which tch keeps
/// private). [`ConvBn::fold`] merges the two for inference.
#[derive(Debug)]
struct ConvBn {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
    eps: f64,
    /// True once the BatchNorm's running statistics and affine map are in `conv`'s weight and bias.
    folded: bool,
}

impl ConvBn {
    fn new(conv: nn::Conv2D, bn: nn::BatchNorm, eps: f64) -> Self {
        ConvBn { conv, bn, eps, folded: false }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        if self.folded {
            debug_assert!(!train, "a network with folded BatchNorm is for inference only");
            return self.conv.forward(x);
        }
        self.bn.forward_t(&self.conv.forward(x), train)
    }

    /// Eval-mode BatchNorm after a convolution is an affine map per output channel:
    /// `γ·(Wx + b − μ)/√(σ² + ε) + β`, the same as a convolution with weight `W·s` and bias
    /// `(b − μ)·s + β`, where `s = γ/√(σ² + ε)` (exact in real arithmetic; in float32 the result
    /// differs by rounding). The new weight and bias replace the layer's handles, not the
    /// variables in the store, which keep the trained values.
    fn fold(&mut self) {
        if self.folded {
            return;
        }
        tch::no_grad(|| {
            let bn = &self.bn;
            let c = bn.running_var.size()[0];
            let ones = || Tensor::ones([c], (bn.running_var.kind(), bn.running_var.device()));
            let gamma = bn.ws.as_ref().map_or_else(ones, |w| w.shallow_clone());
            let beta = bn.bs.as_ref().map_or_else(|| ones() * 0.0, |b| b.shallow_clone());
            let scale = &gamma / (&bn.running_var + self.eps).sqrt(); // [C]
            let bias = self.conv.bs.as_ref().map_or_else(|| ones() * 0.0, |b| b.shallow_clone());
            let new_w = &self.conv.ws * scale.view([-1, 1, 1, 1]); // [C, C_in, k, k]
            let new_b = (bias - &bn.running_mean) * &scale + beta; // [C]
            self.conv.ws = new_w;
            self.conv.bs = Some(new_b);
        });
        self.folded = true;
    }
}

#[derive(Debug)]
struct Residual {
    convs: Vec<ConvBn>,
    downsample: Option<ConvBn>,
}

impl Residual {
    fn new(p: &nn::Path, block: Block, c_in: i64, planes: i64, stride: i64) -> Self {
        let c_out = planes * block.expansion();
        let layer = |i: usize, a: i64, b: i64, k: i64, s: i64| {
            ConvBn::new(conv(p / format!("conv{i}"), a, b, k, s), batch_norm2d(p / format!("bn{i}"), b, BN_EPS), BN_EPS)
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
            ConvBn::new(conv(&d / 0, c_in, c_out, 1, stride), batch_norm2d(&d / 1, c_out, BN_EPS), BN_EPS)
        });
        Residual { convs, downsample }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let last = self.convs.len() - 1;
        let mut y = x.shallow_clone();
        for (i, cb) in self.convs.iter().enumerate() {
            y = cb.forward_t(&y, train);
            if i < last {
                y = y.relu();
            }
        }
        let shortcut = match &self.downsample {
            Some(cb) => cb.forward_t(x, train),
            None => x.shallow_clone(),
        };
        (y + shortcut).relu()
    }
}

/// The backbone without its average pool and fully connected layer.
#[derive(Debug)]
pub struct ResNet {
    stem: ConvBn,
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
        let stem = ConvBn::new(conv1, batch_norm2d(p / "bn1", cfg.stem_width, BN_EPS), BN_EPS);
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
        ResNet { stem, layers }
    }

    /// `x: [B, in_channels, S, S]` → the layer2, layer3 and layer4 feature maps.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Features {
        let stage = |x: Tensor, i: usize| self.layers[i].iter().fold(x, |y, r| r.forward_t(&y, train));
        let x = self.stem.forward_t(x, train).relu(); // [B, 64, S/2, S/2]
        let x = x.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false); // -> [B, 64, S/4, S/4]
        let f1 = stage(x, 0); // [B, 256, S/4, S/4]
        let f2 = stage(f1, 1); // [B, 512, S/8, S/8]
        let f3 = stage(f2.shallow_clone(), 2); // [B, 1024, S/16, S/16]
        let f4 = stage(f3.shallow_clone(), 3); // [B, 2048, S/32, S/32]
        Features { f2, f3, f4 }
    }
}

impl ResNet {
    /// Folds every BatchNorm into the convolution before it ([`ConvBn::fold`]), for inference:
    /// one pass over each activation fewer. Afterwards the backbone runs in eval mode only
    /// (`train` must be false). Returns the number of BatchNorms folded.
    pub fn fold_batch_norm(&mut self) -> usize {
        let mut n = 0;
        let all = std::iter::once(&mut self.stem)
            .chain(self.layers.iter_mut().flatten().flat_map(|r| r.convs.iter_mut().chain(r.downsample.iter_mut())));
        for cb in all {
            cb.fold();
            n += 1;
        }
        n
    }

    /// `x: [B, in_channels, S, S]` → the outputs of layer1..layer4 (`[B, C_i, S/4 … S/32]`),
    /// for the feature pyramid baseline (`crate::model::baselines::fpn`).
    pub fn forward_stages(&self, x: &Tensor, train: bool) -> [Tensor; 4] {
        let x = self.stem.forward_t(x, train).relu(); // [B, 64, S/2, S/2]
        let mut y = x.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false); // -> [B, 64, S/4, S/4]
        std::array::from_fn(|i| {
            y = self.layers[i].iter().fold(y.shallow_clone(), |y, r| r.forward_t(&y, train)); // [B, C_i, S/2^(i+2), ...]
            y.shallow_clone()
        })
    }
}
