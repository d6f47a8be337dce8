//! Training: the SQDF epoch loop (paper Algorithm 1), its optimiser, checkpoints, hot
//! reload between epochs, and the pretraining and distillation of the framework's models.

pub mod adamw;
pub mod along_training;
pub mod bench;
pub mod checkpoint;
pub mod distill;
pub mod evaluate;
pub mod grad_clip;
pub mod hot_reload;
pub mod lora_export;
pub mod memory;
pub mod method_bench;
pub mod metrics;
pub mod peer_bench;
pub mod pretrain;
pub mod reference_loss;
pub mod rollout;
pub mod run_dir;
pub mod smoke_test;
pub mod supervised;
pub mod trainer;

pub use adamw::AdamW;
pub use trainer::{RunOptions, Trainer};
