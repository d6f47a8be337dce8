//! Vectorised exp, sigmoid and erf over f32 slices (AVX-512F or AVX2 + FMA, with a scalar
//! fallback), for the fused CPU ops: libm's scalar `expf` and `erff` were a fifth of a
//! digits UNet forward (the SiLUs, the softmaxes and GEGLU's GELU).
//!
//! exp: Cephes' `expf` (x = n ln 2 + r, |r| <= ln 2 / 2, a degree-5 polynomial in r, then
//! 2^n from the exponent bits), within 2 ulp on [-87, 88], 0 below. erf: Abramowitz & Stegun 7.1.26,
//! absolute error below 1.5e-7 (about one rounding of a value near 1), and its Maclaurin series
//! below 1, where erf is small (the constants and scalar forms: `simd_scalar.rs`; AVX-512:
//! `simd_avx512.rs`).

use super::simd_scalar::{scalar, Kind};

/// y[i] = exp(x[i]).
pub fn exp(x: &[f32], y: &mut [f32]) {
    map(x, y, Kind::Exp)
}

/// y[i] = 1 / (1 + exp(-x[i])).
pub fn sigmoid(x: &[f32], y: &mut [f32]) {
    map(x, y, Kind::Sigmoid)
}

/// y[i] = erf(x[i]).
pub fn erf(x: &[f32], y: &mut [f32]) {
    map(x, y, Kind::Erf)
}

fn map(x: &[f32], y: &mut [f32], kind: Kind) {
    map_with(widest(), x, y, kind)
}

/// The vector width this CPU runs the functions at: 16 (AVX-512F), 8 (AVX2 + FMA) or 1.
fn widest() -> usize {
    use super::cpu::{has_avx2_fma, has_avx512f};
    match (has_avx512f(), has_avx2_fma()) {
        (true, _) => 16,
        (false, true) => 8,
        _ => 1,
    }
}

/// `map` at a given width, at most `widest()` (the tests check each).
fn map_with(width: usize, x: &[f32], y: &mut [f32], kind: Kind) {
    assert_eq!(x.len(), y.len(), "simd map: lengths differ");
    assert!(width <= widest(), "simd map: width {width} not on this CPU");
    #[cfg(target_arch = "x86_64")]
    match width {
        // SAFETY: AVX-512F was detected (width <= widest()); reads and writes stay in
        // the slices.
        16 => return unsafe { super::simd_avx512::map(x, y, kind) },
        // SAFETY: AVX2 and FMA were detected; the kernel reads and writes within the slices.
        8 => return unsafe { x86::map(x, y, kind) },
        _ => {}
    }
    for (o, &v) in y.iter_mut().zip(x) {
        *o = scalar(v, kind);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::simd_scalar::{scalar, Kind, ERF_A, ERF_P, ERF_SERIES};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn map(x: &[f32], y: &mut [f32], kind: Kind) {
        let n = x.len() / 8 * 8;
        let (xp, yp) = (x.as_ptr(), y.as_mut_ptr());
        let mut i = 0;
        while i < n {
            let v = _mm256_loadu_ps(xp.add(i));
            let r = match kind {
                Kind::Exp => exp8(v),
                Kind::Sigmoid => sigmoid8(v),
                Kind::Erf => erf8(v),
            };
            _mm256_storeu_ps(yp.add(i), r);
            i += 8;
        }
        for j in n..x.len() {
            y[j] = scalar(x[j], kind);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp8(x: __m256) -> __m256 {
        // Below the smallest normal result: 0 (expf would return a subnormal).
        let tiny = _mm256_cmp_ps(x, _mm256_set1_ps(-87.336_54), _CMP_LT_OQ);
        let x = _mm256_min_ps(_mm256_set1_ps(88.8), x);
        let x = _mm256_max_ps(_mm256_set1_ps(-87.336_54), x);
        let fx = _mm256_round_ps(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
        );
        // r = x - n ln 2, ln 2 in two parts so that the product is exact.
        let r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5,
        ] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let r2 = _mm256_mul_ps(r, r);
        let p = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), _mm256_set1_ps(1.0));
        // 2^n as 2^(n >> 1) 2^(n - (n >> 1)), both factors normal: a result near f32::MAX
        // stays finite, and past it is inf, as expf.
        let n = _mm256_cvtps_epi32(fx);
        let half = _mm256_srai_epi32(n, 1);
        let pow = |e: __m256i| {
            _mm256_castsi256_ps(_mm256_slli_epi32(
                _mm256_add_epi32(e, _mm256_set1_epi32(127)),
                23,
            ))
        };
        let p = _mm256_mul_ps(_mm256_mul_ps(p, pow(half)), pow(_mm256_sub_epi32(n, half)));
        _mm256_andnot_ps(tiny, p)
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn sigmoid8(x: __m256) -> __m256 {
        let one = _mm256_set1_ps(1.0);
        let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), x));
        _mm256_div_ps(one, _mm256_add_ps(one, e))
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn erf8(x: __m256) -> __m256 {
        let sign = _mm256_and_ps(x, _mm256_set1_ps(-0.0));
        let a = _mm256_andnot_ps(_mm256_set1_ps(-0.0), x);
        let one = _mm256_set1_ps(1.0);
        let t = _mm256_div_ps(one, _mm256_fmadd_ps(_mm256_set1_ps(ERF_P), a, one));
        let mut p = _mm256_set1_ps(ERF_A[4]);
        for c in [ERF_A[3], ERF_A[2], ERF_A[1], ERF_A[0]] {
            p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(c));
        }
        p = _mm256_mul_ps(p, t);
        let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(a, a)));
        let large = _mm256_or_ps(_mm256_fnmadd_ps(p, e, one), sign);
        // |x| < 1: the series.
        let x2 = _mm256_mul_ps(x, x);
        let mut s = _mm256_set1_ps(ERF_SERIES[ERF_SERIES.len() - 1]);
        for &c in ERF_SERIES.iter().rev().skip(1) {
            s = _mm256_fmadd_ps(s, x2, _mm256_set1_ps(c));
        }
        let small = _mm256_mul_ps(s, x);
        _mm256_blendv_ps(large, small, _mm256_cmp_ps(a, one, _CMP_LT_OQ))
    }
}

