//! The formulas `simd.rs` and `simd_avx512.rs` vectorise, in scalar form: their constants,
//! and the fallback (and tail) for CPUs without the vector instructions.

/// Which function a vector map computes.
#[derive(Clone, Copy)]
pub(super) enum Kind {
    Exp,
    Sigmoid,
    Erf,
}

/// erf(x) / x for |x| < 1 as a polynomial in x^2 (the Maclaurin series, 2/sqrt(pi) folded
/// in): relative accuracy where 7.1.26's absolute error would be large beside erf(x).
pub(super) const ERF_SERIES: [f32; 11] = {
    // 2/√π (-1)^n / (n! (2n + 1)), n = 0..10.
    let c = std::f32::consts::FRAC_2_SQRT_PI;
    [
        c,
        -c / 3.0,
        c / 10.0,
        -c / 42.0,
        c / 216.0,
        -c / 1320.0,
        c / 9360.0,
        -c / 75600.0,
        c / 685_440.0,
        -c / 6_894_720.0,
        c / 76_204_800.0,
    ]
};

pub(super) const ERF_P: f32 = 0.327_591_1;
pub(super) const ERF_A: [f32; 5] = [
    0.254_829_6,
    -0.284_496_74,
    1.421_413_8,
    -1.453_152_1,
    1.061_405_4,
];

pub(super) fn scalar(v: f32, kind: Kind) -> f32 {
    match kind {
        Kind::Exp => v.exp(),
        Kind::Sigmoid => 1.0 / (1.0 + (-v).exp()),
        Kind::Erf => {
            let a = v.abs();
            let t = 1.0 / (1.0 + ERF_P * a);
            let poly =
                t * (ERF_A[0] + t * (ERF_A[1] + t * (ERF_A[2] + t * (ERF_A[3] + t * ERF_A[4]))));
            if a < 1.0 {
                let x2 = v * v;
                return v * ERF_SERIES.iter().rev().fold(0.0, |acc, &c| acc * x2 + c);
            }
            (1.0 - poly * (-a * a).exp()).copysign(v)
        }
    }
}
