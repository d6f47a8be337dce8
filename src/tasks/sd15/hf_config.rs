//! The config.json files diffusers 0.42 and transformers 5.25 write with `save_pretrained`,
//! for the models sqdf builds: every key those libraries write (the ones sqdf's configs do
//! not model at their defaults, which are the only values sqdf's models implement), so a
//! folder sqdf writes loads in those libraries as it is. tests/it/parity.rs compares them
//! with the files the libraries wrote.

use crate::models::clip::{Activation, ClipConfig, ClipTextConfig, ClipVisionConfig};
use crate::models::vae::AutoencoderKLConfig;
use crate::models::UNetConfig;
use candle_core::DType;
use serde_json::{json, Map, Value};

/// The diffusers version whose `save_pretrained` output these follow.
pub const DIFFUSERS_VERSION: &str = "0.42.1";
/// The transformers version whose `save_pretrained` output these follow.
pub const TRANSFORMERS_VERSION: &str = "5.25.0";
/// transformers' `logit_scale_init_value`, ln(1 / 0.07) as it rounds it.
pub const LOGIT_SCALE_INIT: f64 = 2.6592;

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => unreachable!("json! of an object"),
    }
}

/// transformers' name of a dtype (`config.dtype`).
fn torch_dtype(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        DType::F64 => "float64",
        _ => "float32",
    }
}

/// `unet/config.json` (`UNet2DConditionModel`).
pub fn unet(cfg: &UNetConfig) -> Value {
    let mut m = object(json!({
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "act_fn": "silu",
        "addition_embed_type": null,
        "addition_embed_type_num_heads": 64,
        "addition_time_embed_dim": null,
        "attention_type": "default",
        "center_input_sample": false,
        "class_embed_type": null,
        "class_embeddings_concat": false,
        "conv_in_kernel": 3,
        "conv_out_kernel": 3,
        "cross_attention_norm": null,
        "downsample_padding": 1,
        "dropout": 0.0,
        "dual_cross_attention": false,
        "encoder_hid_dim": null,
        "encoder_hid_dim_type": null,
        "flip_sin_to_cos": true,
        "freq_shift": 0,
        "mid_block_only_cross_attention": null,
        "mid_block_scale_factor": 1,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "num_attention_heads": null,
        "only_cross_attention": false,
        "projection_class_embeddings_input_dim": null,
        "resnet_out_scale_factor": 1.0,
        "resnet_skip_time_act": false,
        "resnet_time_scale_shift": "default",
        "reverse_transformer_layers_per_block": null,
        "time_cond_proj_dim": null,
        "time_embedding_act_fn": null,
        "time_embedding_dim": null,
        "time_embedding_type": "positional",
        "timestep_post_act": null,
        "transformer_layers_per_block": 1,
        "upcast_attention": false,
    }));
    m.extend(object(
        serde_json::to_value(cfg).expect("UNetConfig serialises"),
    ));
    Value::Object(m)
}

/// `vae/config.json` (`AutoencoderKL`); `image_size` is diffusers' `sample_size`.
pub fn vae(cfg: &AutoencoderKLConfig, image_size: usize) -> Value {
    let n = cfg.block_out_channels.len();
    json!({
        "_class_name": "AutoencoderKL",
        "_diffusers_version": DIFFUSERS_VERSION,
        "act_fn": "silu",
        "block_out_channels": cfg.block_out_channels,
        "down_block_types": vec!["DownEncoderBlock2D"; n],
        "force_upcast": true,
        "in_channels": cfg.in_channels,
        "latent_channels": cfg.latent_channels,
        "latents_mean": null,
        "latents_std": null,
        "layers_per_block": cfg.layers_per_block,
        "mid_block_add_attention": true,
        "norm_num_groups": cfg.norm_num_groups,
        "out_channels": cfg.out_channels,
        "sample_size": image_size,
        "scaling_factor": cfg.scaling_factor,
        "shift_factor": null,
        "up_block_types": vec!["UpDecoderBlock2D"; n],
        "use_post_quant_conv": true,
        "use_quant_conv": true,
    })
}

