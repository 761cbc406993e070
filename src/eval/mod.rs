//! Evaluation: metrics, whole-dataset evaluation, localisation from attention maps, and how far
//! to trust an answer (calibration, operating points, out-of-distribution detection).
pub mod calibration;
pub mod evaluate;
pub mod localize;
pub mod metrics;
pub mod ood;
pub mod ood_eval;
pub mod operating_point;
pub mod overlap;
pub mod reliability;
pub mod stats;
