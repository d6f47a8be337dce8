//! log p(x_{t-1} | x_t) of a policy step, the quantity DDPO's likelihood ratio is built
//! from (Black et al. 2024, Eq. 4). As in DDPO's released code it is the mean over
//! dimensions, not the sum: the ratio exp(Δ log p) then stays in a range a clip of 1e-4
//! can act on whatever the image size.

use candle_core::{Result, Tensor};

/// mean_d log N(x_d; mean_d, σ²) per sample, [B]; `sigma` broadcasts against `mean`.
pub fn gaussian_log_prob(x: &Tensor, mean: &Tensor, sigma: &Tensor) -> Result<Tensor> {
    let b = x.dim(0)?;
    let z2 = x.sub(mean)?.broadcast_div(sigma)?.sqr()?;
    let log_norm = sigma
        .log()?
        .affine(1.0, 0.5 * (2.0 * std::f64::consts::PI).ln())?;
    z2.affine(-0.5, 0.0)?
        .broadcast_sub(&log_norm)?
        .reshape((b, ()))?
        .mean(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_the_normal_density() {
        let d = Device::Cpu;
        let x = Tensor::new(&[[0.5f32, -1.0]], &d).unwrap();
        let mean = Tensor::new(&[[0.0f32, 0.0]], &d).unwrap();
        let sigma = Tensor::new(&[[2.0f32]], &d).unwrap();
        let lp = gaussian_log_prob(&x, &mean, &sigma)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let n =
            |v: f64| -0.5 * (v / 2.0).powi(2) - 2f64.ln() - 0.5 * (2.0 * std::f64::consts::PI).ln();
        let want = (n(0.5) + n(-1.0)) / 2.0;
        assert!((lp[0] as f64 - want).abs() < 1e-6, "{} vs {want}", lp[0]);
    }
}
