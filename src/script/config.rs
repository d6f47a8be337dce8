//! The strict `config` table of an experiment script: every key is known, typed and
//! documented here, with its default and whether it may change while a run is going.

use anyhow::{anyhow, bail, Result};
use mlua::prelude::*;
use mlua::Value;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

use super::config_values::element_rule;
pub use super::config_values::{coerce_to, json_to_lua, lua_to_json, parse_override};
pub use crate::blackbox::Uncertainty;

/// How buffer states are drawn for an update (§4.2.3, Appendix E.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sampling {
    Uniform,
    Priority,
}

/// The one-step x0 estimator inside the soft Q (§4.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum X0Estimator {
    /// The distilled consistency model f_ψ (the paper's choice).
    Consistency,
    /// Tweedie's formula with the frozen reference model (the "w/o CM" ablation).
    Tweedie,
    /// `x0_steps` deterministic DDIM steps of the frozen reference down to x_0, with the
    /// gradient through all of them (the paper's n-step ablation of the consistency model).
    Ddim,
}

/// What one update's `loss` receives (§3, on- versus off-policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpdateOn {
    /// `batch` states drawn from the replay buffer (SQDF, Algorithm 1).
    States,
    /// The `batch` trajectories sampled this epoch, whole (DRaFT, ReFL, DDPO: on-policy).
    Trajectories,
}

/// Precision of the frozen networks (`config.dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FrozenDtype {
    /// bf16 on a GPU, f32 on the CPU.
    Auto,
    F32,
    Bf16,
    F16,
}

/// The KL's reference policy (`config.kl_reference`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KlReference {
    /// The pretrained model (SQDF).
    Pretrained,
    /// The policy at the start of the black-box round (SEIKO).
    Previous,
}

