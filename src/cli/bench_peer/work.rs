//! The six work items of the peer benchmark, on the digits networks of a script's run:
//! two forwards without gradient, two forward+backward passes, and the two halves of a
//! training epoch exactly as `sqdf bench` times them (`Trainer::collect`, `Trainer::update`).

use super::super::bench::machine;
use super::trainer;
use crate::models::class_conditional::ClassConditionalUNet;
use crate::models::Denoiser;
use crate::nn::lora::{LoraBuilder, LoraConfig};
use crate::rng::{randn, seeded, Rng};
use crate::run_log::RunLog;
use crate::tasks::digits::{process::load_unet, UNET_FILE};
use crate::tasks::{cond_tensor, weights_dir};
use crate::train::Trainer;
use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::Rng as _;
use serde_json::{json, Value as Json};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// The work items, in the order they run and are reported.
pub const ITEMS: [&str; 6] = [
    "forward",
    "guided_forward",
    "train_full",
    "train_lora",
    "sampling",
    "update",
];

/// The UNet of a run's weights as the forward and backward items use it: frozen, with
/// every weight trainable, and with attention adapters on the frozen base.
pub(super) struct Nets {
    /// The shipped UNet, frozen (plain tensors: candle records no graph through it).
    pub base: ClassConditionalUNet,
    /// The same weights as variables (every one trainable).
    pub full: ClassConditionalUNet,
    /// The frozen base with LoRA adapters (variables) on every attention projection,
    /// initialised as the trainer's policy (seeded A, B = 0).
    pub lora: ClassConditionalUNet,
}

impl Nets {
    /// Loads the UNet from `dir`; adapters of rank `rank` with alpha = rank (scale 1), as
    /// the digits task gives its policy.
    pub fn load(dir: &Path, rank: usize, seed: u64, device: &Device) -> Result<Self> {
        let path = dir.join(UNET_FILE);
        let (base, cfg, tensors) = load_unet(&path, device, "sqdf pretrain digits")?;
        let full_vars = VarMap::new();
        let full = ClassConditionalUNet::new(
            VarBuilder::from_varmap(&full_vars, crate::DTYPE, device),
            &cfg,
            None,
        )?;
        crate::tensor_io::set_vars(&full_vars, &tensors, &path)?;
        let full = full.with_trainable(full_vars.all_vars());
        let lora_vars = VarMap::new();
        let builder = LoraBuilder::new(
            LoraConfig {
                rank,
                alpha: rank as f64,
                convs: false,
            },
            VarBuilder::from_varmap(&lora_vars, crate::DTYPE, device),
        );
        let lora = ClassConditionalUNet::new(
            VarBuilder::from_tensors(tensors, crate::DTYPE, device),
            &cfg,
            Some(&builder),
        )?;
        crate::nn::init::seeded_init(&lora_vars, &mut seeded(seed ^ 0x10_4a))?;
        let lora = lora.with_trainable(lora_vars.all_vars());
        Ok(Self { base, full, lora })
    }
}

/// A batch of UNet inputs: states, their grid timesteps, conditions, and a noise target.
pub(super) struct Inputs {
    pub x: Tensor,
    /// Sampling indices of the states (0 = x_T).
    pub idx: Vec<usize>,
    pub t: Tensor,
    pub cond: Tensor,
    pub target: Tensor,
}

impl Inputs {
    /// `n` standard-normal states at random steps of `t`'s 50-step grid, conditions 0..9.
    pub fn random(t: &Trainer, n: usize, rng: &mut Rng) -> Result<Self> {
        let m = &t.models;
        let mut shape = vec![n];
        shape.extend(&m.state_shape);
        let x = randn(rng, shape.as_slice(), &m.device)?;
        let idx: Vec<usize> = (0..n)
            .map(|_| rng.random_range(0..m.sampler.steps()))
            .collect();
        let cond: Vec<u32> = (0..n).map(|_| rng.random_range(0..10)).collect();
        Ok(Self {
            target: randn(rng, shape.as_slice(), &m.device)?,
            t: m.sampler.timesteps_tensor(&idx, &m.device)?,
            cond: cond_tensor(&cond, &m.device)?,
            idx,
            x,
        })
    }
}

/// Everything the items run on.
struct Work {
    t: Trainer,
    nets: Nets,
    inputs: Inputs,
}

impl Work {
    /// ε-prediction loss (mean squared error against the target) and its backward.
    fn train(&self, net: &ClassConditionalUNet) -> Result<()> {
        let i = &self.inputs;
        let eps = net.eps(&i.x, &i.t, &i.cond)?;
        let loss = eps.sub(&i.target)?.sqr()?.mean_all()?;
        let grads = loss.backward()?;
        drop(grads);
        Ok(())
    }

    fn run(&mut self, item: &str) -> Result<()> {
        let i = &self.inputs;
        match item {
            "forward" => drop(self.nets.base.eps(&i.x, &i.t, &i.cond)?),
            // The run's reference: guided, conditional and null passes in one batch.
            "guided_forward" => drop(self.t.models.reference.eps(&i.x, &i.t, &i.cond)?),
            "train_full" => self.train(&self.nets.full)?,
            "train_lora" => self.train(&self.nets.lora)?,
            "sampling" => drop(self.t.collect()?),
            "update" => {
                if self.t.update()?.is_none() {
                    bail!("the timed update was skipped (non-finite loss)")
                }
            }
            other => bail!("unknown work item {other}"),
        }
        Ok(())
    }
}

/// Times each work item `repeats` times (in turn, after one warm-up run of each) with the
/// models and config of `script` at `batch`; returns the seconds per item and the machine.
pub fn time(script: &Path, batch: usize, repeats: usize, log: Arc<RunLog>) -> Result<Json> {
    let (t, dir) = trainer(script, batch, log.clone())?;
    let cfg = t.script.config.clone();
    let nets = Nets::load(
        &weights_dir(&cfg.task, cfg.weights.as_deref()),
        cfg.lora_rank,
        cfg.seed,
        &t.models.device,
    )?;
    let inputs = Inputs::random(&t, batch, &mut seeded(1))?;
    let mut w = Work { t, nets, inputs };
    let mut times: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for round in 0..=repeats {
        for item in ITEMS {
            let start = Instant::now();
            w.run(item)?;
            let s = start.elapsed().as_secs_f64();
            log.info(format!("round {round}: {item} {s:.3} s"));
            if round > 0 {
                times.entry(item).or_default().push(s);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(json!({
        "engine": "sqdf",
        "batch": batch,
        "steps": w.t.models.sampler.steps(),
        "seconds": times,
        "machine": machine(),
    }))
}
