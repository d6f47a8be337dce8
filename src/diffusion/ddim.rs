//! The DDIM sampler on a grid of T steps over the training timesteps (Song et al.
//! 2021a, Eq. 12), with η = 1 giving DDPM's ancestral sampler on that grid, the
//! paper's policy (Eq. 1: p_θ(x_{t-1}|x_t) = N(μ_θ(x_t, t), σ_t² I)).
//!
//! Indices: `i` counts sampling steps, i = 0 at x_T (timestep τ_0) to i = T, the
//! clean sample. Step i takes the state at τ_i to τ_{i+1}; the paper's t is T - i,
//! so the discount exponent of step i is k = T - 1 - i (Eq. 15: γ^{t-1}).

use super::{per_sample, schedule::NoiseSchedule};
use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

/// Where the T grid timesteps fall among the training timesteps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Spacing {
    /// diffusers' "leading" spacing plus an offset: SD-1.5 uses offset 1 (981, 961, ..., 1).
    Leading { offset: usize },
    /// "trailing": the first step starts at the last training timestep (999, 979, ..., 19),
    /// so x_T really is pure noise. The framework's own models use it.
    ///
    /// The grid is diffusers' (round(1000 - i * 1000/T) - 1), but when T does not divide
    /// the training steps the step differs: sqdf steps from τ_i to the next grid point
    /// τ_{i+1}, while diffusers' `DDIMScheduler.step` steps to t - 1000 // T, which is then
    /// not a grid point. For T = 3 the grid is 999, 666, 332; diffusers steps 666 -> 333 and
    /// then calls the model at 332 on a sample made for 333; sqdf steps 666 -> 332. (T = 7:
    /// 999 -> 857 where the grid goes on at 856, and so at every step.) sqdf keeps each step a
    /// Gaussian from one state of its chain to the next, at the ᾱ the next model call
    /// assumes: the policy's per-step likelihoods, KLs and discounts are defined between
    /// consecutive states. Where T divides 1000 (SD's 50 steps: 999, 979, ..., 19) both
    /// step to the next grid point and agree exactly (`tests/it/parity.rs` checks 50 steps of
    /// both spacings against diffusers); leading spacing always agrees.
    Trailing,
}

/// One policy step as a Gaussian: x_{t-1} = mean + sigma * ε is reparameterised (Eq. 12).
#[derive(Debug, Clone)]
pub struct Step {
    /// μ(x_t, t), shaped like x_t.
    pub mean: Tensor,
    /// σ_t per sample, shaped [B, 1, ...] to broadcast against `mean`.
    pub sigma: Tensor,
    /// Tweedie's x0 from the same ε prediction (Eq. 37).
    pub x0: Tensor,
}

#[derive(Debug, Clone)]
pub struct DdimSampler {
    eta: f64,
    /// τ_i for i in 0..T.
    timesteps: Vec<usize>,
    /// ᾱ at τ_i for i in 0..=T; entry T is ᾱ of the clean end point.
    alpha_bar: Vec<f64>,
}

impl DdimSampler {
    /// `final_alpha_bar` is ᾱ after the last step: 1.0 for a noiseless end point, or
    /// ᾱ_0 as in SD-1.5's scheduler (`set_alpha_to_one = false`), which keeps the last
    /// step's σ non-zero so its KL is defined.
    pub fn new(
        schedule: &NoiseSchedule,
        steps: usize,
        eta: f64,
        spacing: Spacing,
        final_alpha_bar: f64,
    ) -> Self {
        let n = schedule.train_steps();
        assert!(steps >= 1 && steps <= n, "steps must be in 1..={n}");
        let ratio = n / steps;
        let timesteps: Vec<usize> = (0..steps)
            .map(|i| match spacing {
                Spacing::Leading { offset } => ((steps - 1 - i) * ratio + offset).min(n - 1),
                Spacing::Trailing => {
                    let t = (n as f64 - i as f64 * n as f64 / steps as f64).round() as usize;
                    t.saturating_sub(1)
                }
            })
            .collect();
        let mut alpha_bar: Vec<f64> = timesteps.iter().map(|&t| schedule.alpha_bar(t)).collect();
        alpha_bar.push(final_alpha_bar);
        Self {
            eta,
            timesteps,
            alpha_bar,
        }
    }

    /// T, the number of sampling steps.
    pub fn steps(&self) -> usize {
        self.timesteps.len()
    }

    pub fn eta(&self) -> f64 {
        self.eta
    }

