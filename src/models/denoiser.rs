//! The one interface the sampler, the losses and the scripts see.

use candle_core::{Result, Tensor};

pub trait Denoiser: Send + Sync {
    /// ε prediction for states `x` [B, ...] at per-sample training timesteps `t` (f32 [B])
    /// under conditions `cond` (u32 ids [B]; models without a condition ignore it).
    fn eps(&self, x: &Tensor, t: &Tensor, cond: &Tensor) -> Result<Tensor>;
}
