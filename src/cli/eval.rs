//! `sqdf eval`: the task's evaluation of the pretrained model or of a run's checkpoint,
//! or of a LoRA file (`--set lora_init=FILE`), under a script's reward and config (the
//! same code a run uses for eval.json). A black-box script is evaluated under the run's
//! surrogate, refitted from the checkpoint's labels.

use crate::blackbox::rounds::Rounds;
use crate::rng;
use crate::run_log::RunLog;
use crate::script::{SandboxOptions, Script, TensorEnv};
use crate::tasks::{self, TaskModels};
use crate::tensor_io::set_vars;
use crate::train::checkpoint;
use anyhow::{anyhow, bail, Context, Result};
use candle_core::Tensor;
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
    let mut models = task.build(&weights, cfg, &device)?;
    let loaded = checkpoint
        .map(|path| checkpoint::load(path).map(|l| (path, l)))
        .transpose()?;
    if let Some((path, _)) = loaded.as_ref().filter(|(_, l)| !l.checked) {
        log.warn(format!(
            "{} has no checksums (written by an sqdf before checkpoints carried them): evaluating without verifying it",
            path.display()
        ));
    }
    // A black-box script's reward is the surrogate: a black-box checkpoint's own (built
    // from the run's config, refitted on its labels), or an unfitted one (reward 0, as a
    // run's "before") under the script's config without one. A script with a known reward
    // never calls the surrogate, so nothing is refitted for it.
    let surrogate = match &loaded {
        _ if !cfg.is_black_box() => None,
        Some((path, l)) if l.state.blackbox.is_some() => Some(run_surrogate(l, &models, path)?),
        Some((path, _)) => bail!(
            "{}: the script is a black-box one (config.queries) but the checkpoint has no black-box state, so there is no surrogate to evaluate under",
            path.display()
        ),
        _ => Rounds::new(cfg, &models).map_err(|e| anyhow!("{}: {e:#}", script.display()))?,
    };
    if let Some(r) = &surrogate {
        r.install_rewards(&mut models.rewards);
    }
    s.provide_rewards(&models.rewards)?;
    // The reward hook once on a single state, so a broken one fails before the sampling.
    let probe = Tensor::zeros(
        [vec![1], models.state_shape.clone()].concat(),
        crate::DTYPE,
        &device,
    )?;
    let cond = tasks::cond_tensor(&task.conditions(1, &mut rng::seeded(0)), &device)?;
    s.reward(&probe, &cond)?;
    // The hooks' random stream starts afresh, so a noisy reward scores as it did unprobed.
    s.set_tensor_env(TensorEnv {
        device: device.clone(),
        rng: rng::shared(0),
    });
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let (label, policy) = match &loaded {
        Some((path, loaded)) => {
            set_vars(&models.policy_vars, &loaded.policy_tensors(), path)?;
            ("checkpoint", models.sampling_policy().clone())
        }
        // A LoRA file (`--set lora_init=FILE`, either format): sample from it.
        None => match &cfg.lora_init {
            Some(file) => {
                crate::train::lora_export::load(Path::new(file), &models, cfg)?;
                ("lora", models.sampling_policy().clone())
            }
            None => ("pretrained", models.reference.clone()),
        },
    };
    let v = task.evaluate(&models, policy.as_ref(), &s, out, label, &log, false)?;
    crate::tensor_io::write_file_atomic(&out.join("eval.json"), serde_json::to_string_pretty(&v)?)?;
    Ok(v)
}

/// The surrogate of a black-box run's checkpoint, as the run had it: built from the run's
/// config (its uncertainty and `surrogate` table), each round's fit replayed on its labels
/// with its seed.
fn run_surrogate(loaded: &checkpoint::Loaded, models: &TaskModels, path: &Path) -> Result<Rounds> {
    let (cfg, bb) = (&loaded.state.config, loaded.state.blackbox.as_ref());
    let refit = || -> Result<Rounds> {
        let mut rounds = Rounds::new(cfg, models)?.context("the run's config is not black-box")?;
        rounds.restore(
            bb.context("no black-box state")?,
            loaded.get("blackbox.features", path)?,
            loaded.get("blackbox.labels", path)?,
            &cfg.queries,
            cfg.seed,
        )?;
        Ok(rounds)
    };
    refit().with_context(|| format!("{}: refitting the run's surrogate", path.display()))
}
