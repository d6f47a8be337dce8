//! The digits "text-to-image" model: a UNet2DConditionModel whose prompt is a class. Each
//! of the 11 prompts (digits 0..9 and the null prompt of classifier-free guidance) is a
//! learned sequence of context vectors, read by cross-attention as SD reads CLIP's text
//! embedding, so the fine-tuning code path is the one SD-1.5 takes.

use super::unet::{UNet2DConditionModel, UNetConfig};
use super::Denoiser;
use crate::nn::lora::LoraBuilder;
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

/// The null prompt's id (classifier-free guidance's ∅).
pub const NULL_PROMPT: u32 = 10;
pub const PROMPTS: usize = 11;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassConditionalConfig {
    pub unet: UNetConfig,
    /// Context tokens per prompt (SD has 77; a class needs few, but more than one makes
    /// cross-attention a real attention rather than a constant).
    pub tokens: usize,
}

impl ClassConditionalConfig {
    pub fn digits() -> Self {
        Self {
            unet: UNetConfig::digits(),
            tokens: 4,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ClassConditionalUNet {
    pub unet: UNet2DConditionModel,
    /// [11, tokens, cross_attention_dim], key `prompt_embeddings`.
    prompts: Tensor,
}

impl ClassConditionalUNet {
    pub fn new(
        vb: VarBuilder,
        cfg: &ClassConditionalConfig,
        lora: Option<&LoraBuilder>,
    ) -> Result<Self> {
        let prompts = vb.get_with_hints(
            (PROMPTS, cfg.tokens, cfg.unet.cross_attention_dim),
            "prompt_embeddings",
            candle_nn::Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
        )?;
        Ok(Self {
            unet: UNet2DConditionModel::new(vb, &cfg.unet, lora)?,
            prompts,
        })
    }
}

impl ClassConditionalUNet {
    /// Every variable among its weights (`UNet2DConditionModel::with_trainable`).
    pub fn with_trainable(mut self, vars: Vec<candle_core::Var>) -> Self {
        self.unet = self.unet.with_trainable(vars);
        self
    }
}

impl Denoiser for ClassConditionalUNet {
    fn eps(&self, x: &Tensor, t: &Tensor, cond: &Tensor) -> Result<Tensor> {
        let context = self.prompts.index_select(cond, 0)?;
        let class = self.unet.config().num_class_embeds.map(|_| cond);
        self.unet.forward_with_class(x, t, &context, class)
    }
}
