//! A 2-D convolution, drop-in for `candle_nn::Conv2d` (same weight names, shapes and
//! init), that is several times faster than candle's on the CPU, forward and backward.
//!
//! Measured on one thread ([16, 32, 28, 28], 3x3): candle's conv2d forward takes 24 ms
//! where im2col + gemm takes 10 ms; candle's backward computes the input
//! gradient with a direct `conv_transpose2d` loop, 10x slower than its own forward (and
//! computes it even when the input needs no gradient). Here forward and backward are
//! im2col + gemm: the input gradient is the output gradient (zeros inserted for the
//! stride) convolved with the flipped, transposed kernel; the kernel gradient is one gemm
//! of the output gradient with the im2col columns. A gradient is skipped when its tensor
//! does not track (a frozen base under LoRA, the data at conv_in). The columns (9x the
//! input for 3x3) live only inside the op: the graph keeps x and w, as candle's does.
//!
//! The custom op has a CPU forward only. On a GPU, `conv_unfold` builds the same im2col
//! from tensor ops, whose backward is slices and a gemm. Its columns stay in the graph (9x
//! the input for 3x3), the price of that speed. `SQDF_GPU_CONV=candle` takes candle's path
//! instead (for comparing the two). f64 on the CPU also takes candle's conv2d.

use super::channel::scale_shift;
use super::conv_direct;
use super::conv_unfold::out_len;
use super::cpu::{contiguous, with_slice};
use candle_core::{
    CpuStorage, CustomOp2, CustomOp3, DType, Device, Layout, Module, Result, Shape, Storage, Tensor,
};
use candle_nn::{Conv2dConfig, Init, VarBuilder};
use rayon::prelude::*;

/// conv2d(x [B, C, H, W], w [O, C, k, k]) with symmetric `padding` and `stride`, no
/// dilation or groups.
pub fn conv2d(x: &Tensor, w: &Tensor, padding: usize, stride: usize) -> Result<Tensor> {
    if padding == 0 && stride == w.dim(2)? && stride == w.dim(3)? && stride > 1 {
        return conv2d_patches(x, w);
    }
    // Half precision on the CPU: candle's conv would compute the input gradient with its
    // direct conv_transpose2d loop in software f16, which made a real-width SD-1.5 update
    // at 64x64 latents run for over 40 minutes in the smoke test's backward alone. The
    // f32 im2col path costs f32 copies of x and w, which the graph keeps until the
    // backward (checkpointed blocks keep nothing).
    if x.device().is_cpu() && matches!(x.dtype(), DType::F16 | DType::BF16) {
        let f = |t: &Tensor| t.to_dtype(DType::F32);
        return conv2d(&f(x)?, &f(w)?, padding, stride)?.to_dtype(x.dtype());
    }
    let fast = x.device().is_cpu() && x.dtype() == DType::F32 && w.dtype() == DType::F32;
    if !x.device().is_cpu()
        && w.dim(2)? == w.dim(3)?
        && std::env::var("SQDF_GPU_CONV").map_or(true, |v| v != "candle")
    {
        return super::conv_unfold::conv2d_unfold(x, w, padding, stride);
    }
    if !fast || w.dim(2)? != w.dim(3)? {
        return x.conv2d(w, padding, stride, 1, 1);
    }
    // Contiguous operands: the op reads them as plain slices.
    x.contiguous()?
        .apply_op2(&w.contiguous()?, Im2ColConv { padding, stride })
}

