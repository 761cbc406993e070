//! Everything between files on disk and `[B, 1, H, W]` tensors.
pub mod decode;
pub mod preprocess;
