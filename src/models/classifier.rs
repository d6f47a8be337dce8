//! The digits classifier: a small CNN trained on the training split. The evaluation uses it
//! three ways, as the paper uses its evaluation networks: alignment (the prompted class'
//! probability, ImageReward/HPS's role), diversity of its penultimate features (DreamSim's
//! role) and of its first layer's normalised features (LPIPS's role), and a Fréchet distance
//! of its penultimate features against held-out real digits (naturalness).

use crate::nn::{conv2d_layer, Conv2d};
use candle_core::{Module, Result, Tensor};
use candle_nn::{linear, Conv2dConfig, Linear, VarBuilder};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifierConfig {
    /// Channels of the three 3x3 convolutions (28x28, then 14x14 and 7x7 by stride 2).
    pub channels: [usize; 3],
    /// Width of the penultimate (feature) layer.
    pub hidden: usize,
    pub classes: usize,
}

impl Default for ClassifierConfig {
    fn default() -> Self {
        Self {
            channels: [32, 64, 64],
            hidden: 128,
            classes: 10,
        }
    }
}

/// Everything the evaluation reads from one forward pass.
pub struct ClassifierOutput {
    /// First-layer activations [B, c0, 28, 28] (the LPIPS analogue's features).
    pub early: Tensor,
    /// Penultimate activations [B, hidden] (the DreamSim analogue's and the Fréchet features).
    pub features: Tensor,
    pub logits: Tensor,
}

#[derive(Debug, Clone)]
pub struct Classifier {
    conv1: Conv2d,
    conv2: Conv2d,
    conv3: Conv2d,
    fc1: Linear,
    fc2: Linear,
}

fn conv(i: usize, o: usize, stride: usize, vb: VarBuilder) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding: 1,
        stride,
        ..Default::default()
    };
    conv2d_layer(i, o, 3, cfg, vb)
}

impl Classifier {
    pub fn new(vb: VarBuilder, cfg: &ClassifierConfig) -> Result<Self> {
        let [c0, c1, c2] = cfg.channels;
        Ok(Self {
            conv1: conv(1, c0, 1, vb.pp("conv1"))?,
            conv2: conv(c0, c1, 2, vb.pp("conv2"))?,
            conv3: conv(c1, c2, 2, vb.pp("conv3"))?,
            fc1: linear(c2 * 7 * 7, cfg.hidden, vb.pp("fc1"))?,
            fc2: linear(cfg.hidden, cfg.classes, vb.pp("fc2"))?,
        })
    }

    /// x: images [B, 1, 28, 28] in [-1, 1].
    pub fn forward_all(&self, x: &Tensor) -> Result<ClassifierOutput> {
        let early = self.conv1.forward(x)?.silu()?;
        let h = self
            .conv3
            .forward(&self.conv2.forward(&early)?.silu()?)?
            .silu()?;
        let features = self.fc1.forward(&h.flatten_from(1)?)?.silu()?;
        let logits = self.fc2.forward(&features)?;
        Ok(ClassifierOutput {
            early,
            features,
            logits,
        })
    }
}

impl Module for Classifier {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_all(x)?.logits)
    }
}
