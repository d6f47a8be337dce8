//! A 2-D convolution computed as im2col + matmul (`nn::unfold`). candle's
//! own conv2d has a fast forward but its backward for the input runs a direct
//! conv_transpose2d loop; here both passes are matrix products (gemm). Weight names and
//! shapes are candle-nn's and PyTorch's (`weight` [out, in, kh, kw], `bias` [out]), so
//! checkpoints load unchanged.

use super::unfold::{fold, unfold, Window};
use candle_core::{bail, CpuStorage, CustomOp2, Device, Layout, Module, Result, Shape, Tensor};
use candle_nn::VarBuilder;

#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    kernel: usize,
    stride: usize,
    padding: usize,
}

impl Conv2d {
    /// A conv with PyTorch's default initialisation bounds (uniform ±1/sqrt(fan_in)).
    pub fn new(
        vb: VarBuilder,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        bias: bool,
    ) -> Result<Self> {
        let fan_in = (c_in * kernel * kernel) as f64;
        let bound = 1.0 / fan_in.sqrt();
        let init = candle_nn::Init::Uniform {
            lo: -bound,
            up: bound,
        };
        let weight = vb.get_with_hints((c_out, c_in, kernel, kernel), "weight", init)?;
        let bias = if bias {
            Some(vb.get_with_hints(c_out, "bias", init)?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            kernel,
            stride,
            padding,
        })
    }

