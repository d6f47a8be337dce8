//! The digits evaluation protocol (paper Appendix D.4, scaled): all 10 prompts, 32 samples
//! each from fixed seeds, 50 guided steps; target reward, gold score, alignment, both
//! diversities, Fréchet distance to held-out digits, and the KL to the pretrained model.

use crate::diffusion::kl::{gaussian_kl, KlForm};
use crate::eval::diversity::{cosine_diversity, lpips_diversity};
use crate::eval::frechet::frechet_distance;
use crate::eval::image_grid::save_grid;
use crate::models::classifier::Classifier;
use crate::models::Denoiser;
use crate::rewards::gold::boldness;
use crate::rng::{randn, seeded};
use crate::run_log::RunLog;
use crate::script::Script;
use crate::tasks::{cond_tensor, TaskModels};
use anyhow::Result;
use candle_core::{DType, Tensor, D};
use candle_nn::ops::softmax;
use serde::Serialize;
use std::path::Path;

pub const PROMPTS: usize = 10;
pub const PER_PROMPT: usize = 32;
/// Samples per prompt of the evaluations along training (`config.evals`): a quarter of the
/// protocol, so that six of them cost about one full evaluation.
pub const PER_PROMPT_ALONG: usize = 8;
/// Samples per prompt whose trajectory KL to the pretrained model is measured (the reference
/// model costs a second guided pass per step, so not all 32).
pub const KL_SAMPLES: usize = 8;
/// Grid columns: the first 8 samples of every prompt.
const GRID_COLS: usize = 8;

#[derive(Debug, Clone, Serialize)]
pub struct DigitsMetrics {
    pub samples: usize,
    /// The script's `reward` hook (the target).
    pub reward: f64,
    /// The analytic gold score (boldness) the learned reward imitates.
    pub gold: f64,
    pub alignment_prob: f64,
    pub alignment_acc: f64,
    pub diversity_feature: f64,
    pub diversity_lpips: f64,
    pub frechet: f64,
    /// Mean over samples (the first KL_SAMPLES of each prompt) of the summed per-step KL
    /// (released form) to the pretrained model, along the model's own trajectories.
    pub kl: f64,
}

/// Samples of one prompt from fixed noise (x_T and a seed for the step noise), and their
/// trajectory KL to the reference when `with_kl`.
pub fn sample_prompt(
    models: &TaskModels,
    policy: &dyn Denoiser,
    x_t: Tensor,
    class: u32,
    with_kl: bool,
    rng_seed: u64,
) -> Result<(Tensor, f64)> {
    let n = x_t.dim(0)?;
    let cond = cond_tensor(&vec![class; n], &models.device)?;
    let s = &models.sampler;
    let mut rng = seeded(rng_seed);
    let mut x = x_t;
    let kn = KL_SAMPLES.min(n);
    let mut kl = Tensor::zeros(kn, DType::F32, &models.device)?;
    for i in 0..s.steps() {
        let idx = vec![i; n];
        let t = s.timesteps_tensor(&idx, &models.device)?;
        let step = s.step(&x, &policy.eps(&x, &t, &cond)?.detach(), &idx)?;
        if with_kl {
            // On the first KL_SAMPLES of the prompt: the reference costs a second guided pass.
            let (xs, ts, cs) = (
                x.narrow(0, 0, kn)?,
                t.narrow(0, 0, kn)?,
                cond.narrow(0, 0, kn)?,
            );
            let reference = s.step(
                &xs,
                &models.reference.eps(&xs, &ts, &cs)?.detach(),
                &idx[..kn],
            )?;
            let kl_step = gaussian_kl(
                &step.mean.narrow(0, 0, kn)?,
                &reference.mean,
                &reference.sigma,
                KlForm::Released,
            )?;
            kl = kl.add(&kl_step)?;
        }
        let z = randn(&mut rng, x.shape(), x.device())?;
        x = step.mean.add(&z.broadcast_mul(&step.sigma)?)?.detach();
    }
    let kl = kl.mean_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    Ok((x, kl))
}

/// Classifier features of held-out real digits (the Fréchet reference set).
pub fn real_features(classifier: &Classifier, images: &Tensor) -> Result<Tensor> {
    let mut parts = Vec::new();
    for start in (0..images.dim(0)?).step_by(250) {
        let n = 250.min(images.dim(0)? - start);
        parts.push(
            classifier
                .forward_all(&images.narrow(0, start, n)?)?
                .features,
        );
    }
    Ok(Tensor::cat(&parts, 0)?)
}

