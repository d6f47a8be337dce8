//! Direct stride-1 convolution kernels for the CPU (f32, AVX2 + FMA), the digits UNet's
//! hot path: 3x3 and 1x1 convolutions with 1 to 64 channels on 7x7 to 28x28 images.
//!
//! At these sizes im2col + gemm is bound by memory, not arithmetic: the columns are 9x
//! the input, freshly allocated and zeroed, and a gemm with 8 output rows cannot keep its
//! vector units busy. Here each image is copied once into a zero-padded plane per channel
//! (row stride `wp = W + 2p`), and the convolution is computed over the *flattened*
//! padded plane: output q = oy * wp + ox reads input q + ky * wp + kx for every tap, so
//! one contiguous run of q covers the whole image with unit-stride vector loads (the two
//! junk columns per row that this computes are dropped). A register block holds OB output
//! channels x 3 vectors of 8 pixels; each tap is 3 loads, OB broadcasts and 3 OB FMAs.
//!
//! The three products of a convolution's forward and backward are all this one pattern:
//! - forward: y = conv(x, w, p);
//! - input gradient: dx = conv(dy, w flipped and transposed, k - 1 - p);
//! - kernel gradient: dw[o, c, ky, kx] = sum over b, q of dy[b, o, q] x[b, c, q + ky wp + kx].
//!
//! Every output element is summed by one task in a fixed order, so results do not depend
//! on the thread count. Without AVX2 + FMA the callers take the im2col path.

use rayon::prelude::*;

/// Pixels per register block: 3 vectors of 8.
const PB: usize = 24;
/// Floats of slack after the last plane: the last block of a plane may read up to PB - 1
/// floats past it (those results are junk and dropped).
const SLACK: usize = PB + 8;

/// Whether this CPU runs the kernels (checked once; the answer never changes).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *OK.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
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
    fn span(&self) -> usize {
        let n = (self.ho() - 1) * self.wp() + self.wo();
        n.div_ceil(PB) * PB
    }
}

/// x [n planes of h x w] -> zero-padded planes of hp x wp, plus slack at the end.
pub fn pad_planes(x: &[f32], planes: usize, g: Geometry) -> Vec<f32> {
    let (h, w, p, wp, plane) = (g.h, g.w, g.p, g.wp(), g.plane());
    let mut out = vec![0f32; planes * plane + SLACK];
    out[..planes * plane]
        .par_chunks_mut(plane)
        .zip(x.par_chunks(h * w))
        .for_each(|(dst, src)| {
            for y in 0..h {
                dst[(y + p) * wp + p..][..w].copy_from_slice(&src[y * w..][..w]);
            }
        });
    out
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
    let (ho, wo, wp, plane, k) = (g.ho(), g.wo(), g.wp(), g.plane(), g.k);
    super::flops::add(2 * b * o * c * k * k * ho * wo);
    let ob = block_of(o);
    // Weights as [O / ob][C][k][k][ob]: a tap's ob weights are adjacent for the broadcasts.
    let mut wb = vec![0f32; o * c * k * k];
    for oi in 0..o {
        for r in 0..c * k * k {
            wb[((oi / ob) * c * k * k + r) * ob + oi % ob] = w[oi * c * k * k + r];
        }
    }
    let span = g.span();
    // Every output is written exactly once (from the task's accumulators), so the output
    // is not zeroed first.
    let mut y: Vec<f32> = Vec::with_capacity(b * o * ho * wo);
    y.spare_capacity_mut()
        .par_chunks_mut(ob * ho * wo)
        .enumerate()
        .for_each(|(task, out)| {
            let (bi, blk) = (task / (o / ob), task % (o / ob));
            let img = &xp[bi * c * plane..];
            let wts = &wb[blk * c * k * k * ob..][..c * k * k * ob];
            ACC.with_borrow_mut(|acc| {
                acc.resize(ob * span, 0.0);
                // SAFETY: `available()` was checked by the caller; reads stay inside `xp`
                // (planes plus SLACK) and writes inside `acc`.
                unsafe { conv_planes(img, wts, acc, ob, c, k, wp, plane, span) };
                for j in 0..ob {
                    // A bias per channel [O], or per sample and channel [B, O].
                    let add = bias.map_or(0.0, |bs| match bs.len() == o {
                        true => bs[blk * ob + j],
                        false => bs[bi * o + blk * ob + j],
                    });
                    for oy in 0..ho {
                        let src = &acc[j * span + oy * wp..][..wo];
                        let dst = &mut out[(j * ho + oy) * wo..][..wo];
                        for (d, s) in dst.iter_mut().zip(src) {
                            d.write(s + add);
                        }
                    }
                }
            });
        });
    // SAFETY: the chunks cover the whole capacity and every element was written above.
    unsafe { y.set_len(b * o * ho * wo) };
    y
}

