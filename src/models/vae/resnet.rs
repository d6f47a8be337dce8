//! The VAE's resnet: diffusers' `ResnetBlock2D` with `temb_channels=None` (no time
//! embedding), eps 1e-6, output scale 1: norm1, SiLU, conv1, norm2, SiLU, conv2 (dropout 0),
//! plus the input, through a 1x1 `conv_shortcut` when the channel count changes.

use super::norm::VaeGroupNorm;
use crate::nn::{conv2d_layer, Conv2d};
use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

#[derive(Debug, Clone)]
pub struct VaeResnet {
    norm1: VaeGroupNorm,
    conv1: Conv2d,
    norm2: VaeGroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
}

impl VaeResnet {
    pub fn new(in_c: usize, out_c: usize, groups: usize, vb: VarBuilder) -> Result<Self> {
        let pad1 = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let conv_shortcut = match in_c != out_c {
            true => Some(conv2d_layer(
                in_c,
                out_c,
                1,
                Default::default(),
                vb.pp("conv_shortcut"),
            )?),
            false => None,
        };
        Ok(Self {
            norm1: VaeGroupNorm::new(groups, in_c, vb.pp("norm1"))?,
            conv1: conv2d_layer(in_c, out_c, 3, pad1, vb.pp("conv1"))?,
            norm2: VaeGroupNorm::new(groups, out_c, vb.pp("norm2"))?,
            conv2: conv2d_layer(out_c, out_c, 3, pad1, vb.pp("conv2"))?,
            conv_shortcut,
        })
    }
}

impl Module for VaeResnet {
    /// x [B, in, H, W] -> [B, out, H, W].
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward(x)?.silu()?)?;
        let h = self.conv2.forward(&self.norm2.forward(&h)?.silu()?)?;
        let skip = match &self.conv_shortcut {
            Some(c) => c.forward(x)?,
            None => x.clone(),
        };
        skip + h
    }
}