/// The protocol's samples: PER_PROMPT for each of the PROMPTS classes, in class order, from
/// fixed seeds (x_T from `seed + class`, step noise from `seed + 1000 + class`), and their
/// mean trajectory KL to the reference (0 unless `with_kl`).
pub fn sample_all(
    models: &TaskModels,
    policy: &dyn Denoiser,
    with_kl: bool,
    seed: u64,
    per_prompt: usize,
) -> Result<(Tensor, f64)> {
    let mut shape = vec![per_prompt];
    shape.extend(&models.state_shape);
    let (mut xs, mut kls) = (Vec::new(), Vec::new());
    for class in 0..PROMPTS as u32 {
        // The same x_T and the same step noise for every model: grids compare cell by cell.
        let x_t = randn(
            &mut seeded(seed.wrapping_add(class as u64)),
            shape.clone(),
            &models.device,
        )?;
        let (x0, kl) = sample_prompt(
            models,
            policy,
            x_t,
            class,
            with_kl,
            seed.wrapping_add(1000 + class as u64),
        )?;
        xs.push(x0);
        kls.push(kl);
    }
    Ok((
        Tensor::cat(&xs, 0)?,
        kls.iter().sum::<f64>() / kls.len() as f64,
    ))
}

/// The protocol's metrics of `samples` (from `sample_all`; `kl`: their trajectory KL, None
/// where it was not computed), and a grid of the first 8 of every prompt in
/// `out_dir/samples_<label>.png`.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    samples: &Tensor,
    kl: Option<f64>,
    script: &Script,
    classifier: &Classifier,
    real: &Tensor,
    out_dir: &Path,
    label: &str,
    log: &RunLog,
) -> Result<DigitsMetrics> {
    let dev = samples.device();
    let per_prompt = samples.dim(0)? / PROMPTS;
    let mut all = Vec::new();
    let (mut div_f, mut div_l, mut prob, mut hits) = (0.0, 0.0, 0.0, 0usize);
    let (mut features, mut rewards, mut golds) = (Vec::new(), Vec::new(), Vec::new());
    for class in 0..PROMPTS as u32 {
        let x0 = samples.narrow(0, class as usize * per_prompt, per_prompt)?;
        let out = classifier.forward_all(&x0)?;
        let p = softmax(&out.logits, D::Minus1)?.narrow(1, class as usize, 1)?;
        prob += p.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let pred = out.logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
        hits += pred.iter().filter(|&&c| c == class).count();
        div_f += cosine_diversity(&out.features)?;
        div_l += lpips_diversity(&out.early)?;
        features.push(out.features);
        rewards.push(script.reward(&x0, &cond_tensor(&vec![class; per_prompt], dev)?)?);
        golds.push(boldness(&x0)?);
        all.push(x0.narrow(0, 0, GRID_COLS.min(per_prompt))?);
    }
    let n = PROMPTS * per_prompt;
    let mean = |ts: &[Tensor]| -> Result<f64> {
        Ok(Tensor::cat(ts, 0)?
            .mean_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?)
    };
    let m = DigitsMetrics {
        samples: n,
        reward: mean(&rewards)?,
        gold: mean(&golds)?,
        alignment_prob: prob / n as f64,
        alignment_acc: hits as f64 / n as f64,
        diversity_feature: div_f / PROMPTS as f64,
        diversity_lpips: div_l / PROMPTS as f64,
        frechet: frechet_distance(&Tensor::cat(&features, 0)?, real)?,
        kl: kl.unwrap_or(f64::NAN),
    };
    let grid = out_dir.join(format!("samples_{label}.png"));
    save_grid(
        &grid,
        &Tensor::cat(&all, 0)?,
        PROMPTS,
        GRID_COLS.min(per_prompt),
        2,
    )?;
    log.info(format!(
        "{label}: reward {:.4}, gold {:.4}, alignment {:.1}% (p {:.3}), diversity {:.4} / {:.4}, Fréchet {:.2}, KL {} ({})",
        m.reward,
        m.gold,
        100.0 * m.alignment_acc,
        m.alignment_prob,
        m.diversity_feature,
        m.diversity_lpips,
        m.frechet,
        // None: not computed (along training; see `DigitsTask::evaluate`).
        kl.map_or("not computed".to_string(), |kl| format!("{kl:.2}")),
        grid.display()
    ));
    Ok(m)
}
