//! A complete sd15 weight folder with random weights and the real key names, file names
//! and config files: the tests load it through the real loaders (no public weights are
//! available offline), and `sqdf bench-sd15` times SD-1.5-sized updates with it.
//!
//! The folder is also one the reference libraries read as it is: each config.json has every
//! key diffusers 0.42 / transformers 5.25 `save_pretrained` writes for such a model (same
//! values), and each weight file their keys and shapes (the VAE file holds a random
//! encoder, the CLIP file `logit_scale`), so `UNet2DConditionModel.from_pretrained`,
//! `AutoencoderKL.from_pretrained`, `CLIPTextModel.from_pretrained` and
//! `CLIPModel.from_pretrained` load them without missing or unexpected keys
//! (tests/it/parity.rs compares with the files those libraries wrote).

use super::hf_config;
use super::layout::{self, Layout};
use crate::models::clip::open_clip::{
    open_clip_params, OpenClipConfig, OpenClipTextCfg, OpenClipVisionCfg,
};
use crate::models::clip::{
    Activation, ClipConfig, ClipText, ClipTextConfig, ClipVision, ClipVisionConfig,
};
use crate::models::metrics::dino_vit::DinoVitConfig;
use crate::models::metrics::dreamsim::DreamSimConfig;
use crate::models::metrics::image_reward::{self, med_bert::MedConfig};
use crate::models::vae::{AutoencoderKLConfig, VaeDecoder};
use crate::models::{UNet2DConditionModel, UNetConfig};
use crate::rewards::aesthetic::AestheticHead;
use crate::rng::{randn, seeded, Rng};
use crate::tensor_io::expected_params;
use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The configurations of one random folder.
#[derive(Debug, Clone)]
pub struct Sizes {
    pub unet: UNetConfig,
    pub vae: AutoencoderKLConfig,
    pub text: ClipTextConfig,
    pub clip: ClipConfig,
    /// HPSv2's OpenCLIP (ViT-H/14 for SD-1.5).
    pub hps: OpenClipConfig,
    /// PickScore's CLIPModel (ViT-H/14 for SD-1.5).
    pub pickscore: ClipConfig,
    /// ImageReward's text encoder and image encoder (BLIP's sizes for SD-1.5; the
    /// vocabulary size is set by `write` to the vocabulary it writes).
    pub image_reward: (MedConfig, DinoVitConfig),
    /// DreamSim's ensemble (ViT-B/16 x 3 for SD-1.5).
    pub dreamsim: DreamSimConfig,
    /// Rank of the random LCM-LoRA.
    pub lcm_rank: usize,
}

impl Sizes {
    /// SD-1.5's real sizes (860M UNet parameters): for timing and memory, not for tests.
    pub fn sd15() -> Self {
        Self {
            unet: UNetConfig::sd15(),
            vae: AutoencoderKLConfig::sd15(),
            text: ClipTextConfig::vit_l14_text(),
            clip: ClipConfig::vit_l14(),
            hps: OpenClipConfig::vit_h14(),
            pickscore: OpenClipConfig::vit_h14()
                .to_clip()
                .expect("ViT-H/14's head width divides its width"),
            image_reward: (MedConfig::blip(), image_reward::blip_vit_large()),
            dreamsim: DreamSimConfig::default(),
            lcm_rank: 64,
        }
    }

    /// SD-1.5's layout and spatial sizes (64x64 latents, 512 px images, 8 heads at 4096
    /// tokens, CLIP at 224 px) with a fifth of the UNet's channels and a quarter of the
    /// VAE's: the memory of attention and of the image-sized decoder on a CPU.
    pub fn sd15_narrow() -> Self {
        let mut s = Self::sd15();
        s.unet.block_out_channels = vec![64, 128, 256, 256];
        s.vae.block_out_channels = vec![32, 64, 128, 128];
        s.lcm_rank = 16;
        s
    }

