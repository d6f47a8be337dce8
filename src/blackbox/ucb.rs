//! The UCB exploration bonus of the online black-box loop (arXiv 2512.04559 §5.2, Appendix
//! D.1.2): optimism in the face of uncertainty, on the surrogate's last hidden features.
//! With phi the final linear layer's input, the bonus is
//!
//!   min(C1 * sqrt(phi^T (Sigma + lambda I)^-1 phi), clip),   C1 = 0.01, lambda = 1e-3, clip 10,
//!
//! the neural-linear confidence width: large where the labelled phi's do not reach.
//!
//! Sigma is the paper's Gram matrix sum_i phi_i phi_i^T over the labelled samples, which
//! grows with the data, so the bonus shrinks as queries accumulate. The released code uses
//! the sample covariance instead (normalised by N - 1, as `np.cov`), which does not grow with
//! N; both are here, the Gram form by default. The d x d inverse is taken once per fit in f64
//! (Cholesky), then the bonus is a differentiable function of phi (the policy's gradient goes
//! through it to the image).

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use nalgebra::DMatrix;
use serde::{Deserialize, Serialize};

/// The paper's bonus scale, ridge and clip.
pub const DEFAULT_C1: f64 = 0.01;
pub const DEFAULT_LAMBDA: f64 = 1e-3;
pub const DEFAULT_CLIP: f64 = 10.0;

/// Which matrix of the labelled phi's the bonus is measured against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SigmaKind {
    /// sum_i phi_i phi_i^T (the paper).
    #[default]
    Gram,
    /// The sample covariance, 1/(N-1) sum_i (phi_i - mean)(phi_i - mean)^T (the released code).
    Covariance,
}

impl std::str::FromStr for SigmaKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "gram" => Ok(Self::Gram),
            "covariance" | "cov" => Ok(Self::Covariance),
            _ => bail!("unknown sigma kind {s:?}: expected \"gram\" or \"covariance\""),
        }
    }
}

#[derive(Debug, Clone)]
pub struct UcbBonus {
    /// (Sigma + lambda I)^-1, [d, d], symmetric, f32.
    pub inv: Tensor,
    pub c1: f64,
    pub clip: f64,
}

/// Sigma of the rows of `phi` [N, d], in f64.
pub fn sigma(phi: &Tensor, kind: SigmaKind) -> Result<DMatrix<f64>> {
    let rows = match phi.dims() {
        &[_, _] => phi.to_dtype(DType::F64)?.to_vec2::<f64>()?,
        dims => bail!("phi must be [N, d], got {dims:?}"),
    };
    let d = phi.dim(1)?;
    let n = rows.len();
    let mut m = DMatrix::<f64>::zeros(n, d);
    for (i, r) in rows.iter().enumerate() {
        for (j, v) in r.iter().enumerate() {
            m[(i, j)] = *v;
        }
    }
    Ok(match kind {
        SigmaKind::Gram => m.transpose() * &m,
        SigmaKind::Covariance => {
            if n == 0 {
                return Ok(DMatrix::zeros(d, d));
            }
            let mean = m.row_mean();
            for mut r in m.row_iter_mut() {
                r -= &mean;
            }
            (m.transpose() * &m) / (n.saturating_sub(1).max(1) as f64)
        }
    })
}

impl UcbBonus {
    /// From an explicit inverse [d, d].
    pub fn new(inv: Tensor, c1: f64, clip: f64) -> Self {
        Self { inv, c1, clip }
    }

    /// From the labelled samples' phi [N, d]: inv = (Sigma + lambda I)^-1.
    pub fn from_phi(
        phi: &Tensor,
        kind: SigmaKind,
        lambda: f64,
        c1: f64,
        clip: f64,
    ) -> Result<Self> {
        if lambda <= 0.0 || lambda.is_nan() {
            bail!("the UCB ridge lambda must be positive, got {lambda}");
        }
        let s = sigma(phi, kind)?;
        let d = s.nrows();
        let a = s + DMatrix::<f64>::identity(d, d) * lambda;
        let inv = a
            .cholesky()
            .context("Sigma + lambda I is not positive definite (non-finite phi?)")?
            .inverse();
        let inv = (&inv + inv.transpose()) * 0.5;
        // nalgebra is column-major; the matrix is symmetric, so row-major order reads the same.
        let flat: Vec<f32> = inv.iter().map(|v| *v as f32).collect();
        Ok(Self::new(
            Tensor::from_vec(flat, (d, d), phi.device())?,
            c1,
            clip,
        ))
    }

    pub fn dim(&self) -> usize {
        self.inv.dim(0).unwrap_or(0)
    }

    pub fn device(&self) -> &Device {
        self.inv.device()
    }

    /// phi [N, d] -> min(c1 * sqrt(phi^T inv phi), clip) [N], differentiable w.r.t. phi.
    /// (A 1e-12 under the root keeps the gradient finite at phi = 0.)
    pub fn bonus(&self, phi: &Tensor) -> Result<Tensor> {
        let d = self.dim();
        match phi.dims() {
            [_, k] if *k == d => {}
            dims => bail!("the UCB bonus expects phi [N, {d}], got {dims:?}"),
        }
        let q = phi.matmul(&self.inv)?.mul(phi)?.sum(1)?;
        Ok(q.relu()?
            .affine(1.0, 1e-12)?
            .sqrt()?
            .affine(self.c1, 0.0)?
            .minimum(self.clip)?)
    }
}