/// A convolution whose stride equals its kernel and has no padding (CLIP's patch
/// embedding, 14x14 at stride 14): non-overlapping patches times the kernel, from
/// reshapes and one matmul. The general path's input gradient would convolve the
/// zero-dilated output gradient (1024 channels at 224x224 for CLIP ViT-L/14) with im2col
/// columns of 196x that size: 40 GB for one image; here the backward is a matmul too.
pub fn conv2d_patches(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (b, c, h, wd) = x.dims4()?;
    let (o, _, k, _) = w.dims4()?;
    let (ph, pw) = (h / k, wd / k);
    super::flops::add(2 * b * ph * pw * o * c * k * k);
    // Rows and columns past the last whole patch are dropped, as conv2d does.
    let x = x.narrow(2, 0, ph * k)?.narrow(3, 0, pw * k)?;
    let patches = x
        .reshape((b, c, ph, k, pw, k))?
        .permute((0, 2, 4, 1, 3, 5))? // [B, ph, pw, C, k, k]
        .contiguous()?
        .reshape((b * ph * pw, c * k * k))?;
    patches
        .matmul(&w.reshape((o, c * k * k))?.t()?)?
        .reshape((b, ph, pw, o))?
        .permute((0, 3, 1, 2))?
        .contiguous()
}

/// x [B, C, H, W] -> columns [k*k*C, B*Ho*Wo], rows ordered (ky, kx, c): one gemm with
/// the kernel as [O, k*k*C] then convolves the whole batch. A direct loop: every column
/// row is written left to right and read from one image row, one pass over memory (a build
/// from narrow/stack tensor ops made several copies, each a fresh allocation).
fn im2col(x: &Tensor, k: usize, p: usize, s: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (ho, wo) = (out_len(h, k, p, s)?, out_len(w, k, p, s)?);
    let x = x.contiguous()?;
    let (storage, layout) = x.storage_and_layout();
    let src = match &*storage {
        Storage::Cpu(CpuStorage::F32(v)) => {
            let (a, z) = layout
                .contiguous_offsets()
                .ok_or_else(|| candle_core::Error::Msg("im2col: non-contiguous input".into()))?;
            &v[a..z]
        }
        _ => candle_core::bail!("im2col: expected an f32 CPU tensor"),
    };
    let l = ho * wo;
    let mut cols = vec![0f32; k * k * c * b * l];
    // Rows are independent: one rayon task per (ky, kx, c) row.
    cols.par_chunks_mut(b * l).enumerate().for_each(|(r, row)| {
        let (ky, kx, ci) = (r / (k * c), (r / c) % k, r % c);
        {
            {
                for bi in 0..b {
                    let img = &src[(bi * c + ci) * h * w..][..h * w];
                    for oy in 0..ho {
                        let iy = (oy * s + ky) as isize - p as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        let line = &img[iy as usize * w..][..w];
                        let out = &mut row[bi * l + oy * wo..][..wo];
                        for (ox, o) in out.iter_mut().enumerate() {
                            let ix = (ox * s + kx) as isize - p as isize;
                            if ix >= 0 && (ix as usize) < w {
                                *o = line[ix as usize];
                            }
                        }
                    }
                }
            }
        }
    });
    drop(storage);
    Tensor::from_vec(cols, (k * k * c, b * l), &Device::Cpu)
}

/// w [O, C, k, k] -> [O, k*k*C], matching the columns' row order.
fn kernel_matrix(w: &Tensor) -> Result<Tensor> {
    let (o, c, k, _) = w.dims4()?;
    w.permute((0, 2, 3, 1))?.reshape((o, k * k * c))
}

/// Bytes of im2col columns per batch chunk: small enough to stay in cache and to be
/// reused by the allocator (a whole batch of 28x28 columns reaches hundreds of MB, which
/// the allocator maps fresh each time, and the kernel zeroes page by page).
const CHUNK_BYTES: usize = 8 << 20;

