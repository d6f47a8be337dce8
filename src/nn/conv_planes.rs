//! The layout the direct convolution kernels compute in (`conv_direct.rs`): zero-padded,
//! flattened planes, where output q = oy·wp + ox reads input q + ky·wp + kx, and the
//! reshapes in and out of it (padding, the output gradient's planes, the flipped kernel,
//! the bias gradient's sums).

use rayon::prelude::*;

/// Pixels per register block: 3 vectors of 8.
pub(super) const PB: usize = 24;
/// Floats of slack after the last plane: the last block of a plane may read up to PB - 1
/// floats past its span (AVX2) or PB + 7 (AVX-512's half block); those results are junk
/// and dropped.
pub(super) const SLACK: usize = PB + 16;

/// Where a register block's sums go: OB output planes of ho x wo floats from `out`, one
/// after the other, each sum plus its channel's `bias` (OB values).
pub struct Store<'a> {
    pub out: *mut f32,
    pub ho: usize,
    pub wo: usize,
    pub bias: &'a [f32],
}

impl Store<'_> {
    /// Where a vector of `lanes` sums at positions q0.. of the padded plane (row stride
    /// wp) goes: for each output row it touches, (lo, hi, at), lanes lo..hi landing at
    /// out[at + lane] of each output plane. Lane i of row r (q0 + i in [r wp, r wp + wo))
    /// is out[r wo + q0 + i - r wp]; the junk columns and rows past ho are in no range.
    /// `at` may be negative (lane 0 before the plane), so stores go through masks.
    pub(super) fn rows(
        &self,
        q0: usize,
        lanes: usize,
        wp: usize,
    ) -> impl Iterator<Item = (usize, usize, isize)> {
        let (ho, wo) = (self.ho, self.wo);
        let last = ((q0 + lanes - 1) / wp).min(ho.saturating_sub(1));
        (q0 / wp..=last).filter_map(move |r| {
            let lo = (r * wp).saturating_sub(q0);
            let hi = (r * wp + wo).saturating_sub(q0).min(lanes);
            (lo < hi).then(|| (lo, hi, q0 as isize - (r * (wp - wo)) as isize))
        })
    }
}

/// Geometry of a stride-1 convolution over padded, flattened planes.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub p: usize,
}

impl Geometry {
    pub fn hp(&self) -> usize {
        self.h + 2 * self.p
    }
    pub fn wp(&self) -> usize {
        self.w + 2 * self.p
    }
    pub fn ho(&self) -> usize {
        self.hp() + 1 - self.k
    }
    pub fn wo(&self) -> usize {
        self.wp() + 1 - self.k
    }
    /// Floats per padded plane in a padded buffer.
    pub fn plane(&self) -> usize {
        self.hp() * self.wp()
    }
    /// Output positions q computed per plane (rounded up to whole register blocks).
    pub(super) fn span(&self) -> usize {
        let n = (self.ho() - 1) * self.wp() + self.wo();
        n.div_ceil(PB) * PB
    }
}

/// x [n planes of h x w] -> zero-padded planes of hp x wp, plus slack at the end.
pub fn pad_planes(x: &[f32], planes: usize, g: Geometry) -> Vec<f32> {
    let (h, w, p, wp, plane) = (g.h, g.w, g.p, g.wp(), g.plane());
    // Each float is written once, the border as zero and the image as copied: zeroing the
    // whole buffer first was a tenth of a forward (a memset and fresh pages).
    let mut out: Vec<f32> = Vec::with_capacity(planes * plane + SLACK);
    let spare = &mut out.spare_capacity_mut()[..planes * plane + SLACK];
    let (body, slack) = spare.split_at_mut(planes * plane);
    zero(slack);
    body.par_chunks_mut(plane)
        .zip(x.par_chunks(h * w))
        .for_each(|(dst, src)| {
            zero(&mut dst[..p * wp + p]);
            for y in 0..h {
                let row = &mut dst[(y + p) * wp + p..];
                // SAFETY: w floats from src's row into w floats of dst's row; the two
                // slices do not overlap.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        src[y * w..][..w].as_ptr(),
                        row.as_mut_ptr().cast(),
                        w,
                    )
                };
                // The right border of this row and the left border of the next.
                let gap = if y + 1 < h { 2 * p } else { 0 };
                zero(&mut row[w..w + gap]);
            }
            zero(&mut dst[(h + p) * wp - p..]);
        });
    // SAFETY: every float of the first planes * plane + SLACK was written above.
    unsafe { out.set_len(planes * plane + SLACK) };
    out
}

fn zero(s: &mut [std::mem::MaybeUninit<f32>]) {
    // SAFETY: s.len() floats from s's start; all-zero bytes are the float 0.0.
    unsafe { std::ptr::write_bytes(s.as_mut_ptr(), 0, s.len()) };
}

/// dy [B, O, ho, wo] -> planes of `span` floats at row stride wp (the layout `forward`
/// computes in), junk columns and the tail zero: the kernel gradient's operand.
pub fn dy_planes(dy: &[f32], planes: usize, g: Geometry) -> Vec<f32> {
    let (ho, wo, wp, span) = (g.ho(), g.wo(), g.wp(), g.span());
    let mut out = vec![0f32; planes * span];
    out.par_chunks_mut(span)
        .zip(dy.par_chunks(ho * wo))
        .for_each(|(dst, src)| {
            for y in 0..ho {
                dst[y * wp..][..wo].copy_from_slice(&src[y * wo..][..wo]);
            }
        });
    out
}

/// Σ over positions of dy [B, O, ...] per sample and channel ([B, O], `per_sample`) or
/// also over the batch ([O]): a bias gradient, summed in eight f32 lanes per plane and
/// over planes in f64, in a fixed order.
pub fn channel_sums(dy: &[f32], b: usize, o: usize, per_sample: bool) -> Vec<f32> {
    let per = dy.len() / (b * o).max(1);
    let plane: Vec<f64> = dy
        .par_chunks(per.max(1))
        .map(|p| {
            let mut acc = [0f32; 8];
            let chunks = p.chunks_exact(8);
            let tail: f64 = chunks.remainder().iter().map(|&v| v as f64).sum();
            for ch in chunks {
                for (a, &v) in acc.iter_mut().zip(ch) {
                    *a += v;
                }
            }
            acc.iter().map(|&a| a as f64).sum::<f64>() + tail
        })
        .collect();
    if per_sample {
        return plane.into_iter().map(|v| v as f32).collect();
    }
    (0..o)
        .map(|oi| (0..b).map(|bi| plane[bi * o + oi]).sum::<f64>() as f32)
        .collect()
}

/// w [O, C, k, k] -> [C, O, k, k] flipped in both spatial axes: the kernel whose
/// convolution with dy (padding k - 1 - p) is the input gradient.
pub fn flip_transpose(w: &[f32], o: usize, c: usize, k: usize) -> Vec<f32> {
    let mut out = vec![0f32; w.len()];
    for oi in 0..o {
        for ci in 0..c {
            for ky in 0..k {
                for kx in 0..k {
                    out[((ci * o + oi) * k + (k - 1 - ky)) * k + (k - 1 - kx)] =
                        w[((oi * c + ci) * k + ky) * k + kx];
                }
            }
        }
    }
    out
}
