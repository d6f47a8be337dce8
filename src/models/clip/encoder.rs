//! The transformer shared by CLIP's two towers (transformers' `CLIPEncoderLayer`):
//! pre-norm self-attention and MLP, each with a residual, an optional causal mask for the
//! text tower. Built from the project's differentiable blocks: candle-nn's fused layer
//! norm and `softmax_last_dim` pass no gradient (docs/design.md, candle), and a reward gradient
//! must reach the pixels through every layer here.
//!
//! Half precision: layer norms and the softmax run in f32 (their statistics and
//! exponentials lose too much in bf16/f16) and cast back; matmuls stay in the model dtype.

use super::config::Activation;
use crate::nn::half::upcast;
use crate::nn::{layer_norm, linear, LayerNorm, Linear};
use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

/// torch's `nn.LayerNorm` (`weight`, `bias`); for a half-precision model its affine
/// parameters are kept in f32 (nn::LayerNorm takes the statistics in f32 then).
#[derive(Debug, Clone)]
pub struct ClipLayerNorm {
    norm: LayerNorm,
}

impl ClipLayerNorm {
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let dtype = vb.dtype();
        let norm = if upcast(dtype).is_some() {
            let w = vb.get(dim, "weight")?.to_dtype(DType::F32)?;
            let b = vb.get(dim, "bias")?.to_dtype(DType::F32)?;
            LayerNorm::new(w, b, eps)
        } else {
            layer_norm(dim, eps, vb)?
        };
        Ok(Self { norm })
    }
}

impl Module for ClipLayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.norm.forward(x)
    }
}

/// The additive causal mask [L, L]: 0 on and below the diagonal, -inf above (token i sees
/// tokens 0..=i), in f32 since the softmax runs in f32 or wider.
pub fn causal_mask(len: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let v: Vec<f32> = (0..len)
        .flat_map(|i| (0..len).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(v, (len, len), device)?.to_dtype(dtype)
}

/// transformers' `CLIPAttention`: q/k/v/out projections, all with bias; q is scaled by
/// head_dim^-1/2 before the product, as there.
#[derive(Debug, Clone)]
pub struct ClipAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
}

impl ClipAttention {
    pub fn new(hidden: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            q_proj: linear(hidden, hidden, vb.pp("q_proj"))?,
            k_proj: linear(hidden, hidden, vb.pp("k_proj"))?,
            v_proj: linear(hidden, hidden, vb.pp("v_proj"))?,
            out_proj: linear(hidden, hidden, vb.pp("out_proj"))?,
            heads,
        })
    }

    /// [B, L, hidden] -> [B*heads, L, head_dim].
    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, l, hidden) = x.dims3()?;
        x.reshape((b, l, self.heads, hidden / self.heads))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b * self.heads, l, hidden / self.heads))
    }

    /// x [B, L, hidden]; `mask` an additive [L, L] mask (f32) or None.
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, l, hidden) = x.dims3()?;
        let d = hidden / self.heads;
        let q = (self.split_heads(&self.q_proj.forward(x)?)? * (1.0 / (d as f64).sqrt()))?;
        let k = self.split_heads(&self.k_proj.forward(x)?)?;
        let v = self.split_heads(&self.v_proj.forward(x)?)?;
        let scores = q.matmul(&k.t()?)?;
        // The generic softmax (with a backward), in f32 for half-precision models.
        let scores = match upcast(scores.dtype()) {
            Some(up) => scores.to_dtype(up)?,
            None => scores,
        };
        let scores = match mask {
            Some(m) => scores.broadcast_add(&m.to_dtype(scores.dtype())?)?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax(&scores, D::Minus1)?.to_dtype(v.dtype())?;
        let out = probs
            .matmul(&v)?
            .reshape((b, self.heads, l, d))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, l, hidden))?;
        self.out_proj.forward(&out)
    }
}

/// transformers' `CLIPMLP`: fc1, activation, fc2.
#[derive(Debug, Clone)]
pub struct ClipMlp {
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl ClipMlp {
    pub fn new(hidden: usize, inner: usize, act: Activation, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            fc1: linear(hidden, inner, vb.pp("fc1"))?,
            fc2: linear(inner, hidden, vb.pp("fc2"))?,
            act,
        })
    }
}

/// x * sigmoid(1.702 x) (transformers' `QuickGELUActivation`).
pub fn quick_gelu(x: &Tensor) -> Result<Tensor> {
    x * candle_nn::ops::sigmoid(&(x * 1.702)?)?
}

impl Module for ClipMlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.fc1.forward(x)?;
        let h = match self.act {
            Activation::QuickGelu => quick_gelu(&h)?,
            Activation::Gelu => h.gelu_erf()?,
        };
        self.fc2.forward(&h)
    }
}

/// Shape and activation of one encoder (the part of a tower config the layers need).
#[derive(Debug, Clone, Copy)]
pub struct EncoderDims {
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub layers: usize,
    pub eps: f64,
    pub act: Activation,
}

/// transformers' `CLIPEncoderLayer`: x + attn(ln1(x)), then x + mlp(ln2(x)).
#[derive(Debug, Clone)]
pub struct ClipEncoderLayer {
    self_attn: ClipAttention,
    layer_norm1: ClipLayerNorm,
    mlp: ClipMlp,
    layer_norm2: ClipLayerNorm,
}

impl ClipEncoderLayer {
    pub fn new(d: &EncoderDims, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            self_attn: ClipAttention::new(d.hidden, d.heads, vb.pp("self_attn"))?,
            layer_norm1: ClipLayerNorm::new(d.hidden, d.eps, vb.pp("layer_norm1"))?,
            mlp: ClipMlp::new(d.hidden, d.intermediate, d.act, vb.pp("mlp"))?,
            layer_norm2: ClipLayerNorm::new(d.hidden, d.eps, vb.pp("layer_norm2"))?,
        })
    }

    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let x = (self
            .self_attn
            .forward(&self.layer_norm1.forward(x)?, mask)?
            + x)?;
        self.mlp.forward(&self.layer_norm2.forward(&x)?)? + x
    }
}

/// transformers' `CLIPEncoder`: `layers.N`.
#[derive(Debug, Clone)]
pub struct ClipEncoder {
    layers: Vec<ClipEncoderLayer>,
}

impl ClipEncoder {
    pub fn new(d: &EncoderDims, vb: VarBuilder) -> Result<Self> {
        let layers = (0..d.layers)
            .map(|i| ClipEncoderLayer::new(d, vb.pp(format!("layers.{i}"))))
            .collect::<Result<_>>()?;
        Ok(Self { layers })
    }

    /// x [B, L, hidden] -> last hidden state [B, L, hidden].
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let mut h = x.clone();
        for layer in &self.layers {
            h = layer.forward(&h, mask)?;
        }
        Ok(h)
    }
}
