//! Sampling trajectories with a denoiser, detached: nothing sampled keeps a graph (candle
//! has no no-grad mode; a graph lives as long as its output tensor).

use crate::diffusion::log_prob::gaussian_log_prob;
use crate::diffusion::DdimSampler;
use crate::models::Denoiser;
use crate::rng::{randn, randn_rows, Rng};
use anyhow::Result;
use candle_core::{Device, Shape, Tensor};

/// Where a sampling run's noise comes from.
pub enum Noise<'a> {
    /// One stream for the whole batch.
    Shared(&'a mut Rng),
    /// One stream per trajectory (`rng::row_stream`): a trajectory is the same whichever
    /// batch, micro-batch or rank samples it.
    PerTrajectory(&'a mut [Rng]),
}

impl Noise<'_> {
    fn draw(&mut self, shape: &Shape, device: &Device) -> candle_core::Result<Tensor> {
        match self {
            Noise::Shared(rng) => randn(rng, shape, device),
            Noise::PerTrajectory(rows) => randn_rows(rows, shape, device),
        }
    }
}

/// What a sampling run kept.
pub struct Rollout {
    pub x0: Tensor,
    /// Every state from the start on (x_start, ..., x_0), when asked for.
    pub states: Vec<Tensor>,
    /// log p(x_{i+1} | x_i) of every action under the sampling policy, [B] each, when asked
    /// for (DDPO's old log-probabilities; mean over dimensions).
    pub log_probs: Vec<Tensor>,
}

fn run(
    model: &dyn Denoiser,
    sampler: &DdimSampler,
    x_start: Tensor,
    start: usize,
    cond: &Tensor,
    noise: &mut Noise,
    keep: bool,
) -> Result<Rollout> {
    let b = x_start.dim(0)?;
    let mut x = x_start.detach();
    let (mut states, mut log_probs) = (Vec::new(), Vec::new());
    for i in start..sampler.steps() {
        if keep {
            states.push(x.clone());
        }
        let idx = vec![i; b];
        let t = sampler.timesteps_tensor(&idx, x.device())?;
        let eps = model.eps(&x, &t, cond)?.detach();
        let step = sampler.step(&x, &eps, &idx)?;
        x = if sampler.sigma(i) > 0.0 {
            let z = noise.draw(x.shape(), x.device())?;
            let next = step.mean.add(&z.broadcast_mul(&step.sigma)?)?;
            if keep {
                log_probs.push(gaussian_log_prob(&next, &step.mean, &step.sigma)?);
            }
            next
        } else {
            step.mean
        }
        .detach();
    }
    if keep {
        states.push(x.clone());
    }
    Ok(Rollout {
        x0: x,
        states,
        log_probs,
    })
}

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
    let r = run(
        model,
        sampler,
        x_start,
        start,
        cond,
        &mut Noise::Shared(rng),
        keep,
    )?;
    Ok((r.x0, r.states))
}

fn noise(sampler_shape: &[usize], cond: &Tensor, noise: &mut Noise) -> Result<Tensor> {
    let mut shape = vec![cond.dim(0)?];
    shape.extend(sampler_shape);
    Ok(noise.draw(&shape.into(), cond.device())?)
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
    let x_t = noise(state_shape, cond, &mut Noise::Shared(rng))?;
    denoise(model, sampler, x_t, 0, cond, rng, keep)
}

/// B whole trajectories from pure noise, trajectory b's noise (x_T and every step's) from
/// `streams[b]`; with `keep`, their states and log-probabilities, as the trainer stores them.
///
/// On the CPU the batch is split into parts of `CPU_PART` trajectories, sampled side by
/// side on the thread pool: much of a forward pass (candle's elementwise ops, small kernels)
/// runs on one thread, and parts side by side keep every core busy. The parts' size is
/// fixed, not the thread count's: a trajectory's noise is its own stream, but a matmul's
/// rounding can depend on how many rows it has, so results do not depend on the thread count.
pub fn sample_trajectories(
    model: &dyn Denoiser,
    sampler: &DdimSampler,
    state_shape: &[usize],
    cond: &Tensor,
    streams: &mut [Rng],
    keep: bool,
) -> Result<Rollout> {
    let b = streams.len();
    let size = match cond.device() {
        candle_core::Device::Cpu => CPU_PART,
        _ => b,
    };
    if b <= size {
        return sample_part(model, sampler, state_shape, cond, streams, keep);
    }
    use rayon::prelude::*;
    let rollouts: Vec<Result<Rollout>> = streams
        .par_chunks_mut(size)
        .enumerate()
        .map(|(k, part)| {
            let c = cond.narrow(0, k * size, part.len())?;
            sample_part(model, sampler, state_shape, &c, part, keep)
        })
        .collect();
    let rollouts = rollouts.into_iter().collect::<Result<Vec<_>>>()?;
    let cat = |pick: &dyn Fn(&Rollout) -> &Vec<Tensor>| -> Result<Vec<Tensor>> {
        (0..pick(&rollouts[0]).len())
            .map(|i| {
                let parts: Vec<&Tensor> = rollouts.iter().map(|r| &pick(r)[i]).collect();
                Ok(Tensor::cat(&parts, 0)?)
            })
            .collect()
    };
    let x0s: Vec<&Tensor> = rollouts.iter().map(|r| &r.x0).collect();
    Ok(Rollout {
        x0: Tensor::cat(&x0s, 0)?,
        states: cat(&|r| &r.states)?,
        log_probs: cat(&|r| &r.log_probs)?,
    })
}

/// Trajectories per part on the CPU: batch 64 makes four parts, enough for 4 cores; on 2
/// cores parts of 8, 16 and 32 sampled the digits batch equally fast.
pub const CPU_PART: usize = 16;

fn sample_part(
    model: &dyn Denoiser,
    sampler: &DdimSampler,
    state_shape: &[usize],
    cond: &Tensor,
    streams: &mut [Rng],
    keep: bool,
) -> Result<Rollout> {
    let mut noise_source = Noise::PerTrajectory(streams);
    let x_t = noise(state_shape, cond, &mut noise_source)?;
    run(model, sampler, x_t, 0, cond, &mut noise_source, keep)
}
