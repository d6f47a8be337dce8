//! diffusers' `UNet2DConditionModel` with diffusers' weight names (SD-1.5's
//! `unet/diffusion_pytorch_model.safetensors` loads by name), configurable from the tiny
//! pixel-space digits model to SD-1.5, differentiable everywhere (no candle-nn fused op
//! without a backward), with optional LoRA adapters on attention (and resnet convs).
//!
//! Unlike candle-transformers' UNet, the timestep is per sample ([B]): SQDF's replay
//! batches mix timesteps.

mod blocks;
mod config;
mod parts;
mod resnet;
mod sampling;
mod transformer;
mod transformer_block;

pub use config::{DownBlockType, UNetConfig, UpBlockType};
pub use parts::CPU_PART_ROWS;

use crate::nn::{
    conv2d_layer, group_norm, sinusoidal_embedding, Builders, Conv2d, GroupNorm, LoraBuilder,
    TimestepEmbedding,
};
pub use blocks::Checkpointing;
use blocks::{Ctx, DownBlock, MidBlock, UpBlock};
use candle_core::{Module, Result, Tensor, Var};
use candle_nn::{Conv2dConfig, VarBuilder};

#[derive(Debug, Clone)]
pub struct UNet2DConditionModel {
    cfg: UNetConfig,
    conv_in: Conv2d,
    time_embedding: TimestepEmbedding,
    class_embedding: Option<candle_nn::Embedding>,
    down_blocks: Vec<DownBlock>,
    mid_block: MidBlock,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    /// Which blocks may recompute their activations (none unless `with_checkpointing`).
    frozen: Checkpointing,
    checkpointing: bool,
    /// Every variable among its weights, where the builder told (`with_trainable`).
    trainable: Option<Vec<Var>>,
}

impl UNet2DConditionModel {
    /// Base weights from `vb`; with `lora`, adapters (`<module>.lora_A.weight`,
    /// `<module>.lora_B.weight`) from the LoRA builder's VarBuilder, at the same paths.
    pub fn new(vb: VarBuilder, cfg: &UNetConfig, lora: Option<&LoraBuilder>) -> Result<Self> {
        cfg.validate()
            .map_err(|e| candle_core::Error::Msg(format!("UNetConfig: {e}")))?;
        let vbs = Builders::new(vb, lora);
        let ch = &cfg.block_out_channels;
        let n = ch.len();
        let ctx = Ctx {
            cfg,
            temb_c: cfg.time_embed_dim(),
        };
        let pad1 = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let down_blocks = (0..n)
            .map(|i| {
                let in_c = if i == 0 { ch[0] } else { ch[i - 1] };
                let attn = cfg.down_block_types[i] == DownBlockType::CrossAttnDown;
                let vbs = vbs.pp(format!("down_blocks.{i}"));
                DownBlock::new(&ctx, in_c, ch[i], attn, i + 1 < n, &vbs)
            })
            .collect::<Result<_>>()?;
        // Up blocks walk the levels in reverse; `in_c` is the channel count of the level
        // below (the skip from the previous down block), as diffusers' `input_channel`.
        let rev: Vec<usize> = ch.iter().rev().copied().collect();
        let up_blocks = (0..n)
            .map(|i| {
                let prev_c = if i == 0 { rev[0] } else { rev[i - 1] };
                let in_c = rev[(i + 1).min(n - 1)];
                let attn = cfg.up_block_types[i] == UpBlockType::CrossAttnUp;
                let vbs = vbs.pp(format!("up_blocks.{i}"));
                UpBlock::new(&ctx, in_c, rev[i], prev_c, attn, i + 1 < n, &vbs)
            })
            .collect::<Result<_>>()?;
        let vb = &vbs.base;
        Ok(Self {
            cfg: cfg.clone(),
            conv_in: conv2d_layer(cfg.in_channels, ch[0], 3, pad1, vb.pp("conv_in"))?,
            time_embedding: TimestepEmbedding::new(vb.pp("time_embedding"), ch[0], ctx.temb_c)?,
            class_embedding: match cfg.num_class_embeds {
                Some(n) => Some(candle_nn::embedding(
                    n,
                    ctx.temb_c,
                    vbs.base.pp("class_embedding"),
                )?),
                None => None,
            },
            down_blocks,
            mid_block: MidBlock::new(&ctx, ch[n - 1], &vbs.pp("mid_block"))?,
            up_blocks,
            conv_norm_out: group_norm(
                cfg.norm_num_groups,
                ch[0],
                cfg.norm_eps,
                vb.pp("conv_norm_out"),
            )?,
            conv_out: conv2d_layer(ch[0], cfg.out_channels, 3, pad1, vb.pp("conv_out"))?,
            frozen: Checkpointing {
                resnets: lora.is_none_or(|l| !l.cfg.convs),
                transformers: lora.is_none(),
                samplers: true,
            },
            checkpointing: false,
            trainable: None,
        })
    }

