//! `sqdf eval`: the task's evaluation of the pretrained model or of a run's checkpoint,
//! or of a LoRA file (`--set lora_init=FILE`), under a script's reward and config (the
//! same code a run uses for eval.json).

use super::checkpoint;
use crate::rng;
use crate::run_log::RunLog;
use crate::script::{SandboxOptions, Script, TensorEnv};
use crate::tasks;
use crate::tensor_io::set_vars;
use anyhow::{anyhow, Context, Result};
use serde_json::Value as Json;
use std::path::Path;
use std::sync::Arc;

pub fn evaluate(
    script: &Path,
    checkpoint: Option<&Path>,
    overrides: &[(String, Json)],
    out: &Path,
    log: Arc<RunLog>,
) -> Result<Json> {
    let device = crate::device::default_device();
    let dir = script.parent().map(Path::to_path_buf).unwrap_or_default();
    let env = TensorEnv {
        device: device.clone(),
        rng: rng::shared(0),
    };
    let s = Script::load(
        script,
        overrides,
        &SandboxOptions::new(&dir, log.clone(), env),
    )?;
    let cfg = &s.config;
    let task = tasks::by_name(&cfg.task).map_err(|e| anyhow!("{}: {e}", script.display()))?;
    let weights = tasks::weights_dir(&cfg.task, cfg.weights.as_deref());
    let models = task.build(&weights, cfg, &device)?;
    s.provide_rewards(&models.rewards)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let (label, policy) = match checkpoint {
        Some(path) => {
            let loaded = checkpoint::load(path)?;
            set_vars(&models.policy_vars, &loaded.policy_tensors(), path)?;
            ("checkpoint", models.policy.clone())
        }
        // A LoRA file (`--set lora_init=FILE`, either format): sample from it.
        None => match &cfg.lora_init {
            Some(file) => {
                super::lora_export::load(Path::new(file), &models, cfg)?;
                ("lora", models.policy.clone())
            }
            None => ("pretrained", models.reference.clone()),
        },
    };
    let v = task.evaluate(&models, policy.as_ref(), &s, out, label, &log, false)?;
    std::fs::write(out.join("eval.json"), serde_json::to_string_pretty(&v)?)?;
    Ok(v)
}
