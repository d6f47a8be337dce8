//! The sd15 evaluation (paper §5.1, Appendix D): `eval_per_prompt` samples of every prompt
//! from the same noise for every model, and a grid of the first prompts in
//! `samples_<label>.png`. Each sample is scored by the script's reward, the aesthetic score
//! and the CLIP score, and, where their files are present, HPSv2, PickScore and
//! ImageReward (alignment: means over samples). Diversity is the mean pairwise distance within a prompt, averaged
//! over prompts: cosine distance of CLIP image embeddings (`diversity_clip`) and, where
//! their files are present, LPIPS (`diversity_lpips`) and cosine distance of DreamSim
//! embeddings (`diversity_dreamsim`). A metric without its files is `null`.

use super::metrics::Metrics;
use super::parts::Sd15Parts;
use super::EVAL_SEED;
use crate::eval::diversity::{cosine_diversity, mean_off_diagonal};
use crate::eval::image_grid::save_rgb_grid;
use crate::models::metrics::lpips::LpipsFeatures;
use crate::models::Denoiser;
use crate::rng::{randn, seeded};
use crate::run_log::RunLog;
use crate::script::Script;
use crate::tasks::{cond_tensor, TaskModels};
use crate::train::rollout;
use anyhow::Result;
use candle_core::{DType, Tensor};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// Samples per prompt of an evaluation along training (`config.evals`).
pub const PER_PROMPT_ALONG: usize = 2;
/// Prompts and samples per prompt in the grid.
const GRID: (usize, usize) = (8, 4);

