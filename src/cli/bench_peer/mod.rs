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

/// What one `sqdf bench-peer` call does (its flags).
pub struct Request {
    /// Write fixed inputs and sqdf's outputs to DIR/parity.safetensors.
    pub dump: Option<PathBuf>,
    /// Time the six work items, each `repeats` times after one warm-up.
    pub time: bool,
    pub repeats: usize,
    /// Measure the peak f32 FMA throughput on RAYON_NUM_THREADS threads.
    pub peak: bool,
    /// Where the timings or the peak go as JSON (default: standard output).
    pub json: Option<PathBuf>,
}

/// `sqdf bench-peer`: the parity dump, the timings and the peak, as `what` asks.
pub fn command(script: &Path, batch: usize, what: Request, log: Arc<RunLog>) -> Result<()> {
    if let Some(dir) = what.dump {
        let path = dump(script, batch, &dir, log.clone())?;
        println!("{}", path.display());
    }
    let mut v = serde_json::Map::new();
    if what.peak {
        let threads = std::env::var("RAYON_NUM_THREADS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(rayon::current_num_threads);
        let (gflops, isa) = peak_gflops(threads);
        v.insert("peak_gflops".into(), gflops.into());
        v.insert("peak_isa".into(), isa.into());
        v.insert("peak_threads".into(), threads.into());
    }
    if what.time {
        v.insert("time".into(), time(script, batch, what.repeats, log)?);
    }
    if !v.is_empty() {
        let text = serde_json::to_string_pretty(&v)?;
        match what.json {
            Some(p) => crate::tensor_io::write_file_atomic(&p, text)?,
            None => println!("{text}"),
        }
    }
    Ok(())
}
