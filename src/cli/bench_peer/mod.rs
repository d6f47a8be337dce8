//! `sqdf bench-peer`: sqdf's side of the PyTorch peer benchmark (`bench/peer/`). It writes
//! fixed inputs with sqdf's outputs for the parity check (`dump`), times the six work items
//! the peer times (`time`), and measures the CPU's f32 FMA throughput (`peak_gflops`).
//! `bench/peer/run.sh` runs all three and prints the comparison.

mod parity;
mod peak;
mod work;

pub use parity::dump;
pub use peak::peak_gflops;
pub use work::{time, ITEMS};

use crate::run_log::RunLog;
use crate::train::{RunOptions, Trainer};
use anyhow::Result;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A trainer on `script` with `batch` trajectories and states per update, as `sqdf bench`
/// builds it: no hot reload, no progress bars, its run folder in the temporary directory
/// (returned, for the caller to remove).
fn trainer(script: &Path, batch: usize, log: Arc<RunLog>) -> Result<(Trainer, PathBuf)> {
    let dir = std::env::temp_dir().join(format!("sqdf-bench-peer-{}", std::process::id()));
    let mut opts = RunOptions::new(script);
    opts.overrides.push(("batch".into(), json!(batch)));
    opts.out = Some(dir.clone());
    opts.watch = false;
    opts.progress = false;
    opts.log = log;
    Ok((Trainer::new(opts)?, dir))
}
