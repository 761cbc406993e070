//! Evaluation: metrics, whole-dataset evaluation, and localisation from attention maps.
pub mod evaluate;
pub mod localize;
pub mod metrics;
pub mod overlap;
pub mod stats;
