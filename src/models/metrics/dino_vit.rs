//! Checkpoints of DINO's `vision_transformer.py` layout (timm's ViT layout: DreamSim's
//! three backbones, DINO itself and CLIP / OpenCLIP converted to it; BLIP's image encoder
//! in ImageReward) read into the transformers-layout CLIP vision tower, with a peft LoRA on
//! the fused `attn.qkv` merged in: W_qkv + (alpha / r) B A.
//!
//! | DINO key | tower key |
//! |---|---|
//! | `cls_token` [1, 1, D], `pos_embed` [1, N, D] | `embeddings.class_embedding`, `.position_embedding.weight` |
//! | `patch_embed.proj.{weight,bias}` | `embeddings.patch_embedding.*` |
//! | `pos_drop.*` (CLIP's ln_pre; DINO has none) | `pre_layrnorm.*` |
//! | `blocks.i.attn.qkv.*` (rows q, k, v) | `encoder.layers.i.self_attn.{q,k,v}_proj.*` |
//! | `blocks.i.attn.proj`, `norm1`, `norm2`, `mlp.fc1`, `mlp.fc2` | `self_attn.out_proj`, `layer_norm1`, `layer_norm2`, `mlp.fc1`, `mlp.fc2` |
//! | `norm.*` | `post_layernorm.*` |
//! | `proj` [D, P] (x @ proj) | `visual_projection.weight` [P, D] |

use crate::models::clip::key_map::{self, Mapping, Params, Part};
use crate::models::clip::weights::read_tensors;
use crate::models::clip::{Activation, ClipVision, ClipVisionConfig, VisionLayout};
use crate::tensor_io::{check_params, expected_params, WeightFile};
use anyhow::{anyhow, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// A DINO-layout ViT's size, in the names dreamsim and BLIP give them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DinoVitConfig {
    pub img_size: usize,
    pub patch_size: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_ratio: f64,
    pub ln_eps: f64,
    pub act: Activation,
    /// Width of `proj` (CLIP and OpenCLIP; DINO has none).
    #[serde(default)]
    pub proj_dim: Option<usize>,
}

impl DinoVitConfig {
    /// ViT-B/16 at 224 px (DreamSim's backbones).
    pub fn vit_b16(ln_eps: f64, act: Activation, proj_dim: Option<usize>) -> Self {
        Self {
            img_size: 224,
            patch_size: 16,
            embed_dim: 768,
            depth: 12,
            num_heads: 12,
            mlp_ratio: 4.0,
            ln_eps,
            act,
            proj_dim,
        }
    }

    pub fn to_clip(&self) -> ClipVisionConfig {
        ClipVisionConfig {
            hidden_size: self.embed_dim,
            intermediate_size: (self.embed_dim as f64 * self.mlp_ratio).round() as usize,
            num_attention_heads: self.num_heads,
            num_hidden_layers: self.depth,
            num_channels: 3,
            image_size: self.img_size,
            patch_size: self.patch_size,
            layer_norm_eps: self.ln_eps,
            hidden_act: self.act,
            projection_dim: self.proj_dim.unwrap_or(0),
        }
    }
}

/// The DINO key (and how to take it) of a tower key (without `vision_model.`).
fn source_of(key: &str) -> Option<(String, Part)> {
    let whole = |k: &str| Some((k.to_string(), Part::Whole));
    match key {
        "embeddings.class_embedding" => return whole("cls_token"),
        "embeddings.position_embedding.weight" => return whole("pos_embed"),
        "visual_projection.weight" => return Some(("proj".into(), Part::Transposed)),
        _ => {}
    }
    for (tower, dino) in [
        ("embeddings.patch_embedding.", "patch_embed.proj."),
        ("pre_layrnorm.", "pos_drop."),
        ("post_layernorm.", "norm."),
    ] {
        if let Some(leaf) = key.strip_prefix(tower) {
            return whole(&format!("{dino}{leaf}"));
        }
    }
    let (layer, inner) = key.strip_prefix("encoder.layers.")?.split_once('.')?;
    let (inner, leaf) = inner.rsplit_once('.')?;
    let block = format!("blocks.{layer}.");
    let qkv = |i| Some((format!("{block}attn.qkv.{leaf}"), Part::Third(i)));
    let renamed = match inner {
        "self_attn.q_proj" => return qkv(0),
        "self_attn.k_proj" => return qkv(1),
        "self_attn.v_proj" => return qkv(2),
        "self_attn.out_proj" => "attn.proj",
        "layer_norm1" => "norm1",
        "layer_norm2" => "norm2",
        "mlp.fc1" => "mlp.fc1",
        "mlp.fc2" => "mlp.fc2",
        _ => return None,
    };
    whole(&format!("{block}{renamed}.{leaf}"))
}

