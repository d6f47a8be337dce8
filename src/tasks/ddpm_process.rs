//! The diffusion process the toy and the digits share: DDPM's linear β over 1000 training
//! steps (Ho et al. 2020; both are pixel-space, as DDPM is), sampled on a trailing DDIM
//! grid (x_T at t = 999) that ends at ᾱ_0, so that the last step's σ > 0 and its KL is
//! defined; the consistency models are distilled on the 50-step grid.

use crate::diffusion::{BetaSchedule, DdimSampler, NoiseSchedule, Spacing};

/// DDPM's linear β over 1000 training steps.
pub fn schedule() -> NoiseSchedule {
    NoiseSchedule::new(BetaSchedule::DDPM, 1000)
}

/// The timesteps the consistency model was distilled on (the 50-step grid).
pub fn distillation_grid() -> Vec<usize> {
    sampler(&schedule(), 50, 0.0).timesteps().to_vec()
}

/// The T-step grid, trailing (x_T at t = 999), ending at ᾱ_0 so the last step's σ > 0.
pub fn sampler(schedule: &NoiseSchedule, steps: usize, eta: f64) -> DdimSampler {
    DdimSampler::new(
        schedule,
        steps,
        eta,
        Spacing::Trailing,
        schedule.alpha_bar(0),
    )
}
