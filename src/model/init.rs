//! Layer constructors with PyTorch's and torchvision's initialisation (tch's own defaults differ).
//!
//! tch's defaults are not PyTorch's: `BatchNormConfig::default()` draws γ from U(0, 1) instead of
//! setting it to 1, and `LinearConfig`/`ConvConfig::default()` draw weights Kaiming-uniform with
//! the ReLU gain, a bound of √6/√fan_in instead of PyTorch's 1/√fan_in. Every layer of magsd is
//! built through these functions so that a fresh network starts where the PyTorch reference
//! (`bench_magsd_torch.py`, spec §1) starts:
//!
//! - [`conv_kaiming`]: what torchvision's ResNet constructor applies to each of its own convs,
//!   `kaiming_normal_(mode="fan_out", nonlinearity="relu")`, i.e. N(0, 2/fan_out) with
//!   fan_out = c_out·k²; bias (if any) 0.
//! - [`conv_default`]: PyTorch's `nn.Conv2d` default, `kaiming_uniform_(a=√5)`, i.e. weight and
//!   bias U(±1/√fan_in) with fan_in = c_in·k². The reference uses it for the convs it creates
//!   after torchvision's constructor has run: the replaced 1-channel stem (spec §1.1, model.py:55)
//!   and the attention heads' 1×1 convs (spec §1.2).
//! - [`batch_norm2d`]: `nn.BatchNorm2d`: γ 1, β 0, running mean 0, running variance 1,
//!   momentum 0.1.
//! - [`linear`]: PyTorch's `nn.Linear` default: weight and bias U(±1/√fan_in).
/// Serialises use of libtorch's process-wide generator: whatever seeds it or draws from it
/// (a training run's weight initialisation and its baselines' dropout, the throw-away weights a
/// model file's are copied over in `model::weights::load_model`) holds this lock, so that runs
/// and loads sharing one process do not change each other's draws.
pub static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

use std::borrow::Borrow;

use tch::nn::{self, init::FanInOut, init::NonLinearity, init::NormalOrUniform, Init};

/// The bound 1/√fan_in of PyTorch's default `nn.Linear`/`nn.Conv2d` initialisation
/// (`kaiming_uniform_(a=√5)` gives gain √(1/3) and bound gain·√(3/fan_in) = 1/√fan_in).
fn pytorch_uniform(fan_in: i64) -> Init {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    Init::Uniform { lo: -bound, up: bound }
}

/// torchvision's `kaiming_normal_(mode="fan_out", nonlinearity="relu")`: N(0, 2/fan_out).
pub const KAIMING_FAN_OUT: Init =
    Init::Kaiming { dist: NormalOrUniform::Normal, fan: FanInOut::FanOut, non_linearity: NonLinearity::ReLU };

/// A k×k convolution initialised as torchvision's ResNet/VGG constructors do: weight
/// N(0, 2/fan_out) (`kaiming_normal_`, fan_out, ReLU), bias 0.
pub fn conv_kaiming<'a, P: Borrow<nn::Path<'a>>>(
    p: P,
    c_in: i64,
    c_out: i64,
    k: i64,
    stride: i64,
    padding: i64,
    bias: bool,
) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        stride,
        padding,
        bias,
        ws_init: KAIMING_FAN_OUT,
        bs_init: Init::Const(0.0),
        ..Default::default()
    };
    nn::conv2d(p, c_in, c_out, k, cfg)
}

/// A k×k convolution with PyTorch's `nn.Conv2d` default initialisation: weight and bias
/// U(±1/√fan_in), fan_in = c_in·k².
pub fn conv_default<'a, P: Borrow<nn::Path<'a>>>(
    p: P,
    c_in: i64,
    c_out: i64,
    k: i64,
    stride: i64,
    padding: i64,
    bias: bool,
) -> nn::Conv2D {
    let init = pytorch_uniform(c_in * k * k);
    let cfg = nn::ConvConfig { stride, padding, bias, ws_init: init, bs_init: init, ..Default::default() };
    nn::conv2d(p, c_in, c_out, k, cfg)
}

/// `nn.BatchNorm2d(c, eps)`: γ 1, β 0, running mean 0 and variance 1, momentum 0.1.
pub fn batch_norm2d<'a, P: Borrow<nn::Path<'a>>>(p: P, c: i64, eps: f64) -> nn::BatchNorm {
    let cfg = nn::BatchNormConfig {
        eps,
        momentum: 0.1,
        ws_init: Init::Const(1.0),
        bs_init: Init::Const(0.0),
        ..Default::default()
    };
    nn::batch_norm2d(p, c, cfg)
}

/// `nn.Linear(c_in, c_out, bias)` with PyTorch's default initialisation: weight and bias
/// U(±1/√c_in).
pub fn linear<'a, P: Borrow<nn::Path<'a>>>(p: P, c_in: i64, c_out: i64, bias: bool) -> nn::Linear {
    let init = pytorch_uniform(c_in);
    nn::linear(p, c_in, c_out, nn::LinearConfig { ws_init: init, bs_init: Some(init), bias })
}
