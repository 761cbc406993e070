//! Evaluation: metrics, whole-dataset evaluation, and localisation from attention maps.
pub mod evaluate;
pub mod metrics;
