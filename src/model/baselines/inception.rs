//! InceptionV3 (Szegedy et al., "Rethinking the Inception Architecture for Computer Vision",
//! CVPR 2016) with torchvision's structure and parameter names (`Conv2d_1a_3x3.conv.weight`,
//! `Mixed_5b.branch1x1.bn.running_mean`, `fc.weight`, ...), so torchvision's `inception_v3`
//! checkpoints load by name. The auxiliary classifier (`AuxLogits`) is not built: torchvision
//! only uses it for an extra training loss, and the other baselines train with one loss.
//! Its own input side is 299 (at least 75). Initialisation as torchvision's: convolution and
//! linear weights N(0, 0.1) truncated at ±2 (20σ, so a plain normal here), BatchNorm γ 1 β 0.
use tch::nn::{self, Module, ModuleT};
use tch::Tensor;

use super::init::batch_norm2d;

/// torchvision's `BasicConv2d`: convolution without bias, BatchNorm (eps 0.001), ReLU.
#[derive(Debug)]
struct BasicConv {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
}

impl BasicConv {
    fn new(p: nn::Path, c_in: i64, c_out: i64, k: [i64; 2], stride: i64, pad: [i64; 2]) -> Self {
        let cfg = nn::ConvConfigND::<[i64; 2]> {
            stride: [stride, stride],
            padding: pad,
            bias: false,
            ws_init: nn::Init::Randn { mean: 0.0, stdev: 0.1 },
            ..Default::default()
        };
        BasicConv { conv: nn::conv(&p / "conv", c_in, c_out, k, cfg), bn: batch_norm2d(&(&p / "bn"), c_out, 1e-3) }
    }

    /// A square kernel `k` with stride `s` and padding `pad`.
    fn sq(p: nn::Path, c_in: i64, c_out: i64, k: i64, s: i64, pad: i64) -> Self {
        Self::new(p, c_in, c_out, [k, k], s, [pad, pad])
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.bn.forward_t(&self.conv.forward(x), train).relu()
    }
}

/// A chain of `BasicConv`s.
fn chain(convs: &[BasicConv], x: &Tensor, train: bool) -> Tensor {
    convs.iter().fold(x.shallow_clone(), |y, c| c.forward_t(&y, train))
}

/// 3×3 average pool, stride 1, padding 1 (counting the padding, as `F.avg_pool2d` does).
fn avg3(x: &Tensor) -> Tensor {
    x.avg_pool2d([3, 3], [1, 1], [1, 1], false, true, None)
}

/// 3×3 max pool, stride 2, no padding.
fn max3s2(x: &Tensor) -> Tensor {
    x.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false)
}

/// `InceptionA`: 1×1 | 1×1→5×5 | 1×1→3×3→3×3 | avgpool→1×1; 224 + pool_features channels out.
#[derive(Debug)]
struct InceptionA {
    b1: BasicConv,
    b5: [BasicConv; 2],
    b3: [BasicConv; 3],
    pool: BasicConv,
}

impl InceptionA {
    fn new(p: nn::Path, c_in: i64, pool_features: i64) -> Self {
        InceptionA {
            b1: BasicConv::sq(&p / "branch1x1", c_in, 64, 1, 1, 0),
            b5: [BasicConv::sq(&p / "branch5x5_1", c_in, 48, 1, 1, 0), BasicConv::sq(&p / "branch5x5_2", 48, 64, 5, 1, 2)],
            b3: [
                BasicConv::sq(&p / "branch3x3dbl_1", c_in, 64, 1, 1, 0),
                BasicConv::sq(&p / "branch3x3dbl_2", 64, 96, 3, 1, 1),
                BasicConv::sq(&p / "branch3x3dbl_3", 96, 96, 3, 1, 1),
            ],
            pool: BasicConv::sq(&p / "branch_pool", c_in, pool_features, 1, 1, 0),
        }
    }

    fn forward_t(&self, x: &Tensor, t: bool) -> Tensor {
        let parts = [self.b1.forward_t(x, t), chain(&self.b5, x, t), chain(&self.b3, x, t), self.pool.forward_t(&avg3(x), t)];
        Tensor::cat(&parts, 1) // [B, 64 + 64 + 96 + pool_features, h, w]
    }
}

/// `InceptionB` (grid reduction): 3×3/2 | 1×1→3×3→3×3/2 | maxpool/2; 480 + c_in channels out.
#[derive(Debug)]
struct InceptionB {
    b3: BasicConv,
    b3dbl: [BasicConv; 3],
}

impl InceptionB {
    fn new(p: nn::Path, c_in: i64) -> Self {
        InceptionB {
            b3: BasicConv::sq(&p / "branch3x3", c_in, 384, 3, 2, 0),
            b3dbl: [
                BasicConv::sq(&p / "branch3x3dbl_1", c_in, 64, 1, 1, 0),
                BasicConv::sq(&p / "branch3x3dbl_2", 64, 96, 3, 1, 1),
                BasicConv::sq(&p / "branch3x3dbl_3", 96, 96, 3, 2, 0),
            ],
        }
    }

