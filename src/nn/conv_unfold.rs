//! conv2d from differentiable tensor ops, the GPU's convolution: the k*k shifted slices of
//! the padded input stacked as im2col columns [B, C*k*k, H'*W'], times the kernel
//! [O, C*k*k]. Its backward is slices and a gemm, where candle's CUDA conv backward
//! computes the input gradient with a naive `conv_transpose2d` kernel (docs/design.md, candle).
//!
//! The columns are 9x the input for 3x3, so they are built a piece at a time: whole
//! images while they fit in `COLUMN_ELEMENTS`, else bands of output rows. Without a
//! gradient this bounds their memory (with one, every piece stays in the graph). Above all
//! it keeps the columns, the only tensor here 9x the input, under 2^31 elements, which
//! candle's CUDA kernels need: they index with 32-bit integers (`copy2d`'s
//! `idx1 * dst_s + idx2` is a `uint32_t`; the elementwise kernels loop
//! `for (unsigned int i = ...; i < numel; ...)`, which never ends past 2^32). Unchunked,
//! the VAE decoder's first 512x512 convolution (256 channels) builds 8 x 2304 x 262144 =
//! 4.8e9 columns for 8 images, and sampling 8 SD-1.5 trajectories at 64x64 latents on an
//! H200 made no progress for 5 minutes (docs/gpu/h200-2026-11-26).

use candle_core::{Result, Tensor};

/// Output size of a convolution along one dimension.
pub(super) fn out_len(n: usize, k: usize, p: usize, s: usize) -> Result<usize> {
    if n + 2 * p < k {
        candle_core::bail!("conv2d: input {n} (padding {p}) is smaller than the kernel {k}")
    }
    Ok((n + 2 * p - k) / s + 1)
}

/// Elements of one piece's columns: 2^30 (2 GiB in bf16, 4 GiB in f32).
const COLUMN_ELEMENTS: usize = 1 << 30;

/// conv2d(x [B, C, H, W], w [O, C, k, k]) with symmetric `padding` and `stride`, no
/// dilation or groups. A stride takes every stride-th window, so the columns and the gemm
/// are only the output's size.
pub fn conv2d_unfold(x: &Tensor, w: &Tensor, padding: usize, stride: usize) -> Result<Tensor> {
    conv2d_unfold_in_pieces(x, w, padding, stride, COLUMN_ELEMENTS)
}

/// `conv2d_unfold` with at most `elements` column elements per piece (tests use small ones).
fn conv2d_unfold_in_pieces(
    x: &Tensor,
    w: &Tensor,
    padding: usize,
    s: usize,
    elements: usize,
) -> Result<Tensor> {
    let (b, c, h, wd) = x.dims4()?;
    let (o, _, k, _) = w.dims4()?;
    if s == 0 {
        candle_core::bail!("conv2d: stride 0");
    }
    let (oh, ow) = (out_len(h, k, padding, s)?, out_len(wd, k, padding, s)?);
    // Polyphase: the padded input viewed as [B, C, H/s, s, W/s, s] has input row s*i + ky
    // as row i + ky/s of phase ky % s, so every window a stride takes is a view (`window`)
    // and only the columns are copied, as at stride 1. The view needs s*(oh + e) rows and
    // columns; the padding below and right grows to that with zeros no window reads. With e
    // rounded up (the last tap needs only (k-1)/s), s*(oh + e) >= h + 2*padding always, so
    // that padding is never negative.
    let e = (k - 1).div_ceil(s);
    let (ph, pw) = (oh + e, ow + e);
    let xp = x
        .pad_with_zeros(2, padding, s * ph - h - padding)?
        .pad_with_zeros(3, padding, s * pw - wd - padding)?;
    let phases = xp.reshape((b, c, ph, s, pw, s))?;
    if k == 1 {
        // No columns beyond the (strided) input itself.
        let xs = window(&phases, 0, 0, oh, ow)?;
        return w
            .reshape((o, c))?
            .broadcast_matmul(&xs.reshape((b, c, oh * ow))?)?
            .reshape((b, o, oh, ow));
    }
    let row = (c * k * k * ow).max(1); // column elements of one output row of one image
    let (images, rows) = if oh * row <= elements {
        ((elements / (oh * row)).clamp(1, b.max(1)), oh)
    } else {
        (1, (elements / row).max(1))
    };
    let mut batches = Vec::with_capacity(b.div_ceil(images));
    for b0 in (0..b).step_by(images) {
        let pb = phases.narrow(0, b0, images.min(b - b0))?;
        let mut bands = Vec::with_capacity(oh.div_ceil(rows));
        for r0 in (0..oh).step_by(rows) {
            let r = rows.min(oh - r0);
            // Output rows r0..r0+r read phase rows r0..r0+r+e.
            bands.push(unfold_gemm(&pb.narrow(2, r0, r + e)?, w, r, ow)?);
        }
        batches.push(Tensor::cat(&bands, 2)?);
    }
    Tensor::cat(&batches, 0)
}

