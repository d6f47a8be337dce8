//! diffusers' `ResnetBlock2D` (default "default" time-embedding norm, output scale 1):
//! norm1, SiLU, conv1, + time_emb_proj(SiLU(temb)), norm2, SiLU, conv2, plus the input
//! (through a 1x1 conv_shortcut when the channel count changes).

use crate::nn::{conv2d_layer, group_norm, linear, Builders, Conv2d, ConvProj, GroupNorm, Linear};
use candle_core::{Module, Result, Tensor};
use candle_nn::Conv2dConfig;

#[derive(Debug, Clone)]
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: ConvProj,
    time_emb_proj: Linear,
    norm2: GroupNorm,
    conv2: ConvProj,
    conv_shortcut: Option<Conv2d>,
}

impl ResnetBlock2D {
    /// `groups`/`eps` of both group norms (nn::GroupNorm: candle's math, which has a
    /// backward, with a fast affine gradient); conv1/conv2 carry LoRA adapters when asked for conv adapters.
    pub fn new(
        in_c: usize,
        out_c: usize,
        temb_c: usize,
        groups: usize,
        eps: f64,
        vbs: &Builders,
    ) -> Result<Self> {
        let pad1 = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let conv_shortcut = if in_c != out_c {
            let vb = vbs.base.pp("conv_shortcut");
            Some(conv2d_layer(in_c, out_c, 1, Default::default(), vb)?)
        } else {
            None
        };
        Ok(Self {
            norm1: group_norm(groups, in_c, eps, vbs.base.pp("norm1"))?,
            conv1: ConvProj::new(in_c, out_c, 3, pad1, &vbs.pp("conv1"))?,
            time_emb_proj: linear(temb_c, out_c, vbs.base.pp("time_emb_proj"))?,
            norm2: group_norm(groups, out_c, eps, vbs.base.pp("norm2"))?,
            conv2: ConvProj::new(out_c, out_c, 3, pad1, &vbs.pp("conv2"))?,
            conv_shortcut,
        })
    }

    /// x [B, in, H, W], temb [B, temb_c] -> [B, out, H, W].
    pub fn forward(&self, x: &Tensor, temb: &Tensor) -> Result<Tensor> {
        let t = self.time_emb_proj.forward(&temb.silu()?)?;
        let h = self
            .conv1
            .forward_with_sample_bias(&self.norm1.forward_silu(x)?, &t)?;
        let h = self.conv2.forward(&self.norm2.forward_silu(&h)?)?;
        let skip = match &self.conv_shortcut {
            Some(c) => c.forward(x)?,
            None => x.clone(),
        };
        skip + h
    }
}