    /// A few-thousand-parameter stand-in with the same structure (two levels, cross-attention,
    /// 16x16 latents decoded to 32x32 images, a CLIP at 32 px); the metrics' networks
    /// without a size of their own (LPIPS's AlexNet) at their real size.
    pub fn tiny() -> Self {
        use crate::models::{DownBlockType::*, UpBlockType::*};
        // Room for the byte-level vocabulary `write_tokenizer` makes (514 tokens).
        let text = ClipTextConfig {
            vocab_size: 514,
            ..ClipTextConfig::tiny()
        };
        let mut clip = ClipConfig {
            text_config: text.clone(),
            vision_config: ClipVisionConfig::tiny(),
            projection_dim: ClipVisionConfig::tiny().projection_dim,
        };
        clip.text_config.projection_dim = clip.projection_dim;
        // The metrics' towers as their real ones are: exact GELU, OpenCLIP's layout for HPS.
        let hps = OpenClipConfig {
            embed_dim: 16,
            vision_cfg: OpenClipVisionCfg {
                layers: 2,
                width: 32,
                head_width: 8,
                patch_size: 7,
                image_size: 28,
                ..Default::default()
            },
            text_cfg: OpenClipTextCfg {
                context_length: 8,
                vocab_size: text.vocab_size,
                width: 32,
                heads: 4,
                layers: 2,
                ..Default::default()
            },
            quick_gelu: false,
        };
        let mut pickscore = clip.clone();
        pickscore.vision_config.hidden_act = Activation::Gelu;
        pickscore.text_config.hidden_act = Activation::Gelu;
        Self {
            unet: UNetConfig {
                // 32 px images: LPIPS's AlexNet takes no fewer than 31.
                sample_size: 16,
                in_channels: 4,
                out_channels: 4,
                block_out_channels: vec![8, 16],
                down_block_types: vec![CrossAttnDown, Down],
                up_block_types: vec![Up, CrossAttnUp],
                layers_per_block: 1,
                cross_attention_dim: text.hidden_size,
                attention_head_dim: 2,
                norm_num_groups: 4,
                norm_eps: 1e-5,
                use_linear_projection: false,
                num_class_embeds: None,
            },
            vae: AutoencoderKLConfig::tiny(),
            text,
            clip,
            hps,
            pickscore,
            image_reward: tiny_image_reward(),
            dreamsim: tiny_dreamsim(),
            lcm_rank: 2,
        }
    }
}

/// ImageReward with a 2-layer BERT of width 16 and a 2-block ViT of width 24 at 32 px
/// (16 patches of 8): the cross-attention reads a width other than its own, as BLIP's.
fn tiny_image_reward() -> (MedConfig, DinoVitConfig) {
    let med = MedConfig {
        hidden_size: 16,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        intermediate_size: 32,
        max_position_embeddings: 40,
        ..MedConfig::blip()
    };
    let vit = DinoVitConfig {
        img_size: 32,
        patch_size: 8,
        embed_dim: 24,
        depth: 2,
        num_heads: 2,
        ..image_reward::blip_vit_large()
    };
    (med, vit)
}

/// DreamSim's three backbones at 32 px (4 patches of 16), DINO keeping the 12 blocks
/// dreamsim reads block 11 of.
fn tiny_dreamsim() -> DreamSimConfig {
    let mut cfg = DreamSimConfig {
        img_size: 32,
        ..Default::default()
    };
    let b = &mut cfg.backbones;
    for (v, width, depth) in [
        (&mut b.dino_vitb16, 16, 12),
        (&mut b.clip_vitb16, 16, 2),
        (&mut b.open_clip_vitb16, 24, 2),
    ] {
        v.img_size = 32;
        v.embed_dim = width;
        v.depth = depth;
        v.num_heads = 2;
        v.proj_dim = v.proj_dim.map(|_| 8);
    }
    cfg
}

/// A random tensor for parameter `name` of `shape`: norms' scales 1, biases 0, embeddings
/// N(0, 0.02²), other weights N(0, 1/fan_in) so activations keep their scale.
fn init(name: &str, shape: &[usize], rng: &mut Rng) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let leaf = name.rsplit('.').next().unwrap_or(name);
    // BERT spells its norms `LayerNorm`.
    let lower = name.to_lowercase();
    let is_norm = ["norm", "layrnorm", "layer_norm", "ln_"]
        .iter()
        .any(|k| lower.contains(k));
    Ok(if leaf == "bias" {
        Tensor::zeros(shape, DType::F32, &Device::Cpu)?
    } else if is_norm && shape.len() == 1 {
        Tensor::ones(shape, DType::F32, &Device::Cpu)?
    } else if name.contains("embedding") {
        (randn(rng, shape, &Device::Cpu)? * 0.02)?
    } else {
        let fan_in = if shape.len() > 1 { n / shape[0] } else { n };
        (randn(rng, shape, &Device::Cpu)? / (fan_in as f64).sqrt())?
    })
}

