//! diffusers' `BasicTransformerBlock` as SD-1.5 uses it: pre-norm self-attention,
//! cross-attention to the context, and a GEGLU feed-forward, each with a residual.

use crate::nn::{layer_norm, linear, Attention, Builders, LayerNorm, Linear};
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

/// `FeedForward(dim, activation_fn="geglu")`: net.0.proj Linear(dim, 8 dim) split into
/// value and gate halves, value * gelu(gate) with the exact (erf) gelu, then net.2
/// Linear(4 dim, dim). net.1 is a dropout: nothing to load.
#[derive(Debug, Clone)]
pub struct GegluFeedForward {
    proj: Linear,
    out: Linear,
}

impl GegluFeedForward {
    pub fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        let inner = 4 * dim;
        Ok(Self {
            proj: linear(dim, 2 * inner, vb.pp("net.0.proj"))?,
            out: linear(inner, dim, vb.pp("net.2"))?,
        })
    }
}

impl Module for GegluFeedForward {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // diffusers' GEGLU: `hidden_states, gate = proj(x).chunk(2, dim=-1)`.
        self.out
            .forward(&crate::nn::geglu::geglu(&self.proj.forward(x)?)?)
    }
}

#[derive(Debug, Clone)]
pub struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: GegluFeedForward,
}

impl BasicTransformerBlock {
    /// `dim` = heads * head_dim; the attention projections may carry LoRA adapters.
    pub fn new(
        dim: usize,
        heads: usize,
        head_dim: usize,
        context_dim: usize,
        vbs: &Builders,
    ) -> Result<Self> {
        // nn.LayerNorm's default eps; diffusers' norm_eps for these blocks is 1e-5 too.
        let eps = 1e-5;
        Ok(Self {
            norm1: layer_norm(dim, eps, vbs.base.pp("norm1"))?,
            attn1: Attention::new(dim, None, heads, head_dim, &vbs.pp("attn1"))?,
            norm2: layer_norm(dim, eps, vbs.base.pp("norm2"))?,
            attn2: Attention::new(dim, Some(context_dim), heads, head_dim, &vbs.pp("attn2"))?,
            norm3: layer_norm(dim, eps, vbs.base.pp("norm3"))?,
            ff: GegluFeedForward::new(dim, vbs.base.pp("ff"))?,
        })
    }

    /// x [B, L, dim], context [B, Lc, context_dim].
    pub fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let x = (self.attn1.forward(&self.norm1.forward(x)?, None)? + x)?;
        let x = (self
            .attn2
            .forward(&self.norm2.forward(&x)?, Some(context))?
            + x)?;
        self.ff.forward(&self.norm3.forward(&x)?)? + x
    }
}
