//! Human-facing output: figures, attention overlays, and report.md / report.html for
//! evaluations and training runs.
pub mod audit;
pub mod document;
pub mod evaluation;
pub mod overlay;
pub mod plots;
pub mod reliability_plot;
pub mod run;

/// The intended-use statement every report carries (and the README states).
pub const INTENDED_USE: &str = "Research use only; not for diagnosis.";