/// A LoRA on every block's fused qkv: `A` [r, D] and `B` [3D, r] by block, and the scale.
pub struct QkvLora {
    pub down_up: HashMap<usize, (Tensor, Tensor)>,
    pub scale: f64,
}

/// Every (tower key, DINO key, part) the tower of `cfg` reads, and the DINO keys' shapes.
fn plan(cfg: &ClipVisionConfig, layout: VisionLayout) -> Result<(Mapping, Params)> {
    let expected = expected_params(|vb| ClipVision::new_with(vb, cfg, None, layout))?;
    let d = cfg.hidden_size;
    key_map::plan(expected, source_of, |src, shape| match src {
        "cls_token" => vec![1, 1, d],
        "pos_embed" => [vec![1], shape.to_vec()].concat(),
        _ => shape.to_vec(),
    })
}

/// The DINO-layout keys and shapes of a tower (what `sqdf random-weights` writes).
pub fn dino_params(cfg: &ClipVisionConfig, layout: VisionLayout) -> Result<Params> {
    Ok(plan(cfg, layout)?.1)
}

/// The tower of the checkpoint at `path` (a plain state dict or `{"state_dict": ...}`),
/// its keys under `prefix` (`""` at the root, `"blip.visual_encoder."`), with `lora` merged
/// into its qkv, in f32 on `device`. A missing key or a wrong shape is an error naming the
/// file and the key.
pub fn load_dino_vit(
    path: &Path,
    prefix: &str,
    cfg: &ClipVisionConfig,
    layout: VisionLayout,
    lora: Option<&QkvLora>,
    device: &Device,
) -> Result<ClipVision> {
    let (map, sources) = plan(cfg, layout)?;
    let sources: Params = sources
        .into_iter()
        .map(|(k, s)| (format!("{prefix}{k}"), s))
        .collect();
    let map: Mapping = map
        .into_iter()
        .map(|(k, src, part)| (k, format!("{prefix}{src}"), part))
        .collect();
    let names: Vec<&str> = sources.iter().map(|(n, _)| n.as_str()).collect();
    let mut file = WeightFile {
        tensors: read_tensors(path, &names)?,
        metadata: HashMap::new(),
    };
    check_params(path, &file, &sources)?;
    if let Some(lora) = lora {
        for (block, (a, b)) in &lora.down_up {
            let key = format!("{prefix}blocks.{block}.attn.qkv.weight");
            let w = file
                .tensors
                .get(&key)
                .ok_or_else(|| {
                    anyhow!(
                        "the LoRA adapts block {block}, which {} lacks",
                        path.display()
                    )
                })?
                .to_dtype(DType::F32)?;
            let delta = b.matmul(a)?;
            if delta.dims() != w.dims() {
                anyhow::bail!(
                    "the LoRA of `{key}` is {:?}, the weight {:?} ({})",
                    delta.dims(),
                    w.dims(),
                    path.display()
                );
            }
            file.tensors.insert(key, (w + (delta * lora.scale)?)?);
        }
    }
    let expected: HashMap<String, Vec<usize>> =
        expected_params(|vb| ClipVision::new_with(vb, cfg, None, layout))?
            .into_iter()
            .collect();
    let tensors = key_map::take_parts(map, &file.tensors, &expected, DType::F32, device)?;
    let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
    ClipVision::new_with(vb, cfg, None, layout)
        .with_context(|| format!("building the ViT from {}", path.display()))
}
