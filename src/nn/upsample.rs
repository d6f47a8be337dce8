//! Nearest-neighbour upsampling whose backward sums into the gradient already there: exact
//! doubling is one custom op on the CPU in f32 (`Upsample2x`, below) and a broadcast
//! elsewhere; other sizes are index-selects. candle's `upsample_nearest2d` backward overwrites it
//! instead (docs/design.md, candle), which would be wrong as soon as its input feeds anything else.

use candle_core::{Result, Tensor};

/// [B, C, H, W] -> [B, C, 2H, 2W], every pixel repeated 2x2 (torch's
/// `F.interpolate(x, scale_factor=2, mode="nearest")`).
pub fn upsample_nearest2x(x: &Tensor) -> Result<Tensor> {
    if super::cpu::is_f32_cpu(x) {
        return x.contiguous()?.apply_op1(Upsample2x);
    }
    let (b, c, h, w) = x.dims4()?;
    x.reshape((b, c, h, 1, w, 1))?
        .broadcast_as((b, c, h, 2, w, 2))?
        .reshape((b, c, 2 * h, 2 * w))
}

/// [B, C, H, W] -> [B, C, out_h, out_w] with torch's "nearest" rule (source index
/// floor(i * in / out)); diffusers upsamples to the skip connection's size when the input
/// is not a multiple of 2^levels. Exact doubling takes `upsample_nearest2x`.
pub fn upsample_nearest(x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if out_h == 2 * h && out_w == 2 * w {
        return upsample_nearest2x(x);
    }
    let index = |n_in: usize, n_out: usize| {
        let ids: Vec<u32> = (0..n_out).map(|i| (i * n_in / n_out) as u32).collect();
        Tensor::from_vec(ids, n_out, x.device())
    };
    x.index_select(&index(h, out_h)?, 2)?
        .index_select(&index(w, out_w)?, 3)
}

/// Nearest 2x upsampling as one CPU op (f32): every value written to its 2x2 block, and
/// the backward sums each block. From tensor ops the forward is a broadcast copy and the
/// backward candle's sum over two non-trailing broadcast dimensions, which runs an index
/// computation per element.
#[derive(Debug, Clone, Copy)]
struct Upsample2x;

impl candle_core::CustomOp1 for Upsample2x {
    fn name(&self) -> &'static str {
        "upsample-nearest-2x"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use rayon::prelude::*;
        let x = super::cpu::contiguous(s, l)?;
        let (b, c, h, w) = l.shape().dims4()?;
        let mut y = vec![0f32; x.len() * 4];
        y.par_chunks_mut(4 * h * w)
            .zip(x.par_chunks(h * w))
            .for_each(|(out, plane)| {
                for (iy, row) in plane.chunks(w).enumerate() {
                    let top = &mut out[2 * iy * 2 * w..][..2 * w];
                    for (ix, &v) in row.iter().enumerate() {
                        top[2 * ix] = v;
                        top[2 * ix + 1] = v;
                    }
                    out.copy_within(2 * iy * 2 * w..(2 * iy + 1) * 2 * w, (2 * iy + 1) * 2 * w);
                }
            });
        Ok((candle_core::CpuStorage::F32(y), (b, c, 2 * h, 2 * w).into()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        use rayon::prelude::*;
        let (b, c, h, w) = x.dims4()?;
        let mut dx = vec![0f32; b * c * h * w];
        super::cpu::with_slice(&grad.detach(), |g| {
            dx.par_chunks_mut(h * w)
                .zip(g.par_chunks(4 * h * w))
                .for_each(|(out, plane)| {
                    for iy in 0..h {
                        let (r0, r1) = (
                            &plane[2 * iy * 2 * w..][..2 * w],
                            &plane[(2 * iy + 1) * 2 * w..][..2 * w],
                        );
                        for ix in 0..w {
                            out[iy * w + ix] =
                                (r0[2 * ix] + r0[2 * ix + 1]) + (r1[2 * ix] + r1[2 * ix + 1]);
                        }
                    }
                });
            Ok(())
        })?;
        Ok(Some(Tensor::from_vec(dx, (b, c, h, w), x.device())?))
    }
}

#[cfg(test)]
mod tests {
    use crate::nn::conv::diff;
    use crate::rng::{randn, seeded};
    use candle_core::{Device, Var};

    /// The CPU op against the broadcast formula: values and the gradient.
    #[test]
    fn upsample_op_matches_the_broadcast_formula_and_its_gradient() {
        let d = Device::Cpu;
        let x = Var::from_tensor(&randn(&mut seeded(0), (2, 3, 5, 7), &d).unwrap()).unwrap();
        let probe = randn(&mut seeded(1), (2, 3, 10, 14), &d).unwrap();
        let y = super::upsample_nearest2x(&x).unwrap();
        let yr = x
            .reshape((2, 3, 5, 1, 7, 1))
            .unwrap()
            .broadcast_as((2, 3, 5, 2, 7, 2))
            .unwrap()
            .reshape((2, 3, 10, 14))
            .unwrap();
        assert_eq!(diff(&y, &yr), 0.0);
        let g = (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let gr = (yr * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(diff(g.get(&x).unwrap(), gr.get(&x).unwrap()) < 1e-6);
    }
}