fn random(
    params: &[(String, Vec<usize>)],
    prefix: &str,
    rng: &mut Rng,
    dtype: DType,
) -> Result<BTreeMap<String, Tensor>> {
    params
        .iter()
        .map(|(k, s)| Ok((format!("{prefix}{k}"), init(k, s, rng)?.to_dtype(dtype)?)))
        .collect()
}

fn save(path: &Path, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
    std::fs::create_dir_all(path.parent().context("a weight file has a folder")?)?;
    let map: HashMap<&String, Tensor> = tensors.iter().map(|(k, t)| (k, t.clone())).collect();
    candle_core::safetensors::save(&map, path)
        .with_context(|| format!("writing {}", path.display()))
}

fn save_json(path: &Path, v: &impl serde::Serialize) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(v)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// Writes every file of `Layout` under `dir` (weights in `dtype`), with config.json files
/// for the sizes; the aesthetic head as its safetensors form.
pub fn write(dir: &Path, sizes: &Sizes, seed: u64, dtype: DType) -> Result<Layout> {
    let l = Layout::new(dir);
    let rng = &mut seeded(seed);

    let unet = expected_params(|vb| UNet2DConditionModel::new(vb, &sizes.unet, None))?;
    let unet_tensors = random(&unet, "", rng, dtype)?;
    save(&l.dir.join(layout::UNET), &unet_tensors)?;
    save_json(
        &l.dir.join("unet/config.json"),
        &hf_config::unet(&sizes.unet),
    )?;

    // The real VAE file holds the encoder too (sqdf does not use it; diffusers needs it).
    let mut vae = expected_params(|vb| VaeDecoder::new(vb, &sizes.vae))?;
    vae.extend(hf_config::vae_encoder_params(&sizes.vae));
    save(&l.dir.join(layout::VAE), &random(&vae, "", rng, dtype)?)?;
    let image_size = sizes.unet.sample_size * sizes.vae.upscale();
    save_json(
        &l.dir.join("vae/config.json"),
        &hf_config::vae(&sizes.vae, image_size),
    )?;

    let text = expected_params(|vb| ClipText::new(vb, &sizes.text, false))?;
    save(
        &l.dir.join(layout::TEXT_ENCODER),
        &random(&text, "", rng, dtype)?,
    )?;
    let ids = (TOKENIZER_BOS, TOKENIZER_EOS);
    save_json(
        &l.dir.join("text_encoder/config.json"),
        &hf_config::clip_text(&sizes.text, ids, dtype, true),
    )?;

    let clip_ids = (TOKENIZER_BOS, TOKENIZER_EOS);
    save(
        &l.dir.join(layout::CLIP),
        &clip_model(&sizes.clip, rng, dtype)?,
    )?;
    save_json(
        &l.dir.join("clip-vit-large-patch14/config.json"),
        &hf_config::clip(&sizes.clip, clip_ids, dtype),
    )?;

    let head = expected_params(|vb| AestheticHead::new(vb, sizes.clip.projection_dim))?;
    let head_path = l.dir.join(layout::AESTHETIC).with_extension("safetensors");
    save(&head_path, &random(&head, "", rng, DType::F32)?)?;

    save(
        &l.dir.join(layout::LCM_LORA),
        &lcm_lora(&unet, sizes.lcm_rank, rng)?,
    )?;
    // The alignment metrics last, so the files above keep their values.
    save(
        &l.dir.join(layout::PICKSCORE),
        &clip_model(&sizes.pickscore, rng, dtype)?,
    )?;
    save_json(
        &l.dir.join("pickscore/config.json"),
        &hf_config::clip(&sizes.pickscore, clip_ids, dtype),
    )?;
    // HPSv2 in open_clip's keys, as the safetensors form of its checkpoint.
    let mut hps = random(&open_clip_params(&sizes.hps)?, "", rng, dtype)?;
    hps.insert("logit_scale".into(), logit_scale(dtype)?);
    save(&l.dir.join(layout::HPS).with_extension("safetensors"), &hps)?;
    save_json(&l.dir.join(layout::HPS_CONFIG), &sizes.hps)?;
    write_lpips(&l, rng)?;
    write_dreamsim(&l, &sizes.dreamsim, rng)?;
    write_image_reward(&l, &sizes.image_reward, rng)?;
    write_tokenizer(&l.dir.join("tokenizer"))?;
    Ok(l)
}

