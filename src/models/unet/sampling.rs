//! diffusers' `Downsample2D` (a 3x3 stride-2 conv, padding 1, named `conv`) and
//! `Upsample2D` (nearest upsampling to the skip connection's size, then a 3x3 conv).

use crate::nn::{conv2d_layer, upsample_nearest, Conv2d};
use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

#[derive(Debug, Clone)]
pub struct Downsample2D {
    conv: Conv2d,
}

impl Downsample2D {
    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        let cfg = Conv2dConfig {
            padding: 1,
            stride: 2,
            ..Default::default()
        };
        Ok(Self {
            conv: conv2d_layer(channels, channels, 3, cfg, vb.pp("conv"))?,
        })
    }
}

impl Module for Downsample2D {
    /// H -> floor((H - 1) / 2) + 1: 28 -> 14 -> 7, 7 -> 4.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv.forward(x)
    }
}

#[derive(Debug, Clone)]
pub struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        let cfg = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        Ok(Self {
            conv: conv2d_layer(channels, channels, 3, cfg, vb.pp("conv"))?,
        })
    }

    /// Upsamples to (h, w), the size of the skip connection the next up block consumes:
    /// 2x when sizes divide evenly, and what diffusers' `upsample_size` does otherwise.
    pub fn forward(&self, x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
        self.conv.forward(&upsample_nearest(x, h, w)?)
    }
}
