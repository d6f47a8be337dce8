//! A convolution that may carry a LoRA adapter, in PEFT's conv form: lora_A is a
//! Conv2d(in, rank) with the base's kernel, stride and padding, lora_B a 1x1
//! Conv2d(rank, out), both without bias; y = base(x) + (alpha/rank) B(A(x)).
//! Adapters are only added when the LoRA config asks for conv adapters (`convs`).

use super::conv::{conv2d_layer, Conv2d};
use super::lora::Builders;
use candle_core::{Module, Result, Tensor};
use candle_nn::Conv2dConfig;

#[derive(Debug, Clone)]
pub enum ConvProj {
    Plain(Conv2d),
    Lora {
        base: Conv2d,
        a: Conv2d,
        b: Conv2d,
        scale: f64,
    },
}

impl ConvProj {
    /// Conv2d(in, out, kernel) with bias from `vbs.base`; an adapter when `vbs.lora` is set
    /// with `convs`.
    pub fn new(
        in_c: usize,
        out_c: usize,
        kernel: usize,
        cfg: Conv2dConfig,
        vbs: &Builders,
    ) -> Result<Self> {
        let base = conv2d_layer(in_c, out_c, kernel, cfg, vbs.base.clone())?;
        Ok(match &vbs.lora {
            Some(l) if l.cfg.convs => {
                let r = l.cfg.rank;
                Self::Lora {
                    base,
                    a: Conv2d::new(l.lora_a(&[r, in_c, kernel, kernel])?, None, cfg),
                    b: Conv2d::new(l.lora_b(&[out_c, r, 1, 1])?, None, Conv2dConfig::default()),
                    scale: l.cfg.scale(),
                }
            }
            _ => Self::Plain(base),
        })
    }
}

impl ConvProj {
    /// forward(x) + extra[b, o] for extra [B, O] (`Conv2d::forward_with_sample_bias`).
    pub fn forward_with_sample_bias(&self, x: &Tensor, extra: &Tensor) -> Result<Tensor> {
        match self {
            Self::Plain(c) => c.forward_with_sample_bias(x, extra),
            Self::Lora { .. } => self
                .forward(x)?
                .broadcast_add(&extra.unsqueeze(2)?.unsqueeze(3)?),
        }
    }
}

impl Module for ConvProj {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Plain(c) => c.forward(x),
            Self::Lora { base, a, b, scale } => {
                let dtype = a.weight().dtype();
                let delta = super::lora::adapter(x, |x| b.forward(&a.forward(x)?), dtype)?;
                base.forward(x)? + (delta * *scale)?
            }
        }
    }
}