    fn forward_t(&self, x: &Tensor, t: bool) -> Tensor {
        let parts = [self.b3.forward_t(x, t), chain(&self.b3dbl, x, t), max3s2(x)];
        Tensor::cat(&parts, 1) // [B, 384 + 96 + c_in, (h-3)/2+1, (w-3)/2+1]
    }
}

/// `InceptionC` (factorised 7×7): 1×1 | 1×1→1×7→7×1 | 1×1→7×1→1×7→7×1→1×7 | avgpool→1×1;
/// 768 channels out.
#[derive(Debug)]
struct InceptionC {
    b1: BasicConv,
    b7: [BasicConv; 3],
    b7dbl: [BasicConv; 5],
    pool: BasicConv,
}

impl InceptionC {
    fn new(p: nn::Path, c_in: i64, c7: i64) -> Self {
        let row = |name: &str, a: i64, b: i64| BasicConv::new(&p / name, a, b, [1, 7], 1, [0, 3]);
        let col = |name: &str, a: i64, b: i64| BasicConv::new(&p / name, a, b, [7, 1], 1, [3, 0]);
        InceptionC {
            b1: BasicConv::sq(&p / "branch1x1", c_in, 192, 1, 1, 0),
            b7: [BasicConv::sq(&p / "branch7x7_1", c_in, c7, 1, 1, 0), row("branch7x7_2", c7, c7), col("branch7x7_3", c7, 192)],
            b7dbl: [
                BasicConv::sq(&p / "branch7x7dbl_1", c_in, c7, 1, 1, 0),
                col("branch7x7dbl_2", c7, c7),
                row("branch7x7dbl_3", c7, c7),
                col("branch7x7dbl_4", c7, c7),
                row("branch7x7dbl_5", c7, 192),
            ],
            pool: BasicConv::sq(&p / "branch_pool", c_in, 192, 1, 1, 0),
        }
    }

    fn forward_t(&self, x: &Tensor, t: bool) -> Tensor {
        let parts = [self.b1.forward_t(x, t), chain(&self.b7, x, t), chain(&self.b7dbl, x, t), self.pool.forward_t(&avg3(x), t)];
        Tensor::cat(&parts, 1) // [B, 768, h, w]
    }
}

/// `InceptionD` (grid reduction): 1×1→3×3/2 | 1×1→1×7→7×1→3×3/2 | maxpool/2; 512 + c_in out.
#[derive(Debug)]
struct InceptionD {
    b3: [BasicConv; 2],
    b7x3: [BasicConv; 4],
}

impl InceptionD {
    fn new(p: nn::Path, c_in: i64) -> Self {
        InceptionD {
            b3: [BasicConv::sq(&p / "branch3x3_1", c_in, 192, 1, 1, 0), BasicConv::sq(&p / "branch3x3_2", 192, 320, 3, 2, 0)],
            b7x3: [
                BasicConv::sq(&p / "branch7x7x3_1", c_in, 192, 1, 1, 0),
                BasicConv::new(&p / "branch7x7x3_2", 192, 192, [1, 7], 1, [0, 3]),
                BasicConv::new(&p / "branch7x7x3_3", 192, 192, [7, 1], 1, [3, 0]),
                BasicConv::sq(&p / "branch7x7x3_4", 192, 192, 3, 2, 0),
            ],
        }
    }

    fn forward_t(&self, x: &Tensor, t: bool) -> Tensor {
        let parts = [chain(&self.b3, x, t), chain(&self.b7x3, x, t), max3s2(x)];
        Tensor::cat(&parts, 1) // [B, 320 + 192 + c_in, (h-3)/2+1, (w-3)/2+1]
    }
}

/// `InceptionE` (expanded filter bank): 1×1 | 1×1→{1×3, 3×1} | 1×1→3×3→{1×3, 3×1} |
/// avgpool→1×1; 2048 channels out.
#[derive(Debug)]
struct InceptionE {
    b1: BasicConv,
    b3_1: BasicConv,
    b3_2: [BasicConv; 2],
    b3dbl: [BasicConv; 2],
    b3dbl_3: [BasicConv; 2],
    pool: BasicConv,
}

impl InceptionE {
    fn new(p: nn::Path, c_in: i64) -> Self {
        let pair = |a: &str, b: &str| {
            [BasicConv::new(&p / a, 384, 384, [1, 3], 1, [0, 1]), BasicConv::new(&p / b, 384, 384, [3, 1], 1, [1, 0])]
        };
        InceptionE {
            b1: BasicConv::sq(&p / "branch1x1", c_in, 320, 1, 1, 0),
            b3_1: BasicConv::sq(&p / "branch3x3_1", c_in, 384, 1, 1, 0),
            b3_2: pair("branch3x3_2a", "branch3x3_2b"),
            b3dbl: [BasicConv::sq(&p / "branch3x3dbl_1", c_in, 448, 1, 1, 0), BasicConv::sq(&p / "branch3x3dbl_2", 448, 384, 3, 1, 1)],
            b3dbl_3: pair("branch3x3dbl_3a", "branch3x3dbl_3b"),
            pool: BasicConv::sq(&p / "branch_pool", c_in, 192, 1, 1, 0),
        }
    }