/// Names and shapes of diffusers' VAE encoder (`encoder.*`, `quant_conv.*`), which the
/// VAE file holds beside the decoder.
pub fn vae_encoder_params(cfg: &AutoencoderKLConfig) -> Vec<(String, Vec<usize>)> {
    let mut p: Vec<(String, Vec<usize>)> = Vec::new();
    fn conv(p: &mut Vec<(String, Vec<usize>)>, name: String, out: usize, inp: usize, k: usize) {
        p.push((format!("{name}.weight"), vec![out, inp, k, k]));
        p.push((format!("{name}.bias"), vec![out]));
    }
    let chans = &cfg.block_out_channels;
    let last = *chans.last().expect("validated: not empty");
    let l2 = 2 * cfg.latent_channels;
    conv(
        &mut p,
        "encoder.conv_in".into(),
        chans[0],
        cfg.in_channels,
        3,
    );
    let mut resnets = Vec::new();
    let mut prev = chans[0];
    for (i, &c) in chans.iter().enumerate() {
        for j in 0..cfg.layers_per_block {
            let inp = if j == 0 { prev } else { c };
            resnets.push((format!("encoder.down_blocks.{i}.resnets.{j}"), inp, c));
        }
        if i + 1 < chans.len() {
            conv(
                &mut p,
                format!("encoder.down_blocks.{i}.downsamplers.0.conv"),
                c,
                c,
                3,
            );
        }
        prev = c;
    }
    resnets.push(("encoder.mid_block.resnets.0".into(), last, last));
    resnets.push(("encoder.mid_block.resnets.1".into(), last, last));
    for (name, inp, out) in resnets {
        conv(&mut p, format!("{name}.conv1"), out, inp, 3);
        conv(&mut p, format!("{name}.conv2"), out, out, 3);
        if inp != out {
            conv(&mut p, format!("{name}.conv_shortcut"), out, inp, 1);
        }
        p.push((format!("{name}.norm1.weight"), vec![inp]));
        p.push((format!("{name}.norm1.bias"), vec![inp]));
        p.push((format!("{name}.norm2.weight"), vec![out]));
        p.push((format!("{name}.norm2.bias"), vec![out]));
    }
    let attn = "encoder.mid_block.attentions.0";
    for proj in ["to_q", "to_k", "to_v", "to_out.0"] {
        p.push((format!("{attn}.{proj}.weight"), vec![last, last]));
        p.push((format!("{attn}.{proj}.bias"), vec![last]));
    }
    for norm in [format!("{attn}.group_norm"), "encoder.conv_norm_out".into()] {
        p.push((format!("{norm}.weight"), vec![last]));
        p.push((format!("{norm}.bias"), vec![last]));
    }
    p.push(("encoder.conv_out.weight".into(), vec![l2, last, 3, 3]));
    p.push(("encoder.conv_out.bias".into(), vec![l2]));
    p.push(("quant_conv.weight".into(), vec![l2, l2, 1, 1]));
    p.push(("quant_conv.bias".into(), vec![l2]));
    p
}

fn act(a: Activation) -> &'static str {
    match a {
        Activation::QuickGelu => "quick_gelu",
        Activation::Gelu => "gelu",
    }
}

/// A text tower's config as transformers writes it (`CLIPTextConfig`), with the start and
/// end token ids (the end token also pads, and transformers pools at its first position);
/// `top` adds what a standalone `CLIPTextModel` config.json has besides.
pub fn clip_text(cfg: &ClipTextConfig, (bos, eos): (u32, u32), dtype: DType, top: bool) -> Value {
    let mut m = object(json!({
        "attention_dropout": 0.0,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "hidden_act": act(cfg.hidden_act),
        "hidden_size": cfg.hidden_size,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": cfg.intermediate_size,
        "layer_norm_eps": cfg.layer_norm_eps,
        "max_position_embeddings": cfg.max_position_embeddings,
        "model_type": "clip_text_model",
        "num_attention_heads": cfg.num_attention_heads,
        "num_hidden_layers": cfg.num_hidden_layers,
        "pad_token_id": eos,
        "projection_dim": cfg.projection_dim,
        "vocab_size": cfg.vocab_size,
    }));
    if top {
        m.extend(object(json!({
            "architectures": ["CLIPTextModel"],
            "dtype": torch_dtype(dtype),
            "transformers_version": TRANSFORMERS_VERSION,
        })));
    }
    Value::Object(m)
}

fn clip_vision(cfg: &ClipVisionConfig) -> Value {
    json!({
        "attention_dropout": 0.0,
        "hidden_act": act(cfg.hidden_act),
        "hidden_size": cfg.hidden_size,
        "image_size": cfg.image_size,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": cfg.intermediate_size,
        "layer_norm_eps": cfg.layer_norm_eps,
        "model_type": "clip_vision_model",
        "num_attention_heads": cfg.num_attention_heads,
        "num_channels": cfg.num_channels,
        "num_hidden_layers": cfg.num_hidden_layers,
        "patch_size": cfg.patch_size,
        "projection_dim": cfg.projection_dim,
    })
}

/// A whole CLIP's config.json (`CLIPModel`).
pub fn clip(cfg: &ClipConfig, ids: (u32, u32), dtype: DType) -> Value {
    json!({
        "architectures": ["CLIPModel"],
        "dtype": torch_dtype(dtype),
        "initializer_factor": 1.0,
        "logit_scale_init_value": LOGIT_SCALE_INIT,
        "model_type": "clip",
        "projection_dim": cfg.projection_dim,
        "text_config": clip_text(&cfg.text_config, ids, dtype, false),
        "transformers_version": TRANSFORMERS_VERSION,
        "vision_config": clip_vision(&cfg.vision_config),
    })
}
