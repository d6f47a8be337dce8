//! The VAE of Stable Diffusion (diffusers' `AutoencoderKL`): its decoder, differentiable
//! end to end (no candle-nn fused op without a backward), because a reward gradient runs
//! latent -> image -> CLIP -> score. Weight names are diffusers' (`post_quant_conv.*`,
//! `decoder.*`), so `vae/diffusion_pytorch_model.safetensors` loads by name; its encoder
//! keys are ignored.

mod attention;
mod config;
mod decoder;
mod norm;
mod resnet;

pub use attention::KeyStyle;
pub use config::AutoencoderKLConfig;

use crate::nn::{conv2d_layer, Conv2d};
use crate::tensor_io::{check_params, expected_params, read};
use anyhow::Context;
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use decoder::Decoder;
use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, Clone)]
pub struct VaeDecoder {
    cfg: AutoencoderKLConfig,
    post_quant_conv: Conv2d,
    decoder: Decoder,
}

impl VaeDecoder {
    /// The decoder of an `AutoencoderKL` whose keys are at the root of `vb`; the attention
    /// key style is read from `vb` (new names unless only the old ones exist).
    pub fn new(vb: VarBuilder, cfg: &AutoencoderKLConfig) -> Result<Self> {
        let style = KeyStyle::detect(&vb.pp("decoder.mid_block.attentions.0"));
        Self::with_key_style(vb, cfg, style)
    }

    /// As `new`, with the attention's key names given.
    pub fn with_key_style(
        vb: VarBuilder,
        cfg: &AutoencoderKLConfig,
        style: KeyStyle,
    ) -> Result<Self> {
        cfg.validate()
            .map_err(|e| candle_core::Error::Msg(format!("AutoencoderKLConfig: {e}")))?;
        let l = cfg.latent_channels;
        Ok(Self {
            cfg: cfg.clone(),
            post_quant_conv: conv2d_layer(l, l, 1, Default::default(), vb.pp("post_quant_conv"))?,
            decoder: Decoder::new(vb.pp("decoder"), cfg, style)?,
        })
    }

    pub fn config(&self) -> &AutoencoderKLConfig {
        &self.cfg
    }

    /// Scaled latents [B, latent, h, w] (what the UNet denoises) -> image
    /// [B, out, h * upscale, w * upscale], roughly in [-1, 1] and not clamped (a clamp
    /// would zero the gradient of saturated pixels). Computed in the latents' dtype.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let z = (latents / self.cfg.scaling_factor)?;
        self.decoder.forward(&self.post_quant_conv.forward(&z)?)
    }
}

/// Key that tells the old attention names from the new in a whole VAE file.
const OLD_STYLE_KEY: &str = "decoder.mid_block.attentions.0.query.weight";
const NEW_STYLE_KEY: &str = "decoder.mid_block.attentions.0.to_q.weight";

/// The frozen decoder from a full VAE file (`vae/diffusion_pytorch_model.safetensors`),
/// in `dtype` on `device`. Every key the decoder needs is checked (name and shape, in the
/// file's key style) before anything is built: a missing one is an error naming the file
/// and the key. The file is read on the CPU; only the decoder's tensors move to `device`.
pub fn load(
    path: &Path,
    cfg: &AutoencoderKLConfig,
    device: &Device,
    dtype: DType,
) -> anyhow::Result<VaeDecoder> {
    cfg.validate()
        .map_err(|e| anyhow::anyhow!("AutoencoderKLConfig: {e}"))?;
    let file = read(path, &Device::Cpu)?;
    let style = match file.tensors.contains_key(OLD_STYLE_KEY)
        && !file.tensors.contains_key(NEW_STYLE_KEY)
    {
        true => KeyStyle::Old,
        false => KeyStyle::New,
    };
    let expected = expected_params(|vb| VaeDecoder::with_key_style(vb, cfg, style))?;
    check_params(path, &file, &expected)?;
    // Converted on use by the VarBuilder: the norms, held in f32, keep the file's precision.
    let tensors: HashMap<String, Tensor> = expected
        .iter()
        .map(|(k, _)| (k.clone(), file.tensors[k].clone()))
        .collect();
    let vb = VarBuilder::from_tensors(tensors, dtype, device);
    VaeDecoder::with_key_style(vb, cfg, style)
        .with_context(|| format!("building the VAE decoder from {}", path.display()))
}

/// The VAE config of a diffusers model folder: `<dir>/vae/config.json` when it exists
/// (unknown keys ignored, missing ones SD-1.5's), SD-1.5's otherwise.
pub fn config_from_dir(dir: &Path) -> anyhow::Result<AutoencoderKLConfig> {
    let path = dir.join("vae").join("config.json");
    if !path.exists() {
        return Ok(AutoencoderKLConfig::sd15());
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let cfg: AutoencoderKLConfig =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    cfg.validate()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(cfg)
}
