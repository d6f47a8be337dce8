//! A consistency model's one-step x0 in the c_skip/c_out form (Song et al. 2023, Eq. 6;
//! the LCM scalings of Luo et al. 2023): f(x_t, t) = c_skip(t) x_t + c_out(t) F(x_t, t),
//! with F the network's x0 prediction. At t = 0, c_skip = 1 and c_out = 0, so f is the
//! identity on clean samples: the boundary condition holds by construction.

use super::per_sample;
use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BoundaryScalings {
    /// σ_data, the data's standard deviation in the scalings (LCM: 0.5).
    pub sigma_data: f64,
    /// Multiplies the timestep before the scalings (LCM: 10).
    pub timestep_scaling: f64,
}

impl Default for BoundaryScalings {
    fn default() -> Self {
        Self {
            sigma_data: 0.5,
            timestep_scaling: 10.0,
        }
    }
}

impl BoundaryScalings {
    /// (c_skip, c_out) at training timestep t.
    pub fn at(&self, t: f64) -> (f64, f64) {
        let s = t * self.timestep_scaling;
        let sd2 = self.sigma_data * self.sigma_data;
        (sd2 / (s * s + sd2), s / (s * s + sd2).sqrt())
    }

    /// f(x_t, t) = c_skip x_t + c_out x̂0, per sample.
    pub fn apply(&self, x: &Tensor, x0_pred: &Tensor, t: &[f64]) -> Result<Tensor> {
        let (skip, out): (Vec<f64>, Vec<f64>) = t.iter().map(|&t| self.at(t)).unzip();
        x.broadcast_mul(&per_sample(&skip, x)?)?
            .add(&x0_pred.broadcast_mul(&per_sample(&out, x)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundary_condition_holds_at_zero() {
        let b = BoundaryScalings::default();
        assert_eq!(b.at(0.0), (1.0, 0.0));
        let (skip, out) = b.at(999.0);
        assert!(skip < 1e-6 && (out - 1.0).abs() < 1e-6);
    }
}
