//! im2col ("unfold") and its adjoint col2im ("fold") as candle custom ops on the CPU: one
//! pass over memory each way. With them a convolution is unfold + matmul, and its backward
//! is two matmuls + fold, instead of candle's direct conv_transpose2d loop for the input
//! gradient. Other devices fall back to an unfold built from narrow/stack.

use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

/// Geometry of a square-kernel convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl Window {
    pub fn out_size(&self, n: usize) -> usize {
        (n + 2 * self.padding - self.kernel) / self.stride + 1
    }
}

/// [B, C, H, W] -> [B, Ho Wo, C k k]: one row per output position, so a convolution is a
/// single 2-D matmul over all positions of the batch.
struct Unfold(Window);

/// [B, Ho Wo, C k k] -> [B, C, H, W], summing overlapping windows (the adjoint of Unfold).
struct Fold(Window, usize, usize);

fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(v) => v.as_slice(),
        _ => bail!("unfold/fold support f32 only"),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("unfold/fold need a contiguous input"),
    }
}

impl CustomOp1 for Unfold {
    fn name(&self) -> &'static str {
        "unfold"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l)?;
        let (b, c, h, w) = l.shape().dims4()?;
        let Window {
            kernel: k,
            stride,
            padding,
        } = self.0;
        let (ho, wo) = (self.0.out_size(h), self.0.out_size(w));
        let (l_out, kk) = (ho * wo, c * k * k);
        let mut out = vec![0f32; b * l_out * kk];
        for bi in 0..b {
            let img = &x[bi * c * h * w..(bi + 1) * c * h * w];
            let dst = &mut out[bi * l_out * kk..(bi + 1) * l_out * kk];
            for oy in 0..ho {
                for ox in 0..wo {
                    let row = &mut dst[(oy * wo + ox) * kk..(oy * wo + ox + 1) * kk];
                    for ci in 0..c {
                        for ky in 0..k {
                            let iy = (oy * stride + ky) as isize - padding as isize;
                            if iy < 0 || iy >= h as isize {
                                continue;
                            }
                            let src =
                                &img[(ci * h + iy as usize) * w..(ci * h + iy as usize + 1) * w];
                            for kx in 0..k {
                                let ix = (ox * stride + kx) as isize - padding as isize;
                                if ix >= 0 && ix < w as isize {
                                    row[(ci * k + ky) * k + kx] = src[ix as usize];
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((b, l_out, kk))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (_, _, h, w) = arg.dims4()?;
        Ok(Some(grad.contiguous()?.apply_op1(Fold(self.0, h, w))?))
    }
}

impl CustomOp1 for Fold {
    fn name(&self) -> &'static str {
        "fold"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = contiguous_f32(s, l)?;
        let Fold(
            Window {
                kernel: k,
                stride,
                padding,
            },
            h,
            w,
        ) = *self;
        let (b, l_out, ckk) = l.shape().dims3()?;
        let c = ckk / (k * k);
        let (ho, wo) = (self.0.out_size(h), self.0.out_size(w));
        if ho * wo != l_out || c * k * k != ckk {
            bail!(
                "fold: input {:?} does not match a {h}x{w} image with {:?}",
                l.shape(),
                self.0
            );
        }
        let mut out = vec![0f32; b * c * h * w];
        for bi in 0..b {
            let img = &mut out[bi * c * h * w..(bi + 1) * c * h * w];
            let src = &g[bi * l_out * ckk..(bi + 1) * l_out * ckk];
            for oy in 0..ho {
                for ox in 0..wo {
                    let row = &src[(oy * wo + ox) * ckk..(oy * wo + ox + 1) * ckk];
                    for ci in 0..c {
                        for ky in 0..k {
                            let iy = (oy * stride + ky) as isize - padding as isize;
                            if iy < 0 || iy >= h as isize {
                                continue;
                            }
                            let dst = &mut img
                                [(ci * h + iy as usize) * w..(ci * h + iy as usize + 1) * w];
                            for kx in 0..k {
                                let ix = (ox * stride + kx) as isize - padding as isize;
                                if ix >= 0 && ix < w as isize {
                                    dst[ix as usize] += row[(ci * k + ky) * k + kx];
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((b, c, h, w))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1(Unfold(self.0))?))
    }
}

/// Patches [B, Ho Wo, C k k] summed back into an [B, C, H, W] image (the adjoint of `unfold`).
pub fn fold(patches: &Tensor, win: Window, h: usize, w: usize) -> Result<Tensor> {
    patches.contiguous()?.apply_op1(Fold(win, h, w))
}

/// x [B, C, H, W] -> patches [B, Ho Wo, C k k] and (Ho, Wo), differentiable.
pub fn unfold(x: &Tensor, win: Window) -> Result<(Tensor, usize, usize)> {
    let (_, _, h, w) = x.dims4()?;
    let (ho, wo) = (win.out_size(h), win.out_size(w));
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        Ok((x.contiguous()?.apply_op1(Unfold(win))?, ho, wo))
    } else {
        let (p, ho, wo) = super::conv2d::im2col(x, win.kernel, win.stride, win.padding)?;
        Ok((p.transpose(1, 2)?, ho, wo))
    }
}
