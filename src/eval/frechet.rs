//! The Fréchet distance between two sets of features under a Gaussian fit (FID's formula):
//! ||μ_a - μ_b||² + tr(Σ_a) + tr(Σ_b) - 2 tr((Σ_a^½ Σ_b Σ_a^½)^½).

use anyhow::{bail, Result};
use candle_core::Tensor;
use nalgebra::{DMatrix, DVector, SymmetricEigen};

fn moments(x: &Tensor) -> Result<(DVector<f64>, DMatrix<f64>)> {
    let rows = x.to_dtype(candle_core::DType::F64)?.to_vec2::<f64>()?;
    let (n, d) = (rows.len(), rows.first().map(|r| r.len()).unwrap_or(0));
    if n < 2 {
        bail!("the Fréchet distance needs at least two samples per set, got {n}")
    }
    let m = DMatrix::from_row_iterator(n, d, rows.into_iter().flatten());
    let mean = m.row_mean().transpose();
    let centred = DMatrix::from_fn(n, d, |i, j| m[(i, j)] - mean[j]);
    let cov = centred.transpose() * &centred / (n as f64 - 1.0);
    Ok((mean, cov))
}

/// Symmetric positive semi-definite square root (negative eigenvalues from rounding clip to 0).
fn sqrt_psd(m: &DMatrix<f64>) -> DMatrix<f64> {
    let e = SymmetricEigen::new(m.clone());
    let s = DMatrix::from_diagonal(&e.eigenvalues.map(|v| v.max(0.0).sqrt()));
    &e.eigenvectors * s * e.eigenvectors.transpose()
}

/// Features [N, D] and [M, D].
pub fn frechet_distance(a: &Tensor, b: &Tensor) -> Result<f64> {
    let (ma, ca) = moments(a)?;
    let (mb, cb) = moments(b)?;
    let ra = sqrt_psd(&ca);
    let inner = &ra * &cb * &ra;
    let inner = (&inner + inner.transpose()) * 0.5;
    let tr_sqrt: f64 = SymmetricEigen::new(inner)
        .eigenvalues
        .iter()
        .map(|v| v.max(0.0).sqrt())
        .sum();
    Ok((ma - mb).norm_squared() + ca.trace() + cb.trace() - 2.0 * tr_sqrt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_the_closed_form_for_gaussians() {
        // N(0, I) vs N(m, 4I) in 3-D: |m|² + 3 + 12 - 2 * 3 * 2 = |m|² + 3.
        let mut rng = crate::rng::seeded(1);
        let a = crate::rng::randn(&mut rng, (40_000, 3), &Device::Cpu).unwrap();
        let b = crate::rng::randn(&mut rng, (40_000, 3), &Device::Cpu)
            .unwrap()
            .affine(2.0, 1.0)
            .unwrap();
        let d = frechet_distance(&a, &b).unwrap();
        assert!((d - 6.0).abs() < 0.15, "{d}");
        assert!(frechet_distance(&a, &a).unwrap().abs() < 1e-6);
    }
}