/// LPIPS at its one size (AlexNet's features, 2.5M parameters), both files in their
/// safetensors forms; the linear layers' weights non-negative, as lpips trains them.
fn write_lpips(l: &Layout, rng: &mut Rng) -> Result<()> {
    use crate::models::metrics::{alexnet::AlexNetFeatures, lpips::lin_params};
    let alexnet = expected_params(|vb| AlexNetFeatures::new(vb.pp("features")))?;
    let path = |rel: &str| l.dir.join(rel).with_extension("safetensors");
    save(
        &path(layout::LPIPS_ALEXNET),
        &random(&alexnet, "", rng, DType::F32)?,
    )?;
    let lins = random(&lin_params(), "", rng, DType::F32)?
        .into_iter()
        .map(|(k, t)| Ok((k, t.abs()?)))
        .collect::<Result<_>>()?;
    save(&path(layout::LPIPS_LIN), &lins)
}

/// ImageReward's checkpoint (safetensors form), its med_config.json and vit_config.json,
/// and a WordPiece vocabulary of single characters (each as a word start and as a `##`
/// continuation), so that any prompt tokenises.
fn write_image_reward(l: &Layout, sizes: &(MedConfig, DinoVitConfig), rng: &mut Rng) -> Result<()> {
    let mut vocab: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .map(String::from)
        .to_vec();
    let chars: Vec<char> = ('a'..='z')
        .chain('0'..='9')
        .chain("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~".chars())
        .collect();
    vocab.extend(chars.iter().map(|c| c.to_string()));
    vocab.extend(chars.iter().map(|c| format!("##{c}")));
    let vocab_path = l.dir.join(layout::IMAGE_REWARD_VOCAB);
    std::fs::create_dir_all(vocab_path.parent().context("the vocabulary has a folder")?)?;
    std::fs::write(&vocab_path, vocab.join("\n") + "\n")?;
    let (mut med, vit) = sizes.clone();
    // BLIP adds [DEC] and [ENC] after the vocabulary.
    med.vocab_size = vocab.len() + 2;
    let params = image_reward::params(&med, &vit)?;
    let path = l
        .dir
        .join(layout::IMAGE_REWARD)
        .with_extension("safetensors");
    save(&path, &random(&params, "", rng, DType::F32)?)?;
    save_json(&l.dir.join(layout::IMAGE_REWARD_MED), &med)?;
    save_json(&l.dir.join(layout::IMAGE_REWARD_VIT), &vit)
}

/// DreamSim's backbones in DINO's layout, a rank-2 adapter on every qkv and the sizes
/// (`dreamsim/config.json`), all in safetensors.
fn write_dreamsim(l: &Layout, cfg: &DreamSimConfig, rng: &mut Rng) -> Result<()> {
    use crate::models::metrics::dreamsim::dino_params;
    let rels = [
        layout::DREAMSIM_DINO,
        layout::DREAMSIM_CLIP,
        layout::DREAMSIM_OPEN_CLIP,
    ];
    let mut lora = BTreeMap::new();
    let rank = 2;
    for (k, ((_, tower, vit_layout), rel)) in cfg.towers().into_iter().zip(rels).enumerate() {
        let params = dino_params(&tower, vit_layout)?;
        let path = l.dir.join(rel).with_extension("safetensors");
        save(&path, &random(&params, "", rng, DType::F32)?)?;
        let d = tower.hidden_size;
        for i in 0..tower.num_hidden_layers {
            let key = |ab: &str| {
                format!("base_model.model.extractor_list.{k}.model.blocks.{i}.attn.qkv.lora_{ab}.weight")
            };
            lora.insert(key("A"), (randn(rng, (rank, d), &Device::Cpu)? * 0.01)?);
            lora.insert(key("B"), (randn(rng, (3 * d, rank), &Device::Cpu)? * 0.01)?);
        }
    }
    let lora_path = l.dir.join(layout::DREAMSIM_LORA);
    save(&lora_path, &lora)?;
    save_json(
        &lora_path.with_file_name("adapter_config.json"),
        &serde_json::json!({"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": ["qkv"]}),
    )?;
    save_json(&l.dir.join(layout::DREAMSIM_CONFIG), cfg)
}

