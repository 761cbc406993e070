//! Evaluation: metrics, whole-dataset evaluation, localisation from attention maps, how far to
//! trust an answer (calibration, operating points, out-of-distribution detection), and the
//! shortcut audit (within-source metrics, linear probes of the source).
pub mod calibration;
pub mod evaluate;
pub mod localize;
pub mod saliency;
pub mod logistic;
pub mod metrics;
pub mod ood;
pub mod ood_eval;
pub mod operating_point;
pub mod overlap;
pub mod predictor;
pub mod probe;
pub mod reliability;
pub mod results;
pub mod stats;
pub mod within_source;
