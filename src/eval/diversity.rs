//! Within-prompt diversity (paper §5.1.1 and Appendix D.4): mean pairwise distances between
//! the samples of one prompt, averaged over prompts.

use anyhow::Result;
use candle_core::{Tensor, D};

/// Mean over i != j of a symmetric [n, n] distance matrix.
pub fn mean_off_diagonal(d: &Tensor) -> Result<f64> {
    let n = d.dim(0)?;
    let total = d
        .sum_all()?
        .to_dtype(candle_core::DType::F64)?
        .to_scalar::<f64>()?;
    let diag = d.to_dtype(candle_core::DType::F64)?.to_vec2::<f64>()?;
    let trace: f64 = (0..n).map(|i| diag[i][i]).sum();
    Ok((total - trace) / (n * (n - 1)).max(1) as f64)
}

/// Mean pairwise cosine distance (1 - cos) of feature vectors [n, d]: DreamSim's form.
pub fn cosine_diversity(features: &Tensor) -> Result<f64> {
    let norm = features
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .affine(1.0, 1e-12)?;
    let f = features.broadcast_div(&norm)?;
    let sim = f.matmul(&f.t()?)?;
    mean_off_diagonal(&sim.affine(-1.0, 1.0)?)
}

/// Mean pairwise LPIPS-style distance of feature maps [n, c, h, w]: each position's channel
/// vector is scaled to unit length, then the squared differences are summed over channels and
/// averaged over positions (Zhang et al. 2018, with unit weights).
pub fn lpips_diversity(maps: &Tensor) -> Result<f64> {
    let (n, _, h, w) = maps.dims4()?;
    let norm = maps.sqr()?.sum_keepdim(1)?.sqrt()?.affine(1.0, 1e-10)?;
    let f = maps.broadcast_div(&norm)?.reshape((n, ()))?;
    let sq = f.sqr()?.sum_keepdim(1)?;
    let gram = f.matmul(&f.t()?)?;
    let d = sq
        .broadcast_add(&sq.t()?)?
        .sub(&gram.affine(2.0, 0.0)?)?
        .affine(1.0 / (h * w) as f64, 0.0)?;
    mean_off_diagonal(&d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn identical_samples_have_zero_diversity_and_opposite_ones_full() {
        let dev = Device::Cpu;
        let same = Tensor::ones((4, 3), candle_core::DType::F32, &dev).unwrap();
        assert!(cosine_diversity(&same).unwrap().abs() < 1e-6);
        let opp = Tensor::new(&[[1f32, 0.], [-1., 0.]], &dev).unwrap();
        assert!((cosine_diversity(&opp).unwrap() - 2.0).abs() < 1e-6);
        let maps = Tensor::ones((3, 2, 4, 4), candle_core::DType::F32, &dev).unwrap();
        assert!(lpips_diversity(&maps).unwrap().abs() < 1e-5);
        // Unit channel vectors pointing opposite ways: squared distance 4 at every position.
        let a = Tensor::ones((1, 1, 2, 2), candle_core::DType::F32, &dev).unwrap();
        let two = Tensor::cat(&[a.clone(), a.neg().unwrap()], 0).unwrap();
        assert!((lpips_diversity(&two).unwrap() - 4.0).abs() < 1e-5);
    }
}
