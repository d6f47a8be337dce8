//! The frozen networks of an sd15 run besides the UNets, loaded once: the VAE decoder, the
//! CLIP towers, the aesthetic head and the evaluation metrics whose files are present
//! (`metrics.rs`). The rewards and the evaluation share them.

use super::layout::{self, config_or, Layout};
use super::metrics::{MetricSource, Optional};
use super::prompt_text::text_embeds;
use crate::models::clip::{self, ClipConfig, ClipTextConfig, ClipVision};
use crate::models::vae::{self, VaeDecoder};
use crate::rewards::aesthetic::AestheticHead;
use crate::rewards::clip_preprocess::clip_preprocess;
use crate::rewards::clip_score::ClipScoreReward;
use crate::text::ClipTokenizer;
use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use std::sync::Arc;

pub struct Sd15Parts {
    pub vae: VaeDecoder,
    pub vision: ClipVision,
    pub head: AestheticHead,
    /// L2-normalised CLIP text embeddings of the prompts [P, proj] (for the CLIP score).
    pub prompt_embeds: Tensor,
    /// The training prompts (ids 0..train_prompts), then the evaluation prompts, if any.
    pub prompts: Vec<String>,
    pub train_prompts: usize,
    pub dtype: DType,
    /// Where the evaluation metrics load from (HPSv2 and PickScore kept once a reward uses them).
    pub metrics: MetricSource,
}

impl Sd15Parts {
    pub fn load(
        layout: &Layout,
        prompts: Vec<String>,
        train_prompts: usize,
        tokenizer: &ClipTokenizer,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let vae_cfg = vae::config_from_dir(&layout.dir)?;
        let vae = vae::load(&layout.path(layout::VAE), &vae_cfg, device, dtype)?;
        let clip_cfg = config_or(
            layout.config_of(layout::CLIP),
            ClipConfig::vit_l14(),
            ClipConfig::from_json,
        )?;
        let clip_path = layout.path(layout::CLIP);
        let vision = clip::load_vision(&clip_path, &clip_cfg.vision_config, device, dtype)?;
        let text = clip::load_text(&clip_path, &clip_cfg.text_config, device, dtype, true)?;
        // The head stays in f32 (f64 in the tests' f64 runs) whatever the frozen dtype: it
        // is 1 MB, and in bf16 scores near 5-6 would come out in steps of 1/32.
        let head_dtype = if dtype == DType::F64 {
            DType::F64
        } else {
            DType::F32
        };
        let head = AestheticHead::load(
            &layout.path(layout::AESTHETIC),
            clip_cfg.projection_dim,
            device,
            head_dtype,
        )?;
        let prompt_embeds = text_embeds(&text, tokenizer, &prompts, device)?;
        let metrics = MetricSource::new(layout, &prompts, tokenizer, device, dtype)?;
        Ok(Self {
            vae,
            vision,
            head,
            prompt_embeds,
            prompts,
            train_prompts,
            dtype,
            metrics,
        })
    }

    /// The ids of the prompts evaluations sample: the evaluation list when one was given,
    /// the training prompts otherwise.
    pub fn eval_ids(&self) -> std::ops::Range<usize> {
        eval_ids(self.train_prompts, self.prompts.len())
    }

    /// HPSv2 [B] of latents, differentiable with respect to them (`rewards.hps`).
    pub fn hps(&self, latents: &Tensor, cond: &Tensor) -> candle_core::Result<Tensor> {
        let model = self.metrics.hps().map_err(candle_core::Error::wrap)?;
        Self::aligned(model, "rewards.hps", &self.decode(latents)?, cond)?.to_dtype(latents.dtype())
    }

    /// PickScore [B] of latents, differentiable with respect to them (`rewards.pickscore`).
    pub fn pickscore(&self, latents: &Tensor, cond: &Tensor) -> candle_core::Result<Tensor> {
        let model = self.metrics.pickscore().map_err(candle_core::Error::wrap)?;
        Self::aligned(model, "rewards.pickscore", &self.decode(latents)?, cond)?
            .to_dtype(latents.dtype())
    }

    /// An alignment score of decoded images [B, 3, H, W], or an error naming the missing file.
    fn aligned(
        model: &Optional<Arc<ClipScoreReward>>,
        name: &str,
        images: &Tensor,
        cond: &Tensor,
    ) -> candle_core::Result<Tensor> {
        match model {
            Ok(m) => m.score(images, cond),
            Err(why) => candle_core::bail!("{name} needs its weights: {why}"),
        }
    }

    /// Latents -> images in [-1, 1]-ish, in the latents' dtype (the VAE runs in the frozen
    /// dtype).
    pub fn decode(&self, latents: &Tensor) -> candle_core::Result<Tensor> {
        self.vae
            .decode(&latents.to_dtype(self.dtype)?)?
            .to_dtype(latents.dtype())
    }

    /// L2-normalised CLIP image embeddings [B, proj] of decoded images.
    pub fn image_embeds(&self, images: &Tensor) -> candle_core::Result<Tensor> {
        let size = self.vision.config().image_size;
        let pixels = clip_preprocess(images, size)?.to_dtype(self.dtype)?;
        clip::l2_normalize(&self.vision.forward(&pixels)?)
    }

    /// The LAION aesthetic score [B] of latents: decode, CLIP, normalise, the linear head.
    /// Differentiable with respect to the latents (the paper's reward gradient).
    pub fn aesthetic(&self, latents: &Tensor) -> candle_core::Result<Tensor> {
        self.head_score(&self.image_embeds(&self.decode(latents)?)?)?
            .to_dtype(latents.dtype())
    }

    /// The aesthetic head on normalised image embeddings [B, proj] -> [B], in the head's
    /// dtype (f32 or f64, never half: see `load`).
    pub fn head_score(&self, embeds: &Tensor) -> candle_core::Result<Tensor> {
        self.head
            .forward(&embeds.to_dtype(self.head.dtype())?)?
            .flatten_all()
    }

    /// The CLIP score [B]: cosine of the image's and its prompt's CLIP embeddings.
    pub fn clip_score(&self, latents: &Tensor, cond: &Tensor) -> candle_core::Result<Tensor> {
        self.cosine_to_prompts(&self.image_embeds(&self.decode(latents)?)?, cond)
    }

    /// Cosine [B] of image embeddings [B, proj] and their prompts' (ids `cond`).
    pub fn cosine_to_prompts(&self, embeds: &Tensor, cond: &Tensor) -> candle_core::Result<Tensor> {
        crate::rewards::clip_score::cosine_to_prompts(embeds, &self.prompt_embeds, cond)
    }
}

/// The evaluation prompts' ids among `total` prompts of which the first `train` are the
/// training ones: those after them, or the training ones when there are none.
fn eval_ids(train: usize, total: usize) -> std::ops::Range<usize> {
    if train < total {
        train..total
    } else {
        0..total
    }
}

/// The SD text encoder's config (text_encoder/config.json, or CLIP ViT-L/14's text model).
pub fn text_encoder_config(layout: &Layout) -> Result<ClipTextConfig> {
    config_or(
        layout.config_of(layout::TEXT_ENCODER),
        ClipTextConfig::vit_l14_text(),
        |s| serde_json::from_str(s),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn evaluation_prompts_are_the_ones_after_the_training_ones() {
        assert_eq!(super::eval_ids(2, 5), 2..5);
        assert_eq!(super::eval_ids(45, 45), 0..45);
    }
}
