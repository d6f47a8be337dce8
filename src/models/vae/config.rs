//! The VAE's configuration with the field names of diffusers' `vae/config.json`
//! (`AutoencoderKL`), so the file deserialises into it. Unknown keys are ignored, and
//! missing ones take SD-1.5's values: SD-1.5's own file predates `scaling_factor`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AutoencoderKLConfig {
    /// Image channels the encoder reads (the decoder does not use it).
    pub in_channels: usize,
    /// Image channels the decoder writes.
    pub out_channels: usize,
    pub latent_channels: usize,
    /// Channels per resolution level, from the image side; the decoder walks them in
    /// reverse and upsamples 2x between levels (2^(levels-1) overall).
    pub block_out_channels: Vec<usize>,
    /// Resnets per encoder block; decoder blocks have one more (diffusers).
    pub layers_per_block: usize,
    pub norm_num_groups: usize,
    /// Latents are the encoder's samples times this; `decode` divides it back out.
    pub scaling_factor: f64,
}

impl Default for AutoencoderKLConfig {
    fn default() -> Self {
        Self::sd15()
    }
}

impl AutoencoderKLConfig {
    /// Stable Diffusion 1.5 (runwayml/stable-diffusion-v1-5, vae/config.json): 4 latent
    /// channels, 8x upsampling, ~49M decoder parameters.
    pub fn sd15() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            latent_channels: 4,
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            norm_num_groups: 32,
            scaling_factor: 0.18215,
        }
    }

    /// Two levels of 8 and 16 channels (2x upsampling) for tests.
    pub fn tiny() -> Self {
        Self {
            block_out_channels: vec![8, 16],
            layers_per_block: 1,
            norm_num_groups: 4,
            ..Self::sd15()
        }
    }

    /// How many times larger the image is than the latents on each side.
    pub fn upscale(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
    }

    /// Checks what would otherwise fail deep inside a tensor op with a shape message.
    pub fn validate(&self) -> Result<(), String> {
        let g = self.norm_num_groups;
        if self.block_out_channels.is_empty() {
            return Err("block_out_channels is empty".into());
        }
        if self.latent_channels == 0 || self.out_channels == 0 || g == 0 {
            return Err(
                "latent_channels, out_channels and norm_num_groups must be positive".into(),
            );
        }
        if let Some(c) = self
            .block_out_channels
            .iter()
            .find(|&&c| c == 0 || !c.is_multiple_of(g))
        {
            return Err(format!(
                "norm_num_groups {g} does not divide block_out_channels entry {c} (of {:?})",
                self.block_out_channels
            ));
        }
        if !(self.scaling_factor.is_finite() && self.scaling_factor > 0.0) {
            return Err(format!(
                "scaling_factor {} is not positive",
                self.scaling_factor
            ));
        }
        Ok(())
    }
}
