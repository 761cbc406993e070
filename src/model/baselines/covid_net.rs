//! COVID-Net (Wang, Lin & Wong, "COVID-Net: a tailored deep convolutional neural network design
//! for detection of COVID-19 cases from chest X-ray images", Sci. Rep. 10, 19549, 2020).
//!
//! What the paper states and is followed here: the network is built from PEPX modules
//! (projection–expansion–projection–extension: 1×1 first-stage projection, 1×1 expansion, 3×3
//! depth-wise convolution, 1×1 second-stage projection, 1×1 extension), in four stages of 3, 4,
//! 6 and 3 modules after a 7×7 stem, with "selective long-range connectivity": each stage has a
//! 1×1 projection shortcut, and every module takes the sum of the shortcut and of all earlier
//! modules' outputs of its stage; the next stage reads that sum, max-pooled by 2.
//!
//! What the paper does not state, and where it comes from: the channel widths (stem 56;
//! stages 56, 112, 216, 424), the projection ratios (C/2 and 3C/4) and the head (flatten, FC 512,
//! ReLU, FC K) follow the public PyTorch port `iliasprc/COVIDNet` (`model/covidnet.py`), whose
//! "large" variant we correct where it cannot run (a 56→112 shortcut added to 56-channel maps)
//! or repeats an input (`pepx32` twice for stage 4). The port has no activation inside PEPX,
//! which makes each module linear; here every convolution of a module is followed by ReLU and
//! the extension by BatchNorm and ReLU. The authors' TensorFlow graph (lindawangg/COVID-Net) is
//! published only as trained checkpoints, so no torchvision-style weight import exists.
use tch::nn::{self, Module, ModuleT};
use tch::Tensor;

use super::init::{batch_norm2d, conv_kaiming, linear};

/// Stem output channels and the channels of stages 1–4.
const STEM: i64 = 56;
const WIDTHS: [i64; 4] = [56, 112, 216, 424];
/// PEPX modules per stage.
const DEPTHS: [usize; 4] = [3, 4, 6, 3];

/// A 3×3 depth-wise convolution (one filter per channel), Kaiming-normal fan-out init.
fn depthwise(p: &nn::Path, c: i64) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        padding: 1,
        groups: c,
        ws_init: crate::model::init::KAIMING_FAN_OUT,
        bs_init: nn::Init::Const(0.0),
        ..Default::default()
    };
    nn::conv2d(p, c, c, 3, cfg)
}

#[derive(Debug)]
struct Pepx {
    proj1: nn::Conv2D,
    expand: nn::Conv2D,
    dw: nn::Conv2D,
    proj2: nn::Conv2D,
    extend: nn::Conv2D,
    bn: nn::BatchNorm,
}

impl Pepx {
    fn new(p: nn::Path, c_in: i64, c_out: i64) -> Self {
        let (half, three_q) = (c_in / 2, 3 * c_in / 4);
        Pepx {
            proj1: conv_kaiming(&(&p / "proj1"), c_in, half, 1, 1, 0, true),
            expand: conv_kaiming(&(&p / "expand"), half, three_q, 1, 1, 0, true),
            dw: depthwise(&(&p / "dw"), three_q),
            proj2: conv_kaiming(&(&p / "proj2"), three_q, half, 1, 1, 0, true),
            extend: conv_kaiming(&(&p / "extend"), half, c_out, 1, 1, 0, true),
            bn: batch_norm2d(&(&p / "bn"), c_out, 1e-5),
        }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let y = self.proj1.forward(x).relu(); // [B, C/2, h, w]
        let y = self.expand.forward(&y).relu(); // [B, 3C/4, h, w]
        let y = self.dw.forward(&y).relu(); // [B, 3C/4, h, w]
        let y = self.proj2.forward(&y).relu(); // [B, C/2, h, w]
        self.bn.forward_t(&self.extend.forward(&y), train).relu() // [B, C_out, h, w]
    }
}

#[derive(Debug)]
struct Stage {
    shortcut: nn::Conv2D,
    modules: Vec<Pepx>,
}

impl Stage {
    /// Input `[B, C_in, h, w]` → the stage's sum `[B, C, h, w]` (shortcut + every module).
    // Out-of-place adds on purpose: `+=` on a tch tensor is in-place, and the previous sum is
    // the input the next module's convolution keeps for its backward pass.
    #[allow(clippy::assign_op_pattern)]
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut sum = self.shortcut.forward(x); // [B, C, h, w]
        for (j, m) in self.modules.iter().enumerate() {
            let input = if j == 0 { x.shallow_clone() } else { sum.shallow_clone() };
            sum = sum + m.forward_t(&input, train); // [B, C, h, w]
        }
        sum
    }
}

#[derive(Debug)]
pub struct CovidNet {
    conv1: nn::Conv2D,
    stages: Vec<Stage>,
    fc1: nn::Linear,
    classifier: nn::Linear,
}

impl CovidNet {
    /// `image_size` fixes the flattened size of the last stage (`424 · (S/32)²`).
    pub fn new(p: &nn::Path, in_channels: i64, num_classes: i64, image_size: i64) -> Self {
        let mut c_in = STEM;
        let stages = (0..4)
            .map(|s| {
                let sp = p / format!("stage{}", s + 1);
                let c = WIDTHS[s];
                let modules = (0..DEPTHS[s]).map(|j| Pepx::new(&sp / format!("pepx{}", j + 1), if j == 0 { c_in } else { c }, c)).collect();
                let stage = Stage { shortcut: conv_kaiming(&(&sp / "shortcut"), c_in, c, 1, 1, 0, true), modules };
                c_in = c;
                stage
            })
            .collect();
        let side = image_size / 32;
        CovidNet {
            conv1: conv_kaiming(&(p / "conv1"), in_channels, STEM, 7, 2, 3, true),
            stages,
            fc1: linear(&(p / "fc1"), WIDTHS[3] * side * side, 512, true),
            classifier: linear(&(p / "classifier"), 512, num_classes, true),
        }
    }

    /// Logits `[B, K]` and the last stage's sum `[B, 424, S/32, S/32]`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> (Tensor, Tensor) {
        let pool2 = |t: &Tensor| t.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false);
        let mut y = pool2(&self.conv1.forward(x).relu()); // [B, 56, S/2, S/2] -> [B, 56, S/4, S/4]
        for (s, stage) in self.stages.iter().enumerate() {
            if s > 0 {
                y = pool2(&y); // [B, C, h, w] -> [B, C, h/2, w/2]
            }
            y = stage.forward_t(&y, train); // -> [B, WIDTHS[s], h, w]
        }
        let h = self.fc1.forward(&y.flatten(1, -1)).relu(); // [B, 424·(S/32)²] -> [B, 512]
        (self.classifier.forward(&h), y) // [B, K]
    }
}
