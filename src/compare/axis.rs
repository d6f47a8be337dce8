//! Axis ranges for the comparison figures. A run that collapses (SQDF with γ = 1 on the
//! digits reaches a reward of 30 where every other method ends near 2.5) would squeeze
//! every other line into a corner of a range that spans all points; the range instead
//! spans the bulk of the points, and a point outside it is drawn on the panel's edge,
//! marked, with its true value written beside it.

use std::ops::Range;

/// How far past the quartiles a point may lie and still set the range, in interquartile
/// ranges (Tukey's "far out" fence: only clear outliers are left out).
const FENCE: f64 = 3.0;

/// Fewer points than this are all shown: quartiles of a handful say little.
const MIN_POINTS: usize = 8;

/// The padded range over the finite values inside the fences.
pub fn robust_range(values: impl Iterator<Item = f64>) -> Range<f64> {
    let mut v: Vec<f64> = values.filter(|v| v.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    if v.len() < MIN_POINTS {
        return padded(v.into_iter());
    }
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    let (q1, q3) = (q(0.25), q(0.75));
    // A floor on the spread: with most points equal, the quartiles coincide and every other
    // point would otherwise count as an outlier.
    let iqr = (q3 - q1).max(0.05 * (v[v.len() - 1] - v[0]));
    let (lo_fence, hi_fence) = (q1 - FENCE * iqr, q3 + FENCE * iqr);
    let inside = v.iter().filter(|&&x| x >= lo_fence && x <= hi_fence);
    padded(inside.copied())
}

/// The range over the finite values, padded so that a single point or a flat line sits
/// inside the panel rather than on its edge (plotters rejects an empty range).
pub fn padded(values: impl Iterator<Item = f64>) -> Range<f64> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
            (l.min(v), h.max(v))
        });
    if lo > hi {
        return 0.0..1.0;
    }
    let pad = if hi > lo {
        (hi - lo) * 0.08
    } else {
        (lo.abs() * 0.05).max(1e-3)
    };
    (lo - pad)..(hi + pad)
}

/// `x` clamped into `r`, and whether it had to be.
pub fn clamp(x: f64, r: &Range<f64>) -> (f64, bool) {
    let c = x.clamp(r.start, r.end);
    (c, c != x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outlier_is_left_out_of_the_range() {
        let bulk = [1.8, 1.9, 2.0, 2.1, 2.2, 2.3, 2.4, 2.5, 2.6];
        let r = robust_range(bulk.iter().copied().chain([32.6]));
        assert!(r.start < 1.8 && r.end > 2.6 && r.end < 3.0, "{r:?}");
        assert_eq!(clamp(32.6, &r), (r.end, true));
        assert_eq!(clamp(2.0, &r), (2.0, false));
        // Without an outlier the range is the plain padded one.
        assert_eq!(
            robust_range(bulk.iter().copied()),
            padded(bulk.iter().copied())
        );
    }

    #[test]
    fn equal_values_and_nothing_still_give_a_range() {
        let r = robust_range([0.9, 0.9, 0.9, 0.9, 0.5].into_iter());
        assert!(
            r.start < 0.5 && r.end > 0.9,
            "{r:?}: too few points to leave one out"
        );
        let r = robust_range([1.0].into_iter());
        assert!(r.start < 1.0 && r.end > 1.0);
        assert_eq!(robust_range([f64::NAN].into_iter()), 0.0..1.0);
    }
}
