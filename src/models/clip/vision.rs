//! CLIP's vision tower with its projection (transformers' `CLIPVisionModelWithProjection`
//! layout: `vision_model.*` and `visual_projection.weight`), differentiable from the
//! pixels to the image embedding so that an image reward's gradient reaches the image.

use super::config::ClipVisionConfig;
use super::encoder::{ClipEncoder, ClipLayerNorm, EncoderDims};
use crate::nn::{linear_no_bias, Conv2d, Linear};
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Conv2dConfig, Init, VarBuilder};

/// `vision_model.embeddings`: a patch convolution (stride = patch, no bias), the class
/// token in front, learned absolute position embeddings.
#[derive(Debug, Clone)]
struct ClipVisionEmbeddings {
    class_embedding: Tensor,
    patch_embedding: Conv2d,
    position_embedding: Tensor,
}

impl ClipVisionEmbeddings {
    fn new(cfg: &ClipVisionConfig, patch_bias: bool, vb: VarBuilder) -> Result<Self> {
        let (h, p) = (cfg.hidden_size, cfg.patch_size);
        // transformers' init scales (only used when building a fresh, random model).
        let normal = |std: f64| Init::Randn {
            mean: 0.0,
            stdev: std,
        };
        let weight = vb.get_with_hints(
            (h, cfg.num_channels, p, p),
            "patch_embedding.weight",
            candle_nn::init::DEFAULT_KAIMING_NORMAL,
        )?;
        let conv = Conv2dConfig {
            stride: p,
            ..Default::default()
        };
        let bias = match patch_bias {
            true => Some(vb.get_with_hints(h, "patch_embedding.bias", Init::Const(0.0))?),
            false => None,
        };
        Ok(Self {
            class_embedding: vb.get_with_hints(h, "class_embedding", normal(0.02))?,
            patch_embedding: Conv2d::new(weight, bias, conv),
            position_embedding: vb.get_with_hints(
                (cfg.num_positions(), h),
                "position_embedding.weight",
                normal(0.02),
            )?,
        })
    }

    /// pixels [B, C, S, S] -> tokens [B, 1 + (S/p)^2, hidden], the class token first.
    fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let b = pixels.dim(0)?;
        let patches = self
            .patch_embedding
            .forward(pixels)?
            .flatten_from(2)?
            .transpose(1, 2)?;
        let hidden = patches.dim(2)?;
        let cls = self
            .class_embedding
            .reshape((1, 1, hidden))?
            .broadcast_as((b, 1, hidden))?;
        Tensor::cat(&[&cls, &patches], 1)?.broadcast_add(&self.position_embedding.unsqueeze(0)?)
    }
}

/// Where a CLIP checkpoint's vision tower keys sit.
pub const VISION_PREFIX: &str = "vision_model";
/// A key every vision tower has, relative to the tower.
pub const VISION_PROBE_KEY: &str = "embeddings.patch_embedding.weight";

/// What a ViT has beyond CLIP's: DINO-style towers (DreamSim's backbones) give the patch
/// convolution a bias, and DINO itself has no layer norm before its blocks and no
/// projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VisionLayout {
    pub patch_bias: bool,
    pub pre_layernorm: bool,
    pub projection: bool,
}

impl VisionLayout {
    /// transformers' CLIP vision tower.
    pub const CLIP: Self = Self {
        patch_bias: false,
        pre_layernorm: true,
        projection: true,
    };
}

/// The vision tower: pixels normalised as CLIP expects (see `rewards::clip_preprocess`)
/// [B, 3, image_size, image_size] -> image embeddings [B, projection_dim].
#[derive(Debug, Clone)]
pub struct ClipVision {
    cfg: ClipVisionConfig,
    embeddings: ClipVisionEmbeddings,
    /// transformers' spelling (`pre_layrnorm`), which the checkpoints keep.
    pre_layrnorm: Option<ClipLayerNorm>,
    encoder: ClipEncoder,
    post_layernorm: ClipLayerNorm,
    visual_projection: Option<Linear>,
}

