//! The digits model's diffusion process (DDPM's schedule, the trailing DDIM grid) and its
//! UNet weight file: what training, distillation and the task all build on.

use crate::models::class_conditional::{ClassConditionalConfig, ClassConditionalUNet};
pub use crate::tasks::ddpm_process::{distillation_grid, sampler, schedule};
use crate::tensor_io::{check_params, expected_params, read, WeightFile};
use anyhow::{anyhow, Context, Result};
use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;
use std::collections::HashMap;
use std::path::Path;

pub fn model_config(path: &Path, file: &WeightFile) -> Result<ClassConditionalConfig> {
    match file.metadata.get("config") {
        Some(c) => serde_json::from_str(c)
            .map_err(|e| anyhow!("{}: bad `config` metadata: {e}", path.display())),
        None => Ok(ClassConditionalConfig::digits()),
    }
}

/// A frozen class-conditional UNet from a checked weight file.
pub fn load_unet(
    path: &Path,
    device: &Device,
    command: &str,
) -> Result<(
    ClassConditionalUNet,
    ClassConditionalConfig,
    HashMap<String, Tensor>,
)> {
    let file = read(path, device).with_context(|| {
        format!(
            "the digits task needs {}; `{command}` makes it",
            path.display()
        )
    })?;
    let cfg = model_config(path, &file)?;
    check_params(
        path,
        &file,
        &expected_params(|vb| ClassConditionalUNet::new(vb, &cfg, None))?,
    )?;
    // Plain tensors: no variable among its weights.
    let net = ClassConditionalUNet::new(
        VarBuilder::from_tensors(file.tensors.clone(), crate::DTYPE, device),
        &cfg,
        None,
    )?
    .with_trainable(Vec::new());
    Ok((net, cfg, file.tensors))
}
