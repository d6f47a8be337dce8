//! The CPU convolution as candle custom ops with their own backward: `CpuConv`
//! (im2col + gemm, or the direct kernels where they apply) and `ConvBias` (a convolution
//! plus its bias, or a per-sample bias, added as the output is stored).

use super::conv_direct;
use super::conv_gemm::{conv_gemm, im2col, im2col_forced};
use super::cpu::{contiguous, with_slice};
use candle_core::{
    CpuStorage, CustomOp2, CustomOp3, Device, Layout, Result, Shape, Storage, Tensor,
};

#[derive(Debug, Clone, Copy)]
pub(super) struct CpuConv {
    pub(super) padding: usize,
    pub(super) stride: usize,
}

/// A fresh tensor holding the contiguous data `(s, l)` describes (a copy).
fn cpu_tensor(s: &CpuStorage, l: &Layout) -> Result<Tensor> {
    Tensor::from_slice(contiguous(s, l)?, l.shape(), &Device::Cpu)
}

impl CustomOp2 for CpuConv {
    fn name(&self) -> &'static str {
        "conv2d-cpu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if let Some(g) = self.direct(l1.dims(), l2.dims()) {
            let (b, c, o) = (l1.dims()[0], l1.dims()[1], l2.dims()[0]);
            let xp = conv_direct::pad_planes(contiguous(s1, l1)?, b * c, g);
            let y = conv_direct::forward(&xp, contiguous(s2, l2)?, None, b, c, o, g);
            return Ok((CpuStorage::F32(y), Shape::from((b, o, g.ho(), g.wo()))));
        }
        let (x, w) = (cpu_tensor(s1, l1)?, cpu_tensor(s2, l2)?);
        let y = conv_gemm(&x, &w, self.padding, self.stride)?.contiguous()?;
        let (storage, _) = y.storage_and_layout();
        match &*storage {
            Storage::Cpu(s) => Ok((s.clone(), y.shape().clone())),
            _ => candle_core::bail!("conv2d: expected a CPU result"),
        }
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.detach().contiguous()?;
        if let Some(g) = self.direct(x.dims(), w.dims()) {
            return self.grads_direct(x, w, &grad, g);
        }
        let gx = match x.track_op() {
            true => Some(self.input_grad(&grad, &w.detach(), x.dims())?),
            false => None,
        };
        let gw = match w.track_op() {
            true => Some(self.kernel_grad(&x.detach(), &grad, w.dims())?),
            false => None,
        };
        Ok((gx, gw))
    }
}

impl CpuConv {
    /// The direct kernels' geometry when they apply: stride 1, square kernel, padding at
    /// most k - 1 (so that the input gradient is a convolution too), an AVX2 + FMA CPU.
    pub(super) fn direct(&self, x: &[usize], w: &[usize]) -> Option<conv_direct::Geometry> {
        let (k, p) = (w[2], self.padding);
        let ok = self.stride == 1
            && w[3] == k
            && p < k
            && x[2] + 2 * p >= k
            && x[3] + 2 * p >= k
            && super::cpu::has_avx2_fma()
            && !im2col_forced();
        ok.then_some(conv_direct::Geometry {
            h: x[2],
            w: x[3],
            k,
            p,
        })
    }

    /// (dL/dx, dL/dw) by the direct kernels, each only where its operand is in a graph.
    fn grads_direct(
        &self,
        x: &Tensor,
        w: &Tensor,
        grad: &Tensor,
        g: conv_direct::Geometry,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let gx = match x.track_op() {
            true => Some(self.input_grad_direct(grad, &w.detach(), g)?),
            false => None,
        };
        let gw = match w.track_op() {
            true => Some(self.kernel_grad_direct(&x.detach(), grad, g)?),
            false => None,
        };
        Ok((gx, gw))
    }

    /// dL/dx by the direct kernels: dy convolved with the flipped, transposed kernel.
    fn input_grad_direct(
        &self,
        grad: &Tensor,
        w: &Tensor,
        g: conv_direct::Geometry,
    ) -> Result<Tensor> {
        let (b, o, ho, wo) = grad.dims4()?;
        let (c, k) = (w.dim(1)?, g.k);
        let gt = conv_direct::Geometry {
            h: ho,
            w: wo,
            k,
            p: k - 1 - g.p,
        };
        let wt = with_slice(w, |w| Ok(conv_direct::flip_transpose(w, o, c, k)))?;
        let dx = with_slice(grad, |dy| {
            let dyp = conv_direct::pad_planes(dy, b * o, gt);
            Ok(conv_direct::forward(&dyp, &wt, None, b, o, c, gt))
        })?;
        Tensor::from_vec(dx, (b, c, g.h, g.w), &Device::Cpu)
    }