    pub fn from_tensors(
        weight: Tensor,
        bias: Option<Tensor>,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let kernel = weight.dim(2)?;
        Ok(Self {
            weight,
            bias,
            kernel,
            stride,
            padding,
        })
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

/// x [B, C, H, W] -> patches [B, C * k * k, Ho * Wo] (channel-major, then kernel row, column),
/// from narrow/stack: the fallback of `unfold` on devices without its custom op.
pub fn im2col(
    x: &Tensor,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<(Tensor, usize, usize)> {
    let (b, c, h, w) = x.dims4()?;
    let ho = (h + 2 * padding - kernel) / stride + 1;
    let wo = (w + 2 * padding - kernel) / stride + 1;
    // Pad so that every strided window fits in a (ho * stride, wo * stride) block.
    let need_h = (kernel - 1) + ho * stride;
    let need_w = (kernel - 1) + wo * stride;
    let extra_h = need_h.saturating_sub(h + 2 * padding);
    let extra_w = need_w.saturating_sub(w + 2 * padding);
    let x = if padding > 0 || extra_h > 0 || extra_w > 0 {
        x.pad_with_zeros(2, padding, padding + extra_h)?
            .pad_with_zeros(3, padding, padding + extra_w)?
    } else {
        x.clone()
    };
    let mut cols = Vec::with_capacity(kernel * kernel);
    for ky in 0..kernel {
        for kx in 0..kernel {
            let win = x.narrow(2, ky, ho * stride)?.narrow(3, kx, wo * stride)?;
            let win = if stride > 1 {
                win.reshape((b, c, ho, stride, wo, stride))?
                    .narrow(3, 0, 1)?
                    .narrow(5, 0, 1)?
                    .reshape((b, c, ho, wo))?
            } else {
                win
            };
            cols.push(win);
        }
    }
    let patches = Tensor::stack(&cols, 2)?.reshape((b, c * kernel * kernel, ho * wo))?;
    Ok((patches, ho, wo))
}

/// y = conv(x, w) as one graph node: the forward and the backward unfold x internally, so
/// the patches matrix (9x the input) never enters the autograd graph, where candle would
/// allocate and add a zero gradient of its size.
struct ConvOp(Window);

/// x [B, C, H, W], w [O, C, k, k] -> [B, O, Ho, Wo] via unfold + one gemm (no graph).
fn conv_unfolded(x: &Tensor, w: &Tensor, win: Window) -> Result<Tensor> {
    let (b, o) = (x.dim(0)?, w.dim(0)?);
    let (patches, ho, wo) = unfold(&x.detach(), win)?;
    let k = patches.dim(2)?;
    let y = patches
        .reshape((b * ho * wo, k))?
        .matmul(&w.detach().reshape((o, k))?.t()?)?;
    y.reshape((b, ho, wo, o))?
        .permute((0, 3, 1, 2))?
        .contiguous()
}

fn tensor_of(s: &CpuStorage, l: &Layout) -> Result<Tensor> {
    let data = match s {
        CpuStorage::F32(v) => v.as_slice(),
        _ => bail!("conv2d (unfold) supports f32 only"),
    };
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("conv2d needs contiguous inputs".into()))?;
    Tensor::from_slice(&data[a..b], l.shape(), &Device::Cpu)
}

impl CustomOp2 for ConvOp {
    fn name(&self) -> &'static str {
        "conv2d-unfold"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = conv_unfolded(&tensor_of(s1, l1)?, &tensor_of(s2, l2)?, self.0)?;
        let shape = y.shape().clone();
        Ok((CpuStorage::F32(y.flatten_all()?.to_vec1::<f32>()?), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (b, c, h, wd) = x.dims4()?;
        let o = w.dim(0)?;
        let (patches, ho, wo) = unfold(&x.detach(), self.0)?;
        let k = patches.dim(2)?;
        let patches = patches.reshape((b * ho * wo, k))?;
        // grad [B, O, Ho, Wo] -> [B Ho Wo, O], the layout of the forward's product.
        let g = grad
            .detach()
            .permute((0, 2, 3, 1))?
            .contiguous()?
            .reshape((b * ho * wo, o))?;
        let grad_w = g.t()?.matmul(&patches)?.reshape(w.shape())?;
        let grad_patches = g
            .matmul(&w.detach().reshape((o, k))?)?
            .reshape((b, ho * wo, k))?;
        let grad_x = fold(&grad_patches, self.0, h, wd)?;
        debug_assert_eq!(grad_x.dims(), &[b, c, h, wd]);
        Ok((Some(grad_x), Some(grad_w)))
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let o = self.weight.dim(0)?;
        let win = Window {
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
        };
        let y = if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
            x.contiguous()?
                .apply_op2(&self.weight.contiguous()?, ConvOp(win))?
        } else {
            // Other devices: candle's native convolution.
            x.conv2d(&self.weight, self.padding, self.stride, 1, 1)?
        };
        match &self.bias {
            Some(bias) => y.broadcast_add(&bias.reshape((1, o, 1, 1))?),
            None => Ok(y),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn matches_candle_conv2d_forward_and_backward() {
        let dev = Device::Cpu;
        for (k, s, p, h) in [
            (3, 1, 1, 9),
            (3, 2, 1, 9),
            (3, 2, 1, 8),
            (1, 1, 0, 5),
            (4, 2, 1, 8),
        ] {
            let mut rng = crate::rng::seeded(k as u64 * 10 + s as u64);
            let x = Var::from_tensor(&crate::rng::randn(&mut rng, (2, 3, h, h), &dev).unwrap())
                .unwrap();
            let w = Var::from_tensor(&crate::rng::randn(&mut rng, (4, 3, k, k), &dev).unwrap())
                .unwrap();
            let bias = crate::rng::randn(&mut rng, 4, &dev).unwrap();
            let ours =
                Conv2d::from_tensors(w.as_tensor().clone(), Some(bias.clone()), s, p).unwrap();
            let y1 = ours.forward(x.as_tensor()).unwrap();
            let y2 = x
                .as_tensor()
                .conv2d(w.as_tensor(), p, s, 1, 1)
                .unwrap()
                .broadcast_add(&bias.reshape((1, 4, 1, 1)).unwrap())
                .unwrap();
            assert_eq!(y1.dims(), y2.dims(), "k {k} s {s} p {p} h {h}");
            let d = y1
                .sub(&y2)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(d < 1e-4, "forward differs by {d}");
            let g1 = y1.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = y2.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            for v in [&x, &w] {
                let a = g1.get(v.as_tensor()).unwrap();
                let b = g2.get(v.as_tensor()).unwrap();
                let d = a
                    .sub(b)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .max(0)
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(
                    d < 1e-3,
                    "gradient differs by {d} (k {k} s {s} p {p} h {h})"
                );
            }
        }
    }
}
