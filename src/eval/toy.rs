//! Metrics of 2-D toy samples against the known mixture: reward, naturalness (log-likelihood
//! under the true mixture), mode coverage, and the distance of the mode histogram to the
//! KL-regularised optimum's mode weights, which the toy knows in closed form.

use crate::data::GaussianMixture;
use serde::Serialize;

/// A mode counts as covered when it holds at least this share of the samples.
pub const COVERAGE_SHARE: f64 = 0.02;

#[derive(Debug, Clone, Serialize)]
pub struct ToyMetrics {
    pub samples: usize,
    pub reward_mean: f64,
    pub reward_std: f64,
    pub loglik_mean: f64,
    pub mode_coverage: usize,
    /// Share of samples nearest to each of the nine grid means.
    pub mode_histogram: Vec<f64>,
    /// 0.5 Σ_j |histogram_j - p*_j|; None when the reward has no closed-form optimum.
    pub tv_to_optimum: Option<f64>,
}

pub fn mode_histogram(points: &[[f64; 2]], mixture: &GaussianMixture) -> Vec<f64> {
    let mut h = vec![0.0; mixture.modes()];
    for p in points {
        h[mixture.nearest_mode(*p)] += 1.0;
    }
    h.iter().map(|c| c / points.len().max(1) as f64).collect()
}

pub fn total_variation(a: &[f64], b: &[f64]) -> f64 {
    0.5 * a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f64>()
}

pub fn toy_metrics(
    points: &[[f64; 2]],
    rewards: &[f64],
    mixture: &GaussianMixture,
    optimum: Option<&GaussianMixture>,
) -> ToyMetrics {
    let (reward_mean, reward_std) = super::stats::mean_std(rewards).unwrap_or((0.0, 0.0));
    let n = points.len().max(1) as f64;
    let hist = mode_histogram(points, mixture);
    ToyMetrics {
        samples: points.len(),
        reward_mean,
        reward_std,
        loglik_mean: points.iter().map(|p| mixture.log_prob(*p)).sum::<f64>() / n,
        mode_coverage: hist.iter().filter(|&&h| h >= COVERAGE_SHARE).count(),
        tv_to_optimum: optimum.map(|o| total_variation(&hist, &o.weights)),
        mode_histogram: hist,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn true_samples_cover_all_modes_and_match_their_own_weights() {
        let g = GaussianMixture::paper_grid();
        let mut rng = crate::rng::seeded(3);
        let x = g
            .sample(2000, &mut rng, &candle_core::Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let pts: Vec<[f64; 2]> = x.iter().map(|p| [p[0] as f64, p[1] as f64]).collect();
        let m = toy_metrics(&pts, &vec![0.0; pts.len()], &g, Some(&g));
        assert_eq!(m.mode_coverage, 9);
        assert!(m.tv_to_optimum.unwrap() < 0.05);
        assert!((m.loglik_mean + 3.83).abs() < 0.1);
    }
}
