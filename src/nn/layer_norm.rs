//! Layer norm over the last dimension, with a backward: one fused op on the CPU in f32
//! (`layer_norm_cpu.rs`), written from primitives elsewhere.
//! candle-nn's `LayerNorm` takes the fused `ops::layer_norm` for contiguous input, which is
//! built without a backward: the gradient silently stops there (docs/design.md; candle #3011).

use super::channel::scale_shift;
use candle_core::{Module, Result, Tensor, D};
use candle_nn::{Init, VarBuilder};

#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub fn new(weight: Tensor, bias: Tensor, eps: f64) -> Self {
        Self { weight, bias, eps }
    }
}

/// An affine layer norm of `dim` features (torch's `nn.LayerNorm`, names `weight`, `bias`).
pub fn layer_norm(dim: usize, eps: f64, vb: VarBuilder) -> Result<LayerNorm> {
    let weight = vb.get_with_hints(dim, "weight", Init::Const(1.0))?;
    let bias = vb.get_with_hints(dim, "bias", Init::Const(0.0))?;
    Ok(LayerNorm::new(weight, bias, eps))
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // Half precision: statistics in f32, the result in x's dtype.
        if let Some(up) = super::half::upcast(x.dtype()) {
            let n = LayerNorm::new(self.weight.to_dtype(up)?, self.bias.to_dtype(up)?, self.eps);
            return n.forward(&x.to_dtype(up)?)?.to_dtype(x.dtype());
        }
        let f32_cpu = super::cpu::is_f32_cpu;
        if f32_cpu(x) && f32_cpu(&self.weight) && f32_cpu(&self.bias) {
            let op = super::layer_norm_cpu::LayerNormOp { eps: self.eps };
            return x.contiguous()?.apply_op3(&self.weight, &self.bias, op);
        }
        // Biased variance, as torch.
        let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        // The affine's gradient sums over batch and tokens: scale_shift keeps that fast.
        scale_shift(&normed, Some(&self.weight), Some(&self.bias), x.rank() - 1)
    }
}
