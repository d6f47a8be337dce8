//! The forward process' variance schedule {β_t} over the training timesteps and
//! ᾱ_t = Π_{s≤t} (1 - β_s) (paper Eq. 2-3).

use serde::{Deserialize, Serialize};

/// How β_t grows over the training timesteps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum BetaSchedule {
    /// DDPM's linear schedule (Ho et al. 2020): β from 1e-4 to 0.02.
    Linear { start: f64, end: f64 },
    /// Stable Diffusion's: linear in sqrt(β), 0.00085 to 0.012.
    ScaledLinear { start: f64, end: f64 },
}

impl BetaSchedule {
    pub const DDPM: BetaSchedule = BetaSchedule::Linear {
        start: 1e-4,
        end: 0.02,
    };
    pub const STABLE_DIFFUSION: BetaSchedule = BetaSchedule::ScaledLinear {
        start: 0.00085,
        end: 0.012,
    };
}

/// ᾱ_t for t = 0..train_steps (index t is the paper's training timestep t+1 in
/// diffusers' zero-based convention, as SD and DDPO use it).
#[derive(Debug, Clone)]
pub struct NoiseSchedule {
    alphas_cumprod: Vec<f64>,
}

impl NoiseSchedule {
    pub fn new(kind: BetaSchedule, train_steps: usize) -> Self {
        assert!(train_steps >= 2, "a schedule needs at least two timesteps");
        let n = train_steps as f64 - 1.0;
        let betas: Vec<f64> = (0..train_steps)
            .map(|i| {
                let f = i as f64 / n;
                match kind {
                    BetaSchedule::Linear { start, end } => start + f * (end - start),
                    BetaSchedule::ScaledLinear { start, end } => {
                        let s = start.sqrt() + f * (end.sqrt() - start.sqrt());
                        s * s
                    }
                }
            })
            .collect();
        let mut acc = 1.0;
        let alphas_cumprod = betas
            .iter()
            .map(|b| {
                acc *= 1.0 - b;
                acc
            })
            .collect();
        Self { alphas_cumprod }
    }

    pub fn train_steps(&self) -> usize {
        self.alphas_cumprod.len()
    }

    /// ᾱ_t at training timestep t (0-based).
    pub fn alpha_bar(&self, t: usize) -> f64 {
        self.alphas_cumprod[t]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddpm_schedule_matches_known_values() {
        let s = NoiseSchedule::new(BetaSchedule::DDPM, 1000);
        assert!((s.alpha_bar(0) - 0.9999).abs() < 1e-12);
        // ᾱ_T of DDPM's linear schedule is about 4.0e-5.
        assert!(
            (s.alpha_bar(999) - 4.04e-5).abs() < 1e-6,
            "{}",
            s.alpha_bar(999)
        );
        let sd = NoiseSchedule::new(BetaSchedule::STABLE_DIFFUSION, 1000);
        assert!((sd.alpha_bar(0) - 0.99915).abs() < 1e-9);
        assert!(
            (sd.alpha_bar(999) - 0.0047).abs() < 1e-4,
            "{}",
            sd.alpha_bar(999)
        );
    }
}
