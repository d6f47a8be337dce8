//! `sqdf`: reward fine-tuning of diffusion models with SQDF (arXiv 2512.04559),
//! where the experiment is a Lua script that can be changed while training runs.
//!
//! Rust owns state and speed (tensors, models, sampler, replay buffer, optimiser,
//! checkpoints); Lua owns the experiment's math (reward, loss, discount, priority).
//! See `docs/scripting.md` for the script contract, `docs/layout.md` for the layout and
//! `docs/design.md` for the design.

pub mod blackbox;
pub mod child_process;
pub mod cli;
pub mod data;
pub mod device;
pub mod diffusion;
pub mod distributed;
pub mod eval;
pub mod lora_files;
pub mod models;
pub mod nn;
pub mod process_memory;
pub mod replay;
pub mod rewards;
pub mod rng;
pub mod run_log;
pub mod script;
pub mod tasks;
pub mod tensor_io;
pub mod text;
pub mod torch_legacy;
pub mod train;

/// The dtype of trained variables, states, the buffer and losses; frozen networks may run
/// in half precision on a GPU (`config.dtype`, sd15).
pub const DTYPE: candle_core::DType = candle_core::DType::F32;
