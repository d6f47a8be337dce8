//! A process-wide count of the floating-point operations done by this project's layers:
//! convolutions (forward, input and kernel gradients), linear layers (forward, the input
//! gradient, and on the CPU the weight gradient) and attention's products (forward and
//! backward). These
//! are the operations torch's `FlopCounterMode` counts (matmuls, convolutions, attention);
//! a multiply-add counts 2, elementwise work 0. `sqdf bench` reads it around each hot path
//! to report GFLOP/s. Not counted: candle's own matmul backward for trainable linear
//! weights off the CPU and for LoRA's rank-r factors (a tiny share).

use std::sync::atomic::{AtomicU64, Ordering};

static COUNT: AtomicU64 = AtomicU64::new(0);

/// Adds `n` operations.
pub fn add(n: usize) {
    COUNT.fetch_add(n as u64, Ordering::Relaxed);
}

/// Operations counted since the process started.
pub fn total() -> u64 {
    COUNT.load(Ordering::Relaxed)
}
