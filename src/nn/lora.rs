//! LoRA adapters (Hu et al. 2021) on linear layers, computed as x W^T + s (x A^T) B^T with
//! s = alpha / rank: no dense delta is formed and nothing is rebuilt after an optimiser step.
//!
//! Names follow PEFT/diffusers: the adapter of module `m` is `m.lora_A.weight` [rank, in]
//! and `m.lora_B.weight` [out, rank], read from the adapters' own VarBuilder (usually a
//! trainable VarMap) while the base weights come from the model's VarBuilder (frozen when
//! built from tensors), so a policy with adapters and a reference without them can share
//! the same base tensors.
//!
//! Initialisation as PEFT: A ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming-uniform with
//! a = sqrt(5)), B = 0, so a fresh adapter leaves the model unchanged. (`nn::init::seeded_init`
//! re-draws A as N(0, 1/fan_in) from the run's seeded RNG and leaves B at zero.)

use super::linear::{linear, linear_no_bias, Linear};
use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    /// Also adapt the resnets' 3x3 convolutions (conv1, conv2), not only attention.
    pub convs: bool,
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }
}

/// Where adapters come from: their config and a VarBuilder (at the same module path as
/// the base VarBuilder it travels with).
#[derive(Clone)]
pub struct LoraBuilder<'a> {
    pub cfg: LoraConfig,
    pub vb: VarBuilder<'a>,
}

impl<'a> LoraBuilder<'a> {
    pub fn new(cfg: LoraConfig, vb: VarBuilder<'a>) -> Self {
        Self { cfg, vb }
    }

    pub fn pp(&self, s: impl ToString) -> Self {
        Self {
            cfg: self.cfg.clone(),
            vb: self.vb.pp(s),
        }
    }

    /// A [rank, fan_in...] down-projection, PEFT's kaiming-uniform init.
    pub(crate) fn lora_a(&self, shape: &[usize]) -> Result<Tensor> {
        let fan_in: usize = shape[1..].iter().product();
        let bound = 1.0 / (fan_in as f64).sqrt();
        let init = Init::Uniform {
            lo: -bound,
            up: bound,
        };
        self.vb.pp("lora_A").get_with_hints(shape, "weight", init)
    }

    /// A [out, rank, ...] up-projection, zero so that a fresh adapter changes nothing.
    pub(crate) fn lora_b(&self, shape: &[usize]) -> Result<Tensor> {
        self.vb
            .pp("lora_B")
            .get_with_hints(shape, "weight", Init::Const(0.0))
    }
}

/// The base weights' builder and, when adapters are wanted, the adapters' builder, kept at
/// the same module path so that an adapter is named after the module it adapts.
#[derive(Clone)]
pub struct Builders<'a> {
    pub base: VarBuilder<'a>,
    pub lora: Option<LoraBuilder<'a>>,
}

impl<'a> Builders<'a> {
    pub fn new(base: VarBuilder<'a>, lora: Option<&LoraBuilder<'a>>) -> Self {
        Self {
            base,
            lora: lora.cloned(),
        }
    }

    pub fn pp(&self, s: impl ToString) -> Self {
        let s = s.to_string();
        Self {
            base: self.base.pp(&s),
            lora: self.lora.as_ref().map(|l| l.pp(&s)),
        }
    }
}

/// A linear layer that may carry a LoRA adapter.
#[derive(Debug, Clone)]
pub enum Proj {
    Plain(Linear),
    Lora {
        base: Linear,
        a: Linear,
        b: Linear,
        scale: f64,
    },
}

impl Proj {
    /// Linear(in, out) from `vbs.base`, with an adapter when `vbs.lora` is set.
    pub fn new(in_dim: usize, out_dim: usize, bias: bool, vbs: &Builders) -> Result<Self> {
        let base = if bias {
            linear(in_dim, out_dim, vbs.base.clone())?
        } else {
            linear_no_bias(in_dim, out_dim, vbs.base.clone())?
        };
        Ok(match &vbs.lora {
            None => Self::Plain(base),
            Some(l) => Self::Lora {
                base,
                a: Linear::new(l.lora_a(&[l.cfg.rank, in_dim])?, None),
                b: Linear::new(l.lora_b(&[out_dim, l.cfg.rank])?, None),
                scale: l.cfg.scale(),
            },
        })
    }
}

impl Module for Proj {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Plain(l) => l.forward(x),
            Self::Lora { base, a, b, scale } => {
                let (wa, wb) = (a.weight(), b.weight());
                let dtype = base.weight().dtype();
                if !(x.track_op() || wa.track_op() || wb.track_op())
                    && wa.dtype() == dtype
                    && wb.dtype() == dtype
                {
                    // No gradient wanted (sampling, evaluation): one matmul with the merged
                    // weight W + scale B A instead of two skinny ones and an add.
                    let merged = (base.weight() + (wb.matmul(wa)? * *scale)?)?;
                    return Linear::new(merged, base.bias().cloned()).forward(x);
                }
                let delta = adapter(x, |x| b.forward(&a.forward(x)?), wa.dtype())?;
                base.forward(x)? + (delta * *scale)?
            }
        }
    }
}

/// Runs an adapter in its own dtype and returns its output in the input's: on a GPU the
/// frozen base is bf16 or f16 while the trained adapters stay f32 (AdamW's small updates
/// vanish in half precision). On the CPU both are f32 and nothing is converted.
pub(crate) fn adapter(
    x: &Tensor,
    f: impl FnOnce(&Tensor) -> Result<Tensor>,
    dtype: candle_core::DType,
) -> Result<Tensor> {
    if x.dtype() == dtype {
        return f(x);
    }
    f(&x.to_dtype(dtype)?)?.to_dtype(x.dtype())
}