/// CLIP's temperature at transformers' and open_clip's initial value ln(1 / 0.07).
fn logit_scale(dtype: DType) -> Result<Tensor> {
    Ok(Tensor::new(hf_config::LOGIT_SCALE_INIT as f32, &Device::Cpu)?.to_dtype(dtype)?)
}

/// A random transformers `CLIPModel` file: both towers, their projections, `logit_scale`.
fn clip_model(cfg: &ClipConfig, rng: &mut Rng, dtype: DType) -> Result<BTreeMap<String, Tensor>> {
    let mut t = random(
        &expected_params(|vb| ClipVision::new(vb, &cfg.vision_config))?,
        "",
        rng,
        dtype,
    )?;
    t.extend(random(
        &expected_params(|vb| ClipText::new(vb, &cfg.text_config, true))?,
        "",
        rng,
        dtype,
    )?);
    t.insert("logit_scale".into(), logit_scale(dtype)?);
    Ok(t)
}

/// A kohya-format LoRA on every attention projection and every resnet 3x3 convolution of
/// the UNet (LCM-LoRA for SD-1.5 adapts both kinds), alpha = 2 * rank.
fn lcm_lora(
    unet: &[(String, Vec<usize>)],
    rank: usize,
    rng: &mut Rng,
) -> Result<BTreeMap<String, Tensor>> {
    let mut out = BTreeMap::new();
    for (k, shape) in unet {
        let Some(module) = k.strip_suffix(".weight") else {
            continue;
        };
        let attn = [".to_q", ".to_k", ".to_v", ".to_out.0"]
            .iter()
            .any(|s| module.ends_with(s));
        let conv = module.ends_with(".conv1") || module.ends_with(".conv2");
        if !(attn || (conv && shape.len() == 4)) {
            continue;
        }
        let name = crate::lora_files::kohya::kohya_name("lora_unet_", module);
        let (down, up): (Vec<usize>, Vec<usize>) = if shape.len() == 4 {
            (
                vec![rank, shape[1], shape[2], shape[3]],
                vec![shape[0], rank, 1, 1],
            )
        } else {
            (vec![rank, shape[1]], vec![shape[0], rank])
        };
        out.insert(
            format!("{name}.lora_down.weight"),
            (randn(rng, down, &Device::Cpu)? * 0.01)?,
        );
        out.insert(
            format!("{name}.lora_up.weight"),
            (randn(rng, up, &Device::Cpu)? * 0.01)?,
        );
        out.insert(
            format!("{name}.alpha"),
            Tensor::new(2.0 * rank as f32, &Device::Cpu)?,
        );
    }
    Ok(out)
}

/// The start and end tokens' ids in the vocabulary `write_tokenizer` makes (the config
/// files name them: transformers pools the text tower at the first end token).
pub const TOKENIZER_BOS: u32 = 512;
pub const TOKENIZER_EOS: u32 = 513;

/// A byte-level vocabulary without merges (every byte, with and without `</w>`, then the
/// two special tokens): any prompt encodes, one token per byte.
fn write_tokenizer(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let bytes = crate::text::bytes_to_unicode();
    let mut vocab = serde_json::Map::new();
    for c in bytes.iter() {
        vocab.insert(c.to_string(), vocab.len().into());
    }
    for c in bytes.iter() {
        vocab.insert(format!("{c}</w>"), vocab.len().into());
    }
    vocab.insert("<|startoftext|>".into(), vocab.len().into());
    vocab.insert("<|endoftext|>".into(), vocab.len().into());
    save_json(&dir.join("vocab.json"), &vocab)?;
    std::fs::write(dir.join("merges.txt"), "#version: 0.2\n")?;
    Ok(())
}
