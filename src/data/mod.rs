//! Everything between files on disk and `[B, 1, H, W]` tensors:
//! `decode` → `preprocess` → `augment` → `loader`, with `dataset` and `split` describing which
//! files there are and how they are divided.
pub mod augment;
pub mod dataset;
pub mod decode;
pub mod dicom;
pub mod gray;
pub mod loader;
pub mod ood_sets;
pub mod prefetch;
pub mod preprocess;
pub mod split;
pub mod synth;
pub mod input_stats;
