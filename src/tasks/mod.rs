//! Tasks: a pretrained model to fine-tune with everything around it (reference copy,
//! consistency model, sampler, conditions, evaluation). `gmm2d` is the paper's toy.

pub mod ddpm_process;
pub mod digits;
pub mod gmm2d;
pub mod sd15;

use crate::diffusion::{DdimSampler, NoiseSchedule};
use crate::models::{ConsistencyModel, Denoiser};
use crate::rng::Rng;
use crate::run_log::RunLog;
use crate::script::{RunConfig, Script};
use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The models one fine-tuning run works with.
pub struct TaskModels {
    pub device: Device,
    pub schedule: NoiseSchedule,
    pub sampler: DdimSampler,
    /// Shape of one state x_t (without the batch dimension).
    pub state_shape: Vec<usize>,
    /// p_θ, the policy being fine-tuned; its variables are `policy_vars`.
    pub policy: Arc<dyn Denoiser>,
    pub policy_vars: VarMap,
    /// The same policy built on detached views of `policy_vars` (same storage, so it always
    /// has the current weights): sampling with it records no autograd graph. None: sample
    /// with `policy`.
    pub policy_no_grad: Option<Arc<dyn Denoiser>>,
    /// p', the frozen pretrained model: the KL reference.
    pub reference: Arc<dyn Denoiser>,
    /// f_ψ, the frozen consistency model, when the task has one.
    pub consistency: Option<ConsistencyModel>,
    /// Reward functions the task offers scripts, as the Lua global table `rewards`.
    pub rewards: Vec<(String, crate::script::TensorFn)>,
    /// Frozen features of a sample [B, d] for a learned surrogate (black-box runs), when
    /// the task has a feature network (the digits: the classifier's penultimate layer).
    pub features: Option<crate::script::TensorFn>,
    /// With `config.kl_reference = "previous"`: a frozen copy of the policy (same base,
    /// its own adapters `previous_vars`), set to the policy at each black-box round.
    pub previous: Option<(Arc<dyn Denoiser>, VarMap)>,
}

impl TaskModels {
    /// The policy for sampling trajectories and evaluations, where no gradient is taken.
    pub fn sampling_policy(&self) -> &Arc<dyn Denoiser> {
        self.policy_no_grad.as_ref().unwrap_or(&self.policy)
    }

    /// The model the KL is taken against: the previous round's policy when there is one,
    /// else the pretrained reference.
    pub fn kl_reference(&self) -> &Arc<dyn Denoiser> {
        match &self.previous {
            Some((p, _)) => p,
            None => &self.reference,
        }
    }
}

/// Options of `sqdf pretrain TASK` and `sqdf distill TASK`.
pub struct TrainCommand {
    /// Output folder (default `models/<task>`).
    pub out: Option<PathBuf>,
    /// Optimiser steps (default: the task's documented number).
    pub steps: Option<usize>,
    pub seed: u64,
    /// Weights to start from instead of a seeded initialisation (continues a pretraining;
    /// `pretrain digits` only).
    pub init: Option<PathBuf>,
    pub progress: bool,
    pub log: Arc<RunLog>,
    pub device: Device,
}

impl TrainCommand {
    pub fn out_dir(&self, task: &str) -> PathBuf {
        self.out
            .clone()
            .unwrap_or_else(|| Path::new("models").join(task))
    }

    pub fn bar(&self, len: usize, what: &str) -> indicatif::ProgressBar {
        self.log.progress(len as u64, what, "steps", self.progress)
    }
}

pub trait Task: Send + Sync {
    fn name(&self) -> &'static str;

    /// The models of a run with this config (steps, eta, x0, lora_rank, guidance), from the
    /// pretrained weights (and the consistency model) in `weights_dir`.
    fn build(&self, weights_dir: &Path, cfg: &RunConfig, device: &Device) -> Result<TaskModels>;

    /// `sqdf pretrain TASK`: trains the base model and writes its weights and card.
    fn pretrain(&self, cmd: &TrainCommand) -> Result<()>;

    /// `sqdf distill TASK`: distils the consistency model and writes its weights and card.
    fn distill(&self, cmd: &TrainCommand) -> Result<()>;

    /// The conditions (prompt ids) of n new trajectories.
    fn conditions(&self, n: usize, rng: &mut Rng) -> Vec<u32>;

    /// Task metrics of `policy`'s samples under the script's reward, and plots in `out_dir`
    /// named after `label` ("before", "after"). `along` asks for the smaller evaluation
    /// made at checkpoints along training (`config.evals`).
    #[allow(clippy::too_many_arguments)]
    fn evaluate(
        &self,
        models: &TaskModels,
        policy: &dyn Denoiser,
        script: &Script,
        out_dir: &Path,
        label: &str,
        log: &RunLog,
        along: bool,
    ) -> Result<serde_json::Value>;

    /// Whether the evaluation after training draws the very samples an evaluation along
    /// training would (same count, same noise): the run then takes its last along-training
    /// point from the evaluation after instead of sampling them twice.
    fn along_equals_after(&self, _cfg: &crate::script::RunConfig) -> bool {
        false
    }
}

/// `sqdf pretrain TARGET`: a task's base model, or one of its evaluation or reward networks.
pub fn pretrain(target: &str, cmd: &TrainCommand) -> Result<()> {
    match target {
        "gmm2d" => gmm2d::Gmm2d.pretrain(cmd),
        "digits" => digits::DigitsTask::default().pretrain(cmd),
        "digits-classifier" => digits::classifier::run(cmd),
        "digits-reward" => digits::reward::run(cmd),
        other => bail!(
            "unknown pretraining target `{other}`; known: {}",
            PRETRAIN_TARGETS.join(", ")
        ),
    }
}

pub const PRETRAIN_TARGETS: &[&str] = &["gmm2d", "digits", "digits-classifier", "digits-reward"];

pub fn by_name(name: &str) -> Result<Box<dyn Task>> {
    match name {
        "gmm2d" => Ok(Box::new(gmm2d::Gmm2d)),
        "digits" => Ok(Box::new(digits::DigitsTask::default())),
        "sd15" => Ok(Box::new(sd15::Sd15Task::default())),
        other => bail!("unknown task `{other}`; known tasks: gmm2d, digits, sd15"),
    }
}

/// Where a task's weights live: `config.weights` if set, else `models/<task>` under the
/// working directory, else under the source tree the binary was built from.
pub fn weights_dir(task: &str, configured: Option<&str>) -> PathBuf {
    if let Some(dir) = configured {
        return PathBuf::from(dir);
    }
    let local = Path::new("models").join(task);
    if local.is_dir() {
        return local;
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(task);
    if built.is_dir() {
        built
    } else {
        local
    }
}

/// Condition ids as the u32 [B] tensor denoisers take.
pub fn cond_tensor(cond: &[u32], device: &Device) -> candle_core::Result<Tensor> {
    Tensor::from_vec(cond.to_vec(), cond.len(), device)
}
