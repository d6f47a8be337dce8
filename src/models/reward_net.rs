//! A learned reward: a small CNN trained to predict an analytic "gold" score from images, as
//! the LAION aesthetic predictor is a network trained to predict human ratings. Its gradient
//! can be exploited (images it over-rates), so every evaluation reports it next to the gold
//! score: the gap measures reward hacking.

use crate::nn::{conv2d_layer, Conv2d};
use candle_core::{Module, Result, Tensor};
use candle_nn::{linear, Conv2dConfig, Linear, VarBuilder};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RewardNetConfig {
    pub channels: [usize; 3],
    pub hidden: usize,
}

impl Default for RewardNetConfig {
    fn default() -> Self {
        Self {
            channels: [16, 32, 32],
            hidden: 64,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RewardNet {
    conv1: Conv2d,
    conv2: Conv2d,
    conv3: Conv2d,
    fc1: Linear,
    fc2: Linear,
}

impl RewardNet {
    pub fn new(vb: VarBuilder, cfg: &RewardNetConfig) -> Result<Self> {
        let [c0, c1, c2] = cfg.channels;
        let conv = |stride| Conv2dConfig {
            padding: 1,
            stride,
            ..Default::default()
        };
        Ok(Self {
            conv1: conv2d_layer(1, c0, 3, conv(1), vb.pp("conv1"))?,
            conv2: conv2d_layer(c0, c1, 3, conv(2), vb.pp("conv2"))?,
            conv3: conv2d_layer(c1, c2, 3, conv(2), vb.pp("conv3"))?,
            fc1: linear(c2 * 7 * 7, cfg.hidden, vb.pp("fc1"))?,
            fc2: linear(cfg.hidden, 1, vb.pp("fc2"))?,
        })
    }
}

impl Module for RewardNet {
    /// Images [B, 1, 28, 28] in [-1, 1] -> predicted gold score [B].
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(x)?.silu()?;
        let h = self
            .conv3
            .forward(&self.conv2.forward(&h)?.silu()?)?
            .silu()?;
        let h = self.fc1.forward(&h.flatten_from(1)?)?.silu()?;
        self.fc2.forward(&h)?.squeeze(1)
    }
}
