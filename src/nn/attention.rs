//! Multi-head attention in diffusers' `Attention` form (to_q, to_k, to_v without bias,
//! to_out.0 with bias), with the generic `candle_nn::ops::softmax`: `softmax_last_dim` is
//! built without a backward and would silently give to_q and to_k no gradient (docs/design.md).

use super::lora::{Builders, Proj};
use candle_core::{Module, Result, Tensor, D};

/// softmax(q k^T / sqrt(d)) v for q [N, Lq, d], k and v [N, Lk, d], keeping no score
/// matrix for the backward (`attention_recompute`): the attention every model here uses.
pub fn scaled_dot_product_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    super::attention_recompute::attention_recompute(q, k, v)
}

/// The same formula as candle's autograd differentiates it, every intermediate kept: the
/// reference that `attention_recompute` is tested against.
pub fn scaled_dot_product_attention_plain(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let scale = 1.0 / (q.dim(D::Minus1)? as f64).sqrt();
    let scores = (q * scale)?.matmul(&k.t()?)?;
    // Half precision: the softmax in f32 (diffusers' upcast_softmax; a bf16 row sum over
    // 4096 keys is coarse), the products in the inputs' dtype.
    match super::half::upcast(scores.dtype()) {
        Some(up) => candle_nn::ops::softmax(&scores.to_dtype(up)?, D::Minus1)?
            .to_dtype(v.dtype())?
            .matmul(v),
        None => candle_nn::ops::softmax(&scores, D::Minus1)?.matmul(v),
    }
}

#[derive(Debug, Clone)]
pub struct Attention {
    to_q: Proj,
    to_k: Proj,
    to_v: Proj,
    to_out: Proj,
    heads: usize,
}

impl Attention {
    /// Self-attention when `context_dim` is None, cross-attention to a `context_dim`
    /// context otherwise; every projection may carry a LoRA adapter.
    pub fn new(
        query_dim: usize,
        context_dim: Option<usize>,
        heads: usize,
        head_dim: usize,
        vbs: &Builders,
    ) -> Result<Self> {
        let inner = heads * head_dim;
        let kv_dim = context_dim.unwrap_or(query_dim);
        Ok(Self {
            to_q: Proj::new(query_dim, inner, false, &vbs.pp("to_q"))?,
            to_k: Proj::new(kv_dim, inner, false, &vbs.pp("to_k"))?,
            to_v: Proj::new(kv_dim, inner, false, &vbs.pp("to_v"))?,
            // to_out.1 is a dropout in diffusers: nothing to load.
            to_out: Proj::new(inner, query_dim, true, &vbs.pp("to_out.0"))?,
            heads,
        })
    }

    /// [B, L, inner] -> [B*heads, L, inner/heads].
    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, l, inner) = x.dims3()?;
        let d = inner / self.heads;
        x.reshape((b, l, self.heads, d))?
            .transpose(1, 2)?
            .reshape((b * self.heads, l, d))
    }

    /// x [B, L, query_dim]; context [B, Lc, context_dim] for cross-attention, None for self.
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        let ctx = context.unwrap_or(x);
        let q = self.split_heads(&self.to_q.forward(x)?)?;
        let k = self.split_heads(&self.to_k.forward(ctx)?)?;
        let v = self.split_heads(&self.to_v.forward(ctx)?)?;
        let out = scaled_dot_product_attention(&q, &k, &v)?;
        let d = out.dim(D::Minus1)?;
        let out = out
            .reshape((b, self.heads, l, d))?
            .transpose(1, 2)?
            .reshape((b, l, self.heads * d))?;
        self.to_out.forward(&out)
    }
}
