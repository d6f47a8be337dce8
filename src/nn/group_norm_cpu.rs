//! Group norm, optionally followed by SiLU, as one CPU op with its own backward (f32).
//!
//! Built from candle's primitives, a group norm and the SiLU after it are about a dozen
//! passes over the activation, each a fresh allocation, and as many again in the backward;
//! at the digits UNet's sizes every pass is bound by memory. Here the forward is two
//! passes (statistics, then the affine and SiLU) and the backward two (sums, then dx).
//!
//! Forward, per sample b and group g over its n = C/G x H x W values:
//!   mean, var (biased) in f64;  r = 1 / sqrt(var + eps);  z = (x - mean) r γ_c + β_c;
//!   y = z (plain) or y = z σ(z) (SiLU).
//! Backward, with dz = dy (plain) or dy σ(z) (1 + z (1 - σ(z))) (SiLU) and x̂ = (x - mean) r:
//!   dβ_c = Σ dz;  dγ_c = Σ dz x̂;  dx = r (γ_c dz - mean_g(γ dz) - x̂ mean_g(γ dz x̂)).
//! Per-sample partial sums of dγ and dβ are added over the batch in order, so the result
//! does not depend on the thread count.

use super::cpu::{contiguous, grad_for, with_slice};
use super::simd;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

#[derive(Debug, Clone, Copy)]
pub struct GroupNormOp {
    pub groups: usize,
    pub eps: f64,
    pub silu: bool,
}

/// (mean, 1 / sqrt(var + eps)) of one group's values: two passes (mean, then squared
/// deviations), each summed in eight f32 lanes (so that it vectorises) and added up in f64.
fn stats(v: &[f32], eps: f64) -> (f32, f32) {
    let n = v.len() as f64;
    let mean = (lane_sum(v, |x| x) / n) as f32;
    let var = lane_sum(v, |x| (x - mean) * (x - mean)) / n;
    (mean, (1.0 / (var + eps).sqrt()) as f32)
}

/// Partial sums per `lane_sum`: 32 independent chains, so that the adds' latency does not
/// bound the loop (8 chains kept the group-norm statistics at a quarter of the add rate).
const LANES: usize = 32;

/// Σ f(v[i]) in LANES interleaved f32 partial sums, added in f64 at the end.
fn lane_sum(v: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut acc = [0f32; LANES];
    let chunks = v.chunks_exact(LANES);
    let tail: f64 = chunks.remainder().iter().map(|&x| f(x) as f64).sum();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += f(x);
        }
    }
    acc.iter().map(|&a| a as f64).sum::<f64>() + tail
}

/// Σ a[i] and Σ a[i] b[i] in eight f32 lanes each, added in f64.
fn lane_sums2(a: &[f32], b: &[f32]) -> (f64, f64) {
    let (mut s1, mut s2) = ([0f32; 8], [0f32; 8]);
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let mut tail = (0f64, 0f64);
    for (&x, &y) in ca.remainder().iter().zip(cb.remainder()) {
        tail.0 += x as f64;
        tail.1 += (x * y) as f64;
    }
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            s1[i] += x[i];
            s2[i] += x[i] * y[i];
        }
    }
    let f = |s: [f32; 8]| s.iter().map(|&a| a as f64).sum::<f64>();
    (f(s1) + tail.0, f(s2) + tail.1)
}

/// Work buffer length for the chunked sigmoid (on the stack).
const CHUNK: usize = 256;

/// y = z σ(z) in place.
fn silu_in_place(y: &mut [f32]) {
    let mut s = [0f32; CHUNK];
    for c in y.chunks_mut(CHUNK) {
        let s = &mut s[..c.len()];
        simd::sigmoid(c, s);
        for (z, &g) in c.iter_mut().zip(s.iter()) {
            *z *= g;
        }
    }
}

impl GroupNormOp {
    /// (batch, channels, positions per channel) of x.
    fn dims(&self, l: &Layout) -> Result<(usize, usize, usize)> {
        let d = l.dims();
        if d.len() < 2 || !d[1].is_multiple_of(self.groups) {
            candle_core::bail!("group norm: {:?} with {} groups", d, self.groups)
        }
        Ok((d[0], d[1], d[2..].iter().product()))
    }

