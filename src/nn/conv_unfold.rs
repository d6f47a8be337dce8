//! conv2d from differentiable tensor ops, the GPU's convolution: the k*k shifted slices of
//! the padded input stacked as im2col columns [B, C*k*k, H'*W'], times the kernel
//! [O, C*k*k]. Its backward is slices and a gemm, where candle's CUDA conv backward
//! computes the input gradient with a naive `conv_transpose2d` kernel (CANDLE-NOTES).
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
//! H200 made no progress for 5 minutes (docs/gpu-h200-2026-11-26).

use super::conv::out_len;
use candle_core::{Result, Tensor};

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
    // `strided` reads s rows per output row; the last window's group runs up to s - 1 rows
    // past the padded input, so those are zeros that no output reads.
    let (pad_lo, pad_hi) = (padding, padding + s - 1);
    let xp = if pad_lo + pad_hi > 0 {
        x.pad_with_zeros(2, pad_lo, pad_hi)?
            .pad_with_zeros(3, pad_lo, pad_hi)?
    } else {
        x.clone()
    };
    if k == 1 {
        // No columns beyond the (strided) input itself.
        let xs = strided(&strided(&xp, 2, 0, oh, s)?, 3, 0, ow, s)?;
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
        let xb = xp.narrow(0, b0, images.min(b - b0))?;
        let mut bands = Vec::with_capacity(oh.div_ceil(rows));
        for r0 in (0..oh).step_by(rows) {
            let r = rows.min(oh - r0);
            // Output rows r0..r0+r read padded rows s*r0 .. s*(r0+r) + k - 1.
            let band = xb.narrow(2, s * r0, s * r + k - 1)?;
            bands.push(unfold_gemm(&band, w, r, ow, s)?);
        }
        batches.push(Tensor::cat(&bands, 2)?);
    }
    Tensor::cat(&batches, 0)
}

/// Along `dim`, the n rows start, start + s, ..., start + (n-1)s: a narrow to n groups of
/// s rows, a reshape that puts each group on its own axis, and the first of each group.
/// All three are differentiable views or copies, where an `index_select` would scatter in
/// its backward.
fn strided(x: &Tensor, dim: usize, start: usize, n: usize, s: usize) -> Result<Tensor> {
    if s == 1 {
        return x.narrow(dim, start, n);
    }
    let mut shape = x.dims().to_vec();
    shape[dim] = n;
    shape.insert(dim + 1, s);
    x.narrow(dim, start, n * s)?
        .reshape(shape)?
        .narrow(dim + 1, 0, 1)?
        .squeeze(dim + 1)
}

/// The convolution of a padded piece xp [n, C, s*oh + k - 1, s*ow + k - 1] at stride s:
/// [n, O, oh, ow].
fn unfold_gemm(xp: &Tensor, w: &Tensor, oh: usize, ow: usize, s: usize) -> Result<Tensor> {
    let (n, c, _, _) = xp.dims4()?;
    let (o, _, k, _) = w.dims4()?;
    let mut shifts = Vec::with_capacity(k * k);
    for ky in 0..k {
        for kx in 0..k {
            shifts.push(strided(&strided(xp, 2, ky, oh, s)?, 3, kx, ow, s)?);
        }
    }
    // [n, C, k*k, H', W']: channel-major, then kernel position, as w flattens.
    let cols = Tensor::stack(&shifts, 2)?.reshape((n, c * k * k, oh * ow))?;
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
            (1, 0, 1),
            (1, 0, 2),
            (3, 0, 1),
        ];
        for (k, pad, stride) in cases {
            let var = |seed, shape: (usize, usize, usize, usize)| {
                Var::from_tensor(&randn(&mut seeded(seed), shape, &d).unwrap()).unwrap()
            };
            // candle's own stride-2 backward fails on non-square input (DESIGN.md).
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
