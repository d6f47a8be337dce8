//! `sqdf bench-methods`: wall time and peak memory of one update of each method (SQDF,
//! DRaFT-K, ReFL, DDPO and the KL variants) on the digits model, as the number of sampling
//! steps T and DRaFT's K grow. SQDF's update touches one step whatever T is; DRaFT-K keeps
//! the graph of K steps; DDPO trains a fixed fraction of the T steps.
//!
//! Each case runs in its own process (`sqdf bench-update`): the buffer is filled with random
//! trajectories (an update's cost does not depend on their values), the kernel's high-water
//! mark is reset, and the first update's peak above the resident baseline is its memory.
//! The time is a second update's, once caches are warm. A benchmark, never a test.

use crate::process_memory::status_kib;
use crate::run_log::RunLog;
use crate::train::{RunOptions, Trainer};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value as Json};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

/// One case, in this process: two updates on `batch` random trajectories.
pub fn bench_update(
    script: &Path,
    overrides: Vec<(String, Json)>,
    log: Arc<RunLog>,
) -> Result<Json> {
    let dir = std::env::temp_dir().join(format!("sqdf-bench-update-{}", std::process::id()));
    let mut opts = RunOptions::new(script);
    opts.overrides = overrides;
    opts.out = Some(dir.clone());
    opts.watch = false;
    opts.progress = false;
    opts.log = log;
    let mut t = Trainer::new(opts)?;
    let cfg = t.script.config.clone();
    let steps = t.models.sampler.steps();
    let per: usize = (steps + 1) * t.models.state_shape.iter().product::<usize>();
    let mut rng = crate::rng::seeded(0);
    for b in 0..cfg.batch.max(1) {
        let states =
            crate::rng::randn(&mut rng, per, &candle_core::Device::Cpu)?.to_vec1::<f32>()?;
        let slot = t
            .buffer
            .push(&states, (b % 10) as u32, b as f32 / cfg.batch as f32)?;
        t.buffer.set_log_probs(slot, &vec![0.0; steps])?;
    }
    let baseline = status_kib("VmRSS:");
    let reset = crate::process_memory::reset_peak();
    let s = Instant::now();
    t.update()?;
    let first = s.elapsed().as_secs_f64();
    let peak = status_kib("VmHWM:");
    let s = Instant::now();
    t.update()?;
    let second = s.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    if !reset {
        bail!("cannot reset the memory high-water mark (/proc/self/clear_refs); peak memory is not measurable here");
    }
    Ok(json!({
        "steps": steps,
        "batch": cfg.batch,
        "first_update_s": first,
        "update_s": second,
        "baseline_mib": baseline / 1024.0,
        "update_peak_mib": (peak - baseline) / 1024.0,
    }))
}

/// (method, script, extra overrides); T is added per case.
const METHODS: &[(&str, &str, &[&str])] = &[
    ("SQDF", "scripts/digits_sqdf.lua", &[]),
    (
        "SQDF w/o CM (Tweedie)",
        "scripts/digits_sqdf.lua",
        &["x0=tweedie"],
    ),
    (
        "DRaFT-1",
        "scripts/baselines/digits_draft.lua",
        &["params.K=1"],
    ),
    ("DRaFT+KL", "scripts/baselines/digits_draft_kl.lua", &[]),
    ("ReFL", "scripts/baselines/digits_refl.lua", &[]),
    ("DDPO", "scripts/baselines/digits_ddpo.lua", &[]),
    ("DDPO+KL", "scripts/baselines/digits_ddpo_kl.lua", &[]),
];

/// Every case in a child process; returns the rows and prints a Markdown table.
pub fn bench_methods(exe: &Path, root: &Path, batch: usize, log: &RunLog) -> Result<Json> {
    let mut cases: Vec<(String, String, Vec<String>)> = Vec::new();
    for (name, script, extra) in METHODS {
        for t in [10, 25, 50] {
            let mut o: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
            o.push(format!("steps={t}"));
            cases.push((name.to_string(), script.to_string(), o));
        }
    }
    for k in [2, 4, 8] {
        cases.push((
            format!("DRaFT-{k}"),
            "scripts/baselines/digits_draft.lua".into(),
            vec![format!("params.K={k}"), "steps=50".into()],
        ));
    }
    let mut rows = Vec::new();
    for (name, script, o) in &cases {
        let mut cmd = Command::new(exe);
        crate::child_process::die_with_parent(&mut cmd);
        cmd.arg("--quiet")
            .arg("bench-update")
            .arg(root.join(script));
        for s in o.iter().chain(std::iter::once(&format!("batch={batch}"))) {
            cmd.arg("--set").arg(s);
        }
        let out = cmd
            .output()
            .with_context(|| format!("starting {}", exe.display()))?;
        if !out.status.success() {
            bail!(
                "{name} ({}): {}",
                o.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut row: Json = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("{name}: unreadable output"))?;
        row["method"] = json!(name);
        log.info(format!(
            "{name:<22} T = {:>2}: update {:.2} s, peak +{:.0} MiB",
            row["steps"],
            row["update_s"].as_f64().unwrap_or(f64::NAN),
            row["update_peak_mib"].as_f64().unwrap_or(f64::NAN)
        ));
        rows.push(row);
    }
    println!("| method | T | update (s) | first update (s) | update peak (MiB) | resident before (MiB) |");
    println!("|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.0} | {:.0} |",
            r["method"].as_str().unwrap_or(""),
            r["steps"],
            r["update_s"].as_f64().unwrap_or(f64::NAN),
            r["first_update_s"].as_f64().unwrap_or(f64::NAN),
            r["update_peak_mib"].as_f64().unwrap_or(f64::NAN),
            r["baseline_mib"].as_f64().unwrap_or(f64::NAN),
        );
    }
    Ok(json!({ "batch": batch, "rows": rows, "machine": super::bench::machine() }))
}
