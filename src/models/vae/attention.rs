//! The VAE's mid-block attention: diffusers' `Attention` as `UNetMidBlock2D` builds it for
//! the VAE (one head over the full channel dimension, biases on q/k/v, group norm eps
//! 1e-6 first, residual connection, `upcast_softmax`), over the H*W pixels as tokens.
//!
//! Files name its projections two ways: diffusers' current `to_q`, `to_k`, `to_v`,
//! `to_out.0`, and the names of its old `AttentionBlock` (`query`, `key`, `value`,
//! `proj_attn`), which diffusers still converts on load (`_convert_deprecated_attention_blocks`)
//! and which SD-1.5's published VAE files use in some revisions. Same shapes either way.

use super::norm::VaeGroupNorm;
use crate::nn::{linear, scaled_dot_product_attention, Linear};
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

/// Which names a file gives the attention projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStyle {
    /// `to_q`, `to_k`, `to_v`, `to_out.0` (diffusers >= 0.14).
    New,
    /// `query`, `key`, `value`, `proj_attn` (diffusers' deprecated `AttentionBlock`).
    Old,
}

impl KeyStyle {
    /// The projection names, in the order q, k, v, out.
    fn names(self) -> [&'static str; 4] {
        match self {
            KeyStyle::New => ["to_q", "to_k", "to_v", "to_out.0"],
            KeyStyle::Old => ["query", "key", "value", "proj_attn"],
        }
    }

    /// The style of the attention under `vb`: Old only where `query.weight` exists and
    /// `to_q.weight` does not, so an empty VarMap (or a recorder that claims every key)
    /// gets the new names.
    pub fn detect(vb: &VarBuilder) -> Self {
        match !vb.contains_tensor("to_q.weight") && vb.contains_tensor("query.weight") {
            true => KeyStyle::Old,
            false => KeyStyle::New,
        }
    }
}

#[derive(Debug, Clone)]
pub struct VaeAttention {
    group_norm: VaeGroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
}

impl VaeAttention {
    pub fn new(channels: usize, groups: usize, style: KeyStyle, vb: VarBuilder) -> Result<Self> {
        let [q, k, v, out] = style.names();
        Ok(Self {
            group_norm: VaeGroupNorm::new(groups, channels, vb.pp("group_norm"))?,
            to_q: linear(channels, channels, vb.pp(q))?,
            to_k: linear(channels, channels, vb.pp(k))?,
            to_v: linear(channels, channels, vb.pp(v))?,
            to_out: linear(channels, channels, vb.pp(out))?,
        })
    }
}

impl Module for VaeAttention {
    /// x [B, C, H, W] -> x + attention(group_norm(x)), same shape and dtype; the softmax
    /// reduces in f32 for half precision (nn::scaled_dot_product_attention, as diffusers'
    /// `upcast_softmax`: 4096 tokens at SD's 64x64 latents).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let tokens = self
            .group_norm
            .forward(x)?
            .reshape((b, c, h * w))?
            .transpose(1, 2)?;
        let out = scaled_dot_product_attention(
            &self.to_q.forward(&tokens)?,
            &self.to_k.forward(&tokens)?,
            &self.to_v.forward(&tokens)?,
        )?;
        let out = self.to_out.forward(&out)?;
        x + out.transpose(1, 2)?.reshape((b, c, h, w))?
    }
}
