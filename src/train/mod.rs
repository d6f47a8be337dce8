//! Training: the SQDF epoch loop (paper Algorithm 1), its optimiser, checkpoints, hot
//! reload between epochs, and the pretraining and distillation of the framework's models.

pub mod adamw;
pub mod along_training;
pub mod checkpoint;
pub mod distill;
pub mod grad_clip;
pub mod lora_export;
pub mod metrics;
pub mod pretrain;
pub mod rollout;
pub mod run_dir;
pub mod smoke_test;
pub mod supervised;
pub mod trainer;

pub use adamw::AdamW;
pub use trainer::{RunOptions, Trainer};