thread_local! {
    /// Each thread's accumulator planes, kept between calls (no allocation per task).
    static ACC: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Output channels per register block: 4 where they divide, else 2 or 1.
fn block_of(o: usize) -> usize {
    [4, 2, 1]
        .into_iter()
        .find(|&b| o.is_multiple_of(b))
        .unwrap_or(1)
}

/// acc [ob][span] = sum over c, ky, kx of wts[c][ky][kx][ob] * img[c][q + ky wp + kx].
#[allow(clippy::too_many_arguments)]
unsafe fn conv_planes(
    img: &[f32],
    wts: &[f32],
    acc: &mut [f32],
    ob: usize,
    c: usize,
    k: usize,
    wp: usize,
    plane: usize,
    span: usize,
) {
    #[cfg(target_arch = "x86_64")]
    match ob {
        4 => x86::conv_block::<4>(img, wts, acc, c, k, wp, plane, span),
        2 => x86::conv_block::<2>(img, wts, acc, c, k, wp, plane, span),
        _ => x86::conv_block::<1>(img, wts, acc, c, k, wp, plane, span),
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (img, wts, acc, ob, c, k, wp, plane, span);
        unreachable!("conv_direct::available() is false off x86_64")
    }
}

/// dw [O, C, k, k] = sum over b, q of dy[b, o, q] * x[b, c, q + ky wp + kx], x padded and
/// dy given as padded-stride planes (`dy_planes`), junk columns zero.
#[allow(clippy::too_many_arguments)]
pub fn kernel_grad(xp: &[f32], dyq: &[f32], b: usize, c: usize, o: usize, g: Geometry) -> Vec<f32> {
    let (k, wp, plane) = (g.k, g.wp(), g.plane());
    super::flops::add(2 * b * o * c * k * k * g.ho() * g.wo());
    let span = g.span();
    let ob = block_of(o);
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
                // SAFETY: `available()` was checked by the caller; reads of x stay inside
                // `xp` (planes plus SLACK).
                unsafe { kgrad_planes(x, dy, out, ob, k, wp, span) };
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

unsafe fn kgrad_planes(
    x: &[f32],
    dy: &[f32],
    out: &mut [f32],
    ob: usize,
    k: usize,
    wp: usize,
    span: usize,
) {
    #[cfg(target_arch = "x86_64")]
    match ob {
        4 => x86::kgrad_block::<4>(x, dy, out, k, wp, span),
        2 => x86::kgrad_block::<2>(x, dy, out, k, wp, span),
        _ => x86::kgrad_block::<1>(x, dy, out, k, wp, span),
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, dy, out, ob, k, wp, span);
        unreachable!("conv_direct::available() is false off x86_64")
    }
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

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::PB;
    use std::arch::x86_64::*;

    /// acc [OB][span] = sum over c, ky, kx of wts[c][ky][kx][OB] * img[c][q + ky wp + kx].
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn conv_block<const OB: usize>(
        img: &[f32],
        wts: &[f32],
        acc: &mut [f32],
        c: usize,
        k: usize,
        wp: usize,
        plane: usize,
        span: usize,
    ) {
        let (ip, wptr, ap) = (img.as_ptr(), wts.as_ptr(), acc.as_mut_ptr());
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
            for (j, aj) in a.iter().enumerate() {
                for (u, au) in aj.iter().enumerate() {
                    _mm256_storeu_ps(ap.add(j * span + q + 8 * u), *au);
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
mod tests {
    use crate::nn::conv::conv2d;
    use crate::nn::cpu::assert_same_values_and_gradients;
    use crate::rng::{randn, seeded};
    use candle_core::{Device, Var};

    /// The direct kernels against candle's own conv2d (the plain formula): values, the
    /// input gradient and the kernel gradient, over kernel sizes, paddings, channel counts
    /// that do and do not fill a register block, and square and non-square images whose
    /// flattened length is not a multiple of a block.
    #[test]
    fn direct_conv_matches_candle_conv_and_both_gradients() {
        if !super::available() {
            eprintln!("no AVX2 + FMA: the direct kernels are not used on this CPU");
            return;
        }
        let d = Device::Cpu;
        let cases = [
            // (b, c, o, h, w, k, p)
            (2, 8, 8, 28, 28, 3, 1),
            (3, 16, 8, 14, 14, 3, 1),
            (2, 32, 32, 7, 7, 3, 1),
            (2, 1, 8, 28, 28, 3, 1),
            (2, 8, 1, 28, 28, 3, 1),
            (1, 5, 3, 9, 6, 3, 1),
            (2, 6, 2, 7, 11, 3, 0),
            (2, 24, 16, 7, 7, 1, 0),
            (1, 3, 5, 4, 4, 3, 2),
        ];
        for (i, &(b, c, o, h, w, k, p)) in cases.iter().enumerate() {
            let mut rng = seeded(i as u64);
            let x = Var::from_tensor(&randn(&mut rng, (b, c, h, w), &d).unwrap()).unwrap();
            let wt = Var::from_tensor(&randn(&mut rng, (o, c, k, k), &d).unwrap()).unwrap();
            let probe = randn(&mut rng, (b, o, h + 2 * p + 1 - k, w + 2 * p + 1 - k), &d).unwrap();
            let y = conv2d(&x, &wt, p, 1).unwrap();
            let yr = x.conv2d(&wt, p, 1, 1, 1).unwrap();
            assert_same_values_and_gradients(
                &y,
                &yr,
                &probe,
                &[("input", &x), ("kernel", &wt)],
                1e-5,
                &format!("case {i}"),
            );
        }
    }

    /// `Conv2d` with a trainable bias (the fused op): values and the gradients of the
    /// input, the kernel and the bias against candle's conv2d plus a broadcast bias.
    #[test]
    fn fused_bias_matches_conv_plus_bias_and_its_gradients() {
        if !super::available() {
            return;
        }
        let d = Device::Cpu;
        let mut rng = seeded(9);
        let x = Var::from_tensor(&randn(&mut rng, (3, 6, 10, 10), &d).unwrap()).unwrap();
        let w = Var::from_tensor(&randn(&mut rng, (4, 6, 3, 3), &d).unwrap()).unwrap();
        let b = Var::from_tensor(&randn(&mut rng, 4, &d).unwrap()).unwrap();
        let probe = randn(&mut rng, (3, 4, 10, 10), &d).unwrap();
        let cfg = candle_nn::Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let layer = crate::nn::Conv2d::new(w.as_tensor().clone(), Some(b.as_tensor().clone()), cfg);
        let y = candle_core::Module::forward(&layer, &x).unwrap();
        let yr = x
            .conv2d(&w, 1, 1, 1, 1)
            .unwrap()
            .broadcast_add(&b.reshape((1, 4, 1, 1)).unwrap())
            .unwrap();
        assert_same_values_and_gradients(
            &y,
            &yr,
            &probe,
            &[("input", &x), ("kernel", &w), ("bias", &b)],
            2e-5,
            "fused bias",
        );
    }

    /// The forward, both gradients and the fused group norm give the same bits on 1 and
    /// 3 threads: every sum is over a fixed partition in a fixed order.
    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let d = Device::Cpu;
        let mut rng = seeded(3);
        let x = randn(&mut rng, (5, 8, 14, 14), &d).unwrap();
        let w = randn(&mut rng, (16, 8, 3, 3), &d).unwrap();
        let probe = randn(&mut rng, (5, 16, 14, 14), &d).unwrap();
        let (g, b) = (
            randn(&mut rng, 8, &d).unwrap(),
            randn(&mut rng, 8, &d).unwrap(),
        );
        let run = || {
            let (xv, wv) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&w).unwrap());
            let op = crate::nn::group_norm_cpu::GroupNormOp {
                groups: 4,
                eps: 1e-5,
                silu: true,
            };
            let h = xv.apply_op3(&g, &b, op).unwrap();
            let y = conv2d(&h, &wv, 1, 1).unwrap();
            let grads = (&y * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            [
                y,
                grads.get(&xv).unwrap().clone(),
                grads.get(&wv).unwrap().clone(),
            ]
            .map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        };
        let pool = |n| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .unwrap()
        };
        let one = pool(1).install(run);
        let three = pool(3).install(run);
        assert!(one == three, "results differ between 1 and 3 threads");
    }

    /// A per-sample bias (a resnet's time embedding) added in the same op: values and the
    /// gradients of the input, the kernel, the bias and the per-sample bias.
    #[test]
    fn per_sample_bias_matches_a_broadcast_add_and_its_gradients() {
        let d = Device::Cpu;
        let mut rng = seeded(11);
        let x = Var::from_tensor(&randn(&mut rng, (3, 5, 9, 9), &d).unwrap()).unwrap();
        let w = Var::from_tensor(&randn(&mut rng, (4, 5, 3, 3), &d).unwrap()).unwrap();
        let b = Var::from_tensor(&randn(&mut rng, 4, &d).unwrap()).unwrap();
        let t = Var::from_tensor(&randn(&mut rng, (3, 4), &d).unwrap()).unwrap();
        let probe = randn(&mut rng, (3, 4, 9, 9), &d).unwrap();
        let cfg = candle_nn::Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let layer = crate::nn::Conv2d::new(w.as_tensor().clone(), Some(b.as_tensor().clone()), cfg);
        let y = layer.forward_with_sample_bias(&x, &t).unwrap();
        let yr = x
            .conv2d(&w, 1, 1, 1, 1)
            .unwrap()
            .broadcast_add(&b.reshape((1, 4, 1, 1)).unwrap())
            .unwrap()
            .broadcast_add(&t.reshape((3, 4, 1, 1)).unwrap())
            .unwrap();
        assert_same_values_and_gradients(
            &y,
            &yr,
            &probe,
            &[
                ("input", &x),
                ("kernel", &w),
                ("bias", &b),
                ("sample bias", &t),
            ],
            2e-5,
            "per-sample bias",
        );
    }
}
