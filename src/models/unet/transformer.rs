//! diffusers' `Transformer2DModel` for continuous input, one transformer block (SD-1.5):
//! GroupNorm (eps 1e-6), proj_in, the block over the H*W tokens, proj_out, plus the input.

use super::transformer_block::BasicTransformerBlock;
use crate::nn::{conv2d_layer, group_norm, linear, Builders, Conv2d, GroupNorm, Linear};
use candle_core::{Module, Result, Tensor};

/// proj_in/proj_out: 1x1 convolutions in SD-1.5, Linear layers with
/// `use_linear_projection` (SD-2). The linear form applies after flattening to tokens.
#[derive(Debug, Clone)]
enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

impl Projection {
    fn new(in_c: usize, out_c: usize, linear_proj: bool, vbs: &Builders) -> Result<Self> {
        Ok(if linear_proj {
            Self::Linear(linear(in_c, out_c, vbs.base.clone())?)
        } else {
            Self::Conv(conv2d_layer(
                in_c,
                out_c,
                1,
                Default::default(),
                vbs.base.clone(),
            )?)
        })
    }
}

#[derive(Debug, Clone)]
pub struct Transformer2DModel {
    norm: GroupNorm,
    proj_in: Projection,
    block: BasicTransformerBlock,
    proj_out: Projection,
}

impl Transformer2DModel {
    pub fn new(
        channels: usize,
        heads: usize,
        context_dim: usize,
        groups: usize,
        linear_proj: bool,
        vbs: &Builders,
    ) -> Result<Self> {
        // inner dim = heads * (channels / heads) = channels.
        let head_dim = channels / heads;
        let inner = heads * head_dim;
        Ok(Self {
            norm: group_norm(groups, channels, 1e-6, vbs.base.pp("norm"))?,
            proj_in: Projection::new(channels, inner, linear_proj, &vbs.pp("proj_in"))?,
            block: BasicTransformerBlock::new(
                inner,
                heads,
                head_dim,
                context_dim,
                &vbs.pp("transformer_blocks.0"),
            )?,
            proj_out: Projection::new(inner, channels, linear_proj, &vbs.pp("proj_out"))?,
        })
    }

    /// x [B, C, H, W], context [B, L, context_dim] -> [B, C, H, W].
    pub fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let (b, _, h, w) = x.dims4()?;
        let to_tokens = |t: &Tensor| {
            let c = t.dim(1)?;
            t.permute((0, 2, 3, 1))?.reshape((b, h * w, c))
        };
        let from_tokens = |t: &Tensor| {
            let c = t.dim(2)?;
            t.reshape((b, h, w, c))?.permute((0, 3, 1, 2))?.contiguous()
        };
        let normed = self.norm.forward(x)?;
        let tokens = match &self.proj_in {
            Projection::Conv(c) => to_tokens(&c.forward(&normed)?)?,
            Projection::Linear(l) => l.forward(&to_tokens(&normed)?)?,
        };
        let tokens = self.block.forward(&tokens, context)?;
        let out = match &self.proj_out {
            Projection::Conv(c) => c.forward(&from_tokens(&tokens)?)?,
            Projection::Linear(l) => from_tokens(&l.forward(&tokens)?)?,
        };
        out + x
    }
}
