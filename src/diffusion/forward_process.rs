//! The forward process q(x_t | x_0) = N(sqrt(ᾱ_t) x_0, (1 - ᾱ_t) I) (Eq. 2), sampled by
//! reparameterisation (diffusers' `add_noise`).

use super::per_sample;
use candle_core::{Result, Tensor};

/// x_t = sqrt(ᾱ) x_0 + sqrt(1 - ᾱ) ε, with one ᾱ per sample of the batch.
pub fn add_noise(x0: &Tensor, noise: &Tensor, alpha_bar: &[f64]) -> Result<Tensor> {
    let sa: Vec<f64> = alpha_bar.iter().map(|a| a.sqrt()).collect();
    let sb: Vec<f64> = alpha_bar.iter().map(|a| (1.0 - a).sqrt()).collect();
    x0.broadcast_mul(&per_sample(&sa, x0)?)?
        .add(&noise.broadcast_mul(&per_sample(&sb, x0)?)?)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    #[test]
    fn add_noise_is_the_closed_form() {
        let x0 = Tensor::new(&[[1.0f32, -2.0], [0.5, 3.0]], &Device::Cpu).unwrap();
        let e = Tensor::new(&[[0.1f32, 0.2], [-1.0, 2.0]], &Device::Cpu).unwrap();
        let x = super::add_noise(&x0, &e, &[0.64, 0.36]).unwrap();
        let want = [
            [0.8 * 1.0 + 0.6 * 0.1, 0.8 * -2.0 + 0.6 * 0.2],
            [0.6 * 0.5 - 0.8, 0.6 * 3.0 + 0.8 * 2.0],
        ];
        let got = x.to_vec2::<f32>().unwrap();
        for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
            assert!((*g as f64 - w).abs() < 1e-6, "{got:?}");
        }
    }
}
