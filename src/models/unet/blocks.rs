//! The UNet's down, middle and up blocks (diffusers' CrossAttnDownBlock2D / DownBlock2D,
//! UNetMidBlock2DCrossAttn, CrossAttnUpBlock2D / UpBlock2D): resnets, each followed by a
//! transformer at cross-attention levels, and a down- or upsampler.

use super::resnet::ResnetBlock2D;
use super::sampling::{Downsample2D, Upsample2D};
use super::transformer::Transformer2DModel;
use super::UNetConfig;
use crate::nn::checkpoint::checkpoint;
use crate::nn::Builders;
use candle_core::{Module, Result, Tensor};
use std::sync::Arc;

/// Which blocks recompute their activations in the backward (`nn::checkpoint`): only
/// blocks without trainable parameters can.
#[derive(Debug, Clone, Copy, Default)]
pub struct Checkpointing {
    pub resnets: bool,
    pub transformers: bool,
    pub samplers: bool,
}

impl Checkpointing {
    fn resnet(&self, r: &ResnetBlock2D, x: &Tensor, temb: &Tensor) -> Result<Tensor> {
        if !self.resnets {
            return r.forward(x, temb);
        }
        let (r, temb) = (r.clone(), temb.clone());
        checkpoint(x, Arc::new(move |x| r.forward(x, &temb)))
    }

    fn transformer(&self, a: &Transformer2DModel, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        if !self.transformers {
            return a.forward(x, context);
        }
        let (a, context) = (a.clone(), context.clone());
        checkpoint(x, Arc::new(move |x| a.forward(x, &context)))
    }

    fn sampler(
        &self,
        x: &Tensor,
        f: impl Fn(&Tensor) -> Result<Tensor> + Send + Sync + 'static,
    ) -> Result<Tensor> {
        if self.samplers {
            checkpoint(x, Arc::new(f))
        } else {
            f(x)
        }
    }
}

/// What every block needs besides its own channel counts.
pub(crate) struct Ctx<'c> {
    pub cfg: &'c UNetConfig,
    pub temb_c: usize,
}

impl Ctx<'_> {
    fn resnet(&self, in_c: usize, out_c: usize, vbs: &Builders) -> Result<ResnetBlock2D> {
        let c = self.cfg;
        ResnetBlock2D::new(in_c, out_c, self.temb_c, c.norm_num_groups, c.norm_eps, vbs)
    }

    fn transformer(&self, channels: usize, vbs: &Builders) -> Result<Transformer2DModel> {
        let c = self.cfg;
        Transformer2DModel::new(
            channels,
            c.attention_head_dim,
            c.cross_attention_dim,
            c.norm_num_groups,
            c.use_linear_projection,
            vbs,
        )
    }
}

/// Resnets with optional transformers, run in turn.
#[derive(Debug, Clone)]
struct Layers {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
}

impl Layers {
    fn layer(
        &self,
        i: usize,
        x: &Tensor,
        temb: &Tensor,
        context: &Tensor,
        ck: Checkpointing,
    ) -> Result<Tensor> {
        let h = ck.resnet(&self.resnets[i], x, temb)?;
        match self.attentions.get(i) {
            Some(a) => ck.transformer(a, &h, context),
            None => Ok(h),
        }
    }
}

#[derive(Debug, Clone)]
pub struct DownBlock {
    layers: Layers,
    downsampler: Option<Downsample2D>,
}

impl DownBlock {
    pub(crate) fn new(
        ctx: &Ctx,
        in_c: usize,
        out_c: usize,
        attention: bool,
        downsample: bool,
        vbs: &Builders,
    ) -> Result<Self> {
        let n = ctx.cfg.layers_per_block;
        let resnets = (0..n)
            .map(|j| {
                let i = if j == 0 { in_c } else { out_c };
                ctx.resnet(i, out_c, &vbs.pp(format!("resnets.{j}")))
            })
            .collect::<Result<_>>()?;
        let attentions = if attention {
            (0..n)
                .map(|j| ctx.transformer(out_c, &vbs.pp(format!("attentions.{j}"))))
                .collect::<Result<_>>()?
        } else {
            vec![]
        };
        let downsampler = if downsample {
            Some(Downsample2D::new(out_c, vbs.base.pp("downsamplers.0"))?)
        } else {
            None
        };
        Ok(Self {
            layers: Layers {
                resnets,
                attentions,
            },
            downsampler,
        })
    }

