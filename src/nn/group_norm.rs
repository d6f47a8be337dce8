//! Group norm (torch's `nn.GroupNorm`, names `weight`, `bias`) with candle_nn::GroupNorm's
//! math, which has a backward, and an affine whose backward is fast (`channel.rs`).

use super::channel::scale_shift;
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

impl Module for GroupNorm {
    /// x [B, C, ...]: statistics over each group's channels and positions (biased variance).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
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
