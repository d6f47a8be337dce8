//! A run's LoRA as files the rest of the ecosystem loads: after every epoch the adapters
//! are written beside the checkpoint in diffusers' format (`pipe.load_lora_weights(dir,
//! weight_name="lora_diffusers.safetensors")`) and in kohya's (A1111, ComfyUI); and
//! `config.lora_init` starts a run (or `sqdf eval --set lora_init=FILE`) from such a file.

use crate::lora_files::{expected_adapters, load_lora, save_kohya, save_peft};
use crate::nn::lora::LoraConfig;
use crate::script::RunConfig;
use crate::tasks::TaskModels;
use anyhow::{Context, Result};
use std::path::Path;

pub const DIFFUSERS_FILE: &str = "lora_diffusers.safetensors";
pub const KOHYA_FILE: &str = "lora_kohya.safetensors";

/// The adapters' config of a run: alpha = rank (scale 1), as the tasks build them.
pub fn lora_config(cfg: &RunConfig) -> LoraConfig {
    LoraConfig {
        rank: cfg.lora_rank,
        alpha: cfg.lora_rank as f64,
        convs: cfg.lora_convs,
    }
}

/// Whether the policy's trainable variables are LoRA adapters (and nothing else).
pub fn has_adapters(models: &TaskModels) -> bool {
    let vars = expected_adapters(&models.policy_vars);
    !vars.is_empty() && vars.iter().all(|(k, _)| k.contains(".lora_"))
}

/// Writes both files into `dir`; nothing for a policy without adapters.
pub fn save(dir: &Path, models: &TaskModels, cfg: &RunConfig) -> Result<()> {
    if !has_adapters(models) {
        return Ok(());
    }
    let lora = lora_config(cfg);
    save_peft(&dir.join(DIFFUSERS_FILE), &models.policy_vars, &lora)?;
    save_kohya(&dir.join(KOHYA_FILE), &models.policy_vars, &lora)
}

/// Sets the policy's adapters from a LoRA file of either format, restated with the run's
/// alpha; a file that does not fit names itself and the key at fault.
pub fn load(path: &Path, models: &TaskModels, cfg: &RunConfig) -> Result<()> {
    if !has_adapters(models) {
        anyhow::bail!(
            "config.lora_init = {}: this run's policy has no LoRA adapters (config.lora_rank = {})",
            path.display(),
            cfg.lora_rank
        );
    }
    let loaded = load_lora(
        path,
        &expected_adapters(&models.policy_vars),
        &models.device,
    )?
    .rescale_to(lora_config(cfg).alpha)?;
    crate::tensor_io::set_vars(&models.policy_vars, &loaded.tensors, path)
        .with_context(|| format!("loading the LoRA {}", path.display()))
}