    /// Returns the output and pushes every layer's output (and the downsampler's) onto the
    /// skip connections, as diffusers' `output_states`.
    pub fn forward(
        &self,
        x: &Tensor,
        temb: &Tensor,
        context: &Tensor,
        skips: &mut Vec<Tensor>,
        ck: Checkpointing,
    ) -> Result<Tensor> {
        let mut h = x.clone();
        for i in 0..self.layers.resnets.len() {
            h = self.layers.layer(i, &h, temb, context, ck)?;
            skips.push(h.clone());
        }
        if let Some(d) = &self.downsampler {
            let d = d.clone();
            h = ck.sampler(&h, move |x| d.forward(x))?;
            skips.push(h.clone());
        }
        Ok(h)
    }
}

/// resnets.0, then (attentions.0, resnets.1).
#[derive(Debug, Clone)]
pub struct MidBlock {
    resnets: [ResnetBlock2D; 2],
    attention: Transformer2DModel,
}

impl MidBlock {
    pub(crate) fn new(ctx: &Ctx, c: usize, vbs: &Builders) -> Result<Self> {
        Ok(Self {
            resnets: [
                ctx.resnet(c, c, &vbs.pp("resnets.0"))?,
                ctx.resnet(c, c, &vbs.pp("resnets.1"))?,
            ],
            attention: ctx.transformer(c, &vbs.pp("attentions.0"))?,
        })
    }

    pub fn forward(
        &self,
        x: &Tensor,
        temb: &Tensor,
        context: &Tensor,
        ck: Checkpointing,
    ) -> Result<Tensor> {
        let h = ck.resnet(&self.resnets[0], x, temb)?;
        let h = ck.transformer(&self.attention, &h, context)?;
        ck.resnet(&self.resnets[1], &h, temb)
    }
}

#[derive(Debug, Clone)]
pub struct UpBlock {
    layers: Layers,
    upsampler: Option<Upsample2D>,
}

impl UpBlock {
    /// diffusers' channel bookkeeping: layers_per_block + 1 resnets; resnet j takes the
    /// previous output (`prev_c` for j = 0, else `out_c`) concatenated with a skip of
    /// `out_c` channels, except the last, whose skip has `in_c` (the next level's) channels.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        ctx: &Ctx,
        in_c: usize,
        out_c: usize,
        prev_c: usize,
        attention: bool,
        upsample: bool,
        vbs: &Builders,
    ) -> Result<Self> {
        let n = ctx.cfg.layers_per_block + 1;
        let resnets = (0..n)
            .map(|j| {
                let skip_c = if j == n - 1 { in_c } else { out_c };
                let res_in = if j == 0 { prev_c } else { out_c };
                ctx.resnet(res_in + skip_c, out_c, &vbs.pp(format!("resnets.{j}")))
            })
            .collect::<Result<_>>()?;
        let attentions = if attention {
            (0..n)
                .map(|j| ctx.transformer(out_c, &vbs.pp(format!("attentions.{j}"))))
                .collect::<Result<_>>()?
        } else {
            vec![]
        };
        let upsampler = if upsample {
            Some(Upsample2D::new(out_c, vbs.base.pp("upsamplers.0"))?)
        } else {
            None
        };
        Ok(Self {
            layers: Layers {
                resnets,
                attentions,
            },
            upsampler,
        })
    }

    /// Pops one skip connection per resnet (last in, first out) and upsamples to the size
    /// of the skip that the next block will pop first.
    pub fn forward(
        &self,
        x: &Tensor,
        temb: &Tensor,
        context: &Tensor,
        skips: &mut Vec<Tensor>,
        ck: Checkpointing,
    ) -> Result<Tensor> {
        let mut h = x.clone();
        for i in 0..self.layers.resnets.len() {
            let skip = skips
                .pop()
                .ok_or_else(|| candle_core::Error::Msg("UNet: ran out of skips".into()))?;
            h = self
                .layers
                .layer(i, &Tensor::cat(&[&h, &skip], 1)?, temb, context, ck)?;
        }
        if let Some(u) = &self.upsampler {
            let next = skips
                .last()
                .ok_or_else(|| candle_core::Error::Msg("UNet: no skip to upsample to".into()))?;
            let (_, _, sh, sw) = next.dims4()?;
            let u = u.clone();
            h = ck.sampler(&h, move |x| u.forward(x, sh, sw))?;
        }
        Ok(h)
    }
}
