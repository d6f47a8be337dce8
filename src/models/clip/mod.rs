//! CLIP (ViT-L/14) in Hugging Face transformers' layout: the vision tower for image
//! rewards (aesthetic score, CLIP score) and the text tower for prompts (SD-1.5's text
//! encoder is CLIP ViT-L/14's text model).
//!
//! Unlike candle-transformers' CLIP, everything here passes gradients: its layer norm and
//! softmax are candle-nn's fused ops without a backward (docs/design.md, candle), so a reward
//! gradient through it would be silently zero.
//!
//! Weight files: SD-1.5's `text_encoder/model.safetensors` holds `text_model.*` only;
//! openai/clip-vit-large-patch14's `model.safetensors` holds `vision_model.*`,
//! `text_model.*`, `visual_projection.weight`, `text_projection.weight` and `logit_scale`
//! (unused here). OpenCLIP checkpoints (HPSv2) load into the same towers (`open_clip.rs`).

mod config;
mod encoder;
pub mod key_map;
pub mod open_clip;
mod text;
mod vision;
pub mod weights;

pub use config::{Activation, ClipConfig, ClipTextConfig, ClipVisionConfig};
pub use encoder::{
    causal_mask, quick_gelu, ClipAttention, ClipEncoder, ClipEncoderLayer, ClipLayerNorm, ClipMlp,
    EncoderDims,
};
pub use text::ClipText;
pub use vision::{ClipVision, VisionLayout};

use candle_core::{DType, Device, Result, Tensor, D};
use std::path::Path;

/// The vision tower and `visual_projection` from a CLIP checkpoint (safetensors, or a
/// PyTorch `.pth`/`.bin`), in `dtype` on `device`. The tower's keys may sit under
/// `vision_model.` or at the root (see [`ClipVision::new_at`]).
pub fn load_vision(
    path: &Path,
    cfg: &ClipVisionConfig,
    device: &Device,
    dtype: DType,
) -> anyhow::Result<ClipVision> {
    let prefix = tower_prefix(path, vision::VISION_PREFIX, vision::VISION_PROBE_KEY)?;
    weights::build_checked(path, device, dtype, |vb| {
        ClipVision::new_at(vb, cfg, prefix)
    })
}

/// The text tower, and `text_projection.weight` when `with_projection`, in `dtype` on
/// `device`. The tower's keys may sit under `text_model.` (SD-1.5, a whole CLIP,
/// transformers 5's `CLIPTextModelWithProjection`) or at the root (transformers 5's
/// `CLIPTextModel`).
pub fn load_text(
    path: &Path,
    cfg: &ClipTextConfig,
    device: &Device,
    dtype: DType,
    with_projection: bool,
) -> anyhow::Result<ClipText> {
    let prefix = tower_prefix(path, text::TEXT_PREFIX, text::TEXT_PROBE_KEY)?;
    weights::build_checked(path, device, dtype, |vb| {
        ClipText::new_at(vb, cfg, with_projection, prefix)
    })
}

/// `Some(prefix)` unless the file holds the tower at its root (`probe` without the prefix
/// and not with it). A file with neither is left to the loader to report, under the prefix.
fn tower_prefix(
    path: &Path,
    prefix: &'static str,
    probe: &str,
) -> anyhow::Result<Option<&'static str>> {
    let prefixed = format!("{prefix}.{probe}");
    let found = weights::which_keys(path, &[&prefixed, probe])?;
    Ok(
        match found.iter().any(|k| k == probe) && !found.contains(&prefixed) {
            true => None,
            false => Some(prefix),
        },
    )
}

/// x / ||x|| along the last dimension, in f32 for half-precision input (CLIP embeddings
/// are compared normalised); f32 and f64 input keep their dtype.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let x = match x.dtype() {
        DType::F16 | DType::BF16 => x.to_dtype(DType::F32)?,
        _ => x.clone(),
    };
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
    x.broadcast_div(&norm)
}
