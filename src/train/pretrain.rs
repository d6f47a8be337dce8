//! Pretraining a denoiser with the noise-prediction loss (paper Eq. 3, Ho et al. 2020):
//! E_{x0, t, ε} || ε - ε_θ(sqrt(ᾱ_t) x0 + sqrt(1-ᾱ_t) ε, t) ||².

use super::AdamW;
use crate::diffusion::{add_noise, NoiseSchedule};
use crate::models::Denoiser;
use crate::rng::{randn, Rng};
use crate::tensor_io::sorted_vars;
use anyhow::Result;
use candle_core::Tensor;
use candle_nn::VarMap;
use indicatif::ProgressBar;
use rand::Rng as _;

pub struct PretrainSettings {
    pub steps: usize,
    pub batch: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// Linear warm-up steps, then cosine decay to 10% of `lr`.
    pub warmup: usize,
    /// Decay of an exponential moving average of the weights, which replaces them at the
    /// end (Ho et al. 2020 sample from an EMA: the last iterate of a short run is noisy).
    pub ema: Option<f64>,
}

/// The learning rate at step s: linear warm-up, then cosine decay to a tenth.
pub fn lr_at(s: &PretrainSettings, step: usize) -> f64 {
    if step < s.warmup {
        return s.lr * (step + 1) as f64 / s.warmup as f64;
    }
    let p = (step - s.warmup) as f64 / (s.steps - s.warmup).max(1) as f64;
    s.lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()))
}

/// Trains `model` (variables `vars`) on batches from `data` (x0 and condition ids).
/// Returns the mean loss of the last tenth of the steps.
pub fn train_denoiser(
    model: &dyn Denoiser,
    vars: &VarMap,
    schedule: &NoiseSchedule,
    mut data: impl FnMut(&mut Rng, usize) -> Result<(Tensor, Tensor)>,
    s: &PretrainSettings,
    rng: &mut Rng,
    bar: &ProgressBar,
) -> Result<f64> {
    let params = sorted_vars(vars);
    let mut opt = AdamW::new(params.clone())?;
    let mut ema: Vec<Tensor> = match s.ema {
        Some(_) => params
            .iter()
            .map(|(_, v)| v.as_tensor().copy())
            .collect::<candle_core::Result<_>>()?,
        None => Vec::new(),
    };
    let mut tail = Vec::new();
    for step in 0..s.steps {
        let (x0, cond) = data(rng, s.batch)?;
        let t: Vec<usize> = (0..s.batch)
            .map(|_| rng.random_range(0..schedule.train_steps()))
            .collect();
        let a: Vec<f64> = t.iter().map(|&t| schedule.alpha_bar(t)).collect();
        let eps = randn(rng, x0.shape(), x0.device())?;
        let x_t = add_noise(&x0, &eps, &a)?;
        let tt = Tensor::from_vec(
            t.iter().map(|&t| t as f32).collect::<Vec<_>>(),
            s.batch,
            x0.device(),
        )?;
        let loss = model.eps(&x_t, &tt, &cond)?.sub(&eps)?.sqr()?.mean_all()?;
        let l = opt.minimise(&loss, lr_at(s, step), s.weight_decay)?;
        if let Some(d) = s.ema {
            for (e, (_, v)) in ema.iter_mut().zip(&params) {
                *e = e
                    .affine(d, 0.0)?
                    .add(&v.as_tensor().affine(1.0 - d, 0.0)?)?;
            }
        }
        if step >= s.steps - s.steps / 10 {
            tail.push(l);
        }
        bar.inc(1);
        if step % 50 == 0 {
            bar.set_message(format!("loss {l:.4}"));
        }
    }
    for (e, (_, v)) in ema.iter().zip(&params) {
        v.set(e)?;
    }
    Ok(tail.iter().sum::<f64>() / tail.len().max(1) as f64)
}