/// Declares every config key once: its type, default, whether it may change during a run
/// (live), its cap (keys that size an allocation; `_` for none) and its doc line. Generates
/// `RunConfig`, its `Default`, the `KEYS` table the docs and checks read and `caps()`.
macro_rules! run_config {
    ($($key:ident: $ty:ty = $default:expr, live: $live:literal, max: $max:tt, $doc:literal;)*) => {
        /// A key missing from a stored config (a checkpoint written before the key existed)
        /// takes its default, as a key missing from a script does.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(default)]
        pub struct RunConfig {
            $(#[doc = $doc] pub $key: $ty,)*
        }

        impl Default for RunConfig {
            fn default() -> Self {
                Self { $($key: $default,)* }
            }
        }

        /// (key, may change during a run, meaning and default's reason).
        pub const KEYS: &[(&str, bool, &str)] = &[$((stringify!($key), $live, $doc),)*];

        impl RunConfig {
            /// (key, value, cap) of every key that sizes an allocation.
            #[allow(clippy::vec_init_then_push)]
            pub fn caps(&self) -> Vec<(&'static str, u64, u64)> {
                let mut v = Vec::new();
                $(cap_of!(v, $key, self.$key, $max);)*
                v
            }
        }
    };
}

macro_rules! cap_of {
    ($v:ident, $key:ident, $value:expr, _) => {};
    ($v:ident, $key:ident, $value:expr, $max:tt) => {
        $v.push((stringify!($key), $value as u64, $max as u64))
    };
}

run_config! {
    task: String = "gmm2d".into(), live: false, max: _,
        "the model to fine-tune: \"gmm2d\", \"digits\" or \"sd15\"";
    weights: Option<String> = None, live: false, max: _,
        "folder of the task's weight files (default models/<task>)";
    steps: usize = 50, live: false, max: (999),
        "T, sampling steps of the DDIM grid (paper: 50)";
    eta: f64 = 1.0, live: false, max: _,
        "DDIM η; 1 is ancestral sampling, the paper's sampler (needed for a finite KL)";
    seed: u64 = 0, live: false, max: _,
        "seed of the run's RNG: the same seed gives the same run";
    capacity: usize = 1024, live: false, max: (1 << 24),
        "replay buffer capacity in trajectories, FIFO (released code: 1024)";
    epochs: usize = 40, live: true, max: (1_u64 << 32),
        "total epochs; raise it and --resume to train longer";
    batch: usize = 64, live: true, max: (1 << 20),
        "trajectories sampled per epoch, and states per update (paper: 64)";
    updates_per_epoch: usize = 1, live: true, max: (1 << 20),
        "optimiser steps per epoch (released code's replay_ratio: 1)";
    lr: f64 = 1e-3, live: true, max: _,
        "AdamW learning rate (paper: 1e-3)";
    weight_decay: f64 = 1e-4, live: true, max: _,
        "AdamW weight decay (paper: 1e-4)";
    grad_clip: f64 = 1.0, live: true, max: _,
        "clip the global gradient norm to this (released code: 1.0); 0 disables";
    alpha: f64 = 2.0, live: true, max: _,
        "α, KL weight (paper: 2 with the released KL scale)";
    gamma: f64 = 0.9, live: true, max: _,
        "γ, discount over denoising steps (paper: 0.9)";
    sampling: Sampling = Sampling::Uniform, live: true, max: _,
        "\"uniform\" or \"priority\" (the `priority` hook) buffer sampling";
    x0: X0Estimator = X0Estimator::Consistency, live: true, max: _,
        "x0 estimator in the soft Q: \"consistency\", \"tweedie\" or \"ddim\" (x0_steps reference steps)";
    x0_steps: usize = 2, live: true, max: (999),
        "DDIM steps of the x0 = \"ddim\" estimator (the paper's ablation: 2 and 4)";
    update_on: UpdateOn = UpdateOn::States, live: false, max: _,
        "\"states\": each update draws batch states from the buffer (SQDF); \"trajectories\": it gets this epoch's batch trajectories whole (DRaFT, ReFL, DDPO)";
    evals: usize = 0, live: false, max: (1 << 16),
        "evaluations along training at evenly spaced epochs, into evals.jsonl (sqdf compare sets 6; 0: only before and after)";
    eval_samples: usize = 2000, live: true, max: (1 << 24),
        "samples for the toy's evaluation in eval.json (2000)";
    eval_per_prompt: usize = 32, live: true, max: (1 << 16),
        "samples per prompt (digit) of the evaluation in eval.json (paper: 32; sqdf compare --quick: 8)";
    lora_rank: usize = 4, live: false, max: (1 << 12),
        "LoRA rank on the attention projections (paper: 4); 0 fine-tunes every weight (digits)";
    lora_convs: bool = false, live: false, max: _,
        "LoRA on the resnets' 3x3 convolutions too, not only attention (digits)";
    guidance: f64 = 5.0, live: false, max: _,
        "classifier-free guidance scale of policy and reference (paper: 5.0; digits)";
    micro_batch: usize = 0, live: true, max: (1 << 20),
        "trajectories sampled and states updated at once; gradients accumulate over the batch (0: the whole batch)";
    dtype: FrozenDtype = FrozenDtype::Auto, live: false, max: _,
        "precision of the frozen networks: \"f32\", \"bf16\", \"f16\" or \"auto\" (bf16 on a GPU, f32 on the CPU); adapters stay f32 (sd15)";
    prompts: Option<String> = None, live: false, max: _,
        "prompt list file, one prompt per line (sd15; default: the 45 animals of DDPO, models/sd15/simple_animals.txt)";
    eval_prompts: Option<String> = None, live: false, max: _,
        "evaluation prompt list file, one per line (sd15; default: the training prompts, as the paper's aesthetic run)";
    lora_init: Option<String> = None, live: false, max: _,
        "a LoRA file (diffusers or kohya format, e.g. a run's lora_diffusers.safetensors) the adapters start from";
    queries: Vec<usize> = Vec::new(), live: false, max: _,
        "black-box rounds (Algorithm 2): oracle queries of each round, e.g. {128, 256, 512, 1024}; empty: the reward is known";
    round_epochs: usize = 10, live: false, max: (1 << 20),
        "epochs of Algorithm 1 in each black-box round (on the surrogate)";
    oracle: String = "gold".into(), live: false, max: _,
        "the task reward that plays the oracle (digits: \"gold\"); scripts see it only as rewards.oracle, counted and detached";
    oracle_noise: f64 = 0.1, live: false, max: _,
        "standard deviation of the noise on oracle labels (released code: 0.1)";
    oracle_budget: usize = 0, live: false, max: (1_u64 << 32),
        "total oracle queries allowed (0: the sum of queries); rewards.oracle counts against it";
    uncertainty: Uncertainty = Uncertainty::Bootstrap, live: false, max: _,
        "the surrogate's optimism: \"bootstrap\" (4 heads, max), \"ucb\" (C1 sqrt(phi' (Sigma + lambda I)^-1 phi)) or \"none\"";
    buffer_reset: bool = true, live: false, max: _,
        "empty the replay buffer at each black-box round (released code: true)";
    optimizer_reset: bool = true, live: false, max: _,
        "start each black-box round with fresh AdamW moments (released code: a new optimiser per round)";
    kl_reference: KlReference = KlReference::Pretrained, live: false, max: _,
        "the KL's reference: \"pretrained\" (SQDF) or \"previous\" (the policy at the start of the round: SEIKO)";
    surrogate: Map<String, Json> = Map::new(), live: false, max: _,
        "the surrogate's settings over its defaults, e.g. { c1 = 0.001, lambda = 1e-3, sigma = \"covariance\", heads = 4, combine = \"mean\", warm_start = false, epochs = 300 } (black-box)";
    params: Map<String, Json> = Map::new(), live: true, max: _,
        "a free table for the script's own values (reward weights, ...)";
}

pub fn is_live(key: &str) -> bool {
    KEYS.iter().any(|(k, live, _)| *k == key && *live)
}

impl RunConfig {
    /// Parses a script's `config` table strictly, applying `--set` overrides on top.
    /// `origin` (the script's path) names the file in every error.
    pub fn from_lua(
        table: Option<&LuaTable>,
        overrides: &[(String, Json)],
        origin: &str,
    ) -> Result<Self> {
        let mut given = match table {
            Some(t) => match lua_to_json(&Value::Table(t.clone()), "config")
                .map_err(|e| anyhow!("{origin}: {e}"))?
            {
                Json::Object(m) => m,
                Json::Array(a) if a.is_empty() => Map::new(),
                _ => bail!("{origin}: `config` must be a table of key = value"),
            },
            None => Map::new(),
        };
        for (k, v) in overrides {
            match k.split_once('.') {
                Some((table @ ("params" | "surrogate"), sub)) => {
                    let p = given
                        .entry(table)
                        .or_insert_with(|| Json::Object(Map::new()));
                    match p {
                        Json::Object(m) => {
                            m.insert(sub.to_string(), v.clone());
                        }
                        _ => bail!("--set {k}: config.{table} is not a table"),
                    }
                }
                _ => {
                    given.insert(k.clone(), v.clone());
                }
            }
        }
        let defaults = match serde_json::to_value(RunConfig::default())? {
            Json::Object(m) => m,
            _ => unreachable!(),
        };
        let mut merged = defaults.clone();
        for (k, v) in given {
            let Some(def) = defaults.get(&k) else {
                let known: Vec<&str> = KEYS.iter().map(|(k, _, _)| *k).collect();
                bail!(
                    "{origin}: unknown config key `{k}`; known keys: {}",
                    known.join(", ")
                )
            };
            let v = coerce_to(&element_rule(&k, def), v, &format!("config.{k}"))
                .map_err(|e| anyhow!("{origin}: {e}"))?;
            // Each key on its own over the defaults, so that a bad value (an enum's unknown
            // variant) is named by its key.
            let mut alone = defaults.clone();
            alone.insert(k.clone(), v.clone());
            serde_json::from_value::<RunConfig>(Json::Object(alone))
                .map_err(|e| anyhow!("{origin}: config.{k}: {e}"))?;
            merged.insert(k, v);
        }
        let cfg: RunConfig = serde_json::from_value(Json::Object(merged))
            .map_err(|e| anyhow!("{origin}: invalid config: {e}"))?;
        cfg.validate().map_err(|e| anyhow!("{origin}: {e}"))?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        let checks: [(bool, &str); 19] = [
            (
                self.surrogate.is_empty() || self.is_black_box(),
                "config.surrogate applies to black-box runs only (config.queries or config.oracle_budget)",
            ),
            (
                self.queries.is_empty() || self.round_epochs >= 1,
                "config.round_epochs must be at least 1",
            ),
            (
                self.eval_per_prompt >= 2,
                "config.eval_per_prompt must be at least 2 (diversity is pairwise)",
            ),
            (
                self.update_on == UpdateOn::States || self.capacity >= self.batch,
                "config.capacity must be at least config.batch when update_on = \"trajectories\" (the epoch's trajectories live in the buffer)",
            ),
            (self.x0_steps >= 1, "config.x0_steps must be at least 1"),
            (
                (1..1000).contains(&self.steps),
                "config.steps must be in 1..999 (the models have 1000 training timesteps)",
            ),
            (self.batch >= 1, "config.batch must be at least 1"),
            (self.capacity >= 1, "config.capacity must be at least 1"),
            (
                self.gamma > 0.0 && self.gamma <= 1.0,
                "config.gamma must be in (0, 1]",
            ),
            (
                self.alpha >= 0.0 && self.alpha.is_finite(),
                "config.alpha must be >= 0",
            ),
            (
                self.lr > 0.0 && self.lr.is_finite(),
                "config.lr must be > 0",
            ),
            (
                self.grad_clip >= 0.0 && self.grad_clip.is_finite(),
                "config.grad_clip must be >= 0 and finite",
            ),
            (
                self.weight_decay >= 0.0 && self.weight_decay.is_finite(),
                "config.weight_decay must be >= 0 and finite",
            ),
            (
                self.epochs >= 1,
                "config.epochs must be at least 1 (`sqdf eval` evaluates a model without training)",
            ),
            (
                self.oracle_noise >= 0.0 && self.oracle_noise.is_finite(),
                "config.oracle_noise must be >= 0 and finite",
            ),
            (
                self.updates_per_epoch >= 1,
                "config.updates_per_epoch must be at least 1",
            ),
            (
                (0.0..=1.0).contains(&self.eta),
                "config.eta must be in [0, 1]",
            ),
            (
                self.eval_samples >= 1,
                "config.eval_samples must be at least 1",
            ),
            (
                self.guidance >= 1.0 && self.guidance.is_finite(),
                "config.guidance must be >= 1 (1 is no guidance)",
            ),
        ];
        for (ok, msg) in checks {
            if !ok {
                bail!("{msg}")
            }
        }
        super::config_bounds::check_caps(self)
    }

    /// States (or trajectories) per micro-batch: `micro_batch`, or the whole batch for 0.
    pub fn micro_batch_size(&self) -> usize {
        if self.micro_batch == 0 {
            self.batch
        } else {
            self.micro_batch.min(self.batch)
        }
    }

    /// Whether the run is black-box (an oracle with a budget; Algorithm 2 when `queries` is
    /// set).
    pub fn is_black_box(&self) -> bool {
        !self.queries.is_empty() || self.oracle_budget > 0
    }

    /// The oracle's budget: `oracle_budget`, or the sum of the rounds' queries.
    pub fn budget(&self) -> usize {
        if self.oracle_budget > 0 {
            self.oracle_budget
        } else {
            self.queries.iter().sum()
        }
    }

    /// The dtype of frozen networks on `device` (`config.dtype`).
    pub fn frozen_dtype(&self, device: &candle_core::Device) -> Result<candle_core::DType> {
        use candle_core::DType;
        Ok(match self.dtype {
            FrozenDtype::Auto if device.is_cpu() => DType::F32,
            FrozenDtype::Auto | FrozenDtype::Bf16 => DType::BF16,
            FrozenDtype::F16 => DType::F16,
            FrozenDtype::F32 => DType::F32,
        })
    }

    /// Keys whose values differ between two configs, as (key, old, new).
    pub fn diff(&self, new: &RunConfig) -> Vec<(String, Json, Json)> {
        let (a, b) = (
            serde_json::to_value(self).unwrap_or(Json::Null),
            serde_json::to_value(new).unwrap_or(Json::Null),
        );
        KEYS.iter()
            .filter_map(|(k, _, _)| {
                let (x, y) = (a[*k].clone(), b[*k].clone());
                (x != y).then(|| (k.to_string(), x, y))
            })
            .collect()
    }

    /// This config as the Lua table hooks receive.
    pub fn to_lua(&self, lua: &Lua) -> LuaResult<LuaTable> {
        match json_to_lua(
            lua,
            &serde_json::to_value(self).map_err(LuaError::external)?,
        )? {
            Value::Table(t) => Ok(t),
            _ => unreachable!(),
        }
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
