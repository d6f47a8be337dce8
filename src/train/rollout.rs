//! Sampling trajectories with a denoiser, detached: nothing sampled keeps a graph (candle
//! has no no-grad mode; a graph lives as long as its output tensor).

use crate::diffusion::DdimSampler;
use crate::models::Denoiser;
use crate::rng::{randn, Rng};
use anyhow::Result;
use candle_core::Tensor;

/// Runs the sampler from state index `start` (0 = x_T) to the clean end point. Returns
/// x_0 and, if `keep`, every state from `start` on (x_start, ..., x_0).
pub fn denoise(
    model: &dyn Denoiser,
    sampler: &DdimSampler,
    x_start: Tensor,
    start: usize,
    cond: &Tensor,
    rng: &mut Rng,
    keep: bool,
) -> Result<(Tensor, Vec<Tensor>)> {
    let b = x_start.dim(0)?;
    let mut x = x_start.detach();
    let mut states = Vec::new();
    for i in start..sampler.steps() {
        if keep {
            states.push(x.clone());
        }
        let idx = vec![i; b];
        let t = sampler.timesteps_tensor(&idx, x.device())?;
        let eps = model.eps(&x, &t, cond)?.detach();
        let step = sampler.step(&x, &eps, &idx)?;
        x = if sampler.sigma(i) > 0.0 {
            let z = randn(rng, x.shape(), x.device())?;
            step.mean.add(&z.broadcast_mul(&step.sigma)?)?
        } else {
            step.mean
        }
        .detach();
    }
    if keep {
        states.push(x.clone());
    }
    Ok((x, states))
}

/// B trajectories from pure noise: x_T ~ N(0, I), then T policy steps (Eq. 1).
pub fn sample(
    model: &dyn Denoiser,
    sampler: &DdimSampler,
    state_shape: &[usize],
    cond: &Tensor,
    rng: &mut Rng,
    keep: bool,
) -> Result<(Tensor, Vec<Tensor>)> {
    let mut shape = vec![cond.dim(0)?];
    shape.extend(state_shape);
    let x_t = randn(rng, shape, cond.device())?;
    denoise(model, sampler, x_t, 0, cond, rng, keep)
}
