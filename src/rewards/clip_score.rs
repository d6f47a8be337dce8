//! CLIP score as a reward: the cosine similarity between an image's CLIP embedding and its
//! prompt's, differentiable with respect to the image. The prompts' text embeddings are
//! computed once (no gradient) and indexed by each sample's condition id. This is the raw
//! cosine, not torchmetrics' 100 * max(cos, 0).
//!
//! The same formula with other CLIPs is the alignment scores the paper reports: HPSv2 is
//! the cosine under its fine-tuned OpenCLIP ViT-H/14 (`hpsv2.score`: the diagonal of
//! `image_features @ text_features.T`, both normalised), PickScore the cosine under its
//! ViT-H/14 `CLIPModel` times `logit_scale.exp()` (its model card's formula).

use super::clip_preprocess::clip_preprocess;
use crate::models::clip::{l2_normalize, ClipText, ClipVision};
use candle_core::{DType, Result, Tensor, D};

/// cos(image_embeds_b, text_embeds[cond_b]) for image_embeds [B, proj], text_embeds
/// [P, proj] and cond u32 [B] -> [B], f32. Both sides are normalised here (normalising
/// already normalised text embeddings changes nothing).
pub fn cosine_to_prompts(
    image_embeds: &Tensor,
    text_embeds: &Tensor,
    cond: &Tensor,
) -> Result<Tensor> {
    let img = l2_normalize(image_embeds)?;
    let txt = l2_normalize(text_embeds)?.index_select(&cond.to_dtype(DType::U32)?, 0)?;
    (img * txt)?.sum(D::Minus1)
}

/// Normalised, detached text embeddings [P, proj] of prompt token ids [P, L] (the text
/// tower must have its `text_projection`).
pub fn prompt_embeds(text: &ClipText, ids: &Tensor) -> Result<Tensor> {
    l2_normalize(&text.text_embeds(ids)?)?.detach().contiguous()
}

#[derive(Debug, Clone)]
pub struct ClipScoreReward {
    pub vision: ClipVision,
    text_embeds: Tensor,
    /// What the cosine is multiplied by: 1, or PickScore's exp(logit_scale).
    scale: f64,
}

impl ClipScoreReward {
    /// `text_embeds` [P, proj]: one per prompt (condition id); stored normalised, f32,
    /// detached.
    pub fn new(vision: ClipVision, text_embeds: &Tensor) -> Result<Self> {
        let (_, d) = text_embeds.dims2()?;
        let proj = vision.config().projection_dim;
        if d != proj {
            candle_core::bail!("text embeddings are {d} wide, the CLIP vision tower makes {proj}")
        }
        Ok(Self {
            vision,
            text_embeds: l2_normalize(text_embeds)?.detach(),
            scale: 1.0,
        })
    }

    /// The cosine times `scale` (PickScore: exp(logit_scale) of its file).
    pub fn with_scale(self, scale: f64) -> Self {
        Self { scale, ..self }
    }

    pub fn text_embeds(&self) -> &Tensor {
        &self.text_embeds
    }

    /// Images [B, 3, H, W] in [-1, 1] and condition ids u32 [B] -> scale x cosine [B], f32
    /// (f64 for an f64 tower), differentiable with respect to the images.
    pub fn score(&self, images: &Tensor, cond: &Tensor) -> Result<Tensor> {
        let pixels = clip_preprocess(
            &images.to_dtype(self.vision.dtype())?,
            self.vision.config().image_size,
        )?;
        let img = self.vision.forward(&pixels)?;
        cosine_to_prompts(&img, &self.text_embeds, &cond.to_device(img.device())?)? * self.scale
    }
}