/// The convolution itself, on tensors that track nothing: [O, kkC] @ [kkC, b*L] per batch
/// chunk of b images.
fn conv_gemm(x: &Tensor, w: &Tensor, p: usize, s: usize) -> Result<Tensor> {
    let (b, c, h, wd) = x.dims4()?;
    let (o, _, k, _) = w.dims4()?;
    let (ho, wo) = (out_len(h, k, p, s)?, out_len(wd, k, p, s)?);
    super::flops::add(2 * b * o * k * k * c * ho * wo);
    let per_image = k * k * c * ho * wo * 4;
    let chunk = (CHUNK_BYTES / per_image.max(1)).clamp(1, b);
    let km = kernel_matrix(w)?;
    let parts = (0..b)
        .step_by(chunk)
        .map(|start| {
            let n = chunk.min(b - start);
            let y = km.matmul(&im2col(&x.narrow(0, start, n)?, k, p, s)?)?;
            y.reshape((o, n, ho, wo))?.transpose(0, 1)?.contiguous()
        })
        .collect::<Result<Vec<_>>>()?;
    if parts.len() == 1 {
        return Ok(parts.into_iter().next().expect("one part"));
    }
    Tensor::cat(&parts, 0)
}

/// `SQDF_CONV_IM2COL` set: every convolution takes im2col + gemm (for comparisons), read once.
fn im2col_forced() -> bool {
    static FORCED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| std::env::var_os("SQDF_CONV_IM2COL").is_some())
}

#[derive(Debug, Clone, Copy)]
struct Im2ColConv {
    padding: usize,
    stride: usize,
}

/// A fresh tensor holding the contiguous data `(s, l)` describes (a copy).
fn cpu_tensor(s: &CpuStorage, l: &Layout) -> Result<Tensor> {
    Tensor::from_slice(contiguous(s, l)?, l.shape(), &Device::Cpu)
}

