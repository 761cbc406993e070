//! Multiscale attention generator (paper §3.2, Fig. 3; spec §1.2).
//!
//! Per scale, a 1×1 convolution without bias → BatchNorm (eps 1e-3) → ReLU produces M maps;
//! the 14×14 maps are average-pooled 2×2 and the 28×28 maps 4×4 to 7×7, and the scales are
//! summed (`A = att7 + avgpool2(att14) [+ avgpool4(att28)]`, the paper's "residual
//! connection"). Every map is non-negative. The authors' unused single-scale module has a bias
//! on its convolution; here every scale uses the same bias-free head, since the BatchNorm that
//! follows cancels a bias anyway. As in the reference, which creates these layers itself, the
//! 1×1 convs keep PyTorch's default `nn.Conv2d` initialisation (U(±1/√c_in)) and the BatchNorms
//! start at γ 1, β 0 (`model::init`).
use tch::nn::{self, Module, ModuleT};
use tch::Tensor;

use super::config::{NetworkConfig, Scales};
use super::init::{batch_norm2d, conv_default};
use super::resnet::Features;

#[derive(Debug)]
struct Head {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
}

impl Head {
    fn new(p: nn::Path, c_in: i64, maps: i64) -> Self {
        let conv = conv_default(&p / "conv", c_in, maps, 1, 1, 0, false);
        Head { conv, bn: batch_norm2d(&p / "bn", maps, 1e-3) }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.bn.forward_t(&self.conv.forward(x), train).relu()
    }
}

#[derive(Debug)]
pub struct AttentionGenerator {
    att7: Head,
    att14: Option<Head>,
    att28: Option<Head>,
}

impl AttentionGenerator {
    pub fn new(p: &nn::Path, cfg: &NetworkConfig) -> Self {
        let (c2, c3, c4) = cfg.resnet.channels();
        let m = cfg.num_maps;
        AttentionGenerator {
            att7: Head::new(p / "att7", c4, m),
            att14: cfg.scales.uses_14().then(|| Head::new(p / "att14", c3, m)),
            att28: (cfg.scales == Scales::S7_14_28).then(|| Head::new(p / "att28", c2, m)),
        }
    }

    /// Attention maps `A: [B, M, S/32, S/32]`, all ≥ 0.
    pub fn forward_t(&self, f: &Features, train: bool) -> Tensor {
        Self::combine(&self.forward_scales(f, train))
    }

    /// Each scale's maps before they are pooled and summed: `[att7 [B, M, S/32, S/32],
    /// att14 [B, M, S/16, S/16], att28 [B, M, S/8, S/8]]`, as many as the configuration has
    /// scales. The 14×14 and 28×28 maps are finer localisation maps the network already computes
    /// (`crate::model::maps`).
    pub fn forward_scales(&self, f: &Features, train: bool) -> Vec<Tensor> {
        let mut out = vec![self.att7.forward_t(&f.f4, train)]; // [B, M, 7, 7]
        if let Some(h) = &self.att14 {
            out.push(h.forward_t(&f.f3, train)); // [B, M, 14, 14]
        }
        if let Some(h) = &self.att28 {
            out.push(h.forward_t(&f.f2, train)); // [B, M, 28, 28]
        }
        out
    }

    /// `A = att7 + avgpool(att14) [+ avgpool(att28)]` from [`Self::forward_scales`].
    // Out-of-place adds on purpose: `+=` on a tch tensor is in-place, and autograd still needs
    // the tensor it would overwrite (att7 is the ReLU output its backward reads).
    #[allow(clippy::assign_op_pattern)]
    pub fn combine(scales: &[Tensor]) -> Tensor {
        let mut a = scales[0].shallow_clone(); // [B, M, 7, 7]
        let side = a.size()[2];
        for s in &scales[1..] {
            let k = s.size()[2] / side; // 2 for 14×14, 4 for 28×28
            a = a + s.avg_pool2d([k, k], [k, k], [0, 0], false, true, None); // [B, M, k·7, k·7] -> [B, M, 7, 7]
        }
        a
    }
}

impl AttentionGenerator {
    /// The same generator over any backbone whose three deepest maps (each twice the side of
    /// the next) have `channels = (c2, c3, c4)`: used by BCNN(Attention) on VGG16's conv3_3,
    /// conv4_3 and conv5_3 (`crate::model::baselines::bcnn`).
    pub fn for_channels(p: &nn::Path, channels: (i64, i64, i64), maps: i64, scales: Scales) -> Self {
        let (c2, c3, c4) = channels;
        AttentionGenerator {
            att7: Head::new(p / "att7", c4, maps),
            att14: scales.uses_14().then(|| Head::new(p / "att14", c3, maps)),
            att28: scales.uses_28().then(|| Head::new(p / "att28", c2, maps)),
        }
    }
}
