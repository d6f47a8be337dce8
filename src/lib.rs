//! `sqdf`: reward fine-tuning of diffusion models with SQDF (arXiv 2512.04559),
//! where the experiment is a Lua script that can be changed while training runs.
//!
//! Rust owns state and speed (tensors, models, sampler, replay buffer, optimiser,
//! checkpoints); Lua owns the experiment's math (reward, loss, discount, priority).
//! See `docs/scripting.md` for the script contract, `docs/layout.md` for the layout and
//! `docs/DESIGN.md` for the design.

pub mod blackbox;
pub mod child_process;
pub mod compare;
pub mod data;
pub mod device;
pub mod diffusion;
pub mod eval;
pub mod lora_files;
pub mod models;
pub mod nn;
pub mod replay;
pub mod rewards;
pub mod rng;
pub mod run_log;
pub mod script;
pub mod tasks;
pub mod tensor_io;
pub mod text;
pub mod train;

/// mimalloc for every program linking the crate (the CLI, the tests, the benches): glibc's
/// allocator maps and unmaps every mid-sized tensor, a third of the CPU time of a run.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The dtype of trained variables, states, the buffer and losses; frozen networks may run
/// in half precision on a GPU (`config.dtype`, sd15).
pub const DTYPE: candle_core::DType = candle_core::DType::F32;

/// Tells mimalloc never to return freed memory to the OS: the same large tensors are
/// allocated every step, and each fresh mapping is zeroed page by page by the kernel
/// (a third of a UNet forward). `MIMALLOC_PURGE_DELAY` set by the user wins.
pub fn keep_freed_memory() {
    /// `mi_option_purge_delay` in mimalloc.h (the crate has no constant for it).
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: a plain FFI call; mimalloc stores options atomically, at any time.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}