impl CustomOp2 for Im2ColConv {
    fn name(&self) -> &'static str {
        "conv2d-im2col"
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

impl Im2ColConv {
    /// The direct kernels' geometry when they apply: stride 1, square kernel, padding at
    /// most k - 1 (so that the input gradient is a convolution too), an AVX2 + FMA CPU.
    fn direct(&self, x: &[usize], w: &[usize]) -> Option<conv_direct::Geometry> {
        let (k, p) = (w[2], self.padding);
        let ok = self.stride == 1
            && w[3] == k
            && p < k
            && x[2] + 2 * p >= k
            && x[3] + 2 * p >= k
            && conv_direct::available()
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
struct ConvBias(Im2ColConv, conv_direct::Geometry);

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

/// candle_nn::Conv2d's parameters (`weight` [O, C, k, k], optional `bias` [O]) computed
/// by `conv2d` above. Only `padding` and `stride` of the config are supported.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    padding: usize,
    stride: usize,
}

impl Conv2d {
    pub fn new(weight: Tensor, bias: Option<Tensor>, cfg: Conv2dConfig) -> Self {
        assert!(
            cfg.dilation == 1 && cfg.groups == 1,
            "nn::Conv2d supports neither dilation nor groups"
        );
        Self {
            weight,
            bias,
            padding: cfg.padding,
            stride: cfg.stride,
        }
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

impl Conv2d {
    /// conv(x) + bias + extra[b, o] for extra [B, O] (a resnet's time embedding): on the
    /// CPU the direct kernels add both as they store the output, and sum the gradient of
    /// extra per sample; elsewhere a broadcast add.
    pub fn forward_with_sample_bias(&self, x: &Tensor, extra: &Tensor) -> Result<Tensor> {
        let fused = |b: &Tensor| extra.broadcast_add(&b.unsqueeze(0)?)?.contiguous();
        if let Some(y) = self.direct_with_bias(x, fused)? {
            return Ok(y);
        }
        self.forward(x)?
            .broadcast_add(&extra.unsqueeze(2)?.unsqueeze(3)?)
    }

    /// conv(x) + bias(b) by the direct kernels, which add the bias as they store the output
    /// and sum its gradient ([O] or [B, O]); None where they do not apply (no bias, not an
    /// f32 CPU tensor, a stride, no AVX2).
    fn direct_with_bias(
        &self,
        x: &Tensor,
        bias: impl FnOnce(&Tensor) -> Result<Tensor>,
    ) -> Result<Option<Tensor>> {
        let op = Im2ColConv {
            padding: self.padding,
            stride: self.stride,
        };
        let f32_cpu = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
        let (Some(b), Some(g)) = (&self.bias, op.direct(x.dims(), self.weight.dims())) else {
            return Ok(None);
        };
        if !(f32_cpu(x) && f32_cpu(&self.weight) && f32_cpu(b) && b.rank() == 1) {
            return Ok(None);
        }
        let (w, b) = (self.weight.contiguous()?, bias(b)?);
        if !f32_cpu(&b) {
            return Ok(None);
        }
        Ok(Some(x.contiguous()?.apply_op3(&w, &b, ConvBias(op, g))?))
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(y) = self.direct_with_bias(x, |b| Ok(b.clone()))? {
            return Ok(y);
        }
        let y = conv2d(x, &self.weight, self.padding, self.stride)?;
        match &self.bias {
            None => Ok(y),
            Some(b) => scale_shift(&y, None, Some(b), 1),
        }
    }
}

/// As `candle_nn::conv2d` (same names, shapes, kaiming-normal weight, uniform bias).
pub fn conv2d_layer(
    in_c: usize,
    out_c: usize,
    kernel: usize,
    cfg: Conv2dConfig,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let w = vb.get_with_hints(
        (out_c, in_c, kernel, kernel),
        "weight",
        candle_nn::init::DEFAULT_KAIMING_NORMAL,
    )?;
    let bound = 1. / (in_c as f64).sqrt();
    let b = vb.get_with_hints(
        out_c,
        "bias",
        Init::Uniform {
            lo: -bound,
            up: bound,
        },
    )?;
    Ok(Conv2d::new(w, Some(b), cfg))
}

/// The largest |p - q|, both read as f32 (the convolution tests' measure).
#[cfg(test)]
pub(super) fn diff(p: &Tensor, q: &Tensor) -> f32 {
    let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
    (f(p) - f(q))
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[cfg(test)]
mod half_cpu_tests {
    use super::*;
    use crate::rng::{randn, seeded};

    /// Half precision on the CPU (the f32 im2col path behind casts): the output stays f16,
    /// and the values and both gradients (f16 Vars) match the f32 convolution.
    #[test]
    fn f16_matches_f32_and_both_gradients_flow() {
        let d = Device::Cpu;
        let x32 = randn(&mut seeded(1), (2, 3, 6, 6), &d).unwrap();
        let w32 = randn(&mut seeded(2), (4, 3, 3, 3), &d).unwrap();
        let half = |t: &Tensor| candle_core::Var::from_tensor(&t.to_dtype(DType::F16).unwrap());
        let (x, w) = (half(&x32).unwrap(), half(&w32).unwrap());
        let y = conv2d(&x, &w, 1, 1).unwrap();
        assert_eq!(y.dtype(), DType::F16);
        // The reference on the f16-rounded inputs, in f32.
        let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap().detach();
        let (xr, wr) = (
            candle_core::Var::from_tensor(&f(&x)).unwrap(),
            candle_core::Var::from_tensor(&f(&w)).unwrap(),
        );
        let yr = xr.conv2d(&wr, 1, 1, 1, 1).unwrap();
        assert!(diff(&y, &yr) < 2e-2, "values differ by {}", diff(&y, &yr));
        let g = y
            .to_dtype(DType::F32)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gr = yr.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        for (v, r) in [(&x, &xr), (&w, &wr)] {
            let (p, q) = (
                g.get(v.as_tensor()).unwrap(),
                gr.get(r.as_tensor()).unwrap(),
            );
            assert_eq!(p.dtype(), DType::F16);
            let scale = f(q)
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                diff(p, q) < 2e-2 * scale,
                "gradient differs by {}",
                diff(p, q)
            );
        }
    }
}
