//! U-Net (Ronneberger, Fischer & Brox, "U-Net: Convolutional Networks for Biomedical Image
//! Segmentation", MICCAI 2015) used as a classifier. The encoder–decoder is the paper's: four
//! 2×2 max-pool downsamplings from 64 to 1024 channels, four 2×2 up-convolutions halving the
//! channels, each concatenated with the encoder map of the same side and followed by two 3×3
//! convolutions. Two common departures, as in the widely used PyTorch port (milesial/
//! Pytorch-UNet): 3×3 convolutions are padded (so output side = input side; the paper crops)
//! and each is followed by BatchNorm before its ReLU. Classification head: the paper's final
//! 1×1 convolution to K class maps, averaged over the image — written as global average pooling
//! of the 64-channel decoder output followed by a linear layer `fc`, which is the same function.
use tch::nn::{self, Module, ModuleT};
use tch::Tensor;

use super::init::{batch_norm2d, conv_kaiming, linear};
use crate::model::pooling::global_avg_pool;

/// Channels of the five encoder levels.
const WIDTHS: [i64; 5] = [64, 128, 256, 512, 1024];

/// Two (3×3 convolution → BatchNorm → ReLU).
#[derive(Debug)]
struct DoubleConv {
    convs: [(nn::Conv2D, nn::BatchNorm); 2],
}

impl DoubleConv {
    fn new(p: nn::Path, c_in: i64, c_out: i64) -> Self {
        let layer = |i: usize, a: i64| {
            (conv_kaiming(&(&p / format!("conv{i}")), a, c_out, 3, 1, 1, false), batch_norm2d(&(&p / format!("bn{i}")), c_out, 1e-5))
        };
        DoubleConv { convs: [layer(1, c_in), layer(2, c_out)] }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.convs.iter().fold(x.shallow_clone(), |y, (c, bn)| bn.forward_t(&c.forward(&y), train).relu()) // [B, C_out, h, w]
    }
}

#[derive(Debug)]
pub struct UNet {
    enc: Vec<DoubleConv>,
    up: Vec<nn::ConvTranspose2D>,
    dec: Vec<DoubleConv>,
    fc: nn::Linear,
}

impl UNet {
    pub fn new(p: &nn::Path, in_channels: i64, num_classes: i64) -> Self {
        let enc = (0..5).map(|i| DoubleConv::new(p / format!("enc{}", i + 1), if i == 0 { in_channels } else { WIDTHS[i - 1] }, WIDTHS[i])).collect();
        // Decoder level i (4, 3, 2, 1) goes from WIDTHS[i] to WIDTHS[i-1] channels.
        let up_cfg = nn::ConvTransposeConfig {
            stride: 2,
            ws_init: crate::model::init::KAIMING_FAN_OUT,
            bs_init: nn::Init::Const(0.0),
            ..Default::default()
        };
        let up = (1..5).rev().map(|i| nn::conv_transpose2d(p / format!("up{i}"), WIDTHS[i], WIDTHS[i - 1], 2, up_cfg)).collect();
        let dec = (1..5).rev().map(|i| DoubleConv::new(p / format!("dec{i}"), 2 * WIDTHS[i - 1], WIDTHS[i - 1])).collect();
        UNet { enc, up, dec, fc: linear(&(p / "fc"), WIDTHS[0], num_classes, true) }
    }

    /// Logits `[B, K]` and the decoder's last map `[B, 64, S, S]`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> (Tensor, Tensor) {
        let pool = |t: &Tensor| t.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false);
        let mut skips = Vec::with_capacity(4);
        let mut y = x.shallow_clone();
        for (i, e) in self.enc.iter().enumerate() {
            if i > 0 {
                y = pool(&y); // [B, C, h, w] -> [B, C, h/2, w/2]
            }
            y = e.forward_t(&y, train); // -> [B, WIDTHS[i], h, w]
            if i < 4 {
                skips.push(y.shallow_clone());
            }
        }
        for (up, dec) in self.up.iter().zip(&self.dec) {
            let skip = skips.pop().expect("one skip per level");
            let u = up.forward(&y); // [B, C, h, w] -> [B, C/2, 2h, 2w]
            y = dec.forward_t(&Tensor::cat(&[skip, u], 1), train); // [B, C, 2h, 2w] -> [B, C/2, 2h, 2w]
        }
        (self.fc.forward(&global_avg_pool(&y)), y) // [B, 64] -> [B, K]
    }
}