    /// Recompute the activations of every block without trainable parameters in the
    /// backward instead of keeping them (`nn::checkpoint`): all blocks of a frozen UNet,
    /// the resnets and samplers of one with attention adapters. Same values and gradients;
    /// the backward costs about one more forward. For a UNet whose base weights are frozen
    /// (plain tensors, as the sd15 task loads them): with trainable base weights each block
    /// would notice its parameters and run twice, without checkpointing.
    pub fn with_checkpointing(mut self, on: bool) -> Self {
        self.checkpointing = on;
        self
    }

    /// Names every variable among the model's weights (all those of the VarMap that built
    /// it; none for a model on plain tensors). With them, the backward of a CPU batch in
    /// parts runs the parts side by side too (`parts.rs`); a variable the forward reaches
    /// but the list leaves out is an error there. Each such forward copies the variables
    /// once and its backward holds one gradient of each per part: meant for small models
    /// such as the digits UNet, not a CPU SD-1.5.
    pub fn with_trainable(mut self, vars: Vec<Var>) -> Self {
        let mut seen = std::collections::HashSet::new();
        let vars = vars
            .into_iter()
            .filter(|v| seen.insert(v.as_tensor().id()))
            .collect();
        self.trainable = Some(vars);
        self
    }

    fn checkpointed(&self) -> Checkpointing {
        if self.checkpointing {
            self.frozen
        } else {
            Checkpointing::default()
        }
    }

    pub fn config(&self) -> &UNetConfig {
        &self.cfg
    }

    /// ε prediction for x [B, in_channels, H, W] at per-sample training timesteps
    /// t (f32 [B]) under context [B, L, cross_attention_dim].
    pub fn forward(&self, x: &Tensor, t: &Tensor, context: &Tensor) -> Result<Tensor> {
        self.forward_with_class(x, t, context, None)
    }

    /// `forward` with class ids (u32 [B]) for a model with `num_class_embeds`.
    ///
    /// On the CPU a batch of more than `CPU_PART_ROWS` rows runs as parts of that many rows,
    /// side by side on the thread pool (`parts.rs`).
    pub fn forward_with_class(
        &self,
        x: &Tensor,
        t: &Tensor,
        context: &Tensor,
        class: Option<&Tensor>,
    ) -> Result<Tensor> {
        let batch = parts::Batch {
            x,
            t,
            context,
            class,
        };
        match x.device().is_cpu() && x.dim(0)? > CPU_PART_ROWS {
            true => self.forward_in_parts(&batch),
            false => self.forward_rows(&batch),
        }
    }

    /// `forward_with_class` on one part.
    fn forward_rows(&self, batch: &parts::Batch) -> Result<Tensor> {
        let parts::Batch {
            x,
            t,
            context,
            class,
        } = *batch;
        // diffusers' Timesteps(block_out[0], flip_sin_to_cos=True, downscale_freq_shift=0).
        let temb = sinusoidal_embedding(t, self.cfg.block_out_channels[0])?;
        let mut temb = self.time_embedding.forward(&temb.to_dtype(x.dtype())?)?;
        match (&self.class_embedding, class) {
            (Some(e), Some(c)) => temb = temb.add(&e.forward(c)?)?,
            (Some(_), None) => candle_core::bail!("this UNet has num_class_embeds: pass class ids"),
            _ => {}
        }
        let mut h = self.conv_in.forward(x)?;
        let mut skips = vec![h.clone()];
        let ck = self.checkpointed();
        for b in &self.down_blocks {
            h = b.forward(&h, &temb, context, &mut skips, ck)?;
        }
        h = self.mid_block.forward(&h, &temb, context, ck)?;
        for b in &self.up_blocks {
            h = b.forward(&h, &temb, context, &mut skips, ck)?;
        }
        let h = self.conv_norm_out.forward_silu(&h)?;
        self.conv_out.forward(&h)
    }
}
