//! Direct stride-1 convolution kernels for the CPU (f32; AVX2 + FMA here, AVX-512 in
//! `conv_avx512.rs`), the digits UNet's hot path: 3x3 and 1x1 convolutions with 1 to 64
//! channels on 7x7 to 28x28 images.
//!
//! At these sizes im2col + gemm is bound by memory, not arithmetic: the columns are 9x
//! the input, freshly allocated and zeroed, and a gemm with 8 output rows cannot keep its
//! vector units busy. Here each image is copied once into a zero-padded plane per channel
//! (row stride `wp = W + 2p`), and the convolution is computed over the *flattened*
//! padded plane: output q = oy * wp + ox reads input q + ky * wp + kx for every tap, so
//! one contiguous run of q covers the whole image with unit-stride vector loads (the two
//! junk columns per row that this computes are masked off as the sums are stored straight
//! into the output). A register block holds OB output channels x 3 vectors of 8 pixels;
//! each tap is 3 loads, OB broadcasts and 3 OB FMAs.
//!
//! The three products of a convolution's forward and backward are all this one pattern:
//! - forward: y = conv(x, w, p);
//! - input gradient: dx = conv(dy, w flipped and transposed, k - 1 - p);
//! - kernel gradient: dw[o, c, ky, kx] = sum over b, q of dy[b, o, q] x[b, c, q + ky wp + kx].
//!
//! Every output element is summed by one task in a fixed order, so results do not depend
//! on the thread count. Without AVX2 + FMA the callers take the im2col path.

use super::conv_planes::PB;
pub use super::conv_planes::{
    channel_sums, dy_planes, flip_transpose, pad_planes, Geometry, Store,
};
use rayon::prelude::*;

/// The vector instructions a kernel runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX2 + FMA: 16 vectors of 8 floats.
    Avx2,
    /// AVX-512F: 32 vectors of 16 floats (`conv_avx512.rs`).
    Avx512,
}

impl Isa {
    /// The widest this CPU has (call only where `cpu::has_avx2_fma()`).
    pub fn best() -> Isa {
        match super::cpu::has_avx512f() {
            true => Isa::Avx512,
            false => Isa::Avx2,
        }
    }

    /// Output channels per register block for o channels: AVX-512 holds 8 x 3 vectors.
    fn block_of(self, o: usize) -> usize {
        let widest = if self == Isa::Avx512 { 8 } else { 4 };
        [8, 4, 2, 1]
            .into_iter()
            .find(|&b| b <= widest && o.is_multiple_of(b))
            .unwrap_or(1)
    }
}

/// y [B, O, ho, wo] = conv(x, w) + bias, x given padded ([B, C] planes from `pad_planes`),
/// w [O, C, k, k], bias [O] or [B, O].
pub fn forward(
    xp: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    b: usize,
    c: usize,
    o: usize,
    g: Geometry,
) -> Vec<f32> {
    forward_isa(Isa::best(), xp, w, bias, b, c, o, g)
}

/// `forward` with the given instructions (the tests compare both).
#[allow(clippy::too_many_arguments)]
pub fn forward_isa(
    isa: Isa,
    xp: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    b: usize,
    c: usize,
    o: usize,
    g: Geometry,
) -> Vec<f32> {
    let (ho, wo, wp, plane, k) = (g.ho(), g.wo(), g.wp(), g.plane(), g.k);
    super::flops::add(2 * b * o * c * k * k * ho * wo);
    let ob = isa.block_of(o);
    // Weights as [O / ob][C][k][k][ob]: a tap's ob weights are adjacent for the broadcasts.
    let mut wb = vec![0f32; o * c * k * k];
    for oi in 0..o {
        for r in 0..c * k * k {
            wb[((oi / ob) * c * k * k + r) * ob + oi % ob] = w[oi * c * k * k + r];
        }
    }
    let span = g.span();
    // A bias per channel [O], or per sample and channel [B, O].
    let bias_at = |bi: usize, ch: usize| {
        bias.map_or(0.0, |bs| match bs.len() == o {
            true => bs[ch],
            false => bs[bi * o + ch],
        })
    };
    // Every output is written exactly once, so the output is not zeroed first.
    let mut y: Vec<f32> = Vec::with_capacity(b * o * ho * wo);
    y.spare_capacity_mut()
        .par_chunks_mut(ob * ho * wo)
        .enumerate()
        .for_each(|(task, out)| {
            let (bi, blk) = (task / (o / ob), task % (o / ob));
            let img = &xp[bi * c * plane..];
            let wts = &wb[blk * c * k * k * ob..][..c * k * k * ob];
            let mut adds = [0f32; 8];
            for (j, a) in adds.iter_mut().take(ob).enumerate() {
                *a = bias_at(bi, blk * ob + j);
            }
            let st = Store {
                out: out.as_mut_ptr().cast(),
                ho,
                wo,
                bias: &adds[..ob],
            };
            // SAFETY: `cpu::has_avx2_fma()` was checked by the caller (and AVX-512F by Isa::best);
            // reads stay inside `xp` (planes plus SLACK), writes inside this task's
            // ob x ho x wo chunk.
            unsafe { conv_store(isa, &st, img, wts, ob, c, k, wp, plane, span) };
        });
    // SAFETY: the chunks cover the whole capacity and every element was written above.
    unsafe { y.set_len(b * o * ho * wo) };
    y
}

