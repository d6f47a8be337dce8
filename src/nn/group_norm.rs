//! Group norm (torch's `nn.GroupNorm`, names `weight`, `bias`): on the CPU in f32 one fused
//! op, optionally with the SiLU that follows (`group_norm_cpu.rs`); elsewhere
//! candle_nn::GroupNorm's math, which has a backward, and an affine whose backward is fast
//! (`channel.rs`).

use super::channel::scale_shift;
use super::group_norm_cpu::GroupNormOp;
use candle_core::{Module, Result, Tensor, D};
use candle_nn::{Init, VarBuilder};

#[derive(Debug, Clone)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

pub fn group_norm(groups: usize, channels: usize, eps: f64, vb: VarBuilder) -> Result<GroupNorm> {
    if !channels.is_multiple_of(groups) {
        candle_core::bail!("GroupNorm: {groups} groups do not divide {channels} channels")
    }
    Ok(GroupNorm {
        weight: vb.get_with_hints(channels, "weight", Init::Const(1.0))?,
        bias: vb.get_with_hints(channels, "bias", Init::Const(0.0))?,
        groups,
        eps,
    })
}

impl GroupNorm {
    /// SiLU(group_norm(x)), the pair every resnet and the UNet's output run: one fused op
    /// on the CPU in f32 (`group_norm_cpu`), candle's math elsewhere.
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        match self.fused(x, true) {
            Some(op) => x.contiguous()?.apply_op3(&self.weight, &self.bias, op),
            None => self.forward(x)?.silu(),
        }
    }

    fn fused(&self, x: &Tensor, silu: bool) -> Option<GroupNormOp> {
        let f32_cpu = super::cpu::is_f32_cpu;
        (f32_cpu(x) && f32_cpu(&self.weight) && f32_cpu(&self.bias) && x.rank() >= 2).then_some(
            GroupNormOp {
                groups: self.groups,
                eps: self.eps,
                silu,
            },
        )
    }
}

impl Module for GroupNorm {
    /// x [B, C, ...]: statistics over each group's channels and positions (biased variance).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(op) = self.fused(x, false) {
            return x.contiguous()?.apply_op3(&self.weight, &self.bias, op);
        }
        // Half precision: statistics in f32 (a bf16 sum over a 64x64 group stops growing,
        // an f16 one overflows; torch accumulates in f32 too), the result in x's dtype.
        if let Some(up) = super::half::upcast(x.dtype()) {
            let n = GroupNorm {
                weight: self.weight.to_dtype(up)?,
                bias: self.bias.to_dtype(up)?,
                ..self.clone()
            };
            return n.forward(&x.to_dtype(up)?)?.to_dtype(x.dtype());
        }
        let dims = x.dims();
        let xg = x.reshape((dims[0], self.groups, ()))?;
        let centred = xg.broadcast_sub(&xg.mean_keepdim(D::Minus1)?)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        scale_shift(
            &normed.reshape(dims)?,
            Some(&self.weight),
            Some(&self.bias),
            1,
        )
    }
}
