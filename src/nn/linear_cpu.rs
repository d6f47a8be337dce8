//! y = x Wᵀ (+ b) for f32 on the CPU as one op. With a bias the output is filled with the
//! bias rows and the gemm adds x Wᵀ onto it; without, the gemm writes an output that was
//! never zeroed. candle's matmul zeroes a fresh output and a bias is then a second pass
//! over it (a memset, a broadcast add and their fresh pages: a twentieth of a digits UNet
//! forward, most of it in GEGLU's 32 -> 256 projection and attention's projections).

use super::cpu::{contiguous, is_f32_cpu};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

/// x [lead, in], w [out, in], b [out] -> [lead, out], where all are f32 CPU tensors;
/// None otherwise (the caller keeps candle's ops).
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Option<Tensor>> {
    if !(is_f32_cpu(x) && is_f32_cpu(w) && b.is_none_or(is_f32_cpu)) {
        return Ok(None);
    }
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    let graph = x.track_op() || w.track_op() || b.is_some_and(Tensor::track_op);
    let y = match (b, graph) {
        (Some(b), true) => x.apply_op3(&w, &b.contiguous()?, LinearCpu)?,
        (Some(b), false) => x.apply_op3_no_bwd(&w, &b.contiguous()?, &LinearCpu)?,
        (None, true) => x.apply_op2(&w, LinearCpu)?,
        (None, false) => x.apply_op2_no_bwd(&w, &LinearCpu)?,
    };
    Ok(Some(y))
}

#[derive(Debug, Clone, Copy)]
struct LinearCpu;

/// y [lead, n] = x [lead, k] Wᵀ (+ b), W [n, k].
fn forward(
    x: &[f32],
    lx: &Layout,
    w: &[f32],
    lw: &Layout,
    b: Option<&[f32]>,
) -> Result<(CpuStorage, Shape)> {
    let (lead, k) = lx.shape().dims2()?;
    let (n, k2) = lw.shape().dims2()?;
    if k2 != k || b.is_some_and(|b| b.len() != n) {
        candle_core::bail!(
            "linear: x {:?}, weight {:?}, bias of {:?}",
            lx.dims(),
            lw.dims(),
            b.map(<[f32]>::len)
        )
    }
    let mut y: Vec<f32> = Vec::with_capacity(lead * n);
    if let Some(b) = b {
        for _ in 0..lead {
            y.extend_from_slice(b);
        }
    }
    let threads = match lead * n * k {
        // Below about a million multiply-adds, waking the pool costs more than it saves.
        w if w < 1 << 20 => gemm::Parallelism::None,
        _ => gemm::Parallelism::Rayon(rayon::current_num_threads()),
    };
    // SAFETY: y's buffer holds lead x n floats, row-major (column stride 1, row stride n),
    // read only when the bias rows were written (read_dst); x is [lead, k] row-major and
    // Wᵀ [k, n] is read from w [n, k] row-major (column stride k, row stride 1); every
    // index stays inside its buffer. y = 1·y + 1·x Wᵀ, or x Wᵀ; the gemm writes every
    // element, so y's length can then be set.
    unsafe {
        gemm::gemm(
            lead,
            n,
            k,
            y.as_mut_ptr(),
            1,
            n as isize,
            b.is_some(),
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
        );
        y.set_len(lead * n);
    }
    Ok((CpuStorage::F32(y), Shape::from((lead, n))))
}

/// dx = dy W, dW = dyᵀ x, db = Σ over rows of dy, each only where its operand is in a graph.
fn backward(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
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
    // Σ over rows as a gemm with a row of ones (candle's sum over a leading dimension is
    // slow on the CPU; see channel.rs).
    let db = match b.filter(|b| b.track_op()) {
        Some(b) => {
            let ones = Tensor::ones((1, dy.dim(0)?), dy.dtype(), dy.device())?;
            Some(ones.matmul(&dy)?.reshape(b.shape())?)
        }
        None => None,
    };
    Ok((dx, dw, db))
}

impl CustomOp2 for LinearCpu {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        forward(contiguous(s1, l1)?, l1, contiguous(s2, l2)?, l2, None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = backward(x, w, None, grad)?;
        Ok((dx, dw))
    }
}

impl CustomOp3 for LinearCpu {
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
        let b = contiguous(s3, l3)?;
        forward(contiguous(s1, l1)?, l1, contiguous(s2, l2)?, l2, Some(b))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        backward(x, w, Some(b), grad)
    }
}

#[cfg(test)]
mod tests {
    use crate::nn::cpu::assert_same_values_and_gradients;
    use crate::rng::{randn, seeded};
    use candle_core::{Device, Var};

    /// Against x.matmul(wᵀ) (+ b): values and the gradients of x, w and b, with and
    /// without the bias, below and above the size where the gemm goes parallel.
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
            let y = super::linear(&x, &w, Some(&b)).unwrap().unwrap();
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
            let y = super::linear(&x, &w, None).unwrap().unwrap();
            let yr = x.matmul(&w.t().unwrap()).unwrap();
            assert_same_values_and_gradients(
                &y,
                &yr,
                &probe,
                &[("input", &x), ("weight", &w)],
                1e-5,
                &format!("case {i} ({lead} x {k} -> {n}), no bias"),
            );
        }
    }
}
