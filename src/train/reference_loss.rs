//! Eq. 16 written in Rust: the reference the tests hold `lua/sqdf.lua` to (same noise,
//! same models, same reward, the same loss value and gradients).

use crate::diffusion::kl::{gaussian_kl, KlForm};
use crate::script::{Batch, LossContext};
use anyhow::Result;
use candle_core::Tensor;

/// mean_b[ -discount_b r(x̂0(μ_θ + σ ε)) + α KL_released(p_θ || p') ] for given noise ε.
pub fn sqdf_loss(
    ctx: &LossContext,
    batch: &Batch,
    reward: impl Fn(&Tensor) -> Result<Tensor>,
    alpha: f64,
    noise: &Tensor,
) -> Result<Tensor> {
    let step = ctx.step(batch, true)?;
    let reference = ctx.step(batch, false)?;
    let x_prev = step.mean.add(&step.sigma.broadcast_mul(noise)?)?;
    let x0 = ctx
        .x0_hat(&x_prev, batch, ctx.x0)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let r = reward(&x0)?;
    let kl = gaussian_kl(&step.mean, &reference.mean, &step.sigma, KlForm::Released)?;
    let per_sample = batch
        .discount
        .mul(&r)?
        .neg()?
        .add(&kl.affine(alpha, 0.0)?)?;
    Ok(per_sample.mean_all()?)
}
