//! Tweedie's formula: the posterior mean E[x0 | x_t] from an ε prediction (paper Eq. 37;
//! the paper prints "+", the correct sign for ε-prediction is "-").

use super::per_sample;
use candle_core::{Result, Tensor};

/// x̂0 = (x_t - sqrt(1 - ᾱ_t) ε) / sqrt(ᾱ_t), with ᾱ_t given per sample.
pub fn x0_from_eps_with(x: &Tensor, eps: &Tensor, alpha_bar: &[f64]) -> Result<Tensor> {
    let inv_sqrt: Vec<f64> = alpha_bar.iter().map(|a| 1.0 / a.sqrt()).collect();
    let ratio: Vec<f64> = alpha_bar.iter().map(|a| ((1.0 - a) / a).sqrt()).collect();
    x.broadcast_mul(&per_sample(&inv_sqrt, x)?)?
        .sub(&eps.broadcast_mul(&per_sample(&ratio, x)?)?)
}

/// ε implied by an x0 estimate at ᾱ_t (the inverse of `x0_from_eps_with`).
pub fn eps_from_x0(x: &Tensor, x0: &Tensor, alpha_bar: &[f64]) -> Result<Tensor> {
    let sa: Vec<f64> = alpha_bar.iter().map(|a| a.sqrt()).collect();
    let inv_s1: Vec<f64> = alpha_bar.iter().map(|a| 1.0 / (1.0 - a).sqrt()).collect();
    x.sub(&x0.broadcast_mul(&per_sample(&sa, x)?)?)?
        .broadcast_mul(&per_sample(&inv_s1, x)?)
}
