//! A 2-D convolution, drop-in for `candle_nn::Conv2d` (same weight names, shapes and
//! init), several times faster than candle's on the CPU, forward and backward. `conv2d`
//! chooses the path: non-overlapping patches (CLIP's patch embedding) as one matmul; half
//! precision on the CPU through f32; on a GPU `conv_unfold`'s im2col from tensor ops
//! (`SQDF_GPU_CONV=candle` takes candle's instead, for comparisons; so does f64 on the
//! CPU); on the CPU in f32 the custom op of `conv_op.rs`, whose forward and backward run the
//! direct kernels (`conv_direct.rs`) for stride 1 and im2col + gemm (`conv_gemm.rs`)
//! otherwise. Candle's own backward computes the input gradient with a direct
//! `conv_transpose2d` loop, 10x slower than its forward, even when the input needs none.
//! The layer adds its bias, and a resnet's per-sample time embedding, as the direct
//! kernels store the output.

use super::channel::scale_shift;
use super::conv_op::{ConvBias, CpuConv};
use super::cpu::is_f32_cpu;
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Conv2dConfig, Init, VarBuilder};

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
    let fast = is_f32_cpu(x) && is_f32_cpu(w);
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
        .apply_op2(&w.contiguous()?, CpuConv { padding, stride })
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
        let op = CpuConv {
            padding: self.padding,
            stride: self.stride,
        };
        let (Some(b), Some(g)) = (&self.bias, op.direct(x.dims(), self.weight.dims())) else {
            return Ok(None);
        };
        if !(is_f32_cpu(x) && is_f32_cpu(&self.weight) && is_f32_cpu(b) && b.rank() == 1) {
            return Ok(None);
        }
        let (w, b) = (self.weight.contiguous()?, bias(b)?);
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
    use candle_core::Device;

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
