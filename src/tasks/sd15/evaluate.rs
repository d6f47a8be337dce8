//! The sd15 evaluation: `eval_per_prompt` samples of every prompt from the same noise for
//! every model, scored by the script's reward, the aesthetic score and the CLIP score
//! (alignment), with diversity as the mean pairwise cosine distance of CLIP image
//! embeddings within a prompt (the paper's DreamSim diversity, with CLIP features), and a
//! grid of the first prompts in `samples_<label>.png`. HPSv2 and PickScore (alignment, the
//! mean over samples) are computed where their files are present, `null` otherwise.

use super::parts::Sd15Parts;
use super::EVAL_SEED;
use crate::eval::diversity::cosine_diversity;
use crate::eval::image_grid::save_rgb_grid;
use crate::models::Denoiser;
use crate::rng::{randn, seeded};
use crate::run_log::RunLog;
use crate::script::Script;
use crate::tasks::{cond_tensor, TaskModels};
use crate::train::rollout;
use anyhow::Result;
use candle_core::{DType, Tensor};
use serde_json::json;
use std::path::Path;

/// Samples per prompt of an evaluation along training (`config.evals`).
pub const PER_PROMPT_ALONG: usize = 2;
/// Prompts and samples per prompt in the grid.
const GRID: (usize, usize) = (8, 4);

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
) -> Result<serde_json::Value> {
    let cfg = &script.config;
    let per = if along {
        PER_PROMPT_ALONG
    } else {
        cfg.eval_per_prompt
    };
    let micro = cfg.micro_batch_size();
    let n_prompts = parts.prompts.len();
    let (mut rewards, mut aesthetic, mut clip) = (Vec::new(), Vec::new(), Vec::new());
    let (mut diversity, mut grid) = (Vec::new(), Vec::new());
    let (mut hps, mut pickscore) = (Vec::new(), Vec::new());
    log.info(format!(
        "{label}: sampling {per} images for each of {n_prompts} prompts"
    ));
    for (name, model) in [("hps", &parts.hps), ("pickscore", &parts.pickscore)] {
        if let Err(why) = model {
            log.info(format!("{label}: `{name}` is null: {why}"));
        }
    }
    for p in 0..n_prompts {
        let mut shape = vec![per];
        shape.extend(&models.state_shape);
        // The same x_T and step noise for every model: grids compare cell by cell.
        let x_t = randn(&mut seeded(EVAL_SEED + p as u64), shape, &models.device)?;
        let mut step_rng = seeded(EVAL_SEED + 1000 + p as u64);
        let mut embeds = Vec::new();
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
            rewards.extend(script.reward(&x0, &cond)?.to_vec1::<f32>()?);
            let images = parts.decode(&x0)?.detach();
            let e = parts.image_embeds(&images)?.detach();
            aesthetic.extend(
                parts
                    .head_score(&e)?
                    .to_dtype(DType::F32)?
                    .to_vec1::<f32>()?,
            );
            clip.extend(parts.cosine_to_prompts(&e, &cond)?.to_vec1::<f32>()?);
            for (scores, model) in [(&mut hps, &parts.hps), (&mut pickscore, &parts.pickscore)] {
                if let Ok(m) = model {
                    let s = m.score(&images, &cond)?.detach();
                    scores.extend(s.to_dtype(DType::F32)?.to_vec1::<f32>()?);
                }
            }
            embeds.push(e);
            if p < GRID.0 {
                let keep = GRID.1.saturating_sub(start).min(len);
                if keep > 0 {
                    grid.push(
                        images
                            .narrow(0, 0, keep)?
                            .to_device(&candle_core::Device::Cpu)?,
                    );
                }
            }
        }
        if per >= 2 {
            diversity.push(cosine_diversity(&Tensor::cat(&embeds, 0)?)?);
        }
    }
    let mean_std = |v: &[f32]| {
        let v: Vec<f64> = v.iter().map(|&x| x as f64).collect();
        crate::eval::stats::mean_std(&v).unwrap_or((0.0, 0.0))
    };
    let mean = |v: &[f32]| mean_std(v).0;
    let std = |v: &[f32]| mean_std(v).1;
    let rows = n_prompts.min(GRID.0);
    let cols = per.min(GRID.1);
    if rows > 0 && cols > 0 && !along {
        let path = out_dir.join(format!("samples_{label}.png"));
        save_rgb_grid(&path, &Tensor::cat(&grid, 0)?, rows, cols)?;
    }
    Ok(json!({
        "reward_mean": mean(&rewards),
        "reward_std": std(&rewards),
        "aesthetic": mean(&aesthetic),
        "clip_score": mean(&clip),
        "hps": if hps.is_empty() { serde_json::Value::Null } else { mean(&hps).into() },
        "pickscore": if pickscore.is_empty() { serde_json::Value::Null } else { mean(&pickscore).into() },
        "diversity_clip": if diversity.is_empty() { f64::NAN } else { diversity.iter().sum::<f64>() / diversity.len() as f64 },
        "prompts": n_prompts,
        "per_prompt": per,
    }))
}
