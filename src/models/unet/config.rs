//! The UNet's configuration, with diffusers' field names and block-type strings, so that
//! SD-1.5's `unet/config.json` deserialises into it (unknown keys are ignored).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DownBlockType {
    #[serde(rename = "CrossAttnDownBlock2D")]
    CrossAttnDown,
    #[serde(rename = "DownBlock2D")]
    Down,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpBlockType {
    #[serde(rename = "UpBlock2D")]
    Up,
    #[serde(rename = "CrossAttnUpBlock2D")]
    CrossAttnUp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UNetConfig {
    /// Spatial size the model is made for (informational: any size works; SD-1.5: 64 latents).
    pub sample_size: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    /// Channels of each resolution level; the time embedding has 4 * block_out_channels[0].
    pub block_out_channels: Vec<usize>,
    pub down_block_types: Vec<DownBlockType>,
    pub up_block_types: Vec<UpBlockType>,
    /// Resnets per down block; up blocks have one more (diffusers).
    pub layers_per_block: usize,
    pub cross_attention_dim: usize,
    /// The NUMBER of attention heads per transformer, despite its name: diffusers passes
    /// SD-1.5's `"attention_head_dim": 8` as `num_attention_heads` (a historical misnomer);
    /// the head dimension is channels / heads.
    pub attention_head_dim: usize,
    pub norm_num_groups: usize,
    /// Epsilon of the resnets' and the output's group norms (the transformers' is 1e-6).
    pub norm_eps: f64,
    /// proj_in/proj_out are Linear layers (SD-2) instead of 1x1 convolutions (SD-1.5,
    /// whose config.json does not have the key).
    #[serde(default)]
    pub use_linear_projection: bool,
    /// diffusers' `num_class_embeds`: a learned class embedding added to the time embedding
    /// (`class_embedding.weight`); SD-1.5 has none.
    #[serde(default)]
    pub num_class_embeds: Option<usize>,
}

impl UNetConfig {
    /// Stable Diffusion 1.5 (runwayml/stable-diffusion-v1-5, unet/config.json).
    pub fn sd15() -> Self {
        use DownBlockType::*;
        use UpBlockType::*;
        Self {
            sample_size: 64,
            in_channels: 4,
            out_channels: 4,
            block_out_channels: vec![320, 640, 1280, 1280],
            down_block_types: vec![CrossAttnDown, CrossAttnDown, CrossAttnDown, Down],
            up_block_types: vec![Up, CrossAttnUp, CrossAttnUp, CrossAttnUp],
            layers_per_block: 2,
            cross_attention_dim: 768,
            attention_head_dim: 8,
            norm_num_groups: 32,
            norm_eps: 1e-5,
            use_linear_projection: false,
            num_class_embeds: None,
        }
    }

    /// The pixel-space MNIST model (28 -> 14 -> 7), cross-attention at 7x7 and in the
    /// middle: attention at 28x28 (784 tokens) or 14x14 costs too much on a CPU.
    pub fn digits() -> Self {
        use DownBlockType::*;
        use UpBlockType::*;
        Self {
            sample_size: 28,
            in_channels: 1,
            out_channels: 1,
            // Sized for 2 CPU cores (docs/speed.md): [32, 64, 64] with attention at 14x14
            // took 2.7 s per guided batch of 64 forward; this takes 0.45 s.
            block_out_channels: vec![8, 16, 32],
            down_block_types: vec![Down, Down, CrossAttnDown],
            up_block_types: vec![CrossAttnUp, Up, Up],
            layers_per_block: 1,
            cross_attention_dim: 32,
            attention_head_dim: 2,
            norm_num_groups: 4,
            norm_eps: 1e-5,
            use_linear_projection: false,
            // The 10 classes and the null prompt: the class also enters every resnet through the
            // time embedding (see models/digits/unet.md for why).
            num_class_embeds: Some(11),
        }
    }

    /// Channels of the timestep embedding (diffusers: 4 * block_out_channels[0]).
    pub fn time_embed_dim(&self) -> usize {
        4 * self.block_out_channels[0]
    }

    /// Checks that the blocks line up; a config that fails would otherwise fail deep inside
    /// a tensor op with a shape message.
    pub fn validate(&self) -> Result<(), String> {
        let n = self.block_out_channels.len();
        if n == 0 {
            return Err("block_out_channels is empty".into());
        }
        if self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(format!(
                "{n} block_out_channels but {} down and {} up block types",
                self.down_block_types.len(),
                self.up_block_types.len()
            ));
        }
        if self.layers_per_block == 0 {
            return Err("layers_per_block must be at least 1".into());
        }
        if !self.block_out_channels[0].is_multiple_of(2) {
            return Err(
                "block_out_channels[0] must be even (sin and cos timestep features)".into(),
            );
        }
        for (i, &c) in self.block_out_channels.iter().enumerate() {
            if !c.is_multiple_of(self.norm_num_groups) {
                return Err(format!(
                    "norm_num_groups {} does not divide {c} channels",
                    self.norm_num_groups
                ));
            }
            // Transformers sit at cross-attention levels and in the middle (the last level).
            let attends = self.down_block_types[i] == DownBlockType::CrossAttnDown
                || self.up_block_types[n - 1 - i] == UpBlockType::CrossAttnUp
                || i == n - 1;
            if attends && !c.is_multiple_of(self.attention_head_dim) {
                return Err(format!(
                    "{} heads do not divide {c} channels",
                    self.attention_head_dim
                ));
            }
        }
        Ok(())
    }
}
