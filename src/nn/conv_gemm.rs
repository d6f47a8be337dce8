//! Convolution as im2col + gemm on the CPU: the columns of a batch chunk, one gemm with
//! the kernel as a matrix. The path of strided convolutions and of CPUs without AVX2
//! (docs/speed.md). Measured on one thread ([16, 32, 28, 28], 3x3): candle's conv2d forward
//! 24 ms, im2col + gemm 10 ms. The input gradient is the output gradient (zeros inserted for
//! the stride) convolved with the flipped, transposed kernel; the kernel gradient is one
//! gemm of the output gradient with the columns. The columns (9x the input for 3x3) live
//! only inside the op: the graph keeps x and w, as candle's does.

use super::conv_unfold::out_len;
use super::cpu::with_slice;
use candle_core::{Device, Result, Tensor};
use rayon::prelude::*;

/// x [B, C, H, W] -> columns [k*k*C, B*Ho*Wo], rows ordered (ky, kx, c): one gemm with
/// the kernel as [O, k*k*C] then convolves the whole batch. A direct loop: every column
/// row is written left to right and read from one image row, one pass over memory (a build
/// from narrow/stack tensor ops made several copies, each a fresh allocation).
pub(super) fn im2col(x: &Tensor, k: usize, p: usize, s: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (ho, wo) = (out_len(h, k, p, s)?, out_len(w, k, p, s)?);
    let l = ho * wo;
    let mut cols = vec![0f32; k * k * c * b * l];
    with_slice(x, |src| {
        // Rows are independent: one rayon task per (ky, kx, c) row.
        cols.par_chunks_mut(b * l).enumerate().for_each(|(r, row)| {
            let (ky, kx, ci) = (r / (k * c), (r / c) % k, r % c);
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
        });
        Ok(())
    })?;
    Tensor::from_vec(cols, (k * k * c, b * l), &Device::Cpu)
}

/// w [O, C, k, k] -> [O, k*k*C], matching the columns' row order.
pub(super) fn kernel_matrix(w: &Tensor) -> Result<Tensor> {
    let (o, c, k, _) = w.dims4()?;
    w.permute((0, 2, 3, 1))?.reshape((o, k * k * c))
}

/// Bytes of im2col columns per batch chunk: small enough to stay in cache and to be
/// reused by the allocator (a whole batch of 28x28 columns reaches hundreds of MB, which
/// the allocator maps fresh each time, and the kernel zeroes page by page).
const CHUNK_BYTES: usize = 8 << 20;

/// The convolution itself, on tensors that track nothing: [O, kkC] @ [kkC, b*L] per batch
/// chunk of b images.
pub(super) fn conv_gemm(x: &Tensor, w: &Tensor, p: usize, s: usize) -> Result<Tensor> {
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
pub(super) fn im2col_forced() -> bool {
    static FORCED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| std::env::var_os("SQDF_CONV_IM2COL").is_some())
}
