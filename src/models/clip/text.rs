//! CLIP's text tower (transformers' `CLIPTextModel`, optionally with
//! `text_projection.weight`): SD-1.5's text encoder, and the text side of a CLIP score.
//!
//! Its keys sit under `text_model.` in SD-1.5's file, in a whole CLIP checkpoint and in
//! what transformers 5 saves for `CLIPTextModelWithProjection`; transformers 5's
//! `CLIPTextModel.save_pretrained` writes them at the root (`embeddings.*`, `encoder.*`,
//! `final_layer_norm.*`), its model having no `text_model` submodule. Both load
//! ([`ClipText::new_at`], `load_text`).

use super::config::ClipTextConfig;
use super::encoder::{causal_mask, ClipEncoder, ClipLayerNorm, EncoderDims};
use crate::nn::{linear_no_bias, Linear};
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Embedding, Init, VarBuilder};

/// Where SD-1.5's and a whole CLIP checkpoint's text tower keys sit.
pub const TEXT_PREFIX: &str = "text_model";
/// A key every text tower has, relative to the tower.
pub const TEXT_PROBE_KEY: &str = "embeddings.token_embedding.weight";

#[derive(Debug, Clone)]
pub struct ClipText {
    cfg: ClipTextConfig,
    token_embedding: Embedding,
    position_embedding: Tensor,
    encoder: ClipEncoder,
    final_layer_norm: ClipLayerNorm,
    text_projection: Option<Linear>,
}

impl ClipText {
    /// `vb` at the checkpoint's root: reads `text_model.*`, and `text_projection.weight`
    /// when `with_projection` (a full CLIP checkpoint; SD-1.5's text encoder has none).
    pub fn new(vb: VarBuilder, cfg: &ClipTextConfig, with_projection: bool) -> Result<Self> {
        Self::new_at(vb, cfg, with_projection, Some(TEXT_PREFIX))
    }

    /// As `new`, with the tower's keys under `prefix.` (`Some("text_model")`) or at the
    /// root (`None`, transformers 5's `CLIPTextModel`); `text_projection.weight` is always
    /// at the root.
    pub fn new_at(
        vb: VarBuilder,
        cfg: &ClipTextConfig,
        with_projection: bool,
        prefix: Option<&str>,
    ) -> Result<Self> {
        cfg.validate()
            .map_err(|e| candle_core::Error::Msg(format!("ClipTextConfig: {e}")))?;
        let dims = EncoderDims {
            hidden: cfg.hidden_size,
            intermediate: cfg.intermediate_size,
            heads: cfg.num_attention_heads,
            layers: cfg.num_hidden_layers,
            eps: cfg.layer_norm_eps,
            act: cfg.hidden_act,
        };
        let h = cfg.hidden_size;
        let tm = match prefix {
            Some(p) => vb.pp(p),
            None => vb.clone(),
        };
        let emb = tm.pp("embeddings");
        // transformers' init (only used when building a fresh, random model).
        let normal = Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let tokens = emb.get_with_hints((cfg.vocab_size, h), "token_embedding.weight", normal)?;
        let text_projection = match with_projection {
            true => Some(linear_no_bias(
                h,
                cfg.projection_dim,
                vb.pp("text_projection"),
            )?),
            false => None,
        };
        Ok(Self {
            cfg: cfg.clone(),
            token_embedding: Embedding::new(tokens, h),
            position_embedding: emb.get_with_hints(
                (cfg.max_position_embeddings, h),
                "position_embedding.weight",
                normal,
            )?,
            encoder: ClipEncoder::new(&dims, tm.pp("encoder"))?,
            final_layer_norm: ClipLayerNorm::new(h, cfg.layer_norm_eps, tm.pp("final_layer_norm"))?,
            text_projection,
        })
    }

    pub fn config(&self) -> &ClipTextConfig {
        &self.cfg
    }

    pub fn has_projection(&self) -> bool {
        self.text_projection.is_some()
    }

    /// Token ids (u32 [B, L], L <= max_position_embeddings) -> `last_hidden_state`
    /// [B, L, hidden] after final_layer_norm: what Stable Diffusion conditions on.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (_, l) = ids.dims2()?;
        if l > self.cfg.max_position_embeddings {
            candle_core::bail!(
                "{l} tokens, CLIP's text model takes at most {}",
                self.cfg.max_position_embeddings
            )
        }
        let x = self
            .token_embedding
            .forward(ids)?
            .broadcast_add(&self.position_embedding.narrow(0, 0, l)?.unsqueeze(0)?)?;
        let mask = causal_mask(l, DType::F32, ids.device())?;
        let h = self.encoder.forward(&x, Some(&mask))?;
        self.final_layer_norm.forward(&h)
    }

    /// `pooler_output` [B, hidden]: the last hidden state at the position of each row's
    /// largest token id (the first if tied), which is the end-of-text token 49407 in CLIP's
    /// vocabulary; transformers does the same for configs with the legacy eos_token_id 2.
    pub fn pooled(&self, ids: &Tensor) -> Result<Tensor> {
        let h = self.forward(ids)?;
        pool_at_eos(&h, ids)
    }

    /// `text_embeds` [B, projection_dim] (not normalised); an error without the projection.
    pub fn text_embeds(&self, ids: &Tensor) -> Result<Tensor> {
        let proj = self.text_projection.as_ref().ok_or_else(|| {
            candle_core::Error::Msg(
                "this CLIP text model was loaded without text_projection".into(),
            )
        })?;
        proj.forward(&self.pooled(ids)?)
    }
}

/// Rows of h [B, L, hidden] at each row's argmax of ids [B, L] -> [B, hidden].
fn pool_at_eos(h: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let (b, l, hidden) = h.dims3()?;
    let rows: Vec<u32> = ids
        .to_dtype(DType::U32)?
        .to_vec2::<u32>()?
        .iter()
        .enumerate()
        .map(|(i, row)| {
            // First position of the maximum, as torch's argmax.
            let (pos, _) =
                row.iter().enumerate().fold(
                    (0, 0),
                    |best, (j, &v)| if v > best.1 { (j, v) } else { best },
                );
            (i * l + pos) as u32
        })
        .collect();
    let index = Tensor::from_vec(rows, b, h.device())?;
    h.reshape((b * l, hidden))?.index_select(&index, 0)
}