    /// dL/dw by the direct kernels: dy against the padded input, summed over the batch.
    fn kernel_grad_direct(
        &self,
        x: &Tensor,
        grad: &Tensor,
        g: conv_direct::Geometry,
    ) -> Result<Tensor> {
        let (b, c, _, _) = x.dims4()?;
        let o = grad.dim(1)?;
        let xp = with_slice(x, |x| Ok(conv_direct::pad_planes(x, b * c, g)))?;
        let dyq = with_slice(grad, |dy| Ok(conv_direct::dy_planes(dy, b * o, g)))?;
        let dw = conv_direct::kernel_grad(&xp, &dyq, b, c, o, g);
        Tensor::from_vec(dw, (o, c, g.k, g.k), &Device::Cpu)
    }

    /// dL/dx: grad with stride-1 zeros inserted between its pixels (and up to stride-1 at
    /// the end, torch's output_padding), convolved with the flipped kernel, padding k-1-p.
    fn input_grad(&self, grad: &Tensor, w: &Tensor, x_dims: &[usize]) -> Result<Tensor> {
        let (p, s) = (self.padding, self.stride);
        let k = w.dim(2)?;
        let (len_h, len_w) = (x_dims[2] + 2 * p + 1 - k, x_dims[3] + 2 * p + 1 - k);
        let grad = if s == 1 {
            grad.clone()
        } else {
            let (b, o, h, gw) = grad.dims4()?;
            grad.reshape((b, o, h, 1, gw, 1))?
                .pad_with_zeros(3, 0, s - 1)?
                .pad_with_zeros(5, 0, s - 1)?
                .reshape((b, o, h * s, gw * s))?
                .narrow(2, 0, len_h)?
                .narrow(3, 0, len_w)?
        };
        let wt = w.flip(&[2, 3])?.transpose(0, 1)?.contiguous()?;
        if p + 1 > k {
            // padding >= kernel: the "full" convolution would need negative padding; crop.
            let full = conv_gemm(&grad, &wt, k - 1, 1)?;
            let off = p + 1 - k;
            return full.narrow(2, off, x_dims[2])?.narrow(3, off, x_dims[3]);
        }
        conv_gemm(&grad, &wt, k - 1 - p, 1)
    }

    /// dL/dw = grad [O, B*L] @ columns^T [B*L, kkC]: one gemm over the whole batch.
    fn kernel_grad(&self, x: &Tensor, grad: &Tensor, w_dims: &[usize]) -> Result<Tensor> {
        let (o, c, k) = (w_dims[0], w_dims[1], w_dims[2]);
        let cols = im2col(x, k, self.padding, self.stride)?;
        super::flops::add(2 * o * cols.elem_count());
        let g = grad.transpose(0, 1)?.contiguous()?.reshape((o, ()))?;
        g.matmul(&cols.t()?)?
            .reshape((o, k, k, c))?
            .permute((0, 3, 1, 2))?
            .contiguous()
    }
}

/// conv2d(x, w) + bias by the direct kernels (their geometry checked by the caller).
#[derive(Debug, Clone, Copy)]
pub(super) struct ConvBias(pub(super) CpuConv, pub(super) conv_direct::Geometry);

impl CustomOp3 for ConvBias {
    fn name(&self) -> &'static str {
        "conv2d-direct-bias"
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
        let (b, c, o, g) = (l1.dims()[0], l1.dims()[1], l2.dims()[0], self.1);
        let bias = contiguous(s3, l3)?;
        let xp = conv_direct::pad_planes(contiguous(s1, l1)?, b * c, g);
        let y = conv_direct::forward(&xp, contiguous(s2, l2)?, Some(bias), b, c, o, g);
        Ok((CpuStorage::F32(y), Shape::from((b, o, g.ho(), g.wo()))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (op, g) = (self.0, self.1);
        let grad = grad.detach().contiguous()?;
        let (gx, gw) = op.grads_direct(x, w, &grad, g)?;
        let gb = match bias.track_op() {
            true => {
                let (n, o) = (grad.dim(0)?, grad.dim(1)?);
                let per_sample = bias.rank() == 2;
                let sums = with_slice(&grad, |dy| {
                    Ok(conv_direct::channel_sums(dy, n, o, per_sample))
                })?;
                Some(Tensor::from_vec(sums, bias.shape(), &Device::Cpu)?)
            }
            false => None,
        };
        Ok((gx, gw, gb))
    }
}
