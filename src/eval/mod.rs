//! Evaluation: metrics, whole-dataset evaluation, localisation from attention maps, and the
//! shortcut audit (within-source metrics, linear probes of the source).
pub mod evaluate;
pub mod localize;
pub mod logistic;
pub mod metrics;
pub mod overlap;
pub mod probe;
pub mod stats;
pub mod within_source;
