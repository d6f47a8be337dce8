//! `sqdf bench`: times the two hot paths of a run, sampling a batch of trajectories (step 1
//! of an epoch) and one SQDF update (step 2), on the models a script names, and prints
//! them with the machine they ran on. Timings live here, never in tests.

use crate::process_memory as memory;
use crate::run_log::RunLog;
use crate::train::{RunOptions, Trainer};
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
    let (mean, sd) = crate::eval::stats::mean_std(xs).unwrap_or((f64::NAN, f64::NAN));
    json!({ "mean_s": mean, "std_s": sd, "runs": xs })
}

/// `stats` with the work's GFLOP (`nn::flops`, per run), its GFLOP/s at the mean time and
/// that rate's share of the measured peak.
fn stats_with_rate(xs: &[f64], gflop: f64, peak: f64) -> Json {
    let mut s = stats(xs);
    let rate = gflop / s["mean_s"].as_f64().unwrap_or(f64::NAN);
    s["gflop"] = json!(gflop);
    s["gflops"] = json!(rate);
    s["peak_share"] = json!(rate / peak);
    s
}

/// `f`'s result and the operations `nn::flops` counted while it ran, in GFLOP.
fn count_gflop<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
    let before = crate::nn::flops::total();
    let out = f()?;
    Ok((out, (crate::nn::flops::total() - before) as f64 / 1e9))
}

/// Seconds since the Unix epoch: update windows in the output can be matched against a
/// GPU memory log (`nvidia-smi --query-gpu=timestamp,memory.used -lms 50`).
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

pub fn bench(
    script: &Path,
    overrides: Vec<(String, Json)>,
    batch: usize,
    repeats: usize,
    micro: &[usize],
    log: std::sync::Arc<RunLog>,
) -> Result<Json> {
    let dir = std::env::temp_dir().join(format!("sqdf-bench-{}", std::process::id()));
    let mut opts = RunOptions::new(script);
    let device = opts.device.clone();
    opts.overrides = overrides;
    opts.overrides.push(("batch".into(), json!(batch)));
    opts.out = Some(dir.clone());
    opts.watch = false;
    opts.progress = false;
    opts.log = log.clone();
    let start = Instant::now();
    let mut t = Trainer::new(opts)?;
    let build = start.elapsed().as_secs_f64();
    log.info(format!("models built in {build:.1} s"));
    // `micro_batch` is live: each timed update may use its own.
    let micro: Vec<usize> = if micro.is_empty() {
        vec![t.script.config.micro_batch]
    } else {
        micro.to_vec()
    };
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let (peak, isa) = super::bench_peer::peak_gflops(threads);
    log.info(format!(
        "measured peak: {peak:.1} GFLOP/s ({isa} FMA loop on {threads} threads)"
    ));
    let (mut sample_gflop, mut update_gflop) = (0.0, 0.0);
    let mut sample = Vec::new();
    let mut update: Vec<Vec<f64>> = vec![Vec::new(); micro.len()];
    let mut windows = Vec::new();
    for r in 0..=repeats {
        let s = Instant::now();
        let (_, gflop) = count_gflop(|| t.collect())?;
        let a = s.elapsed().as_secs_f64();
        sample_gflop = gflop;
        // The first round warms caches and the allocator; it is not counted (unless it is
        // the only one: `--repeats 0` for sizes where one round is all there is time for).
        let counted = r > 0 || repeats == 0;
        if counted {
            sample.push(a);
        }
        log.info(format!(
            "round {r}: sampling {batch} x {} steps {a:.2} s, {gflop:.1} GFLOP, {:.1} GFLOP/s ({:.1}% of peak)",
            t.models.sampler.steps(),
            gflop / a,
            100.0 * gflop / a / peak
        ));
        for (i, &m) in micro.iter().enumerate() {
            t.script.config.micro_batch = m;
            // Host memory: this update's high-water mark above the resident memory before
            // it (on a GPU the tensors are not here: bench/sd15_gpu.sh reads nvidia-smi).
            let resident = memory::status_kib("VmRSS:") / 1024.0;
            let reset = memory::reset_peak();
            let (t0, s) = (unix_now(), Instant::now());
            let (_, gflop) = count_gflop(|| t.update())?;
            let b = s.elapsed().as_secs_f64();
            if i == 0 {
                update_gflop = gflop;
            }
            let mem_peak = if reset {
                memory::peak_rss_mib() - resident
            } else {
                f64::NAN
            };
            if counted {
                update[i].push(b);
                windows.push(json!({
                    "micro_batch": m,
                    "start_unix": t0,
                    "end_unix": unix_now(),
                    "resident_before_mib": resident,
                    "host_peak_above_mib": mem_peak,
                }));
            }
            log.info(format!(
                "round {r}: one update of {batch} in micro-batches of {m} {b:.2} s, {gflop:.1} GFLOP, {:.1} GFLOP/s, host memory peak {mem_peak:.0} MiB above {resident:.0} MiB (unix {t0:.2} to {:.2})",
                gflop / b,
                unix_now()
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let updates: Vec<Json> = micro
        .iter()
        .zip(&update)
        .map(|(m, u)| json!({ "micro_batch": m, "update": stats(u) }))
        .collect();
    Ok(json!({
        "script": script.display().to_string(),
        "task": t.script.config.task,
        "batch": batch,
        "steps": t.models.sampler.steps(),
        "build_s": build,
        "sampling": stats_with_rate(&sample, sample_gflop, peak),
        "update": stats_with_rate(&update[0], update_gflop, peak),
        "peak_gflops": peak,
        "peak_isa": isa,
        "updates": updates,
        "update_windows": windows,
        "machine": machine(),
        "device": format!("{device:?}"),
    }))
}
