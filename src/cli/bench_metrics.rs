//! `sqdf bench-metrics DIR`: the cost of each SD-1.5 evaluation metric on this machine:
//! the time to load its networks, the time per image, and the peak memory above the
//! process's resident baseline, each metric in its own process (`--only`), so that one's
//! freed memory is not another's. Images are random, in [-1, 1], at the size decoded SD-1.5
//! images have (512 px unless `--size`); scored one at a time, as the evaluation's
//! micro-batch of 1 does, after one warm-up image. A benchmark, never a test.

use crate::process_memory::{reset_peak, status_kib};
use crate::rng::{randn, seeded};
use crate::run_log::RunLog;
use crate::tasks::sd15::layout::{self, Layout};
use crate::tasks::sd15::metrics::{self, optional};
use crate::text::ClipTokenizer;
use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value as Json};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// The metrics, by eval.json key; `aesthetic` is the run's own CLIP ViT-L/14 and head.
pub const NAMES: [&str; 6] = [
    "aesthetic",
    "hps",
    "pickscore",
    "image_reward",
    "diversity_lpips",
    "diversity_dreamsim",
];

/// Scores one image [1, 3, S, S] (or gathers its features).
type Scorer = Box<dyn FnMut(&Tensor) -> candle_core::Result<()>>;

/// The metric `name`'s networks from `dir`, as a per-image scorer (for LPIPS and DreamSim,
/// the image's features; their pairwise distances are a matmul of them).
fn load(dir: &Path, name: &str, device: &Device) -> Result<Scorer> {
    let l = Layout::new(dir);
    let prompts = vec!["a photograph of a cat".to_string()];
    let cond = Tensor::new(&[0u32], device)?;
    let tok = || ClipTokenizer::from_files(&l.path(layout::VOCAB), &l.path(layout::MERGES));
    let absent = |why: String| anyhow!("{name}: {why}");
    let dtype = DType::F32;
    Ok(match name {
        "aesthetic" => {
            let cfg = crate::tasks::sd15::layout::config_or(
                l.config_of(layout::CLIP),
                crate::models::clip::ClipConfig::vit_l14(),
                crate::models::clip::ClipConfig::from_json,
            )?;
            let m = crate::rewards::aesthetic::AestheticReward::load(
                &l.path(layout::CLIP),
                &l.path(layout::AESTHETIC),
                &cfg.vision_config,
                device,
                dtype,
            )?;
            Box::new(move |x| m.score(x).map(|_| ()))
        }
        "hps" | "pickscore" => {
            let tok = tok()?;
            let m = optional(&l, name, |p| match name {
                "hps" => metrics::load_hps(&l, &p[0], &tok, &prompts, device, dtype),
                _ => metrics::load_pickscore(&l, &p[0], &tok, &prompts, device, dtype),
            })?
            .map_err(absent)?;
            Box::new(move |x| m.score(x, &cond).map(|_| ()))
        }
        "image_reward" => {
            let m = optional(&l, name, |p| {
                metrics::load_image_reward(&l, p, &prompts, device)
            })?
            .map_err(absent)?;
            Box::new(move |x| m.score(x, &cond).map(|_| ()))
        }
        "diversity_lpips" => {
            let m = optional(&l, name, |p| {
                crate::models::metrics::lpips::Lpips::load(&p[0], &p[1], device)
            })?
            .map_err(absent)?;
            Box::new(move |x| m.features(x).map(|_| ()))
        }
        "diversity_dreamsim" => {
            let m =
                optional(&l, name, |p| metrics::load_dreamsim(&l, p, device))?.map_err(absent)?;
            Box::new(move |x| m.embed(x).map(|_| ()))
        }
        other => bail!("no metric `{other}` (one of {})", NAMES.join(", ")),
    })
}

/// One metric, in this process: load, one warm-up image, `images` timed ones.
pub fn bench_one(dir: &Path, name: &str, images: usize, size: usize) -> Result<Json> {
    if images == 0 {
        bail!("--images must be at least 1");
    }
    let device = Device::Cpu;
    let baseline = status_kib("VmRSS:");
    if !reset_peak() {
        bail!("cannot reset the memory high-water mark (/proc/self/clear_refs); peak memory is not measurable here");
    }
    let s = Instant::now();
    let mut score = load(dir, name, &device)?;
    let load_s = s.elapsed().as_secs_f64();
    let loaded = status_kib("VmRSS:");
    let mut rng = seeded(0);
    let mut image =
        || -> Result<Tensor> { Ok(randn(&mut rng, (1, 3, size, size), &device)?.tanh()?) };
    score(&image()?)?;
    let s = Instant::now();
    for _ in 0..images {
        score(&image()?)?;
    }
    let per_image = s.elapsed().as_secs_f64() / images as f64;
    Ok(json!({
        "metric": name,
        "load_s": load_s,
        "per_image_s": per_image,
        "resident_mib": (loaded - baseline) / 1024.0,
        "peak_mib": (status_kib("VmHWM:") - baseline) / 1024.0,
        "images": images,
        "size": size,
    }))
}

/// Every metric whose files `dir` holds, each in a child process; prints a Markdown table.
pub fn bench_metrics(
    exe: &Path,
    dir: &Path,
    images: usize,
    size: usize,
    log: &RunLog,
) -> Result<Json> {
    if images == 0 {
        bail!("--images must be at least 1");
    }
    let mut rows = Vec::new();
    for name in NAMES {
        let mut cmd = Command::new(exe);
        crate::child_process::die_with_parent(&mut cmd);
        cmd.arg("--quiet")
            .arg("bench-metrics")
            .arg(dir)
            .args(["--only", name])
            .args(["--images", &images.to_string()])
            .args(["--size", &size.to_string()]);
        let out = cmd
            .output()
            .with_context(|| format!("starting {}", exe.display()))?;
        if !out.status.success() {
            log.info(format!(
                "{name}: skipped: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
            continue;
        }
        let row: Json = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("{name}: unreadable output"))?;
        log.info(format!(
            "{name:<20} load {:.1} s, {:.2} s per image, peak +{:.0} MiB",
            row["load_s"].as_f64().unwrap_or(f64::NAN),
            row["per_image_s"].as_f64().unwrap_or(f64::NAN),
            row["peak_mib"].as_f64().unwrap_or(f64::NAN)
        ));
        rows.push(row);
    }
    println!("| metric | load (s) | per {size} px image (s) | resident after loading (MiB) | peak (MiB) |");
    println!("|---|---:|---:|---:|---:|");
    for r in &rows {
        let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "| {} | {:.1} | {:.2} | {:.0} | {:.0} |",
            r["metric"].as_str().unwrap_or(""),
            f("load_s"),
            f("per_image_s"),
            f("resident_mib"),
            f("peak_mib")
        );
    }
    Ok(json!({ "rows": rows, "machine": super::bench::machine() }))
}
