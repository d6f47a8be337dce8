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

/// Samples of several prompts in one batch (CPU convolutions are about 1.8 times as fast
/// per sample at 160 guided rows as at 16): `x_t` holds `per_prompt` rows of each of
/// `classes` in order, and each prompt's step noise comes from its own generator
/// (`rng_seeds`), so a prompt's samples are the same draw whichever prompts share its
/// batch (equal up to the convolutions' rounding, which depends on the batch size).
/// Returns the samples and, when `with_kl`, the summed trajectory KL to the reference of
/// the first KL_SAMPLES rows of every prompt (one entry per such row).
pub fn sample_prompts(
    models: &TaskModels,
    policy: &dyn Denoiser,
    x_t: Tensor,
    classes: &[u32],
    with_kl: bool,
    rng_seeds: &[u64],
) -> Result<(Tensor, Option<Tensor>)> {
    anyhow::ensure!(
        !classes.is_empty() && x_t.dim(0)? % classes.len() == 0 && rng_seeds.len() == classes.len(),
        "sample_prompts: {} rows of x_T, {} classes and {} seeds (the rows must be a whole number per class, one seed per class)",
        x_t.dim(0)?,
        classes.len(),
        rng_seeds.len()
    );
    let per_prompt = x_t.dim(0)? / classes.len();
    let labels: Vec<u32> = classes
        .iter()
        .flat_map(|&c| std::iter::repeat_n(c, per_prompt))
        .collect();
    let n = labels.len();
    let cond = cond_tensor(&labels, &models.device)?;
    let s = &models.sampler;
    let mut rngs: Vec<_> = rng_seeds.iter().map(|&seed| seeded(seed)).collect();
    let mut noise_shape = x_t.dims().to_vec();
    noise_shape[0] = per_prompt;
    // The rows whose KL is measured: the first KL_SAMPLES of each prompt (None: all rows).
    let kn = KL_SAMPLES.min(per_prompt);
    let kl_rows = (kn < per_prompt)
        .then(|| {
            let rows: Vec<u32> = (0..classes.len())
                .flat_map(|p| (0..kn).map(move |j| (p * per_prompt + j) as u32))
                .collect();
            Tensor::new(rows.as_slice(), &models.device)
        })
        .transpose()?;
    let pick = |v: &Tensor| match &kl_rows {
        None => Ok(v.clone()),
        Some(rows) => v.index_select(rows, 0),
    };
    let kl_n = classes.len() * kn;
    let kl_cond = pick(&cond)?;
    let mut kl = with_kl
        .then(|| Tensor::zeros(kl_n, DType::F32, &models.device))
        .transpose()?;
    let mut x = x_t;
    for i in 0..s.steps() {
        let idx = vec![i; n];
        let t = s.timesteps_tensor(&idx, &models.device)?;
        let step = s.step(&x, &policy.eps(&x, &t, &cond)?.detach(), &idx)?;
        if let Some(kl) = kl.as_mut() {
            // The reference costs a second guided pass, so only on the KL rows.
            let xs = pick(&x)?;
            let idx = &idx[..kl_n];
            let ts = s.timesteps_tensor(idx, &models.device)?;
            let eps = models.reference.eps(&xs, &ts, &kl_cond)?.detach();
            let reference = s.step(&xs, &eps, idx)?;
            let kl_step = gaussian_kl(
                &pick(&step.mean)?,
                &reference.mean,
                &reference.sigma,
                KlForm::Released,
            )?;
            *kl = kl.add(&kl_step)?;
        }
        let z = rngs
            .iter_mut()
            .map(|rng| randn(rng, noise_shape.clone(), x.device()))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let z = Tensor::cat(&z, 0)?;
        x = step.mean.add(&z.broadcast_mul(&step.sigma)?)?.detach();
    }
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

/// Rows per sampling batch: all 10 prompts at 8 per prompt, 4 prompts at 32 (the
/// guided pass doubles it).
const BATCH_ROWS: usize = 128;

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
    let classes: Vec<u32> = (0..PROMPTS as u32).collect();
    let chunks: Vec<&[u32]> = classes.chunks((BATCH_ROWS / per_prompt).max(1)).collect();
    let sample_chunk = |chunk: &&[u32]| -> Result<(Tensor, Option<Tensor>)> {
        // The same x_T and the same step noise for every model: grids compare cell by cell.
        let x_t = chunk
            .iter()
            .map(|&c| {
                randn(
                    &mut seeded(seed.wrapping_add(c as u64)),
                    shape.clone(),
                    &models.device,
                )
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let rng_seeds: Vec<u64> = chunk
            .iter()
            .map(|&c| seed.wrapping_add(1000 + c as u64))
            .collect();
        sample_prompts(
            models,
            policy,
            Tensor::cat(&x_t, 0)?,
            chunk,
            with_kl,
            &rng_seeds,
        )
    };
    // On the CPU the batches run side by side on the thread pool, as sampling trajectories
    // does (`rollout::sample_trajectories`); each batch is the same whichever thread runs it.
    let sampled: Vec<Result<(Tensor, Option<Tensor>)>> = match models.device {
        candle_core::Device::Cpu => {
            use rayon::prelude::*;
            chunks.par_iter().map(sample_chunk).collect()
        }
        _ => chunks.iter().map(sample_chunk).collect(),
    };
    let (mut xs, mut kls) = (Vec::new(), Vec::new());
    for r in sampled {
        let (x0, kl) = r?;
        xs.push(x0);
        kls.extend(kl);
    }
    let kl = match kls.is_empty() {
        true => 0.0,
        false => Tensor::cat(&kls, 0)?
            .to_dtype(DType::F64)?
            .mean_all()?
            .to_scalar::<f64>()?,
    };
    Ok((Tensor::cat(&xs, 0)?, kl))
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
