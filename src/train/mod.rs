//! Training MAG-SD: attention-guided augmentation, the soft-distance loss, the optimiser, the
//! training loop with checkpoints, and cross-validation runs.
pub mod attention_aug;
pub mod checkpoint;
pub mod config;
pub mod cuda_graph;
pub mod cv;
pub mod eta;
pub mod loss;
pub mod optim;
pub mod sampling;
pub mod reliability;
pub mod step;
pub mod trainer;
