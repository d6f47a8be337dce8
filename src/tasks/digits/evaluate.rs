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
    /// Mean over samples of the summed per-step KL (released form) to the pretrained model.
    pub kl: f64,
}

/// Samples of one prompt from fixed noise, and their trajectory KL to the reference.
fn sample_prompt(
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
    let mut kl = Tensor::zeros(n, DType::F32, &models.device)?;
    for i in 0..s.steps() {
        let idx = vec![i; n];
        let t = s.timesteps_tensor(&idx, &models.device)?;
        let step = s.step(&x, &policy.eps(&x, &t, &cond)?.detach(), &idx)?;
        if with_kl {
            let reference = s.step(&x, &models.reference.eps(&x, &t, &cond)?.detach(), &idx)?;
            kl = kl.add(&gaussian_kl(
                &step.mean,
                &reference.mean,
                &step.sigma,
                KlForm::Released,
            )?)?;
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

#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    models: &TaskModels,
    policy: &dyn Denoiser,
    is_reference: bool,
    script: &Script,
    classifier: &Classifier,
    real: &Tensor,
    seed: u64,
    out_dir: &Path,
    label: &str,
    log: &RunLog,
) -> Result<DigitsMetrics> {
    let dev = &models.device;
    let mut shape = vec![PER_PROMPT];
    shape.extend(&models.state_shape);
    let (mut all, mut kls) = (Vec::new(), Vec::new());
    let (mut div_f, mut div_l, mut prob, mut hits) = (0.0, 0.0, 0.0, 0usize);
    let (mut features, mut rewards, mut golds) = (Vec::new(), Vec::new(), Vec::new());
    for class in 0..PROMPTS as u32 {
        // The same x_T and the same step noise for every model: grids compare cell by cell.
        let x_t = randn(
            &mut seeded(seed.wrapping_add(class as u64)),
            shape.clone(),
            dev,
        )?;
        let (x0, kl) = sample_prompt(
            models,
            policy,
            x_t,
            class,
            !is_reference,
            seed.wrapping_add(1000 + class as u64),
        )?;
        kls.push(kl);
        let out = classifier.forward_all(&x0)?;
        let p = softmax(&out.logits, D::Minus1)?.narrow(1, class as usize, 1)?;
        prob += p.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let pred = out.logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
        hits += pred.iter().filter(|&&c| c == class).count();
        div_f += cosine_diversity(&out.features)?;
        div_l += lpips_diversity(&out.early)?;
        features.push(out.features);
        rewards.push(script.reward(&x0, &cond_tensor(&[class; PER_PROMPT], dev)?)?);
        golds.push(boldness(&x0)?);
        all.push(x0.narrow(0, 0, GRID_COLS)?);
    }
    let n = PROMPTS * PER_PROMPT;
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
        kl: kls.iter().sum::<f64>() / kls.len() as f64,
    };
    let grid = out_dir.join(format!("samples_{label}.png"));
    save_grid(&grid, &Tensor::cat(&all, 0)?, PROMPTS, GRID_COLS, 2)?;
    log.info(format!(
        "{label}: reward {:.4}, gold {:.4}, alignment {:.1}% (p {:.3}), diversity {:.4} / {:.4}, Fréchet {:.2}, KL {:.2} ({})",
        m.reward,
        m.gold,
        100.0 * m.alignment_acc,
        m.alignment_prob,
        m.diversity_feature,
        m.diversity_lpips,
        m.frechet,
        m.kl,
        grid.display()
    ));
    Ok(m)
}
