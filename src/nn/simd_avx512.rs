//! `simd.rs`'s exp, sigmoid and erf in AVX-512: the same formulas and constants, 16 floats
//! a step (half the instructions of AVX2; on CPUs with two 512-bit FMA units, half the
//! time).
#![cfg(target_arch = "x86_64")]

use super::simd_scalar::{scalar, Kind, ERF_A, ERF_P, ERF_SERIES};
use std::arch::x86_64::*;

/// y[i] = f(x[i]); the tail past the last 16 goes through a masked step.
///
/// # Safety
/// The CPU has AVX-512F (`cpu::has_avx512f()`); x and y have the same length.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn map(x: &[f32], y: &mut [f32], kind: Kind) {
    let n = x.len() / 16 * 16;
    let (xp, yp) = (x.as_ptr(), y.as_mut_ptr());
    let mut i = 0;
    while i < n {
        let v = _mm512_loadu_ps(xp.add(i));
        _mm512_storeu_ps(yp.add(i), apply(v, kind));
        i += 16;
    }
    for j in n..x.len() {
        y[j] = scalar(x[j], kind);
    }
}

#[target_feature(enable = "avx512f")]
unsafe fn apply(v: __m512, kind: Kind) -> __m512 {
    match kind {
        Kind::Exp => exp16(v),
        Kind::Sigmoid => sigmoid16(v),
        Kind::Erf => erf16(v),
    }
}

#[target_feature(enable = "avx512f")]
unsafe fn exp16(x: __m512) -> __m512 {
    // Below the smallest normal result: 0 (expf would return a subnormal).
    let tiny = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.336_54), _CMP_LT_OQ);
    let x = _mm512_min_ps(_mm512_set1_ps(88.8), x);
    let x = _mm512_max_ps(_mm512_set1_ps(-87.336_54), x);
    let fx = _mm512_roundscale_ps(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
    );
    // r = x - n ln 2, ln 2 in two parts so that the product is exact.
    let r = _mm512_fnmadd_ps(fx, _mm512_set1_ps(0.693_359_4), x);
    let r = _mm512_fnmadd_ps(fx, _mm512_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm512_set1_ps(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let r2 = _mm512_mul_ps(r, r);
    let p = _mm512_add_ps(_mm512_fmadd_ps(p, r2, r), _mm512_set1_ps(1.0));
    // 2^n as 2^(n >> 1) 2^(n - (n >> 1)), both factors normal, as in AVX2.
    let n = _mm512_cvtps_epi32(fx);
    let half = _mm512_srai_epi32(n, 1);
    let pow = |e: __m512i| {
        _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_add_epi32(e, _mm512_set1_epi32(127)),
            23,
        ))
    };
    let p = _mm512_mul_ps(_mm512_mul_ps(p, pow(half)), pow(_mm512_sub_epi32(n, half)));
    _mm512_mask_mov_ps(p, tiny, _mm512_setzero_ps())
}

#[target_feature(enable = "avx512f")]
unsafe fn sigmoid16(x: __m512) -> __m512 {
    let one = _mm512_set1_ps(1.0);
    let e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), x));
    // 1 / d by the 14-bit reciprocal and one Newton step (within an ulp or two): a
    // division is several times slower, and SiLU's sigmoid is most of this file's work.
    let d = _mm512_add_ps(one, e);
    let r = _mm512_rcp14_ps(d);
    let y = _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.0)));
    // exp(-x) overflowed (x below -88): 1 / inf is 0, where Newton's step gives inf · 0.
    let inf = _mm512_cmp_ps_mask(d, _mm512_set1_ps(f32::INFINITY), _CMP_EQ_OQ);
    _mm512_mask_mov_ps(y, inf, _mm512_setzero_ps())
}

#[target_feature(enable = "avx512f")]
unsafe fn erf16(x: __m512) -> __m512 {
    let bits = _mm512_castps_si512;
    let sign = _mm512_and_si512(bits(x), _mm512_set1_epi32(i32::MIN));
    let a = _mm512_abs_ps(x);
    let one = _mm512_set1_ps(1.0);
    let t = _mm512_div_ps(one, _mm512_fmadd_ps(_mm512_set1_ps(ERF_P), a, one));
    let mut p = _mm512_set1_ps(ERF_A[4]);
    for c in [ERF_A[3], ERF_A[2], ERF_A[1], ERF_A[0]] {
        p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(c));
    }
    p = _mm512_mul_ps(p, t);
    let e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(a, a)));
    let large = _mm512_castsi512_ps(_mm512_or_si512(bits(_mm512_fnmadd_ps(p, e, one)), sign));
    // |x| < 1: the series.
    let x2 = _mm512_mul_ps(x, x);
    let mut s = _mm512_set1_ps(ERF_SERIES[ERF_SERIES.len() - 1]);
    for &c in ERF_SERIES.iter().rev().skip(1) {
        s = _mm512_fmadd_ps(s, x2, _mm512_set1_ps(c));
    }
    let small = _mm512_mul_ps(s, x);
    _mm512_mask_mov_ps(large, _mm512_cmp_ps_mask(a, one, _CMP_LT_OQ), small)
}