    /// τ_0, ..., τ_{T-1}.
    pub fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    /// Training timestep τ_i of state i (i < T).
    pub fn timestep(&self, i: usize) -> usize {
        self.timesteps[i]
    }

    /// ᾱ of state i (i ≤ T).
    pub fn alpha_bar(&self, i: usize) -> f64 {
        self.alpha_bar[i]
    }

    /// σ of step i (Song et al. 2021a, Eq. 16): η sqrt((1-ᾱ_prev)/(1-ᾱ_t)) sqrt(1-ᾱ_t/ᾱ_prev).
    pub fn sigma(&self, i: usize) -> f64 {
        let a_t = self.alpha_bar[i];
        let a_prev = self.alpha_bar[i + 1];
        self.eta
            * ((1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev))
                .max(0.0)
                .sqrt()
    }

    /// The per-sample training timesteps of states `idx`, as f32 [B] for the denoiser.
    pub fn timesteps_tensor(&self, idx: &[usize], device: &candle_core::Device) -> Result<Tensor> {
        let v: Vec<f32> = idx.iter().map(|&i| self.time_of(i) as f32).collect();
        Tensor::from_vec(v, idx.len(), device)
    }

    /// The training timestep of state i; the clean state T counts as timestep 0.
    pub fn time_of(&self, i: usize) -> usize {
        if i < self.steps() {
            self.timesteps[i]
        } else {
            0
        }
    }

    /// One DDIM step from states `x` at indices `idx` given the ε prediction, as a Gaussian.
    pub fn step(&self, x: &Tensor, eps: &Tensor, idx: &[usize]) -> Result<Step> {
        let a_t: Vec<f64> = idx.iter().map(|&i| self.alpha_bar[i]).collect();
        let a_prev: Vec<f64> = idx.iter().map(|&i| self.alpha_bar[i + 1]).collect();
        let sig: Vec<f64> = idx.iter().map(|&i| self.sigma(i)).collect();
        // Eq. 37 (with the sign of Tweedie's formula for ε-prediction).
        let x0 = super::tweedie::x0_from_eps_with(x, eps, &a_t)?;
        // Song et al. 2021a, Eq. 12: sqrt(ᾱ_prev) x̂0 + sqrt(1 - ᾱ_prev - σ²) ε.
        let c_x0: Vec<f64> = a_prev.iter().map(|a| a.sqrt()).collect();
        let c_eps: Vec<f64> = a_prev
            .iter()
            .zip(&sig)
            .map(|(a, s)| (1.0 - a - s * s).max(0.0).sqrt())
            .collect();
        let mean = x0
            .broadcast_mul(&per_sample(&c_x0, x)?)?
            .add(&eps.broadcast_mul(&per_sample(&c_eps, x)?)?)?;
        let sigma = per_sample(&sig, x)?;
        Ok(Step { mean, sigma, x0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::BetaSchedule;

    #[test]
    fn grids_match_diffusers() {
        let s = NoiseSchedule::new(BetaSchedule::STABLE_DIFFUSION, 1000);
        let lead = DdimSampler::new(&s, 50, 1.0, Spacing::Leading { offset: 1 }, s.alpha_bar(0));
        assert_eq!(lead.timestep(0), 981);
        assert_eq!(lead.timestep(49), 1);
        let trail = DdimSampler::new(&s, 50, 1.0, Spacing::Trailing, 1.0);
        assert_eq!(trail.timestep(0), 999);
        assert_eq!(trail.timestep(49), 19);
    }

    #[test]
    fn eta_one_is_the_ddpm_posterior_variance() {
        let s = NoiseSchedule::new(BetaSchedule::DDPM, 1000);
        let d = DdimSampler::new(&s, 50, 1.0, Spacing::Trailing, s.alpha_bar(0));
        for i in [0, 10, 49] {
            let (a_t, a_p) = (d.alpha_bar(i), d.alpha_bar(i + 1));
            // β̃ of the big step: (1-ᾱ_prev)/(1-ᾱ_t) * (1 - ᾱ_t/ᾱ_prev).
            let beta_tilde = (1.0 - a_p) / (1.0 - a_t) * (1.0 - a_t / a_p);
            assert!((d.sigma(i).powi(2) - beta_tilde).abs() < 1e-12);
        }
        let ode = DdimSampler::new(&s, 50, 0.0, Spacing::Trailing, 1.0);
        assert_eq!(ode.sigma(3), 0.0);
    }
}