    fn forward_t(&self, x: &Tensor, t: bool) -> Tensor {
        let a = self.b3_1.forward_t(x, t); // [B, 384, h, w]
        let a = Tensor::cat(&[self.b3_2[0].forward_t(&a, t), self.b3_2[1].forward_t(&a, t)], 1); // [B, 768, h, w]
        let d = chain(&self.b3dbl, x, t); // [B, 384, h, w]
        let d = Tensor::cat(&[self.b3dbl_3[0].forward_t(&d, t), self.b3dbl_3[1].forward_t(&d, t)], 1); // [B, 768, h, w]
        Tensor::cat(&[self.b1.forward_t(x, t), a, d, self.pool.forward_t(&avg3(x), t)], 1) // [B, 2048, h, w]
    }
}

#[derive(Debug)]
pub struct InceptionV3 {
    stem: [BasicConv; 5],
    mixed_5: [InceptionA; 3],
    mixed_6a: InceptionB,
    mixed_6: [InceptionC; 4],
    mixed_7a: InceptionD,
    mixed_7: [InceptionE; 2],
    fc: nn::Linear,
}

impl InceptionV3 {
    pub fn new(p: &nn::Path, in_channels: i64, num_classes: i64) -> Self {
        let fc_cfg = nn::LinearConfig {
            ws_init: nn::Init::Randn { mean: 0.0, stdev: 0.1 },
            // torchvision leaves the bias at nn.Linear's default, U(±1/√2048).
            bs_init: Some(nn::Init::Uniform { lo: -1.0 / 2048f64.sqrt(), up: 1.0 / 2048f64.sqrt() }),
            bias: true,
        };
        InceptionV3 {
            stem: [
                BasicConv::sq(p / "Conv2d_1a_3x3", in_channels, 32, 3, 2, 0),
                BasicConv::sq(p / "Conv2d_2a_3x3", 32, 32, 3, 1, 0),
                BasicConv::sq(p / "Conv2d_2b_3x3", 32, 64, 3, 1, 1),
                BasicConv::sq(p / "Conv2d_3b_1x1", 64, 80, 1, 1, 0),
                BasicConv::sq(p / "Conv2d_4a_3x3", 80, 192, 3, 1, 0),
            ],
            mixed_5: [InceptionA::new(p / "Mixed_5b", 192, 32), InceptionA::new(p / "Mixed_5c", 256, 64), InceptionA::new(p / "Mixed_5d", 288, 64)],
            mixed_6a: InceptionB::new(p / "Mixed_6a", 288),
            mixed_6: [
                InceptionC::new(p / "Mixed_6b", 768, 128),
                InceptionC::new(p / "Mixed_6c", 768, 160),
                InceptionC::new(p / "Mixed_6d", 768, 160),
                InceptionC::new(p / "Mixed_6e", 768, 192),
            ],
            mixed_7a: InceptionD::new(p / "Mixed_7a", 768),
            mixed_7: [InceptionE::new(p / "Mixed_7b", 1280), InceptionE::new(p / "Mixed_7c", 2048)],
            fc: nn::linear(p / "fc", 2048, num_classes, fc_cfg),
        }
    }

    /// Logits `[B, K]` and Mixed_7c's features `[B, 2048, 8, 8]` (at 299).
    pub fn forward_t(&self, x: &Tensor, t: bool) -> (Tensor, Tensor) {
        let s = &self.stem;
        let y = s[0].forward_t(x, t); // [B, 32, 149, 149]
        let y = s[1].forward_t(&y, t); // [B, 32, 147, 147]
        let y = s[2].forward_t(&y, t); // [B, 64, 147, 147]
        let y = max3s2(&y); // [B, 64, 73, 73]
        let y = s[3].forward_t(&y, t); // [B, 80, 73, 73]
        let y = s[4].forward_t(&y, t); // [B, 192, 71, 71]
        let y = max3s2(&y); // [B, 192, 35, 35]
        let y = self.mixed_5.iter().fold(y, |y, m| m.forward_t(&y, t)); // [B, 288, 35, 35]
        let y = self.mixed_6a.forward_t(&y, t); // [B, 768, 17, 17]
        let y = self.mixed_6.iter().fold(y, |y, m| m.forward_t(&y, t)); // [B, 768, 17, 17]
        let y = self.mixed_7a.forward_t(&y, t); // [B, 1280, 8, 8]
        let f = self.mixed_7.iter().fold(y, |y, m| m.forward_t(&y, t)); // [B, 2048, 8, 8]
        let pooled = f.adaptive_avg_pool2d([1, 1]).flatten(1, -1).dropout(0.5, t); // [B, 2048]
        (self.fc.forward(&pooled), f) // [B, K]
    }
}
