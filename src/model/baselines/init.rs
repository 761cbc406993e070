//! PyTorch/torchvision initialisation for the baselines: convolutions Kaiming-normal (fan-out,
//! ReLU), BatchNorm γ = 1 and β = 0, Linear layers PyTorch's default U(±1/√fan_in).
//!
//! Private copies of the helpers another branch adds as `crate::model::init`, with the same
//! names and signatures; the lead merges them into that module. Why not tch's defaults:
//! `BatchNormConfig::default()` draws γ from U(0, 1), and tch's linear weight bound is
//! √(6/fan_in), √6 times PyTorch's.
use tch::nn;

/// A 2-D convolution with torchvision's init: weight Kaiming-normal with fan-out for ReLU
/// (std √(2 / (c_out·k·k))), bias (when asked for) zero as torchvision's VGG sets it.
pub fn conv_kaiming(p: &nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64, padding: i64, bias: bool) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        stride,
        padding,
        bias,
        ws_init: nn::Init::Kaiming {
            dist: nn::init::NormalOrUniform::Normal,
            fan: nn::init::FanInOut::FanOut,
            non_linearity: nn::init::NonLinearity::ReLU,
        },
        bs_init: nn::Init::Const(0.0),
        ..Default::default()
    };
    nn::conv2d(p, c_in, c_out, k, cfg)
}

/// BatchNorm2d as PyTorch builds it: γ = 1, β = 0, momentum 0.1, the given eps.
pub fn batch_norm2d(p: &nn::Path, c: i64, eps: f64) -> nn::BatchNorm {
    let cfg = nn::BatchNormConfig {
        eps,
        momentum: 0.1,
        ws_init: nn::Init::Const(1.0),
        bs_init: nn::Init::Const(0.0),
        ..Default::default()
    };
    nn::batch_norm2d(p, c, cfg)
}

/// `nn.Linear`'s default: weight and bias U(±1/√fan_in).
pub fn linear(p: &nn::Path, c_in: i64, c_out: i64, bias: bool) -> nn::Linear {
    let b = 1.0 / (c_in as f64).sqrt();
    let cfg = nn::LinearConfig {
        ws_init: nn::Init::Uniform { lo: -b, up: b },
        bs_init: bias.then_some(nn::Init::Uniform { lo: -b, up: b }),
        bias,
    };
    nn::linear(p, c_in, c_out, cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn batch_norm_starts_at_identity_and_linear_at_pytorch_bounds() {
        let vs = nn::VarStore::new(Device::Cpu);
        let bn = batch_norm2d(&(vs.root() / "bn"), 16, 1e-5);
        assert_eq!(bn.ws.as_ref().unwrap().min().double_value(&[]), 1.0);
        assert_eq!(bn.bs.as_ref().unwrap().abs().max().double_value(&[]), 0.0);
        let l = linear(&(vs.root() / "fc"), 400, 10, true);
        let bound = l.ws.abs().max().double_value(&[]);
        assert!(bound <= 0.05 && bound > 0.04, "{bound}");
        let c = conv_kaiming(&(vs.root() / "c"), 8, 32, 3, 1, 1, false);
        let std = c.ws.std(true).double_value(&[]);
        let want = (2.0f64 / (32.0 * 9.0)).sqrt();
        assert!((std - want).abs() < 0.15 * want, "{std} vs {want}");
        let _ = Kind::Float;
    }
}
