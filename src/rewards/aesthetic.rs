//! The LAION aesthetic predictor ("improved aesthetic predictor",
//! `sac+logos+ava1-l14-linearMSE.pth`) as a differentiable reward: decoded image ->
//! CLIP preprocessing -> CLIP ViT-L/14 image embedding -> L2 normalisation -> a linear MLP
//! -> a score (roughly 1..10; the reward is the raw score).

use super::clip_preprocess::clip_preprocess;
use crate::models::clip::{l2_normalize, load_vision, weights, ClipVision, ClipVisionConfig};
use crate::nn::{linear, Linear};
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use std::path::Path;

/// Widths of the head's layers after the input: Linear in -> 1024 -> 128 -> 64 -> 16 -> 1.
pub const AESTHETIC_WIDTHS: [usize; 5] = [1024, 128, 64, 16, 1];
/// Their indices in the torch `nn.Sequential` (`layers.N`): dropouts sit at 1, 3 and 5
/// (nothing to load, identity at inference).
pub const AESTHETIC_LAYER_KEYS: [usize; 5] = [0, 2, 4, 6, 7];

/// The head: five linear layers with no activation between them (the model is linear
/// in the normalised embedding, as trained).
#[derive(Debug, Clone)]
pub struct AestheticHead {
    layers: Vec<Linear>,
    in_dim: usize,
}

impl AestheticHead {
    /// `in_dim` is the CLIP embedding width (768 for ViT-L/14).
    pub fn new(vb: VarBuilder, in_dim: usize) -> Result<Self> {
        let vb = vb.pp("layers");
        let mut prev = in_dim;
        let mut layers = Vec::new();
        for (key, width) in AESTHETIC_LAYER_KEYS.iter().zip(AESTHETIC_WIDTHS) {
            layers.push(linear(prev, width, vb.pp(key.to_string()))?);
            prev = width;
        }
        Ok(Self { layers, in_dim })
    }

    /// From the `.pth` (PyTorch zip archive) or a `.safetensors` with the same keys,
    /// chosen by extension; a missing key is an error naming the file and the key.
    pub fn load(path: &Path, in_dim: usize, device: &Device, dtype: DType) -> anyhow::Result<Self> {
        weights::build_checked(path, device, dtype, |vb| Self::new(vb, in_dim))
    }

    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    pub fn dtype(&self) -> DType {
        self.layers[0].weight().dtype()
    }

    /// Normalised embeddings [B, in_dim] -> scores [B].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for l in &self.layers {
            h = l.forward(&h)?;
        }
        h.squeeze(1)
    }
}

/// Aesthetic score of decoded images, differentiable with respect to them.
#[derive(Debug, Clone)]
pub struct AestheticReward {
    pub vision: ClipVision,
    pub head: AestheticHead,
}

impl AestheticReward {
    pub fn new(vision: ClipVision, head: AestheticHead) -> anyhow::Result<Self> {
        let proj = vision.config().projection_dim;
        if proj != head.in_dim() {
            anyhow::bail!(
                "the aesthetic head reads {}-wide embeddings, the CLIP vision tower makes {proj}",
                head.in_dim()
            );
        }
        Ok(Self { vision, head })
    }

    /// The vision tower (with `visual_projection`) from a CLIP checkpoint in `dtype`, the
    /// head from `head_path` in f32 (it is tiny, and its input is normalised in f32).
    pub fn load(
        clip_path: &Path,
        head_path: &Path,
        cfg: &ClipVisionConfig,
        device: &Device,
        dtype: DType,
    ) -> anyhow::Result<Self> {
        let vision = load_vision(clip_path, cfg, device, dtype)?;
        let head = AestheticHead::load(head_path, cfg.projection_dim, device, DType::F32)?;
        Self::new(vision, head)
    }

    /// Images [B, 3, H, W] in [-1, 1] (any float dtype) -> L2-normalised CLIP image
    /// embeddings [B, projection_dim], f32.
    pub fn image_embeds(&self, images: &Tensor) -> Result<Tensor> {
        let dtype = self.vision.dtype();
        let pixels = clip_preprocess(&images.to_dtype(dtype)?, self.vision.config().image_size)?;
        l2_normalize(&self.vision.forward(&pixels)?)
    }

    /// Images [B, 3, H, W] in [-1, 1] -> aesthetic scores [B] (f32 for an f32 head).
    pub fn score(&self, images: &Tensor) -> Result<Tensor> {
        let e = self.image_embeds(images)?;
        self.head.forward(&e.to_dtype(self.head.dtype())?)
    }
}
