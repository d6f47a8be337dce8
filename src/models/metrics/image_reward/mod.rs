//! ImageReward (Xu et al. 2023), the `image-reward` package's `ImageReward-v1.0`: one of
//! the paper's alignment scores (§5.1, Appendix D).
//!
//! score(x, prompt) = (mlp(bert(prompt, vit(x))[:, 0]) − 0.16717362830052426)
//!                    / 1.0333394966054072
//!
//! vit is BLIP's ViT-L/16 (all 197 tokens after its final norm); bert the text encoder
//! with cross-attention to them (`med_bert.rs`), read at the [CLS] position; mlp five linear
//! layers 768 -> 1024 -> 128 -> 64 -> 16 -> 1 without activations (the LAION aesthetic head's
//! shape, so `AestheticHead` reads it under `mlp.`). Prompts are tokenised by
//! bert-base-uncased's WordPiece, padded to 35 tokens; [CLS] stays first (the package never
//! swaps in [ENC]).
//!
//! Images: [-1, 1] -> [0, 1] clamped -> shortest side to 224 (bicubic), centre crop 224 ->
//! CLIP's mean and std. The package resizes an 8-bit PIL image; here the float image with
//! the same filter, clipped to [0, 1] after each pass as PIL's is, and not rounded.
//!
//! File: `ImageReward.pt`, a plain state dict: `blip.visual_encoder.*` (DINO / timm ViT
//! layout, `dino_vit.rs`), `blip.text_encoder.*`, `mlp.layers.{0,2,4,6,7}.*`.

pub mod med_bert;

use super::dino_vit::{dino_params, load_dino_vit, DinoVitConfig};
use crate::models::clip::weights::build_checked;
use crate::models::clip::{Activation, ClipVision, VisionLayout};
use crate::rewards::aesthetic::AestheticHead;
use crate::rewards::clip_preprocess::{normalize, resize_center_crop, Filter, CLIP_MEAN, CLIP_STD};
use crate::tensor_io::expected_params;
use crate::text::BertTokenizer;
use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use med_bert::{MedBert, MedConfig};
use std::path::Path;

const MEAN: f64 = 0.16717362830052426;
const STD: f64 = 1.0333394966054072;
/// The token length ImageReward pads and truncates prompts to.
pub const MAX_TOKENS: usize = 35;
/// Where BLIP's image encoder sits in the checkpoint.
const VIT_PREFIX: &str = "blip.visual_encoder.";
/// BLIP's ViT: a patch convolution with bias, no norm before the blocks, no projection.
const VIT_LAYOUT: VisionLayout = VisionLayout {
    patch_bias: true,
    pre_layernorm: false,
    projection: false,
};

/// Token ids and attention masks [P, 35] (u32, f32) of prompts, as ImageReward's
/// `tokenizer(prompt, padding="max_length", truncation=True, max_length=35)`.
pub fn tokenize(
    tok: &BertTokenizer,
    prompts: &[String],
    device: &Device,
) -> candle_core::Result<(Tensor, Tensor)> {
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    for p in prompts {
        let (i, m) = tok.encode_padded(p, MAX_TOKENS);
        ids.extend(i);
        mask.extend(m.into_iter().map(|v| v as f32));
    }
    let n = prompts.len();
    Ok((
        Tensor::from_vec(ids, (n, MAX_TOKENS), device)?,
        Tensor::from_vec(mask, (n, MAX_TOKENS), device)?,
    ))
}

/// BLIP's ViT-L/16 at 224 px (`create_vit("large", 224)`).
pub fn blip_vit_large() -> DinoVitConfig {
    DinoVitConfig {
        img_size: 224,
        patch_size: 16,
        embed_dim: 1024,
        depth: 24,
        num_heads: 16,
        mlp_ratio: 4.0,
        ln_eps: 1e-6,
        act: Activation::Gelu,
        proj_dim: None,
    }
}

struct TextParts {
    bert: MedBert,
    head: AestheticHead,
}