    /// dx, dγ, dβ for x, γ, β and the output gradient dy (all contiguous f32).
    pub fn backward(
        &self,
        x: &[f32],
        gamma: &[f32],
        beta: &[f32],
        dy: &[f32],
        (b, c, hw): (usize, usize, usize),
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let cpg = c / self.groups;
        let per = cpg * hw;
        let mut dx = vec![0f32; x.len()];
        // Per (sample, channel): (Σ dz, Σ dz x̂).
        let mut part = vec![(0f64, 0f64); b * c];
        dx.par_chunks_mut(per)
            .zip(part.par_chunks_mut(cpg))
            .enumerate()
            .for_each(|(i, (dxg, pg))| {
                let g = i % self.groups;
                let xs = &x[i * per..][..per];
                let dys = &dy[i * per..][..per];
                let (mean, r) = stats(xs, self.eps);
                // dz into dxg first (z, then dz in place); then the group means of γ dz
                // and γ dz x̂.
                let (mut m1, mut m2) = (0f64, 0f64);
                let mut xh = [0f32; CHUNK];
                let mut sg = [0f32; CHUNK];
                for (j, pj) in pg.iter_mut().enumerate() {
                    let ch = g * cpg + j;
                    let (ga, be) = (gamma[ch], beta[ch]);
                    let (mut sum_b, mut sum_g) = (0f64, 0f64);
                    for start in (j * hw..(j + 1) * hw).step_by(CHUNK) {
                        let len = CHUNK.min((j + 1) * hw - start);
                        let (xh, sg) = (&mut xh[..len], &mut sg[..len]);
                        let dz = &mut dxg[start..start + len];
                        for ((h, &x), d) in xh.iter_mut().zip(&xs[start..]).zip(dz.iter_mut()) {
                            *h = (x - mean) * r;
                            *d = *h * ga + be;
                        }
                        if self.silu {
                            simd::sigmoid(dz, sg);
                            for ((d, &s), &g) in dz.iter_mut().zip(sg.iter()).zip(&dys[start..]) {
                                *d = g * s * (1.0 + *d * (1.0 - s));
                            }
                        } else {
                            dz.copy_from_slice(&dys[start..start + len]);
                        }
                        let (b1, b2) = lane_sums2(dz, xh);
                        sum_b += b1;
                        sum_g += b2;
                    }
                    *pj = (sum_b, sum_g);
                    m1 += ga as f64 * sum_b;
                    m2 += ga as f64 * sum_g;
                }
                let (m1, m2) = ((m1 / per as f64) as f32, (m2 / per as f64) as f32);
                for j in 0..cpg {
                    let ga = gamma[g * cpg + j];
                    for q in j * hw..(j + 1) * hw {
                        let xh = (xs[q] - mean) * r;
                        dxg[q] = r * (ga * dxg[q] - m1 - xh * m2);
                    }
                }
            });
        let (mut dg, mut db) = (vec![0f64; c], vec![0f64; c]);
        for bi in 0..b {
            for ch in 0..c {
                let (sb, sg) = part[bi * c + ch];
                db[ch] += sb;
                dg[ch] += sg;
            }
        }
        let f = |v: Vec<f64>| v.into_iter().map(|a| a as f32).collect();
        (dx, f(dg), f(db))
    }
}

impl CustomOp3 for GroupNormOp {
    fn name(&self) -> &'static str {
        "group-norm-silu"
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
        let (_, c, hw) = self.dims(l1)?;
        let (x, gamma, beta) = (
            contiguous(s1, l1)?,
            contiguous(s2, l2)?,
            contiguous(s3, l3)?,
        );
        let cpg = c / self.groups;
        let per = cpg * hw;
        // Written once, not zeroed first (a memset and fresh pages per call otherwise).
        let mut y: Vec<f32> = Vec::with_capacity(x.len());
        let spare = &mut y.spare_capacity_mut()[..x.len()];
        spare.par_chunks_mut(per).enumerate().for_each(|(i, yg)| {
            let g = i % self.groups;
            let xs = &x[i * per..][..per];
            let (mean, r) = stats(xs, self.eps);
            for j in 0..cpg {
                let ch = g * cpg + j;
                let a = gamma[ch] * r;
                let s = beta[ch] - mean * a;
                let (xc, yu) = (&xs[j * hw..][..hw], &mut yg[j * hw..][..hw]);
                for (o, &v) in yu.iter_mut().zip(xc) {
                    o.write(v * a + s);
                }
                // SAFETY: every element of yu was written just above.
                let yc = unsafe { &mut *(yu as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) };
                if self.silu {
                    silu_in_place(yc);
                }
            }
        });
        // SAFETY: the chunks cover all x.len() elements and each was written above.
        unsafe { y.set_len(x.len()) };
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
        let dims = (
            x.dim(0)?,
            x.dim(1)?,
            x.elem_count() / (x.dim(0)? * x.dim(1)?),
        );
        let (g, b) = (
            gamma.detach().to_vec1::<f32>()?,
            beta.detach().to_vec1::<f32>()?,
        );
        let (dx, dg, db) = with_slice(&x.detach(), |x| {
            with_slice(&grad.detach(), |dy| Ok(self.backward(x, &g, &b, dy, dims)))
        })?;
        Ok((grad_for(x, dx)?, grad_for(gamma, dg)?, grad_for(beta, db)?))
    }
}

