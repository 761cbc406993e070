//! The MAG-SD network, the paper's baselines, and their weights. Nothing here knows about files except `weights` and `pth`.
pub mod attention;
pub mod baselines;
pub mod config;
pub mod init;
pub mod magsd;
pub mod maps;
pub mod pooling;
pub mod pth;
pub mod resnet;
pub mod weights;

pub use config::{Arch, Head, NetworkConfig, Scales};
pub use magsd::Network;
pub use maps::{MapGrid, MapKind};

use tch::{Kind, Tensor};

/// What one forward pass returns.
pub struct NetworkOutput {
    /// `[B, K]` class scores (before softmax).
    pub logits: Tensor,
    /// `[B, M, S/32, S/32]` attention maps, all ≥ 0 (7×7 at 224). For a baseline, its
    /// class-agnostic activation map `[B, 1, h, w]` (see `baselines`), or BCNN(Attention)'s
    /// learned maps.
    pub attention: Tensor,
    /// `[B, C4, S/32, S/32]` layer4 features (2048 channels for ResNet50); for a baseline, its
    /// last convolutional feature map.
    pub features: Tensor,
    /// The backbone's stage outputs layer1..layer4 (`[B, C_i, S/4 … S/32]`); for a baseline, its
    /// last feature map alone. Their global averages are what `crate::eval::ood` scores.
    pub stages: Vec<Tensor>,
}

impl NetworkOutput {
    /// The mean over the M maps, `[B, 1, S/32, S/32]`: what evaluation and localisation use.
    pub fn mean_attention(&self) -> Tensor {
        self.attention.to_kind(Kind::Float).mean_dim(&[1i64][..], true, None)
    }
}

