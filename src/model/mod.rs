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

pub use config::{Arch, Head, MagSdConfig, Scales};
pub use magsd::{MagSd, MagSdOutput};
pub use maps::MapKind;
