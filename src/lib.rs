//! magsd: train, evaluate, explain and serve MAG-SD chest X-ray classifiers.
//!
//! MAG-SD (Li et al., "Multiscale Attention Guided Network for COVID-19 Diagnosis Using Chest
//! X-ray Images", arXiv 2012.02278) is a ResNet with a multiscale attention generator,
//! bilinear attention pooling, three attention-guided augmentations and a soft-distance
//! regulariser. `../shared/reference/MAGSD-SPEC.md` (cited as "spec §n") says, item by item,
//! where the paper and the authors' code differ and which one we follow.
//!
//! Data flows `data` (decode → preprocess → augment → batches) → `model` → `train` → `eval` →
//! `report`; `cli` is a thin front door over the library, and `serve` (`magsd serve`) its HTTP one.
pub mod bench;
pub mod cli;
pub mod data;
pub mod demo;
pub mod device;
pub mod error;
pub mod files;
pub mod eval;
pub mod model;
pub mod report;
pub mod reproduce;
pub mod rng;
pub mod runfolder;
pub mod train;
pub mod serve;

pub use error::{Error, Result};