#[cfg(test)]
mod tests {
    /// Against the standard library's exp and 1 / (1 + exp(-x)), and erf against values
    /// from a table (libm's erff), over the range the networks see and beyond, at every
    /// vector width this CPU has (AVX-512, AVX2, scalar).
    #[test]
    fn vector_functions_match_the_scalar_formulas() {
        for width in [1, 8, 16].into_iter().filter(|&w| w <= super::widest()) {
            check_width(width);
        }
    }

    fn check_width(width: usize) {
        let map = |x: &[f32], y: &mut [f32], kind| super::map_with(width, x, y, kind);
        let exp = |x: &[f32], y: &mut [f32]| map(x, y, super::Kind::Exp);
        let x: Vec<f32> = (-2000..=2000).map(|i| i as f32 * 0.05 + 0.013).collect();
        let mut y = vec![0f32; x.len()];
        exp(&x, &mut y);
        for (&v, &e) in x.iter().zip(&y) {
            let r = v.exp();
            if r.is_infinite() {
                assert!(e.is_infinite(), "width {width}: exp({v}) = {e}, want inf");
                continue;
            }
            assert!(
                (e - r).abs() <= 3e-7 * r.abs().max(1e-30),
                "width {width}: exp({v}) = {e}, want {r}"
            );
        }
        map(&x, &mut y, super::Kind::Sigmoid);
        for (&v, &s) in x.iter().zip(&y) {
            let r = 1.0 / (1.0 + (-v).exp());
            assert!(
                (s - r).abs() <= 3e-7 * r.max(1e-30),
                "width {width}: sigmoid({v}) = {s}, want {r}"
            );
        }
        map(&x, &mut y, super::Kind::Erf);
        for (&v, &e) in x.iter().zip(&y) {
            let r = libm_erf(v as f64) as f32;
            let tol = if v.abs() < 1.0 { 4e-7 * r.abs() } else { 2e-7 };
            assert!(
                (e - r).abs() <= tol,
                "width {width}: erf({v}) = {e}, want {r}"
            );
        }
        // Tails: exp underflows to (nearly) zero and overflows to infinity, as expf does.
        // 16 values, so that every width takes its vector path.
        let tails = [-200.0, -100.0, 100.0, 0.0, 1.0, -1.0, 88.0, -87.0];
        let mut t = [0f32; 16];
        exp(&[tails, tails].concat(), &mut t);
        for h in [0, 8] {
            let ok = t[h] < 1e-37 && t[h + 1] < 1e-37 && t[h + 2].is_infinite() && t[h + 3] == 1.0;
            assert!(ok, "width {width}: exp tails {:?}", &t[h..h + 4]);
        }
    }

    /// erf in f64 by its Maclaurin series (|x| < 3) or the continued fraction of erfc.
    fn libm_erf(x: f64) -> f64 {
        let a = x.abs();
        let r = if a < 3.0 {
            let (mut term, mut sum, mut n) = (a, a, 0.0);
            while term.abs() > 1e-17 * sum.abs() {
                n += 1.0;
                term *= -a * a / n;
                sum += term / (2.0 * n + 1.0);
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            // erfc(a) = exp(-a^2) / sqrt(pi) * 1 / (a + 1/2 / (a + 1 / (a + 3/2 / (a + ...)))).
            let mut f = a;
            for k in (1..60).rev() {
                f = a + (k as f64 / 2.0) / f;
            }
            1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / f
        };
        r.copysign(x)
    }
}