/// The inputs under kernel tap (ky, kx) of an oh x ow output at stride s, from the phases
/// [n, C, H/s, s, W/s, s]: [n, C, oh, ow], a view.
fn window(phases: &Tensor, ky: usize, kx: usize, oh: usize, ow: usize) -> Result<Tensor> {
    let s = phases.dim(3)?;
    phases
        .narrow(5, kx % s, 1)?
        .squeeze(5)?
        .narrow(3, ky % s, 1)?
        .squeeze(3)?
        .narrow(2, ky / s, oh)?
        .narrow(3, kx / s, ow)
}

/// The convolution of a band of phases [n, C, oh + e, s, ow + e, s]: [n, O, oh, ow].
fn unfold_gemm(phases: &Tensor, w: &Tensor, oh: usize, ow: usize) -> Result<Tensor> {
    let (n, c) = (phases.dim(0)?, phases.dim(1)?);
    let (o, _, k, _) = w.dims4()?;
    let mut taps = Vec::with_capacity(k * k);
    for ky in 0..k {
        for kx in 0..k {
            taps.push(window(phases, ky, kx, oh, ow)?);
        }
    }
    // [n, C, k*k, H', W']: channel-major, then kernel position, as w flattens.
    let cols = Tensor::stack(&taps, 2)?.reshape((n, c * k * k, oh * ow))?;
    w.reshape((o, c * k * k))?
        .broadcast_matmul(&cols)?
        .reshape((n, o, oh, ow))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::conv::diff;
    use crate::rng::{randn, seeded};
    use candle_core::{Device, Var};

    /// On the CPU: values and both gradients equal candle's conv2d, whole and in pieces
    /// (several images per piece, one image, bands of 2 rows, bands of 1 row), at strides
    /// 1, 2 and 3 (7 rows: stride 2 and 3 leave a remainder past the last window).
    #[test]
    fn unfold_matches_candle_conv_and_its_gradients_in_any_pieces() {
        let d = Device::Cpu;
        let cases = [
            (3, 1, 1),
            (3, 1, 2),
            (3, 0, 2),
            (3, 1, 3),
            (3, 0, 3),
            (1, 0, 1),
            (1, 0, 2),
            (3, 0, 1),
        ];
        for (k, pad, stride) in cases {
            let var = |seed, shape: (usize, usize, usize, usize)| {
                Var::from_tensor(&randn(&mut seeded(seed), shape, &d).unwrap()).unwrap()
            };
            // candle's own stride-2 backward fails on non-square input (docs/design.md).
            let wd = if stride == 1 { 6 } else { 7 };
            let (x, w) = (var(1, (3, 3, 7, wd)), var(2, (4, 3, k, k)));
            let b = x.conv2d(&w, pad, stride, 1, 1).unwrap();
            let r = randn(&mut seeded(3), b.shape(), &d).unwrap();
            let gb = (&b * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let row = 3 * k * k * ((wd + 2 * pad - k) / stride + 1);
            for elements in [usize::MAX, 2 * 7 * row, 7 * row, 2 * row, 1] {
                let a = conv2d_unfold_in_pieces(&x, &w, pad, stride, elements).unwrap();
                assert_eq!(a.dims(), b.dims());
                let case = format!("k={k} pad={pad} stride={stride} elements={elements}");
                assert!(diff(&a, &b) < 1e-4, "{case}");
                let ga = (&a * &r).unwrap().sum_all().unwrap().backward().unwrap();
                for v in [&x, &w] {
                    let (p, q) = (
                        ga.get(v.as_tensor()).unwrap(),
                        gb.get(v.as_tensor()).unwrap(),
                    );
                    assert!(diff(p, q) < 1e-3, "gradient, {case}");
                }
            }
        }
    }
}
