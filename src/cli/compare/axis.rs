//! Axis ranges for the comparison figures. A run that collapses (SQDF with γ = 1 on the
//! digits reaches a reward of 30 where every other method ends near 2.5) would squeeze
//! every other line into a corner of a range that spans all points; the range instead
//! leaves out such far points, and a point outside it is drawn on the panel's edge,
//! marked, with its true value written beside it.

use std::ops::Range;

/// Points at one end are left out when the gap that separates them from the rest exceeds
/// this many times the rest's spread to the other end's fifth (a spread that far points at
/// the other end do not widen). A group counts (γ = 1's collapse goes 16, 52, 120, 168,
/// 232 where the rest end near 2.7), and the cut taken is the one with the widest such gap.
/// (A quartile fence clipped the highest ordinary points of tightly clustered metrics.)
const FAR: f64 = 1.5;

/// ... and the gap exceeds this fraction of the larger magnitude of the kept range's two
/// ends: among alignments of 0.896 to 0.900, two at 0.907 and 0.910 lie far by spread but are
/// ordinary runs, where γ = 1's 0.07 is a collapse.
const FLOOR: f64 = 0.1;

/// Fewer points than this are all shown.
const MIN_POINTS: usize = 8;

/// The padded range over the finite values, less the far points at either end (at most a
/// fifth of the points from each end).
pub fn robust_range(values: impl Iterator<Item = f64>) -> Range<f64> {
    let mut v: Vec<f64> = values.filter(|v| v.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    if v.len() < MIN_POINTS {
        return padded(v.into_iter());
    }
    let most = v.len() / 5;
    let top = far_at_top(&v, most);
    let flipped: Vec<f64> = v.iter().rev().map(|x| -x).collect();
    let bottom = far_at_top(&flipped, most);
    padded(v[bottom..v.len() - top].iter().copied())
}

/// How many of the highest points of sorted `v` (at most `most`) lie far from the rest.
fn far_at_top(v: &[f64], most: usize) -> usize {
    // Never among the far points at either end (at most `most` of them).
    let base = v[most];
    let mut dropped = 0;
    loop {
        let n = v.len() - dropped;
        // The cut keeping v[..k] whose gap is widest against the kept spread.
        let mut best = (0.0, 0);
        for j in 1..=most - dropped {
            if n < j + most + 2 {
                break;
            }
            let k = n - j;
            let (gap, spread) = (v[k] - v[k - 1], v[k - 1] - base);
            let ratio = match (gap > FLOOR * v[k - 1].abs().max(base.abs()), spread > 0.0) {
                (false, _) => 0.0,
                (true, false) => f64::INFINITY,
                (true, true) => gap / spread,
            };
            if ratio > best.0 {
                best = (ratio, j);
            }
        }
        if best.0 > FAR {
            dropped += best.1;
        } else {
            return dropped;
        }
    }
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
    fn the_highest_points_of_a_tight_cluster_stay() {
        // Fig. 3's feature diversity: most runs in 0.134-0.152, one method's last points at
        // 0.167 and 0.176 (kept), γ = 1 at 0.299 (left out).
        let mut v: Vec<f64> = (0..30).map(|i| 0.134 + 0.0006 * i as f64).collect();
        v.extend([0.167, 0.176, 0.299]);
        let r = robust_range(v.into_iter());
        assert!(r.end > 0.176 && r.end < 0.2, "{r:?}");
    }

    #[test]
    fn points_apart_by_less_than_a_tenth_of_their_size_stay() {
        // The quick black-box figure's alignment: 0.896-0.900, and 0.907 and 0.910.
        let mut v = vec![0.8997; 5];
        v.extend([0.8956, 0.8970, 0.8978, 0.8999, 0.9070, 0.9100]);
        let r = robust_range(v.iter().copied());
        assert_eq!(r, padded(v.into_iter()));
    }

    #[test]
    fn a_collapsed_run_is_left_out_as_a_group() {
        // Fig. 3's reward axis: 60 points in 1.8-2.7, γ = 1's last five far apart.
        let mut v: Vec<f64> = (0..60).map(|i| 1.8 + 0.015 * i as f64).collect();
        v.extend([16.5, 52.0, 120.0, 168.0, 232.0]);
        let r = robust_range(v.into_iter());
        assert!(r.end > 2.68 && r.end < 3.0, "{r:?}");
        // The alignment axis: the same run's points at the bottom.
        let mut v: Vec<f64> = (0..60).map(|i| 0.87 + 0.0013 * i as f64).collect();
        v.extend([0.5, 0.07, 0.08, 0.07, 0.085]);
        let r = robust_range(v.into_iter());
        assert!(r.start > 0.8 && r.start < 0.87, "{r:?}");
    }

    #[test]
    fn two_outliers_are_both_left_out() {
        // A second far point (6.0) must not widen the fence enough to set the range itself.
        let bulk = [1.8, 1.9, 2.0, 2.1, 2.2, 2.3, 2.4, 2.5, 2.6];
        let r = robust_range(bulk.iter().copied().chain([32.6, 6.0]));
        assert!(r.end > 2.6 && r.end < 3.0, "{r:?}");
        // Equal values with one far point, enough of them to judge: the point is left out
        // (drawn on the edge, with its value), and the range is the equal values'.
        let r = robust_range([0.9; 8].into_iter().chain([0.5]));
        assert!(r.start > 0.5 && r.start < 0.9 && r.end > 0.9, "{r:?}");
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