pub struct ImageReward {
    vit: ClipVision,
    text: TextParts,
    /// Token ids [P, 35] (u32) and attention masks [P, 35] of the prompts.
    ids: Tensor,
    mask: Tensor,
}

/// Every key and shape of an `ImageReward.pt` for these sizes (what `sqdf random-weights`
/// writes; the checkpoint's unused `blip.vision_proj` / `blip.text_proj` left out).
pub fn params(med: &MedConfig, vit: &DinoVitConfig) -> Result<Vec<(String, Vec<usize>)>> {
    let mut out: Vec<(String, Vec<usize>)> = dino_params(&vit.to_clip(), VIT_LAYOUT)?
        .into_iter()
        .map(|(k, s)| (format!("{VIT_PREFIX}{k}"), s))
        .collect();
    out.extend(expected_params(|vb| {
        Ok(TextParts {
            bert: MedBert::new(med, vit.embed_dim, vb.pp("blip.text_encoder"))?,
            head: AestheticHead::new(vb.pp("mlp"), med.hidden_size)?,
        })
    })?);
    Ok(out)
}

impl ImageReward {
    /// The networks from `ImageReward.pt` with the prompts' tokens (ids and masks
    /// [P, 35]), f32 on `device`. A missing key or a wrong shape names the file and the key.
    pub fn load(
        path: &Path,
        med: &MedConfig,
        vit: &DinoVitConfig,
        ids: Tensor,
        mask: Tensor,
        device: &Device,
    ) -> Result<Self> {
        let vit_cfg = vit.to_clip();
        vit_cfg
            .validate()
            .map_err(|e| anyhow::anyhow!("ImageReward's ViT: {e}"))?;
        let vit = load_dino_vit(path, VIT_PREFIX, &vit_cfg, VIT_LAYOUT, None, device)?;
        let width = vit_cfg.hidden_size;
        let text = build_checked(path, device, DType::F32, |vb| {
            Ok(TextParts {
                bert: MedBert::new(med, width, vb.pp("blip.text_encoder"))?,
                head: AestheticHead::new(vb.pp("mlp"), med.hidden_size)?,
            })
        })?;
        Ok(Self {
            vit,
            text,
            ids: ids.to_device(device)?,
            mask: mask.to_device(device)?,
        })
    }

    /// CLIP-normalised pixels [B, 3, S, S] of decoded images [B, 3, H, W] in [-1, 1].
    pub fn preprocess(&self, images: &Tensor) -> candle_core::Result<Tensor> {
        let s = self.vit.config().image_size;
        let x = images
            .to_dtype(DType::F32)?
            .affine(0.5, 0.5)?
            .clamp(0.0, 1.0)?;
        let x = resize_center_crop(&x, s, Filter::Bicubic)?;
        normalize(&x, CLIP_MEAN, CLIP_STD)
    }

    /// The score [B] of normalised pixels [B, 3, S, S] against token ids and masks [B, 35].
    pub fn score_pixels(
        &self,
        pixels: &Tensor,
        ids: &Tensor,
        mask: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let image = self.vit.normed_tokens(pixels)?;
        let hidden = self.text.bert.forward(ids, mask, &image)?;
        let cls = hidden.narrow(1, 0, 1)?.squeeze(1)?;
        self.text
            .head
            .forward(&cls)?
            .flatten_all()?
            .affine(1.0 / STD, -MEAN / STD)
    }

    /// ImageReward [B] of decoded images [B, 3, H, W] in [-1, 1] against their prompts
    /// (ids `cond` [B] into the prompt list).
    pub fn score(&self, images: &Tensor, cond: &Tensor) -> candle_core::Result<Tensor> {
        let cond = cond.to_dtype(DType::U32)?;
        let ids = self.ids.index_select(&cond, 0)?;
        let mask = self.mask.index_select(&cond, 0)?;
        self.score_pixels(&self.preprocess(images)?, &ids, &mask)
    }
}
