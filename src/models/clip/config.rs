//! CLIP's configuration with Hugging Face transformers' field names, so that the
//! `vision_config` / `text_config` of openai/clip-vit-large-patch14's `config.json`, or
//! SD-1.5's `text_encoder/config.json`, deserialise into it. Unknown keys are ignored and
//! a missing key takes transformers' default (`CLIPVisionConfig` / `CLIPTextConfig`).

use serde::{Deserialize, Serialize};

/// The MLP's activation (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// x * sigmoid(1.702 x): what OpenAI's CLIP models (and so SD-1.5's text encoder) use.
    QuickGelu,
    /// The exact (erf) gelu, transformers' "gelu".
    Gelu,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClipVisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_attention_heads: usize,
    pub num_hidden_layers: usize,
    pub num_channels: usize,
    /// The input is exactly image_size x image_size: the position embedding has one entry
    /// per patch plus the class token.
    pub image_size: usize,
    pub patch_size: usize,
    pub layer_norm_eps: f64,
    pub hidden_act: Activation,
    /// Width of `visual_projection` (the image embedding).
    pub projection_dim: usize,
}

/// transformers' `CLIPVisionConfig()` defaults (ViT-B/32).
impl Default for ClipVisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_attention_heads: 12,
            num_hidden_layers: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            layer_norm_eps: 1e-5,
            hidden_act: Activation::QuickGelu,
            projection_dim: 512,
        }
    }
}

impl ClipVisionConfig {
    /// CLIP ViT-L/14 at 224 px (openai/clip-vit-large-patch14), whose image embedding the
    /// LAION aesthetic predictor reads.
    pub fn vit_l14_vision() -> Self {
        Self {
            hidden_size: 1024,
            intermediate_size: 4096,
            num_attention_heads: 16,
            num_hidden_layers: 24,
            num_channels: 3,
            image_size: 224,
            patch_size: 14,
            layer_norm_eps: 1e-5,
            hidden_act: Activation::QuickGelu,
            projection_dim: 768,
        }
    }

    /// A tiny random-weight tower for tests: 28 px, 7 px patches (16 patches + CLS).
    pub fn tiny() -> Self {
        Self {
            hidden_size: 32,
            intermediate_size: 64,
            num_attention_heads: 4,
            num_hidden_layers: 2,
            num_channels: 3,
            image_size: 28,
            patch_size: 7,
            layer_norm_eps: 1e-5,
            hidden_act: Activation::QuickGelu,
            projection_dim: 16,
        }
    }

    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Tokens: one per patch plus the class token (ViT-L/14: 16^2 + 1 = 257).
    pub fn num_positions(&self) -> usize {
        self.grid() * self.grid() + 1
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.patch_size == 0 || !self.image_size.is_multiple_of(self.patch_size) {
            return Err(format!(
                "patch_size {} does not divide image_size {}",
                self.patch_size, self.image_size
            ));
        }
        check_heads(self.hidden_size, self.num_attention_heads)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_attention_heads: usize,
    pub num_hidden_layers: usize,
    /// The longest token sequence (77 for every CLIP).
    pub max_position_embeddings: usize,
    pub layer_norm_eps: f64,
    pub hidden_act: Activation,
    /// Width of `text_projection` (the text embedding a CLIP score compares with).
    pub projection_dim: usize,
}

/// transformers' `CLIPTextConfig()` defaults.
impl Default for ClipTextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_attention_heads: 8,
            num_hidden_layers: 12,
            max_position_embeddings: 77,
            layer_norm_eps: 1e-5,
            hidden_act: Activation::QuickGelu,
            projection_dim: 512,
        }
    }
}

impl ClipTextConfig {
    /// CLIP ViT-L/14's text model, which is also SD-1.5's text encoder
    /// (`text_encoder/config.json`).
    pub fn vit_l14_text() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 768,
            intermediate_size: 3072,
            num_attention_heads: 12,
            num_hidden_layers: 12,
            max_position_embeddings: 77,
            layer_norm_eps: 1e-5,
            hidden_act: Activation::QuickGelu,
            projection_dim: 768,
        }
    }

    /// A tiny random-weight text tower for tests.
    pub fn tiny() -> Self {
        Self {
            vocab_size: 64,
            hidden_size: 32,
            intermediate_size: 64,
            num_attention_heads: 4,
            num_hidden_layers: 2,
            max_position_embeddings: 8,
            layer_norm_eps: 1e-5,
            hidden_act: Activation::QuickGelu,
            projection_dim: 16,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        check_heads(self.hidden_size, self.num_attention_heads)
    }
}

/// A whole CLIP model's `config.json` (`CLIPConfig`): transformers builds both projections
/// with the top-level `projection_dim`, which `from_json` copies into each tower.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClipConfig {
    pub text_config: ClipTextConfig,
    pub vision_config: ClipVisionConfig,
    pub projection_dim: usize,
}

impl Default for ClipConfig {
    fn default() -> Self {
        Self {
            text_config: ClipTextConfig::default(),
            vision_config: ClipVisionConfig::default(),
            projection_dim: 512,
        }
    }
}

impl ClipConfig {
    /// openai/clip-vit-large-patch14.
    pub fn vit_l14() -> Self {
        Self {
            text_config: ClipTextConfig::vit_l14_text(),
            vision_config: ClipVisionConfig::vit_l14_vision(),
            projection_dim: 768,
        }
    }

    /// Parses a `config.json`; the top-level `projection_dim` wins over the towers'.
    pub fn from_json(json: &str) -> serde_json::Result<Self> {
        let mut cfg: Self = serde_json::from_str(json)?;
        cfg.text_config.projection_dim = cfg.projection_dim;
        cfg.vision_config.projection_dim = cfg.projection_dim;
        Ok(cfg)
    }
}

fn check_heads(hidden: usize, heads: usize) -> Result<(), String> {
    if heads == 0 || !hidden.is_multiple_of(heads) {
        return Err(format!(
            "{heads} attention heads do not divide hidden_size {hidden}"
        ));
    }
    Ok(())
}
