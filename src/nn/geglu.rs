//! GEGLU's gate (diffusers' `GEGLU`: `hidden, gate = h.chunk(2, -1)`, out = hidden *
//! gelu(gate), the exact erf GELU) as one CPU op with its own backward (f32).
//!
//! From candle's primitives this is two narrows, a GELU whose erf is libm's scalar `erff`,
//! and a product, several passes over a tensor eight times the block's width; in the
//! digits UNet's transformer blocks it was a tenth of a forward.
//!
//!   gelu(g) = g Φ(g), Φ(g) = (1 + erf(g / √2)) / 2, gelu'(g) = Φ(g) + g φ(g),
//!   φ(g) = exp(-g² / 2) / √(2π);  d hidden = dy gelu(g),  d gate = dy hidden gelu'(g).

use super::cpu::{contiguous, with_slice};
use super::simd;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;
use std::f32::consts::{FRAC_1_SQRT_2, PI};

/// hidden * gelu(gate) for h = [hidden | gate] along the last dimension.
pub fn geglu(h: &Tensor) -> Result<Tensor> {
    if super::cpu::is_f32_cpu(h) {
        return h.contiguous()?.apply_op1(Geglu);
    }
    let inner = h.dim(D::Minus1)? / 2;
    let value = h.narrow(D::Minus1, 0, inner)?;
    let gate = h.narrow(D::Minus1, inner, inner)?;
    value * gate.gelu_erf()?
}

/// Rows processed per task.
const ROWS: usize = 16;

#[derive(Debug, Clone, Copy)]
struct Geglu;

/// Φ(g) into `phi` (`scratch` holds g / √2 for the erf).
fn cdf(g: &[f32], phi: &mut [f32], scratch: &mut [f32]) {
    for (s, &v) in scratch.iter_mut().zip(g) {
        *s = v * FRAC_1_SQRT_2;
    }
    simd::erf(scratch, phi);
    for p in phi.iter_mut() {
        *p = 0.5 * (1.0 + *p);
    }
}

impl CustomOp1 for Geglu {
    fn name(&self) -> &'static str {
        "geglu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let h = contiguous(s, l)?;
        let mut dims = l.dims().to_vec();
        let two = *dims
            .last()
            .ok_or_else(|| candle_core::Error::Msg("geglu: a scalar".into()))?;
        if two % 2 != 0 {
            candle_core::bail!("geglu: last dimension {two} is odd")
        }
        let d = two / 2;
        *dims.last_mut().expect("rank >= 1") = d;
        let mut y = vec![0f32; h.len() / 2];
        y.par_chunks_mut(ROWS * d).enumerate().for_each(|(t, ys)| {
            let (mut phi, mut scratch) = (vec![0f32; d], vec![0f32; d]);
            for (r, yr) in ys.chunks_mut(d).enumerate() {
                let row = &h[(t * ROWS + r) * two..][..two];
                let (value, gate) = row.split_at(d);
                cdf(gate, &mut phi, &mut scratch);
                for i in 0..d {
                    yr[i] = value[i] * gate[i] * phi[i];
                }
            }
        });
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }

    fn bwd(&self, h: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let two = h.dim(D::Minus1)?;
        let d = two / 2;
        let mut dh = vec![0f32; h.elem_count()];
        with_slice(&h.detach(), |h| {
            with_slice(&grad.detach(), |dy| {
                dh.par_chunks_mut(ROWS * two)
                    .enumerate()
                    .for_each(|(t, dhs)| {
                        let (mut phi, mut e) = (vec![0f32; d], vec![0f32; d]);
                        let mut arg = vec![0f32; d];
                        for (r, dhr) in dhs.chunks_mut(two).enumerate() {
                            let row = t * ROWS + r;
                            let (value, gate) = h[row * two..][..two].split_at(d);
                            let dyr = &dy[row * d..][..d];
                            cdf(gate, &mut phi, &mut arg);
                            for (a, &g) in arg.iter_mut().zip(gate) {
                                *a = -0.5 * g * g;
                            }
                            simd::exp(&arg, &mut e);
                            let (dv, dg) = dhr.split_at_mut(d);
                            let norm = 1.0 / (2.0 * PI).sqrt();
                            for i in 0..d {
                                dv[i] = dyr[i] * gate[i] * phi[i];
                                dg[i] = dyr[i] * value[i] * (phi[i] + gate[i] * e[i] * norm);
                            }
                        }
                    });
                Ok(())
            })
        })?;
        Ok(Some(Tensor::from_vec(dh, h.shape(), h.device())?))
    }
}

#[cfg(test)]
mod tests {
    use crate::nn::conv::diff;
    use crate::rng::{randn, seeded};
    use candle_core::{Device, Var, D};

    /// Values and the gradient against candle's narrow + gelu_erf + product (the plain
    /// formula, with libm's erf), on rows wider and narrower than a vector.
    #[test]
    fn geglu_matches_the_plain_formula_and_its_gradient() {
        let d = Device::Cpu;
        for (i, shape) in [vec![3, 5, 64], vec![2, 7, 10], vec![40, 256]]
            .into_iter()
            .enumerate()
        {
            let mut rng = seeded(i as u64);
            let h = Var::from_tensor(
                &randn(&mut rng, shape.as_slice(), &d)
                    .unwrap()
                    .affine(2.0, 0.0)
                    .unwrap(),
            )
            .unwrap();
            let inner = shape[shape.len() - 1] / 2;
            let mut out = shape.clone();
            *out.last_mut().unwrap() = inner;
            let probe = randn(&mut rng, out.as_slice(), &d).unwrap();
            let y = super::geglu(&h).unwrap();
            let value = h.narrow(D::Minus1, 0, inner).unwrap();
            let gate = h.narrow(D::Minus1, inner, inner).unwrap();
            let yr = (value * gate.gelu_erf().unwrap()).unwrap();
            let scale = |t: &candle_core::Tensor| {
                let m = t.abs().unwrap().max_all().unwrap();
                m.to_scalar::<f32>().unwrap()
            };
            let err = diff(&y, &yr);
            assert!(err < 1e-6 * scale(&yr), "case {i}: values differ by {err}");
            let g = (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let gr = (yr * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let (p, q) = (g.get(&h).unwrap(), gr.get(&h).unwrap());
            let err = diff(p, q);
            assert!(err < 1e-6 * scale(q), "case {i}: gradients differ by {err}");
        }
    }
}