/// Per-sample scores and per-prompt diversities, under their eval.json keys.
#[derive(Default)]
struct Tally(BTreeMap<&'static str, Vec<f64>>);

impl Tally {
    fn extend(&mut self, key: &'static str, t: &Tensor) -> Result<()> {
        let v = t
            .detach()
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()?;
        self.0.entry(key).or_default().extend(v);
        Ok(())
    }

    fn push(&mut self, key: &'static str, v: f64) {
        self.0.entry(key).or_default().push(v);
    }

    /// Mean and standard deviation of the finite values (`eval::stats::mean_std`).
    fn mean_std(&self, key: &str) -> Option<(f64, f64)> {
        self.0
            .get(key)
            .and_then(|v| crate::eval::stats::mean_std(v))
    }

    fn mean(&self, key: &str) -> Value {
        self.mean_std(key).map_or(Value::Null, |(m, _)| m.into())
    }

    fn std(&self, key: &str) -> f64 {
        self.mean_std(key).map_or(0.0, |(_, s)| s)
    }
}

/// The features one prompt's diversities are computed from, gathered batch by batch.
#[derive(Default)]
struct PromptFeatures {
    clip: Vec<Tensor>,
    lpips: Vec<LpipsFeatures>,
    dreamsim: Vec<Tensor>,
}

/// Scores decoded images [B, 3, H, W] of prompts `cond` with every metric present, and
/// keeps their features for the prompt's diversities.
fn score(
    parts: &Sd15Parts,
    m: &Metrics,
    images: &Tensor,
    cond: &Tensor,
    tally: &mut Tally,
    feats: &mut PromptFeatures,
) -> Result<()> {
    let e = parts.image_embeds(images)?.detach();
    tally.extend("aesthetic", &parts.head_score(&e)?)?;
    tally.extend("clip_score", &parts.cosine_to_prompts(&e, cond)?)?;
    for (key, model) in [("hps", &m.hps), ("pickscore", &m.pickscore)] {
        if let Ok(model) = model {
            tally.extend(key, &model.score(images, cond)?)?;
        }
    }
    if let Ok(model) = &m.image_reward {
        tally.extend("image_reward", &model.score(images, cond)?)?;
    }
    if let Ok(lpips) = &m.lpips {
        feats.lpips.push(lpips.features(images)?);
    }
    if let Ok(dreamsim) = &m.dreamsim {
        feats.dreamsim.push(dreamsim.embed(images)?);
    }
    feats.clip.push(e);
    Ok(())
}

/// The mean pairwise distances within one prompt's samples.
fn diversities(m: &Metrics, feats: &PromptFeatures, tally: &mut Tally) -> Result<()> {
    tally.push(
        "diversity_clip",
        cosine_diversity(&Tensor::cat(&feats.clip, 0)?)?,
    );
    if let Ok(lpips) = &m.lpips {
        let d = lpips.pairwise(&LpipsFeatures::cat(&feats.lpips)?)?;
        tally.push("diversity_lpips", mean_off_diagonal(&d)?);
    }
    if m.dreamsim.is_ok() {
        let e = Tensor::cat(&feats.dreamsim, 0)?;
        tally.push("diversity_dreamsim", cosine_diversity(&e)?);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    models: &TaskModels,
    parts: &Sd15Parts,
    policy: &dyn Denoiser,
    script: &Script,
    out_dir: &Path,
    label: &str,
    log: &RunLog,
    along: bool,
) -> Result<Value> {
    let cfg = &script.config;
    let per = if along {
        PER_PROMPT_ALONG
    } else {
        cfg.eval_per_prompt
    };
    let micro = cfg.micro_batch_size();
    let ids = parts.eval_ids();
    let n_prompts = ids.len();
    log.info(format!(
        "{label}: sampling {per} images for each of {n_prompts} prompts"
    ));
    // Loaded for this evaluation only, dropped at its end (metrics.rs).
    let metrics = parts.metrics.load()?;
    for (name, why) in metrics.missing() {
        log.info(format!("{label}: `{name}` is null: {why}"));
    }
    if per < 2 {
        log.info(format!(
            "{label}: the diversities are null: they are pairwise, and there is {per} sample per prompt"
        ));
    }
    let (mut tally, mut grid) = (Tally::default(), Vec::new());
    for (i, p) in ids.enumerate() {
        let mut shape = vec![per];
        shape.extend(&models.state_shape);
        // The same x_T and step noise for every model: grids compare cell by cell.
        let x_t = randn(&mut seeded(EVAL_SEED + i as u64), shape, &models.device)?;
        let mut step_rng = seeded(EVAL_SEED + 1000 + i as u64);
        let mut feats = PromptFeatures::default();
        for start in (0..per).step_by(micro) {
            let len = micro.min(per - start);
            let cond = cond_tensor(&vec![p as u32; len], &models.device)?;
            let (x0, _) = rollout::denoise(
                policy,
                &models.sampler,
                x_t.narrow(0, start, len)?,
                0,
                &cond,
                &mut step_rng,
                false,
            )?;
            tally.extend("reward", &script.reward(&x0, &cond)?)?;
            let images = parts.decode(&x0)?.detach();
            score(parts, &metrics, &images, &cond, &mut tally, &mut feats)?;
            let keep = GRID.1.saturating_sub(start).min(len);
            if i < GRID.0 && keep > 0 {
                grid.push(
                    images
                        .narrow(0, 0, keep)?
                        .to_device(&candle_core::Device::Cpu)?,
                );
            }
        }
        if per >= 2 {
            diversities(&metrics, &feats, &mut tally)?;
        }
    }
    let (rows, cols) = (n_prompts.min(GRID.0), per.min(GRID.1));
    if rows > 0 && cols > 0 && !along {
        let path = out_dir.join(format!("samples_{label}.png"));
        save_rgb_grid(&path, &Tensor::cat(&grid, 0)?, rows, cols)?;
    }
    Ok(json!({
        "reward_mean": tally.mean("reward"),
        "reward_std": tally.std("reward"),
        "aesthetic": tally.mean("aesthetic"),
        "clip_score": tally.mean("clip_score"),
        "hps": tally.mean("hps"),
        "pickscore": tally.mean("pickscore"),
        "image_reward": tally.mean("image_reward"),
        "diversity_clip": tally.mean("diversity_clip"),
        "diversity_lpips": tally.mean("diversity_lpips"),
        "diversity_dreamsim": tally.mean("diversity_dreamsim"),
        "prompts": n_prompts,
        "per_prompt": per,
    }))
}