impl ClipVision {
    /// `vb` at the checkpoint's root: reads `vision_model.*` and `visual_projection.weight`.
    pub fn new(vb: VarBuilder, cfg: &ClipVisionConfig) -> Result<Self> {
        Self::new_at(vb, cfg, Some(VISION_PREFIX))
    }

    /// As `new`, with the tower's keys under `prefix.` (`Some("vision_model")`, what
    /// transformers 5 writes for `CLIPVisionModelWithProjection` and `CLIPModel`) or at the
    /// root (`None`, as its `CLIPVisionModel` writes them); `visual_projection.weight` is
    /// always at the root.
    pub fn new_at(vb: VarBuilder, cfg: &ClipVisionConfig, prefix: Option<&str>) -> Result<Self> {
        Self::new_with(vb, cfg, prefix, VisionLayout::CLIP)
    }

    /// As `new_at`, with the parts `layout` names present or absent.
    pub fn new_with(
        vb: VarBuilder,
        cfg: &ClipVisionConfig,
        prefix: Option<&str>,
        layout: VisionLayout,
    ) -> Result<Self> {
        cfg.validate()
            .map_err(|e| candle_core::Error::Msg(format!("ClipVisionConfig: {e}")))?;
        let dims = EncoderDims {
            hidden: cfg.hidden_size,
            intermediate: cfg.intermediate_size,
            heads: cfg.num_attention_heads,
            layers: cfg.num_hidden_layers,
            eps: cfg.layer_norm_eps,
            act: cfg.hidden_act,
        };
        let vm = match prefix {
            Some(p) => vb.pp(p),
            None => vb.clone(),
        };
        let (h, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        Ok(Self {
            cfg: cfg.clone(),
            embeddings: ClipVisionEmbeddings::new(cfg, layout.patch_bias, vm.pp("embeddings"))?,
            pre_layrnorm: match layout.pre_layernorm {
                true => Some(ClipLayerNorm::new(h, eps, vm.pp("pre_layrnorm"))?),
                false => None,
            },
            encoder: ClipEncoder::new(&dims, vm.pp("encoder"))?,
            post_layernorm: ClipLayerNorm::new(h, eps, vm.pp("post_layernorm"))?,
            visual_projection: match layout.projection {
                true => Some(linear_no_bias(
                    h,
                    cfg.projection_dim,
                    vb.pp("visual_projection"),
                )?),
                false => None,
            },
        })
    }

    pub fn config(&self) -> &ClipVisionConfig {
        &self.cfg
    }

    /// The dtype of the weights (pixels must come in it).
    pub fn dtype(&self) -> DType {
        self.embeddings.position_embedding.dtype()
    }

    /// The encoder's last hidden state [B, 1 + patches, hidden] (before post_layernorm).
    pub fn last_hidden_state(&self, pixels: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = pixels.dims4()?;
        let s = self.cfg.image_size;
        if c != self.cfg.num_channels || h != s || w != s {
            candle_core::bail!(
                "CLIP vision expects [B, {}, {s}, {s}] pixels, got {:?} (use clip_preprocess)",
                self.cfg.num_channels,
                pixels.dims()
            )
        }
        let x = self.embeddings.forward(pixels)?;
        let x = match &self.pre_layrnorm {
            Some(norm) => norm.forward(&x)?,
            None => x,
        };
        self.encoder.forward(&x, None)
    }

    /// post_layernorm of every token [B, 1 + patches, hidden] (BLIP's `image_embeds`).
    pub fn normed_tokens(&self, pixels: &Tensor) -> Result<Tensor> {
        self.post_layernorm
            .forward(&self.last_hidden_state(pixels)?)
    }

    /// transformers' `pooler_output`: post_layernorm of the class token, [B, hidden].
    pub fn pooled(&self, pixels: &Tensor) -> Result<Tensor> {
        let h = self.last_hidden_state(pixels)?;
        self.post_layernorm.forward(&h.narrow(1, 0, 1)?.squeeze(1)?)
    }

    /// `image_embeds` [B, projection_dim] (not normalised); the pooled output for a tower
    /// without a projection.
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let pooled = self.pooled(pixels)?;
        match &self.visual_projection {
            Some(p) => p.forward(&pooled),
            None => Ok(pooled),
        }
    }
}
