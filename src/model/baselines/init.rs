//! The baselines use the same PyTorch/torchvision initialisation as MA-Net: see
//! `crate::model::init` (convolutions Kaiming-normal fan-out, BatchNorm γ = 1 and β = 0,
//! Linear layers PyTorch's default U(±1/√fan_in)).
pub use crate::model::init::{batch_norm2d, conv_kaiming, linear};
