//! OpenCLIP checkpoints (open_clip's `CLIP` class: HPSv2's ViT-H/14, LAION's CLIPs) read
//! into the transformers-layout towers of this module, so that one implementation serves
//! both. The two layouts hold the same network (pre-norm blocks, a causal text mask,
//! pooling at the class token and at the end-of-text token); they differ in names and in
//! three tensors' shapes:
//!
//! - attention's q, k and v are one `in_proj_weight` [3w, w] / `in_proj_bias` [3w]
//!   (torch's `nn.MultiheadAttention`), rows q then k then v;
//! - the projections `visual.proj` [w, d] and `text_projection` [w, d] multiply from the
//!   right (`x @ proj`): the transpose of a `Linear` weight;
//! - the text tower sits at the root (`token_embedding`, `transformer.resblocks.N`,
//!   `ln_final`), the vision tower under `visual.`.
//!
//! The activation is the exact GELU unless the config says `quick_gelu` (OpenAI's own
//! weights), as open_clip builds it.

use super::config::{Activation, ClipConfig, ClipTextConfig, ClipVisionConfig};
use super::key_map::{self, Mapping, Params, Part};
use super::{text::ClipText, vision::ClipVision};
use crate::tensor_io::{check_params, expected_params, WeightFile};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// open_clip's model config (`model_configs/ViT-H-14.json`): field names and defaults of
/// its `CLIPVisionCfg` / `CLIPTextCfg` dataclasses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OpenClipConfig {
    pub embed_dim: usize,
    pub vision_cfg: OpenClipVisionCfg,
    pub text_cfg: OpenClipTextCfg,
    pub quick_gelu: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OpenClipVisionCfg {
    pub layers: usize,
    pub width: usize,
    pub head_width: usize,
    pub mlp_ratio: f64,
    pub patch_size: usize,
    pub image_size: usize,
    /// Options that change the network without changing its keys: refused unless unset.
    #[serde(flatten, skip_serializing)]
    pub other: HashMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OpenClipTextCfg {
    pub context_length: usize,
    pub vocab_size: usize,
    pub width: usize,
    pub heads: usize,
    pub layers: usize,
    pub mlp_ratio: f64,
    #[serde(flatten, skip_serializing)]
    pub other: HashMap<String, serde_json::Value>,
}

impl Default for OpenClipConfig {
    /// ViT-H/14 (`ViT-H-14.json`), the tower HPSv2 fine-tunes.
    fn default() -> Self {
        Self::vit_h14()
    }
}

impl Default for OpenClipVisionCfg {
    fn default() -> Self {
        Self {
            layers: 12,
            width: 768,
            head_width: 64,
            mlp_ratio: 4.0,
            patch_size: 16,
            image_size: 224,
            other: HashMap::new(),
        }
    }
}

impl Default for OpenClipTextCfg {
    fn default() -> Self {
        Self {
            context_length: 77,
            vocab_size: 49408,
            width: 512,
            heads: 8,
            layers: 12,
            mlp_ratio: 4.0,
            other: HashMap::new(),
        }
    }
}

/// Config keys of open_clip that build a different network from the same keys (or keys
/// this loader does not map): a config setting one is refused rather than misread.
const UNSUPPORTED: &[&str] = &[
    "global_average_pool",
    "attentional_pool",
    "pool_type",
    "final_ln_after_pool",
    "ls_init_value",
    "input_patchnorm",
    "no_ln_pre",
    "patch_dropout",
    "output_tokens",
    "hf_model_name",
    "timm_model_name",
    "embed_cls",
    "pad_id",
    "proj_bias",
    "attn_pooler_queries",
];

impl OpenClipConfig {
    /// open_clip's ViT-H-14: HPSv2 / v2.1 and LAION's CLIP-ViT-H-14.
    pub fn vit_h14() -> Self {
        Self {
            embed_dim: 1024,
            vision_cfg: OpenClipVisionCfg {
                layers: 32,
                width: 1280,
                head_width: 80,
                patch_size: 14,
                ..Default::default()
            },
            text_cfg: OpenClipTextCfg {
                width: 1024,
                heads: 16,
                layers: 24,
                ..Default::default()
            },
            quick_gelu: false,
        }
    }

    /// Parses a model config, refusing options this loader does not implement.
    pub fn from_json(json: &str) -> Result<Self> {
        let cfg: Self = serde_json::from_str(json)?;
        for (tower, other) in [
            ("vision_cfg", &cfg.vision_cfg.other),
            ("text_cfg", &cfg.text_cfg.other),
        ] {
            for key in UNSUPPORTED {
                let set = match other.get(*key) {
                    None | Some(serde_json::Value::Null) => false,
                    Some(serde_json::Value::Bool(b)) => *b,
                    Some(serde_json::Value::Number(n)) => n.as_f64() != Some(0.0),
                    Some(_) => true,
                };
                if set {
                    bail!("{tower}.{key} is set: sqdf reads plain open_clip ViTs only (no {key})");
                }
            }
        }
        Ok(cfg)
    }

    /// The same network in transformers' terms (what the towers are built from).
    pub fn to_clip(&self) -> Result<ClipConfig> {
        let (v, t) = (&self.vision_cfg, &self.text_cfg);
        if v.head_width == 0 || !v.width.is_multiple_of(v.head_width) {
            bail!(
                "vision_cfg: head_width {} does not divide width {}",
                v.head_width,
                v.width
            );
        }
        let act = match self.quick_gelu {
            true => Activation::QuickGelu,
            false => Activation::Gelu,
        };
        let mlp = |w: usize, r: f64| (w as f64 * r).round() as usize;
        Ok(ClipConfig {
            vision_config: ClipVisionConfig {
                hidden_size: v.width,
                intermediate_size: mlp(v.width, v.mlp_ratio),
                num_attention_heads: v.width / v.head_width,
                num_hidden_layers: v.layers,
                num_channels: 3,
                image_size: v.image_size,
                patch_size: v.patch_size,
                layer_norm_eps: 1e-5,
                hidden_act: act,
                projection_dim: self.embed_dim,
            },
            text_config: ClipTextConfig {
                vocab_size: t.vocab_size,
                hidden_size: t.width,
                intermediate_size: mlp(t.width, t.mlp_ratio),
                num_attention_heads: t.heads,
                num_hidden_layers: t.layers,
                max_position_embeddings: t.context_length,
                layer_norm_eps: 1e-5,
                hidden_act: act,
                projection_dim: self.embed_dim,
            },
            projection_dim: self.embed_dim,
        })
    }
}

/// The open_clip key (and how to take it) of a transformers-layout key.
fn source_of(key: &str) -> Option<(String, Part)> {
    let direct = [
        (
            "vision_model.embeddings.class_embedding",
            "visual.class_embedding",
        ),
        (
            "vision_model.embeddings.patch_embedding.weight",
            "visual.conv1.weight",
        ),
        (
            "vision_model.embeddings.position_embedding.weight",
            "visual.positional_embedding",
        ),
        (
            "text_model.embeddings.token_embedding.weight",
            "token_embedding.weight",
        ),
        (
            "text_model.embeddings.position_embedding.weight",
            "positional_embedding",
        ),
    ];
    if let Some((_, src)) = direct.iter().find(|(k, _)| *k == key) {
        return Some((src.to_string(), Part::Whole));
    }
    match key {
        "visual_projection.weight" => return Some(("visual.proj".into(), Part::Transposed)),
        "text_projection.weight" => return Some(("text_projection".into(), Part::Transposed)),
        _ => {}
    }
    let norms = [
        ("vision_model.pre_layrnorm.", "visual.ln_pre."),
        ("vision_model.post_layernorm.", "visual.ln_post."),
        ("text_model.final_layer_norm.", "ln_final."),
    ];
    for (hf, oc) in norms {
        if let Some(leaf) = key.strip_prefix(hf) {
            return Some((format!("{oc}{leaf}"), Part::Whole));
        }
    }
    let (tower, rest) = if let Some(r) = key.strip_prefix("vision_model.encoder.layers.") {
        ("visual.transformer.resblocks.", r)
    } else {
        (
            "transformer.resblocks.",
            key.strip_prefix("text_model.encoder.layers.")?,
        )
    };
    let (layer, inner) = rest.split_once('.')?;
    let block = format!("{tower}{layer}.");
    let (inner, leaf) = inner.rsplit_once('.')?;
    let qkv = |i| Some((format!("{block}attn.in_proj_{leaf}"), Part::Third(i)));
    let renamed = match inner {
        "self_attn.q_proj" => return qkv(0),
        "self_attn.k_proj" => return qkv(1),
        "self_attn.v_proj" => return qkv(2),
        "self_attn.out_proj" => "attn.out_proj",
        "layer_norm1" => "ln_1",
        "layer_norm2" => "ln_2",
        "mlp.fc1" => "mlp.c_fc",
        "mlp.fc2" => "mlp.c_proj",
        _ => return None,
    };
    Some((format!("{block}{renamed}.{leaf}"), Part::Whole))
}

/// Both towers of an OpenCLIP model, with their projections.
#[derive(Debug, Clone)]
pub struct OpenClip {
    pub vision: ClipVision,
    pub text: ClipText,
}

fn build_towers(vb: VarBuilder, cfg: &ClipConfig) -> candle_core::Result<OpenClip> {
    Ok(OpenClip {
        vision: ClipVision::new(vb.clone(), &cfg.vision_config)?,
        text: ClipText::new(vb, &cfg.text_config, true)?,
    })
}

/// Every (transformers key, open_clip key, part) the towers of `cfg` read, with the open_clip
/// tensors' shapes (each `in_proj_*` once).
fn plan(cfg: &ClipConfig) -> Result<(Mapping, Params)> {
    let expected = expected_params(|vb| build_towers(vb, cfg))?;
    key_map::plan(expected, source_of, |_, shape| shape.to_vec())
}

/// The open_clip keys and shapes of a model of `cfg` (what `sqdf random-weights` writes).
pub fn open_clip_params(cfg: &OpenClipConfig) -> Result<Params> {
    Ok(plan(&cfg.to_clip()?)?.1)
}

/// Both towers of the OpenCLIP checkpoint at `path` (safetensors, or a PyTorch file as
/// HPSv2 ships it: `weights::read_tensors`) in `dtype` on `device`. A missing key or a
/// wrong shape is an error naming the file and the open_clip key.
pub fn load_open_clip(
    path: &Path,
    cfg: &OpenClipConfig,
    device: &Device,
    dtype: DType,
) -> Result<OpenClip> {
    let clip_cfg = cfg.to_clip()?;
    let (map, sources) = plan(&clip_cfg)?;
    let names: Vec<&str> = sources.iter().map(|(n, _)| n.as_str()).collect();
    let file = WeightFile {
        tensors: super::weights::read_tensors(path, &names)?,
        metadata: HashMap::new(),
    };
    check_params(path, &file, &sources)?;
    let expected: HashMap<String, Vec<usize>> = expected_params(|vb| build_towers(vb, &clip_cfg))?
        .into_iter()
        .collect();
    let tensors = key_map::take_parts(map, &file.tensors, &expected, dtype, device)?;
    build_towers(VarBuilder::from_tensors(tensors, dtype, device), &clip_cfg)
        .with_context(|| format!("building the OpenCLIP towers from {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tower_key_has_an_open_clip_source() {
        let cfg = OpenClipConfig {
            embed_dim: 8,
            vision_cfg: OpenClipVisionCfg {
                layers: 2,
                width: 16,
                head_width: 8,
                patch_size: 4,
                image_size: 8,
                ..Default::default()
            },
            text_cfg: OpenClipTextCfg {
                context_length: 5,
                vocab_size: 10,
                width: 16,
                heads: 2,
                layers: 2,
                ..Default::default()
            },
            quick_gelu: false,
        };
        let params = open_clip_params(&cfg).unwrap();
        let names: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
        for key in [
            "visual.transformer.resblocks.1.attn.in_proj_weight",
            "transformer.resblocks.0.mlp.c_proj.bias",
            "visual.proj",
            "text_projection",
            "ln_final.weight",
        ] {
            assert!(names.contains(&key), "{key} not in {names:?}");
        }
        let shape = |n: &str| params.iter().find(|(k, _)| k == n).unwrap().1.clone();
        assert_eq!(
            shape("visual.transformer.resblocks.0.attn.in_proj_weight"),
            [48, 16]
        );
        assert_eq!(shape("visual.proj"), [16, 8]);
        // 12 per block of either tower, 8 of the vision tower's own, 5 of the text tower's.
        assert_eq!(params.len(), 2 * 12 + 2 * 12 + 8 + 5);
    }

    #[test]
    fn options_that_change_the_network_are_refused() {
        let err = OpenClipConfig::from_json(r#"{"vision_cfg": {"global_average_pool": true}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("vision_cfg.global_average_pool"), "{err}");
        let ok = OpenClipConfig::from_json(r#"{"embed_dim": 1024, "vision_cfg": {"layers": 32, "width": 1280, "head_width": 80, "patch_size": 14, "image_size": 224}, "text_cfg": {"width": 1024, "heads": 16, "layers": 24}}"#).unwrap();
        assert_eq!(ok, OpenClipConfig::vit_h14());
    }
}