/// One block of ob output channels over a whole plane, stored through `st`.
#[allow(clippy::too_many_arguments)]
unsafe fn conv_store(
    isa: Isa,
    st: &Store,
    img: &[f32],
    wts: &[f32],
    ob: usize,
    c: usize,
    k: usize,
    wp: usize,
    plane: usize,
    span: usize,
) {
    #[cfg(target_arch = "x86_64")]
    {
        use super::conv_avx512::conv_block as z;
        match (isa, ob) {
            (Isa::Avx512, 8) => z::<8>(img, wts, st, c, k, wp, plane, span),
            (Isa::Avx512, 4) => z::<4>(img, wts, st, c, k, wp, plane, span),
            (Isa::Avx512, 2) => z::<2>(img, wts, st, c, k, wp, plane, span),
            (Isa::Avx512, _) => z::<1>(img, wts, st, c, k, wp, plane, span),
            (_, 4) => x86::conv_block::<4>(img, wts, st, c, k, wp, plane, span),
            (_, 2) => x86::conv_block::<2>(img, wts, st, c, k, wp, plane, span),
            _ => x86::conv_block::<1>(img, wts, st, c, k, wp, plane, span),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (isa, st, img, wts, ob, c, k, wp, plane, span);
        unreachable!("cpu::has_avx2_fma() is false off x86_64")
    }
}

/// dw [O, C, k, k] = sum over b, q of dy[b, o, q] * x[b, c, q + ky wp + kx], x padded and
/// dy given as padded-stride planes (`dy_planes`), junk columns zero.
pub fn kernel_grad(xp: &[f32], dyq: &[f32], b: usize, c: usize, o: usize, g: Geometry) -> Vec<f32> {
    kernel_grad_isa(Isa::best(), xp, dyq, b, c, o, g)
}

/// `kernel_grad` with the given instructions (the tests compare both).
pub fn kernel_grad_isa(
    isa: Isa,
    xp: &[f32],
    dyq: &[f32],
    b: usize,
    c: usize,
    o: usize,
    g: Geometry,
) -> Vec<f32> {
    let (k, wp, plane) = (g.k, g.wp(), g.plane());
    super::flops::add(2 * b * o * c * k * k * g.ho() * g.wo());
    let span = g.span();
    // OB x 3 taps of accumulators: 4 channels fit AVX2's registers, and AVX-512's too
    // (wider blocks would only share fewer dy loads).
    let ob = Isa::Avx2.block_of(o);
    // One task per (o block, c): dw[o block, c, :, :], over every image.
    let mut parts = vec![0f32; o * c * k * k];
    parts
        .par_chunks_mut(ob * k * k)
        .enumerate()
        .for_each(|(task, out)| {
            let (blk, ci) = (task / c, task % c);
            for bi in 0..b {
                let x = &xp[(bi * c + ci) * plane..];
                let dy = &dyq[(bi * o + blk * ob) * span..][..ob * span];
                // SAFETY: `cpu::has_avx2_fma()` was checked by the caller; reads of x stay inside
                // `xp` (planes plus SLACK).
                unsafe { kgrad_planes(isa, x, dy, out, ob, k, wp, span) };
            }
        });
    // parts is [O / ob][C][ob][k][k]: reorder to [O][C][k][k].
    let mut dw = vec![0f32; o * c * k * k];
    for blk in 0..o / ob {
        for ci in 0..c {
            for j in 0..ob {
                let src = &parts[((blk * c + ci) * ob + j) * k * k..][..k * k];
                dw[((blk * ob + j) * c + ci) * k * k..][..k * k].copy_from_slice(src);
            }
        }
    }
    dw
}

#[allow(clippy::too_many_arguments)]
unsafe fn kgrad_planes(
    isa: Isa,
    x: &[f32],
    dy: &[f32],
    out: &mut [f32],
    ob: usize,
    k: usize,
    wp: usize,
    span: usize,
) {
    #[cfg(target_arch = "x86_64")]
    {
        use super::conv_avx512 as z;
        match (isa, ob) {
            (Isa::Avx512, 4) => z::kgrad_block::<4>(x, dy, out, k, wp, span),
            (Isa::Avx512, 2) => z::kgrad_block::<2>(x, dy, out, k, wp, span),
            (Isa::Avx512, _) => z::kgrad_block::<1>(x, dy, out, k, wp, span),
            (_, 4) => x86::kgrad_block::<4>(x, dy, out, k, wp, span),
            (_, 2) => x86::kgrad_block::<2>(x, dy, out, k, wp, span),
            _ => x86::kgrad_block::<1>(x, dy, out, k, wp, span),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (isa, x, dy, out, ob, k, wp, span);
        unreachable!("cpu::has_avx2_fma() is false off x86_64")
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Store, PB};
    use std::arch::x86_64::*;

    /// out[j][oy][ox] = bias[j] + sum over c, ky, kx of wts[c][ky][kx][j] *
    /// img[c][q + ky wp + kx] at q = oy wp + ox, stored from the registers through masks
    /// that skip each row's junk columns (as `conv_avx512::conv_block`, 8 lanes).
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn conv_block<const OB: usize>(
        img: &[f32],
        wts: &[f32],
        st: &Store,
        c: usize,
        k: usize,
        wp: usize,
        plane: usize,
        span: usize,
    ) {
        let (ip, wptr) = (img.as_ptr(), wts.as_ptr());
        let per = st.ho * st.wo;
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let mut q = 0;
        while q < span {
            let mut a = [[_mm256_setzero_ps(); 3]; OB];
            for ci in 0..c {
                let base = ip.add(ci * plane + q);
                for ky in 0..k {
                    for kx in 0..k {
                        let src = base.add(ky * wp + kx);
                        let v = [
                            _mm256_loadu_ps(src),
                            _mm256_loadu_ps(src.add(8)),
                            _mm256_loadu_ps(src.add(16)),
                        ];
                        let wt = wptr.add(((ci * k + ky) * k + kx) * OB);
                        for (j, aj) in a.iter_mut().enumerate() {
                            let s = _mm256_broadcast_ss(&*wt.add(j));
                            for (u, au) in aj.iter_mut().enumerate() {
                                *au = _mm256_fmadd_ps(s, v[u], *au);
                            }
                        }
                    }
                }
            }
            for u in 0..3 {
                for (lo, hi, at) in st.rows(q + 8 * u, 8, wp) {
                    let mask = _mm256_and_si256(
                        _mm256_cmpgt_epi32(lanes, _mm256_set1_epi32(lo as i32 - 1)),
                        _mm256_cmpgt_epi32(_mm256_set1_epi32(hi as i32), lanes),
                    );
                    for (j, aj) in a.iter().enumerate() {
                        let dst = st.out.wrapping_offset((j * per) as isize + at);
                        let y = _mm256_add_ps(aj[u], _mm256_set1_ps(st.bias[j]));
                        _mm256_maskstore_ps(dst, mask, y);
                    }
                }
            }
            q += PB;
        }
    }

    /// out [OB][k][k] += sum over q of dy[j][q] * x[q + ky wp + kx].
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn kgrad_block<const OB: usize>(
        x: &[f32],
        dy: &[f32],
        out: &mut [f32],
        k: usize,
        wp: usize,
        span: usize,
    ) {
        for ky in 0..k {
            // Taps of one kernel row at a time, three at once where they fit: OB x 3
            // accumulators held in registers (the tap count is a constant so that the
            // accumulator array is not spilled).
            let mut kx0 = 0;
            while kx0 + 3 <= k {
                kgrad_taps::<OB, 3>(x, dy, out, k, wp, span, ky, kx0);
                kx0 += 3;
            }
            while kx0 < k {
                kgrad_taps::<OB, 1>(x, dy, out, k, wp, span, ky, kx0);
                kx0 += 1;
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    // Indexing the accumulators by tap and channel keeps them in registers.
    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
    unsafe fn kgrad_taps<const OB: usize, const T: usize>(
        x: &[f32],
        dy: &[f32],
        out: &mut [f32],
        k: usize,
        wp: usize,
        span: usize,
        ky: usize,
        kx0: usize,
    ) {
        let (xp, dp) = (x.as_ptr().add(ky * wp + kx0), dy.as_ptr());
        let mut a = [[_mm256_setzero_ps(); T]; OB];
        let mut q = 0;
        while q < span {
            let mut d = [_mm256_setzero_ps(); OB];
            for (j, dj) in d.iter_mut().enumerate() {
                *dj = _mm256_loadu_ps(dp.add(j * span + q));
            }
            for t in 0..T {
                let v = _mm256_loadu_ps(xp.add(q + t));
                for j in 0..OB {
                    a[j][t] = _mm256_fmadd_ps(d[j], v, a[j][t]);
                }
            }
            q += 8;
        }
        for (j, aj) in a.iter().enumerate() {
            for (t, at) in aj.iter().enumerate() {
                out[(j * k + ky) * k + kx0 + t] += hsum(*at);
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }
}

#[cfg(test)]
#[path = "conv_direct_tests.rs"]
mod tests;
