//! Layer norm over the last dimension as one CPU op with its own backward (f32).
//!
//! From candle's primitives a layer norm is about ten passes and allocations (mean, centre,
//! square, mean, add, sqrt, divide, then the affine) and as many in the backward; the
//! digits UNet's transformer blocks run three per block on small rows (32 features), where
//! each op's fixed cost dominates. Per row of D values:
//!   mean, var (biased);  r = 1 / sqrt(var + eps);  x̂ = (x - mean) r;  y = x̂ γ + β;
//!   dβ = Σ_rows dy;  dγ = Σ_rows dy x̂;  dx = r (γ dy - mean(γ dy) - x̂ mean(γ dy x̂)).
//! The parameter gradients are summed per block of rows, then over blocks in order, so the
//! result does not depend on the thread count.

use super::cpu::{contiguous, grad_for, with_slice};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Rows per task (and per partial sum of the parameter gradients).
const ROWS: usize = 64;

#[derive(Debug, Clone, Copy)]
pub struct LayerNormOp {
    pub eps: f64,
}

/// (mean, 1 / sqrt(var + eps)) of one row, accumulated in f64 (rows are short).
fn stats(v: &[f32], eps: f64) -> (f32, f32) {
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean as f32, (1.0 / (var + eps).sqrt()) as f32)
}

impl LayerNormOp {
    /// dx, dγ, dβ for rows of length d.
    pub fn backward(
        &self,
        x: &[f32],
        gamma: &[f32],
        dy: &[f32],
        d: usize,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let mut dx = vec![0f32; x.len()];
        let parts: Vec<(Vec<f64>, Vec<f64>)> = dx
            .par_chunks_mut(ROWS * d)
            .enumerate()
            .map(|(t, dxs)| {
                let (mut dg, mut db) = (vec![0f64; d], vec![0f64; d]);
                let mut xh = vec![0f32; d];
                for (r, dxr) in dxs.chunks_mut(d).enumerate() {
                    let row = t * ROWS + r;
                    let (xr, dyr) = (&x[row * d..][..d], &dy[row * d..][..d]);
                    let (mean, rs) = stats(xr, self.eps);
                    let (mut m1, mut m2) = (0f64, 0f64);
                    for i in 0..d {
                        xh[i] = (xr[i] - mean) * rs;
                        let gd = gamma[i] * dyr[i];
                        m1 += gd as f64;
                        m2 += (gd * xh[i]) as f64;
                        dg[i] += (dyr[i] * xh[i]) as f64;
                        db[i] += dyr[i] as f64;
                    }
                    let (m1, m2) = ((m1 / d as f64) as f32, (m2 / d as f64) as f32);
                    for i in 0..d {
                        dxr[i] = rs * (gamma[i] * dyr[i] - m1 - xh[i] * m2);
                    }
                }
                (dg, db)
            })
            .collect();
        let (mut dg, mut db) = (vec![0f64; d], vec![0f64; d]);
        for (pg, pb) in &parts {
            for i in 0..d {
                dg[i] += pg[i];
                db[i] += pb[i];
            }
        }
        let f = |v: Vec<f64>| v.into_iter().map(|a| a as f32).collect();
        (dx, f(dg), f(db))
    }
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, gamma, beta) = (
            contiguous(s1, l1)?,
            contiguous(s2, l2)?,
            contiguous(s3, l3)?,
        );
        let d = gamma.len();
        if d == 0 || l1.dims().last() != Some(&d) || beta.len() != d {
            candle_core::bail!("layer norm: {:?} against {d} features", l1.dims())
        }
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(ROWS * d).enumerate().for_each(|(t, ys)| {
            for (r, yr) in ys.chunks_mut(d).enumerate() {
                let xr = &x[(t * ROWS + r) * d..][..d];
                let (mean, rs) = stats(xr, self.eps);
                for i in 0..d {
                    yr[i] = (xr[i] - mean) * rs * gamma[i] + beta[i];
                }
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        if !(x.track_op() || gamma.track_op() || beta.track_op()) {
            return Ok((None, None, None));
        }
        let g = gamma.detach().to_vec1::<f32>()?;
        let (dx, dg, db) = with_slice(&x.detach(), |x| {
            with_slice(&grad.detach(), |dy| Ok(self.backward(x, &g, dy, g.len())))
        })?;
        Ok((grad_for(x, dx)?, grad_for(gamma, dg)?, grad_for(beta, db)?))
    }
}

#[cfg(test)]
mod tests {
    use super::LayerNormOp;
    use crate::nn::cpu::assert_same_values_and_gradients;
    use crate::rng::{randn, seeded};
    use candle_core::{Device, Var, D};

    /// Values and the gradients of x, γ and β against the plain formula from candle's
    /// primitives, over row counts that do and do not fill a task.
    #[test]
    fn fused_layer_norm_matches_the_plain_formula_and_its_gradients() {
        let d = Device::Cpu;
        for (i, shape) in [vec![3, 49, 32], vec![2, 5, 7], vec![130, 16]]
            .into_iter()
            .enumerate()
        {
            let mut rng = seeded(i as u64);
            let f = *shape.last().unwrap();
            let x = randn(&mut rng, shape.as_slice(), &d).unwrap();
            let x = Var::from_tensor(&x.affine(3.0, 1.0).unwrap()).unwrap();
            let g = Var::from_tensor(&randn(&mut rng, f, &d).unwrap()).unwrap();
            let b = Var::from_tensor(&randn(&mut rng, f, &d).unwrap()).unwrap();
            let probe = randn(&mut rng, shape.as_slice(), &d).unwrap();
            let y = x.apply_op3(&g, &b, LayerNormOp { eps: 1e-5 }).unwrap();
            let centred = x
                .broadcast_sub(&x.mean_keepdim(D::Minus1).unwrap())
                .unwrap();
            let var = centred.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
            let normed = centred
                .broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap())
                .unwrap();
            let yr = normed.broadcast_mul(&g).unwrap().broadcast_add(&b).unwrap();
            assert_same_values_and_gradients(
                &y,
                &yr,
                &probe,
                &[("x", &x), ("gamma", &g), ("beta", &b)],
                2e-5,
                &format!("case {i}"),
            );
        }
    }
}