#[cfg(test)]
mod tests {
    use super::GroupNormOp;
    use crate::nn::cpu::assert_same_values_and_gradients;
    use crate::rng::{randn, seeded};
    use candle_core::{Device, Tensor, Var, D};

    /// The plain formula from candle's primitives (what `nn::GroupNorm` computed before).
    fn plain(x: &Tensor, g: &Tensor, b: &Tensor, groups: usize, silu: bool) -> Tensor {
        let dims = x.dims().to_vec();
        let xg = x.reshape((dims[0], groups, ())).unwrap();
        let centred = xg
            .broadcast_sub(&xg.mean_keepdim(D::Minus1).unwrap())
            .unwrap();
        let var = centred.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let normed = centred
            .broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap())
            .unwrap();
        let shape: Vec<usize> = (0..dims.len())
            .map(|i| if i == 1 { dims[1] } else { 1 })
            .collect();
        let y = normed
            .reshape(dims.as_slice())
            .unwrap()
            .broadcast_mul(&g.reshape(shape.as_slice()).unwrap())
            .unwrap()
            .broadcast_add(&b.reshape(shape.as_slice()).unwrap())
            .unwrap();
        if silu {
            y.silu().unwrap()
        } else {
            y
        }
    }

    /// Values and the gradients of x, γ and β against the plain formula, with and without
    /// SiLU, for one and several channels per group and for 3-D and 4-D inputs.
    #[test]
    fn fused_group_norm_matches_the_plain_formula_and_its_gradients() {
        let d = Device::Cpu;
        for (i, (dims, groups)) in [
            (vec![3, 8, 5, 7], 4),
            (vec![2, 6, 9], 3),
            (vec![2, 4, 3, 3], 4),
        ]
        .into_iter()
        .enumerate()
        {
            for silu in [false, true] {
                let mut rng = seeded(i as u64);
                let c = dims[1];
                // An offset and scale so that the statistics matter.
                let x = randn(&mut rng, dims.as_slice(), &d)
                    .unwrap()
                    .affine(2.0, 0.5)
                    .unwrap();
                let x = Var::from_tensor(&x).unwrap();
                let g = Var::from_tensor(&randn(&mut rng, c, &d).unwrap()).unwrap();
                let b = Var::from_tensor(&randn(&mut rng, c, &d).unwrap()).unwrap();
                let probe = randn(&mut rng, dims.as_slice(), &d).unwrap();
                let op = GroupNormOp {
                    groups,
                    eps: 1e-5,
                    silu,
                };
                let y = x.apply_op3(&g, &b, op).unwrap();
                let yr = plain(&x, &g, &b, groups, silu);
                assert_same_values_and_gradients(
                    &y,
                    &yr,
                    &probe,
                    &[("x", &x), ("gamma", &g), ("beta", &b)],
                    2e-5,
                    &format!("case {i} silu {silu}"),
                );
            }
        }
    }

    /// A frozen γ and β (plain tensors, as under LoRA) get no gradient; x still does.
    #[test]
    fn frozen_affine_gets_no_gradient() {
        let d = Device::Cpu;
        let x = Var::from_tensor(&randn(&mut seeded(0), (2, 4, 3, 3), &d).unwrap()).unwrap();
        let (g, b) = (
            Tensor::ones(4, candle_core::DType::F32, &d).unwrap(),
            Tensor::zeros(4, candle_core::DType::F32, &d).unwrap(),
        );
        let op = GroupNormOp {
            groups: 2,
            eps: 1e-5,
            silu: true,
        };
        let grads = x
            .apply_op3(&g, &b, op)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(grads.get(&x).is_some());
        assert!(grads.get(&g).is_none() && grads.get(&b).is_none());
    }
}
