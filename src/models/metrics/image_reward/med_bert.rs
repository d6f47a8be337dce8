//! BLIP's text encoder (`med.py`'s `BertModel`, `add_pooling_layer=False`, mode
//! "multimodal"), as ImageReward reads it: BERT with a cross-attention to the image tokens
//! in every layer. Post-norm layers:
//!
//!   a = LN(x + self_attn(x, mask)),  c = LN(a + cross_attn(a, image)),
//!   out = LN(c + W_o gelu(W_i c)).
//!
//! The embeddings are word + absolute position (no token types), then LN. The padding
//! mask adds −10000 to masked scores (not −inf), as `get_extended_attention_mask` does.

use crate::nn::{layer_norm, linear, LayerNorm, Linear};
use candle_core::{Module, Result, Tensor, D};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

/// BLIP's `med_config.json` (the keys the network reads; `encoder_width` is ignored: the
/// package sets it to the image encoder's width, which `MedBert::new` takes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MedConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub layer_norm_eps: f64,
    pub hidden_act: String,
}

impl MedConfig {
    /// BLIP's med_config.json with the two added tokens ([DEC], [ENC]) ImageReward's
    /// checkpoint has rows for.
    pub fn blip() -> Self {
        Self {
            vocab_size: 30524,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            max_position_embeddings: 512,
            layer_norm_eps: 1e-12,
            hidden_act: "gelu".into(),
        }
    }

    pub fn from_json(json: &str) -> anyhow::Result<Self> {
        let cfg: Self = serde_json::from_str(json)?;
        if cfg.hidden_act != "gelu" {
            anyhow::bail!(
                "hidden_act {:?}: only \"gelu\" (BLIP's) is implemented",
                cfg.hidden_act
            );
        }
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads)
        {
            anyhow::bail!(
                "{} attention heads do not divide hidden_size {}",
                cfg.num_attention_heads,
                cfg.hidden_size
            );
        }
        Ok(cfg)
    }
}

/// `BertSelfAttention`: query from the text, key and value from `context` (the text
/// itself, or the image tokens of width `context_width`).
struct Attention {
    query: Linear,
    key: Linear,
    value: Linear,
    dense: Linear,
    norm: LayerNorm,
    heads: usize,
}

impl Attention {
    /// `vb` at `attention` or `crossattention`.
    fn new(cfg: &MedConfig, context_width: usize, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let s = vb.pp("self");
        Ok(Self {
            query: linear(h, h, s.pp("query"))?,
            key: linear(context_width, h, s.pp("key"))?,
            value: linear(context_width, h, s.pp("value"))?,
            dense: linear(h, h, vb.pp("output.dense"))?,
            norm: layer_norm(h, cfg.layer_norm_eps, vb.pp("output.LayerNorm"))?,
            heads: cfg.num_attention_heads,
        })
    }

    /// [B, L, W] -> [B, heads, L, W / heads].
    fn split(&self, x: &Tensor) -> Result<Tensor> {
        let (b, l, w) = x.dims3()?;
        x.reshape((b, l, self.heads, w / self.heads))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// LN(x + dense(attention)): x [B, L, H], context [B, M, W], `bias` [B, 1, 1, M] added
    /// to the scores (or None).
    fn forward(&self, x: &Tensor, context: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let (b, l, h) = x.dims3()?;
        let d = h / self.heads;
        let q = self.split(&self.query.forward(x)?)?;
        let k = self.split(&self.key.forward(context)?)?;
        let v = self.split(&self.value.forward(context)?)?;
        let scores = (q.matmul(&k.t()?)? / (d as f64).sqrt())?;
        let scores = match bias {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let out = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, l, h))?;
        self.norm.forward(&(self.dense.forward(&out)? + x)?)
    }
}

struct Layer {
    attention: Attention,
    crossattention: Attention,
    intermediate: Linear,
    output: Linear,
    norm: LayerNorm,
}

impl Layer {
    fn new(cfg: &MedConfig, image_width: usize, vb: VarBuilder) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            attention: Attention::new(cfg, h, vb.pp("attention"))?,
            crossattention: Attention::new(cfg, image_width, vb.pp("crossattention"))?,
            intermediate: linear(h, i, vb.pp("intermediate.dense"))?,
            output: linear(i, h, vb.pp("output.dense"))?,
            norm: layer_norm(h, cfg.layer_norm_eps, vb.pp("output.LayerNorm"))?,
        })
    }

    fn forward(&self, x: &Tensor, mask_bias: &Tensor, image: &Tensor) -> Result<Tensor> {
        let a = self.attention.forward(x, x, Some(mask_bias))?;
        let c = self.crossattention.forward(&a, image, None)?;
        let ff = self
            .output
            .forward(&self.intermediate.forward(&c)?.gelu_erf()?)?;
        self.norm.forward(&(ff + c)?)
    }
}

/// `blip.text_encoder`: `embeddings.*` and `encoder.layer.N.*`.
pub struct MedBert {
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    embed_norm: LayerNorm,
    layers: Vec<Layer>,
}

impl MedBert {
    /// `image_width`: the width of the image tokens the cross-attention reads.
    pub fn new(cfg: &MedConfig, image_width: usize, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let e = vb.pp("embeddings");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::new(cfg, image_width, vb.pp(format!("encoder.layer.{i}"))))
            .collect::<Result<_>>()?;
        Ok(Self {
            word_embeddings: e.get((cfg.vocab_size, h), "word_embeddings.weight")?,
            position_embeddings: e.get(
                (cfg.max_position_embeddings, h),
                "position_embeddings.weight",
            )?,
            embed_norm: layer_norm(h, cfg.layer_norm_eps, e.pp("LayerNorm"))?,
            layers,
        })
    }

    /// The last hidden state [B, L, H] of token ids [B, L] (u32) with attention mask
    /// [B, L] (1 for tokens, 0 for padding), attending to image tokens [B, M, W].
    pub fn forward(&self, ids: &Tensor, mask: &Tensor, image: &Tensor) -> Result<Tensor> {
        let (b, l) = ids.dims2()?;
        let words = self
            .word_embeddings
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, l, ()))?;
        let x = words.broadcast_add(&self.position_embeddings.narrow(0, 0, l)?.unsqueeze(0)?)?;
        let mut x = self.embed_norm.forward(&x)?;
        // (1 − mask) · −10000, [B, 1, 1, L].
        let bias = mask
            .to_dtype(x.dtype())?
            .affine(10000.0, -10000.0)?
            .reshape((b, 1, 1, l))?;
        for layer in &self.layers {
            x = layer.forward(&x, &bias, image)?;
        }
        Ok(x)
    }
}
