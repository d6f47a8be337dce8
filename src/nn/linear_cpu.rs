//! y = x Wᵀ + b for f32 on the CPU as one op: the output is filled with the bias rows and
//! the gemm adds x Wᵀ onto it. candle's matmul zeroes a fresh output and the bias is then a
//! second pass over it (a memset, a broadcast add and their fresh pages: a twentieth of a
//! digits UNet forward, most of it in GEGLU's 32 -> 256 projection).

use super::cpu::{contiguous, is_f32_cpu};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

/// x [lead, in], w [out, in], b [out] -> [lead, out], where all three are f32 CPU tensors;
/// None otherwise (the caller keeps candle's ops).
pub fn linear_bias(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Option<Tensor>> {
    if !(is_f32_cpu(x) && is_f32_cpu(w) && is_f32_cpu(b)) {
        return Ok(None);
    }
    let (x, w, b) = (x.contiguous()?, w.contiguous()?, b.contiguous()?);
    let y = match x.track_op() || w.track_op() || b.track_op() {
        true => x.apply_op3(&w, &b, LinearBias)?,
        false => x.apply_op3_no_bwd(&w, &b, &LinearBias)?,
    };
    Ok(Some(y))
}

#[derive(Debug, Clone, Copy)]
struct LinearBias;

impl CustomOp3 for LinearBias {
    fn name(&self) -> &'static str {
        "linear-bias"
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
        let (x, w, b) = (
            contiguous(s1, l1)?,
            contiguous(s2, l2)?,
            contiguous(s3, l3)?,
        );
        let (lead, k) = l1.shape().dims2()?;
        let (n, k2) = l2.shape().dims2()?;
        if k2 != k || b.len() != n {
            candle_core::bail!(
                "linear: x {:?}, weight {:?}, bias {:?}",
                l1.dims(),
                l2.dims(),
                l3.dims()
            )
        }
        let mut y: Vec<f32> = Vec::with_capacity(lead * n);
        for _ in 0..lead {
            y.extend_from_slice(b);
        }
        let threads = match lead * n * k {
            // Below about a million multiply-adds, waking the pool costs more than it saves.
            w if w < 1 << 20 => gemm::Parallelism::None,
            _ => gemm::Parallelism::Rayon(rayon::current_num_threads()),
        };
        // SAFETY: y is [lead, n] row-major (column stride 1, row stride n), x [lead, k]
        // row-major, and Wᵀ [k, n] read from w [n, k] row-major (column stride k, row
        // stride 1); every index stays inside its slice. y = 1·y + 1·x Wᵀ.
        unsafe {
            gemm::gemm(
                lead,
                n,
                k,
                y.as_mut_ptr(),
                1,
                n as isize,
                true,
                x.as_ptr(),
                1,
                k as isize,
                w.as_ptr(),
                k as isize,
                1,
                1.0,
                1.0,
                false,
                false,
                false,
                threads,
            )
        };
        Ok((CpuStorage::F32(y), Shape::from((lead, n))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dy = grad.detach();
        let flops = |n: usize| super::flops::add(2 * dy.elem_count() * n);
        let dx = match x.track_op() {
            true => {
                flops(w.dim(1)?);
                Some(dy.matmul(&w.detach())?)
            }
            false => None,
        };
        let dw = match w.track_op() {
            true => {
                flops(x.dim(1)?);
                Some(dy.t()?.matmul(&x.detach())?)
            }
            false => None,
        };
        // Σ over rows as a gemm with a row of ones (candle's sum over a leading
        // dimension is slow on the CPU; see channel.rs).
        let db = match b.track_op() {
            true => {
                let ones = Tensor::ones((1, dy.dim(0)?), dy.dtype(), dy.device())?;
                Some(ones.matmul(&dy)?.reshape(b.shape())?)
            }
            false => None,
        };
        Ok((dx, dw, db))
    }
}

#[cfg(test)]
mod tests {
    use crate::nn::cpu::assert_same_values_and_gradients;
    use crate::rng::{randn, seeded};
    use candle_core::{Device, Var};

    /// Against x.matmul(wᵀ) + b: values and the gradients of x, w and b, below and above
    /// the size where the gemm goes parallel.
    #[test]
    fn fused_linear_matches_matmul_plus_bias_and_its_gradients() {
        let d = Device::Cpu;
        for (i, &(lead, k, n)) in [(7, 5, 3), (6272, 32, 256), (49, 33, 17)]
            .iter()
            .enumerate()
        {
            let mut rng = seeded(70 + i as u64);
            let var = |rng: &mut _, s: (usize, usize)| {
                Var::from_tensor(&randn(rng, s, &d).unwrap()).unwrap()
            };
            let (x, w) = (var(&mut rng, (lead, k)), var(&mut rng, (n, k)));
            let b = Var::from_tensor(&randn(&mut rng, n, &d).unwrap()).unwrap();
            let probe = randn(&mut rng, (lead, n), &d).unwrap();
            let y = super::linear_bias(&x, &w, &b).unwrap().unwrap();
            let yr = x
                .matmul(&w.t().unwrap())
                .unwrap()
                .broadcast_add(&b.unsqueeze(0).unwrap())
                .unwrap();
            assert_same_values_and_gradients(
                &y,
                &yr,
                &probe,
                &[("input", &x), ("weight", &w), ("bias", &b)],
                1e-5,
                &format!("case {i} ({lead} x {k} -> {n})"),
            );
        }
    }
}
