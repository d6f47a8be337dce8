//! The VAE's group norm (eps 1e-6, as every norm of diffusers' `Decoder`), with its
//! statistics always in f32. candle sums bf16/f16 in their own precision (CPU and CUDA):
//! a group at 512x512 holds up to 1M values, whose f16 sum overflows and whose bf16 sum
//! stops growing once it is ~256x an element. torch's GroupNorm accumulates in f32 too.

use crate::nn::{group_norm, GroupNorm};
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

pub(crate) const EPS: f64 = 1e-6;

/// f32 for half precision, the dtype itself otherwise (f64 stays f64: the tests' finite
/// differences run in f64).
pub(crate) fn at_least_f32(dtype: DType) -> DType {
    match dtype {
        DType::F16 | DType::BF16 => DType::F32,
        d => d,
    }
}

#[derive(Debug, Clone)]
pub struct VaeGroupNorm(GroupNorm);

impl VaeGroupNorm {
    /// `weight`, `bias` [channels] under `vb`, held in f32 (a file's f16 copy converts).
    pub fn new(groups: usize, channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self(group_norm(
            groups,
            channels,
            EPS,
            vb.to_dtype(at_least_f32(vb.dtype())),
        )?))
    }
}

impl Module for VaeGroupNorm {
    /// x [B, C, H, W] of any dtype -> the same dtype.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.0
            .forward(&x.to_dtype(at_least_f32(x.dtype()))?)?
            .to_dtype(x.dtype())
    }
}
