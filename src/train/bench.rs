//! `sqdf bench`: times the two hot paths of a run, sampling a batch of trajectories (step 1
//! of an epoch) and one SQDF update (step 2), on the models a script names, and prints
//! them with the machine they ran on. Timings live here, never in tests.

use super::{RunOptions, Trainer};
use crate::run_log::RunLog;
use anyhow::Result;
use serde_json::{json, Value as Json};
use std::path::Path;
use std::time::Instant;

/// The CPU's model name and the threads candle uses.
pub fn machine() -> Json {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "threads": std::env::var("RAYON_NUM_THREADS").ok(),
    })
}

fn stats(xs: &[f64]) -> Json {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let sd = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
    json!({ "mean_s": mean, "std_s": sd, "runs": xs })
}

pub fn bench(
    script: &Path,
    overrides: Vec<(String, Json)>,
    batch: usize,
    repeats: usize,
    log: std::sync::Arc<RunLog>,
) -> Result<Json> {
    let dir = std::env::temp_dir().join(format!("sqdf-bench-{}", std::process::id()));
    let mut opts = RunOptions::new(script);
    opts.overrides = overrides;
    opts.overrides.push(("batch".into(), json!(batch)));
    opts.out = Some(dir.clone());
    opts.watch = false;
    opts.progress = false;
    opts.log = log.clone();
    let mut t = Trainer::new(opts)?;
    let (mut sample, mut update) = (Vec::new(), Vec::new());
    for r in 0..=repeats {
        let s = Instant::now();
        t.collect()?;
        let a = s.elapsed().as_secs_f64();
        let s = Instant::now();
        t.update()?;
        let b = s.elapsed().as_secs_f64();
        // The first round warms caches and the allocator; it is not counted.
        if r > 0 {
            sample.push(a);
            update.push(b);
        }
        log.info(format!(
            "round {r}: sampling {batch} x {} steps {a:.2} s, one update of {batch} {b:.2} s",
            t.models.sampler.steps()
        ));
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(json!({
        "script": script.display().to_string(),
        "task": t.script.config.task,
        "batch": batch,
        "steps": t.models.sampler.steps(),
        "sampling": stats(&sample),
        "update": stats(&update),
        "machine": machine(),
    }))
}
