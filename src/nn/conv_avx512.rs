//! The direct convolution kernels of `conv_direct.rs` in AVX-512: twice the register file
//! (32 vectors of 16 floats) and, on CPUs with two 512-bit FMA units, twice AVX2's peak.
//!
//! The forward block holds OB output channels x 3 vectors of 16 pixels (48 pixels, up to
//! 24 accumulators); a plane's `span` is a multiple of 24 (`conv_planes::PB`), so its last
//! block may be 24 pixels, computed as 2 vectors. The sums are stored straight into the
//! output through masks that drop each row's junk columns.
//! The kernel gradient holds OB x 3 taps and reads 16 pixels a step, the last 8 through a
//! mask. Sums run in the same fixed order whatever the thread count, as in AVX2.
#![cfg(target_arch = "x86_64")]

use super::conv_planes::Store;
use std::arch::x86_64::*;

/// out[j][oy][ox] = bias[j] + sum over c, ky, kx of wts[c][ky][kx][j] * img[c][q + ky wp + kx]
/// at q = oy wp + ox: the sums go from the registers straight into the output (the lanes of
/// each row's junk columns masked off), with no accumulator planes and no copy after.
///
/// # Safety
/// The CPU has AVX-512F; `img` holds the c planes plus 40 floats of slack past the last
/// block's reads (`conv_planes::SLACK`); `st.out` has OB x ho x wo writable floats and
/// `st.bias` OB values; span % 24 == 0.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn conv_block<const OB: usize>(
    img: &[f32],
    wts: &[f32],
    st: &Store,
    c: usize,
    k: usize,
    wp: usize,
    plane: usize,
    span: usize,
) {
    let mut q = 0;
    while q + 48 <= span {
        conv_pixels::<OB, 3>(img, wts, st, c, k, wp, plane, q);
        q += 48;
    }
    if q < span {
        // 24 pixels left: two vectors, the second's upper half junk (masked at the store).
        conv_pixels::<OB, 2>(img, wts, st, c, k, wp, plane, q);
    }
}

/// One block of OB channels x U vectors of 16 pixels from q.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn conv_pixels<const OB: usize, const U: usize>(
    img: &[f32],
    wts: &[f32],
    st: &Store,
    c: usize,
    k: usize,
    wp: usize,
    plane: usize,
    q: usize,
) {
    let (ip, wptr) = (img.as_ptr(), wts.as_ptr());
    let mut a = [[_mm512_setzero_ps(); U]; OB];
    for ci in 0..c {
        let base = ip.add(ci * plane + q);
        for ky in 0..k {
            for kx in 0..k {
                let src = base.add(ky * wp + kx);
                let mut v = [_mm512_setzero_ps(); U];
                for u in 0..U {
                    v[u] = _mm512_loadu_ps(src.add(16 * u));
                }
                let wt = wptr.add(((ci * k + ky) * k + kx) * OB);
                for j in 0..OB {
                    let s = _mm512_set1_ps(*wt.add(j));
                    for u in 0..U {
                        a[j][u] = _mm512_fmadd_ps(s, v[u], a[j][u]);
                    }
                }
            }
        }
    }
    let per = st.ho * st.wo;
    for u in 0..U {
        for (lo, hi, at) in st.rows(q + 16 * u, 16, wp) {
            let mask = (((1u32 << hi) - 1) & !((1u32 << lo) - 1)) as __mmask16;
            for j in 0..OB {
                let dst = st.out.wrapping_offset((j * per) as isize + at);
                let y = _mm512_add_ps(a[j][u], _mm512_set1_ps(st.bias[j]));
                _mm512_mask_storeu_ps(dst, mask, y);
            }
        }
    }
}

/// out [OB][k][k] += sum over q of dy[j][q] * x[q + ky wp + kx].
///
/// # Safety
/// The CPU has AVX-512F; `dy` holds OB x span floats (span % 8 == 0), `x` one padded
/// plane plus slack as for `conv_block`.
#[target_feature(enable = "avx512f")]
pub unsafe fn kgrad_block<const OB: usize>(
    x: &[f32],
    dy: &[f32],
    out: &mut [f32],
    k: usize,
    wp: usize,
    span: usize,
) {
    for ky in 0..k {
        // Three taps of a kernel row at a time where they fit (OB x 3 accumulators).
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

#[target_feature(enable = "avx512f")]
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
    let mut a = [[_mm512_setzero_ps(); T]; OB];
    let mut q = 0;
    while q < span {
        // The last step may have 8 pixels: the mask reads only those.
        let m: __mmask16 = if q + 16 <= span { 0xFFFF } else { 0x00FF };
        let mut d = [_mm512_setzero_ps(); OB];
        for j in 0..OB {
            d[j] = _mm512_maskz_loadu_ps(m, dp.add(j * span + q));
        }
        for t in 0..T {
            let v = _mm512_maskz_loadu_ps(m, xp.add(q + t));
            for j in 0..OB {
                a[j][t] = _mm512_fmadd_ps(d[j], v, a[j][t]);
            }
        }
        q += 16;
    }
    for j in 0..OB {
        for t in 0..T {
            out[(j * k + ky) * k + kx0 + t] += _mm512_reduce_add_ps(a[j][t]);
        }
    }
}
