//! The paper's 2-D toy (Appendix D.2.1): nine Gaussians on a 3x3 grid from (-4,-4) to
//! (4,4), isotropic variance 0.3, equal weights. Its density is known in closed form, and
//! so is the KL-regularised optimum for a linear reward, which makes it a test bed where
//! fine-tuning can be compared with the exact answer.

use crate::rng::Rng;
use candle_core::{Device, Result, Tensor};
use rand::Rng as _;
use rand_distr::{Distribution, StandardNormal};

#[derive(Debug, Clone, PartialEq)]
pub struct GaussianMixture {
    pub means: Vec<[f64; 2]>,
    pub weights: Vec<f64>,
    /// The variance of every component, per coordinate.
    pub var: f64,
}

impl GaussianMixture {
    /// The 3x3 grid of the paper's Fig. 2.
    pub fn paper_grid() -> Self {
        let coords = [-4.0, 0.0, 4.0];
        let means = coords
            .iter()
            .flat_map(|&x| coords.iter().map(move |&y| [x, y]))
            .collect::<Vec<_>>();
        let n = means.len();
        Self {
            means,
            weights: vec![1.0 / n as f64; n],
            var: 0.3,
        }
    }

    pub fn modes(&self) -> usize {
        self.means.len()
    }

    /// n samples as an [n, 2] tensor.
    pub fn sample(&self, n: usize, rng: &mut Rng, device: &Device) -> Result<Tensor> {
        let sd = self.var.sqrt();
        let mut v = Vec::with_capacity(2 * n);
        for _ in 0..n {
            let u: f64 = rng.random();
            let mut acc = 0.0;
            let mut j = self.modes() - 1;
            for (i, w) in self.weights.iter().enumerate() {
                acc += w;
                if u < acc {
                    j = i;
                    break;
                }
            }
            for d in 0..2 {
                let z: f64 = StandardNormal.sample(rng);
                v.push((self.means[j][d] + sd * z) as f32);
            }
        }
        Tensor::from_vec(v, (n, 2), device)
    }

    /// log p(x) under the mixture.
    pub fn log_prob(&self, x: [f64; 2]) -> f64 {
        let norm = -(2.0 * std::f64::consts::PI * self.var).ln();
        let terms: Vec<f64> = self
            .means
            .iter()
            .zip(&self.weights)
            .map(|(m, w)| {
                let d2 = (x[0] - m[0]).powi(2) + (x[1] - m[1]).powi(2);
                w.ln() + norm - d2 / (2.0 * self.var)
            })
            .collect();
        let max = terms.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        max + terms.iter().map(|t| (t - max).exp()).sum::<f64>().ln()
    }

    /// The component whose mean is nearest to x.
    pub fn nearest_mode(&self, x: [f64; 2]) -> usize {
        let d = |m: &[f64; 2]| (x[0] - m[0]).powi(2) + (x[1] - m[1]).powi(2);
        (0..self.modes())
            .min_by(|&a, &b| d(&self.means[a]).total_cmp(&d(&self.means[b])))
            .unwrap()
    }

    /// The KL-regularised optimum for r(x) = w·x: p*(x) ∝ p(x) exp(r(x)/α). Each component
    /// N(μ_j, s²I) becomes N(μ_j + s² w/α, s²I) and its weight is tilted by exp(w·μ_j/α).
    pub fn tilted(&self, w: [f64; 2], alpha: f64) -> Self {
        let logits: Vec<f64> = self
            .means
            .iter()
            .zip(&self.weights)
            .map(|(m, p)| p.ln() + (w[0] * m[0] + w[1] * m[1]) / alpha)
            .collect();
        let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = logits.iter().map(|l| (l - max).exp()).sum();
        Self {
            means: self
                .means
                .iter()
                .map(|m| {
                    [
                        m[0] + self.var * w[0] / alpha,
                        m[1] + self.var * w[1] / alpha,
                    ]
                })
                .collect(),
            weights: logits.iter().map(|l| (l - max).exp() / z).collect(),
            var: self.var,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tilted_mixture_matches_importance_weights() {
        // p*(mode j) estimated by self-normalised importance weights exp(w·x/α) on samples of p.
        let g = GaussianMixture::paper_grid();
        let (w, alpha) = ([0.3, 0.15], 1.0);
        let opt = g.tilted(w, alpha);
        let mut rng = crate::rng::seeded(1);
        let x = g
            .sample(200_000, &mut rng, &Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let mut mass = [0.0; 9];
        let mut total = 0.0;
        for p in &x {
            let (a, b) = (p[0] as f64, p[1] as f64);
            let iw = ((w[0] * a + w[1] * b) / alpha).exp();
            mass[g.nearest_mode([a, b])] += iw;
            total += iw;
        }
        for (j, m) in mass.iter().enumerate() {
            assert!((m / total - opt.weights[j]).abs() < 0.01, "mode {j}");
        }
    }

    #[test]
    fn log_prob_integrates_to_about_minus_entropy() {
        // For well-separated modes, E[log p] = -(ln 9 + ln(2πe·0.3)) ≈ -3.832.
        let g = GaussianMixture::paper_grid();
        let mut rng = crate::rng::seeded(2);
        let x = g
            .sample(20_000, &mut rng, &Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let mean: f64 = x
            .iter()
            .map(|p| g.log_prob([p[0] as f64, p[1] as f64]))
            .sum::<f64>()
            / x.len() as f64;
        let expected = -(9f64.ln() + (2.0 * std::f64::consts::PI * std::f64::consts::E * 0.3).ln());
        assert!((mean - expected).abs() < 0.03, "{mean} vs {expected}");
    }
}
