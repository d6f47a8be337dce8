//! The 2-D toy's denoiser (paper Appendix D.2.1): a residual MLP with a sinusoidal
//! timestep embedding added in every block.

use super::Denoiser;
use crate::nn::{sinusoidal_embedding, TimestepEmbedding};
use candle_core::{Module, Result, Tensor};
use candle_nn::{linear, Linear, VarBuilder};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToyMlpConfig {
    /// Dimension of the data (2 for the toy).
    pub data_dim: usize,
    /// Width of the hidden layers: 128 fits 9 modes with room, and trains in minutes on 2 cores.
    pub hidden: usize,
    /// Residual blocks (two linear layers each).
    pub blocks: usize,
    /// Sinusoidal features of the timestep before the embedding MLP.
    pub time_features: usize,
}

impl Default for ToyMlpConfig {
    fn default() -> Self {
        Self {
            data_dim: 2,
            hidden: 128,
            blocks: 3,
            time_features: 64,
        }
    }
}

#[derive(Debug, Clone)]
struct Block {
    fc1: Linear,
    fc2: Linear,
}

#[derive(Debug, Clone)]
pub struct ToyMlp {
    cfg: ToyMlpConfig,
    input: Linear,
    time_embedding: TimestepEmbedding,
    blocks: Vec<Block>,
    output: Linear,
}

impl ToyMlp {
    pub fn new(vb: VarBuilder, cfg: &ToyMlpConfig) -> Result<Self> {
        let h = cfg.hidden;
        let blocks = (0..cfg.blocks)
            .map(|i| {
                let vb = vb.pp(format!("blocks.{i}"));
                Ok(Block {
                    fc1: linear(h, h, vb.pp("fc1"))?,
                    fc2: linear(h, h, vb.pp("fc2"))?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            cfg: cfg.clone(),
            input: linear(cfg.data_dim, h, vb.pp("input"))?,
            time_embedding: TimestepEmbedding::new(vb.pp("time_embedding"), cfg.time_features, h)?,
            blocks,
            output: linear(h, cfg.data_dim, vb.pp("output"))?,
        })
    }

    pub fn config(&self) -> &ToyMlpConfig {
        &self.cfg
    }
}

impl Denoiser for ToyMlp {
    fn eps(&self, x: &Tensor, t: &Tensor, _cond: &Tensor) -> Result<Tensor> {
        let temb = self
            .time_embedding
            .forward(&sinusoidal_embedding(t, self.cfg.time_features)?)?;
        let mut h = self.input.forward(x)?.add(&temb)?;
        for b in &self.blocks {
            let y = b.fc1.forward(&h.silu()?)?.add(&temb)?;
            h = h.add(&b.fc2.forward(&y.silu()?)?)?;
        }
        self.output.forward(&h.silu()?)
    }
}
