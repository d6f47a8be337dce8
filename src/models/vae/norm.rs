//! The VAE's group norm (eps 1e-6, as every norm of diffusers' `Decoder`), its weights held
//! in f32 in half precision, where nn::GroupNorm takes its statistics in f32. candle sums
//! bf16/f16 in their own precision (CPU and CUDA): a group at 512x512 holds up to 1M values,
//! whose f16 sum overflows and whose bf16 sum stops growing once it is ~256x an element.
//! torch's GroupNorm accumulates in f32 too.

use crate::nn::half::upcast;
use crate::nn::{group_norm, GroupNorm};
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

pub(crate) const EPS: f64 = 1e-6;

#[derive(Debug, Clone)]
pub struct VaeGroupNorm(GroupNorm);

impl VaeGroupNorm {
    /// `weight`, `bias` [channels] under `vb`, held in f32 (a file's f16 copy converts).
    pub fn new(groups: usize, channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self(group_norm(
            groups,
            channels,
            EPS,
            // Half precision: the weights in f32 (nn::GroupNorm reduces in f32 itself).
            vb.to_dtype(upcast(vb.dtype()).unwrap_or(vb.dtype())),
        )?))
    }
}

impl Module for VaeGroupNorm {
    /// x [B, C, H, W] of any dtype -> the same dtype.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.0.forward(x)
    }
}
