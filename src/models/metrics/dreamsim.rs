//! DreamSim (Fu et al. 2023), the `dreamsim` package's default "ensemble": the features the
//! paper's DreamSim diversity compares (§5.1, Appendix D: mean pairwise cosine distance
//! within a prompt).
//!
//! embed(x) = normalise(centre([dino(x) | clip(x) | open_clip(x)])), where x is resized to
//! img_size x img_size (bicubic, aspect not kept) and normalised per backbone, dino(x) is
//! DINO ViT-B/16's class token after block 11 (no final norm), clip and open_clip are
//! ViT-B/16 class tokens after the final norm times `proj`, each backbone with the released
//! LoRA merged into its qkv; centre subtracts the mean over the features, normalise divides
//! by the L2 norm. distance(a, b) = 1 − embed(a)·embed(b).
//!
//! Differences from the package: it resizes an 8-bit PIL image (bicubic, rounded and
//! clipped to 8 bits between and after the passes); here the float image is resized with
//! the same filter, clipped to [0, 1] after each pass as PIL's is, and not rounded (within
//! a level of 255 of PIL's on the fixture).

pub use super::dino_vit::{dino_params, load_dino_vit, DinoVitConfig as BackboneConfig, QkvLora};

use crate::models::clip::{Activation, ClipVision, ClipVisionConfig, VisionLayout};
use crate::rewards::clip_preprocess::{normalize, resize, Filter, CLIP_MEAN, CLIP_STD};
use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor, D};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// DINO's (ImageNet's) normalisation.
const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];
/// dreamsim hooks this block's output for DINO's `cls` feature.
const DINO_BLOCK: usize = 11;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Backbones {
    pub dino_vitb16: BackboneConfig,
    pub clip_vitb16: BackboneConfig,
    pub open_clip_vitb16: BackboneConfig,
}

/// The ensemble's sizes (`dreamsim/config.json`; without it, the released ensemble's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DreamSimConfig {
    pub img_size: usize,
    pub backbones: Backbones,
}

impl Default for DreamSimConfig {
    fn default() -> Self {
        use Activation::*;
        Self {
            img_size: 224,
            backbones: Backbones {
                dino_vitb16: BackboneConfig::vit_b16(1e-6, Gelu, None),
                clip_vitb16: BackboneConfig::vit_b16(1e-5, QuickGelu, Some(512)),
                open_clip_vitb16: BackboneConfig::vit_b16(1e-5, Gelu, Some(512)),
            },
        }
    }
}

