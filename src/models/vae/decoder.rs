//! diffusers' `Decoder` (`AutoencoderKL.decoder`, names under `decoder.`): conv_in, a mid
//! block (resnet, attention, resnet), one `UpDecoderBlock2D` per level from the deepest
//! (layers_per_block + 1 resnets, then nearest 2x and a 3x3 conv on all but the last),
//! group norm, SiLU, conv_out.

use super::attention::{KeyStyle, VaeAttention};
use super::config::AutoencoderKLConfig;
use super::norm::VaeGroupNorm;
use super::resnet::VaeResnet;
use crate::nn::checkpoint::{checkpoint, checkpoint_module};
use crate::nn::{conv2d_layer, upsample_nearest2x, Conv2d};
use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};
use std::sync::Arc;

const PAD1: Conv2dConfig = Conv2dConfig {
    padding: 1,
    stride: 1,
    dilation: 1,
    groups: 1,
    cudnn_fwd_algo: None,
};

#[derive(Debug, Clone)]
struct UpBlock {
    resnets: Vec<VaeResnet>,
    /// `upsamplers.0.conv`, applied after nearest 2x (diffusers' `Upsample2D(use_conv=True)`).
    upsampler: Option<Conv2d>,
}

impl UpBlock {
    fn new(
        in_c: usize,
        out_c: usize,
        cfg: &AutoencoderKLConfig,
        up: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let resnets = (0..=cfg.layers_per_block)
            .map(|j| {
                let c = if j == 0 { in_c } else { out_c };
                VaeResnet::new(c, out_c, cfg.norm_num_groups, vb.pp(format!("resnets.{j}")))
            })
            .collect::<Result<_>>()?;
        let upsampler = match up {
            true => Some(conv2d_layer(
                out_c,
                out_c,
                3,
                PAD1,
                vb.pp("upsamplers.0.conv"),
            )?),
            false => None,
        };
        Ok(Self { resnets, upsampler })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for r in &self.resnets {
            h = checkpoint_module(r, &h)?;
        }
        match &self.upsampler {
            // The project's upsample, not candle's: its backward adds to the gradient.
            Some(conv) => {
                let conv = conv.clone();
                checkpoint(&h, Arc::new(move |h| conv.forward(&upsample_nearest2x(h)?)))
            }
            None => Ok(h),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Decoder {
    conv_in: Conv2d,
    mid: (VaeResnet, VaeAttention, VaeResnet),
    up_blocks: Vec<UpBlock>,
    conv_norm_out: VaeGroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    /// `vb` at `decoder`; `style` names the mid-block attention's projections.
    pub fn new(vb: VarBuilder, cfg: &AutoencoderKLConfig, style: KeyStyle) -> Result<Self> {
        let rev: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
        let (top, g) = (rev[0], cfg.norm_num_groups);
        let mid = vb.pp("mid_block");
        let up_blocks = (0..rev.len())
            .map(|i| {
                let in_c = if i == 0 { top } else { rev[i - 1] };
                let up = i + 1 < rev.len();
                UpBlock::new(in_c, rev[i], cfg, up, vb.pp(format!("up_blocks.{i}")))
            })
            .collect::<Result<_>>()?;
        let c0 = cfg.block_out_channels[0];
        Ok(Self {
            conv_in: conv2d_layer(cfg.latent_channels, top, 3, PAD1, vb.pp("conv_in"))?,
            mid: (
                VaeResnet::new(top, top, g, mid.pp("resnets.0"))?,
                VaeAttention::new(top, g, style, mid.pp("attentions.0"))?,
                VaeResnet::new(top, top, g, mid.pp("resnets.1"))?,
            ),
            up_blocks,
            conv_norm_out: VaeGroupNorm::new(g, c0, vb.pp("conv_norm_out"))?,
            conv_out: conv2d_layer(c0, cfg.out_channels, 3, PAD1, vb.pp("conv_out"))?,
        })
    }
}

impl Module for Decoder {
    /// z [B, latent, h, w] (after post_quant_conv) -> [B, out, h * 2^(levels-1), ...].
    ///
    /// The decoder is never trained: every block recomputes its activations in the
    /// backward (`nn::checkpoint`), so the reward gradient keeps only the blocks' inputs at
    /// 512x512 instead of every norm, activation and im2col buffer.
    fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let h = self.conv_in.forward(z)?;
        let h = checkpoint_module(&self.mid.0, &h)?;
        let h = checkpoint_module(&self.mid.1, &h)?;
        let mut h = checkpoint_module(&self.mid.2, &h)?;
        for b in &self.up_blocks {
            h = b.forward(&h)?;
        }
        let (norm, conv) = (self.conv_norm_out.clone(), self.conv_out.clone());
        checkpoint(
            &h,
            Arc::new(move |h| conv.forward(&norm.forward(h)?.silu()?)),
        )
    }
}