impl DreamSimConfig {
    pub fn from_json(json: &str) -> Result<Self> {
        let cfg: Self = serde_json::from_str(json)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// (name, config, layout) of the three backbones, in dreamsim's order.
    fn parts(&self) -> [(&'static str, &BackboneConfig, VisionLayout); 3] {
        let converted = VisionLayout {
            patch_bias: true,
            pre_layernorm: true,
            projection: true,
        };
        let dino = VisionLayout {
            pre_layernorm: false,
            projection: false,
            ..converted
        };
        let b = &self.backbones;
        [
            ("dino_vitb16", &b.dino_vitb16, dino),
            ("clip_vitb16", &b.clip_vitb16, converted),
            ("open_clip_vitb16", &b.open_clip_vitb16, converted),
        ]
    }

    pub fn validate(&self) -> Result<()> {
        for (name, b, layout) in self.parts() {
            if b.img_size != self.img_size {
                bail!(
                    "{name}: img_size {} differs from the ensemble's {}",
                    b.img_size,
                    self.img_size
                );
            }
            if layout.projection && b.proj_dim.is_none() {
                bail!("{name}: proj_dim is missing");
            }
            b.to_clip().validate().map_err(|e| anyhow!("{name}: {e}"))?;
        }
        if self.backbones.dino_vitb16.depth != DINO_BLOCK + 1 {
            bail!(
                "dino_vitb16: dreamsim reads block {DINO_BLOCK}'s output, so depth must be {}",
                DINO_BLOCK + 1
            );
        }
        Ok(())
    }

    /// Per backbone: (name, tower config, layout) for the loaders.
    pub fn towers(&self) -> Vec<(&'static str, ClipVisionConfig, VisionLayout)> {
        self.parts()
            .into_iter()
            .map(|(n, b, l)| (n, b.to_clip(), l))
            .collect()
    }
}

/// The released adapter (`ensemble_lora/`: `adapter_config.json` beside the weights):
/// rank r and lora_alpha, on `qkv` only; per backbone k and block i the keys
/// `base_model.model.extractor_list.{k}.model.blocks.{i}.attn.qkv.lora_{A,B}.weight`.
pub fn load_lora(path: &Path, cfg: &DreamSimConfig) -> Result<Vec<QkvLora>> {
    let cfg_path = path.with_file_name("adapter_config.json");
    let text = std::fs::read_to_string(&cfg_path)
        .with_context(|| format!("reading {}", cfg_path.display()))?;
    let a: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", cfg_path.display()))?;
    let num = |k: &str| a.get(k).and_then(|v| v.as_f64());
    let bad = |why: String| anyhow!("{}: {why}", cfg_path.display());
    let (r, alpha) = match (num("r"), num("lora_alpha")) {
        (Some(r), Some(al)) if r > 0.0 => (r, al),
        _ => return Err(bad("needs a positive `r` and `lora_alpha`".into())),
    };
    if a.get("target_modules") != Some(&serde_json::json!(["qkv"])) {
        return Err(bad("target_modules must be [\"qkv\"], as dreamsim's".into()));
    }
    for k in ["rank_pattern", "alpha_pattern"] {
        if a.get(k)
            .is_some_and(|v| v.as_object().is_some_and(|o| !o.is_empty()))
        {
            return Err(bad(format!("`{k}` is not supported")));
        }
    }
    if a.get("use_dora").and_then(|v| v.as_bool()) == Some(true) {
        return Err(bad("DoRA is not supported".into()));
    }
    let rslora = a.get("use_rslora").and_then(|v| v.as_bool()) == Some(true);
    let scale = if rslora { alpha / r.sqrt() } else { alpha / r };
    let key = |k: usize, i: usize, ab: &str| {
        format!("base_model.model.extractor_list.{k}.model.blocks.{i}.attn.qkv.lora_{ab}.weight")
    };
    let mut names = Vec::new();
    for (k, (_, b, _)) in cfg.parts().iter().enumerate() {
        for i in 0..b.depth {
            names.push(key(k, i, "A"));
            names.push(key(k, i, "B"));
        }
    }
    let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    let mut file = crate::models::clip::weights::read_tensors(path, &refs)?;
    let mut out = Vec::new();
    for (k, (_, b, _)) in cfg.parts().iter().enumerate() {
        let mut down_up = std::collections::HashMap::new();
        for i in 0..b.depth {
            let mut take = |ab| {
                let name = key(k, i, ab);
                file.remove(&name)
                    .ok_or_else(|| anyhow!("{}: missing key `{name}`", path.display()))?
                    .to_dtype(DType::F32)
                    .map_err(anyhow::Error::from)
            };
            down_up.insert(i, (take("A")?, take("B")?));
        }
        out.push(QkvLora { down_up, scale });
    }
    Ok(out)
}

/// The three backbones with their normalisations.
pub struct DreamSim {
    cfg: DreamSimConfig,
    towers: Vec<(ClipVision, [f64; 3], [f64; 3])>,
}

/// The weight files of the ensemble, as dreamsim's cache folder holds them.
pub struct DreamSimFiles<'a> {
    pub dino: &'a Path,
    pub clip: &'a Path,
    pub open_clip: &'a Path,
    /// `ensemble_lora/adapter_model.safetensors` (its `adapter_config.json` beside it).
    pub lora: &'a Path,
}

impl DreamSim {
    pub fn load(files: &DreamSimFiles, cfg: &DreamSimConfig, device: &Device) -> Result<Self> {
        cfg.validate()?;
        let loras = load_lora(files.lora, cfg)?;
        let paths = [files.dino, files.clip, files.open_clip];
        let norms = [
            (IMAGENET_MEAN, IMAGENET_STD),
            (CLIP_MEAN, CLIP_STD),
            (CLIP_MEAN, CLIP_STD),
        ];
        let mut towers = Vec::new();
        for (((_, tower_cfg, layout), path), (lora, (mean, std))) in cfg
            .towers()
            .into_iter()
            .zip(paths)
            .zip(loras.iter().zip(norms))
        {
            let vit = load_dino_vit(path, "", &tower_cfg, layout, Some(lora), device)?;
            towers.push((vit, mean, std));
        }
        Ok(Self {
            cfg: cfg.clone(),
            towers,
        })
    }

    /// Each backbone's feature of images [B, 3, H, W] in [0, 1]: DINO's [B, D], CLIP's and
    /// OpenCLIP's [B, P].
    pub fn features(&self, pixels: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        let s = self.cfg.img_size;
        let x = resize(&pixels.to_dtype(DType::F32)?, s, s, Filter::Bicubic)?;
        self.towers
            .iter()
            .enumerate()
            .map(|(k, (vit, mean, std))| {
                let x = normalize(&x, *mean, *std)?;
                match k {
                    // DINO: the class token after block 11, no final norm.
                    0 => vit.last_hidden_state(&x)?.narrow(1, 0, 1)?.squeeze(1),
                    _ => vit.forward(&x),
                }
            })
            .collect()
    }

    /// DreamSim embeddings [B, F] of decoded images [B, 3, H, W] in [-1, 1]: centred and
    /// unit-length, so that distance = 1 − a·b.
    pub fn embed(&self, images: &Tensor) -> candle_core::Result<Tensor> {
        let pixels = images.affine(0.5, 0.5)?.clamp(0.0, 1.0)?;
        self.embed_pixels(&pixels)
    }

    /// As `embed`, for pixels in [0, 1] (dreamsim's input).
    pub fn embed_pixels(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        let e = Tensor::cat(&self.features(pixels)?, 1)?;
        let e = e.broadcast_sub(&e.mean_keepdim(D::Minus1)?)?;
        e.broadcast_div(&e.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?)
    }
}
