//! `sqdf export`: the digits UNet (`models/digits/unet.safetensors`) as a diffusers folder,
//! so that diffusers' own `UNet2DConditionModel.from_pretrained(OUT, subfolder="unet")`
//! and `DDIMScheduler.from_pretrained(OUT, subfolder="scheduler")` run it:
//!
//! - `unet/config.json` and `unet/diffusion_pytorch_model.safetensors`: the network, in the
//!   format diffusers 0.42 `save_pretrained` writes (src/tasks/sd15/hf_config.rs), f32;
//! - `prompt_embeds.safetensors`: `prompt_embeds` [11, tokens, 32], the learned context of
//!   each prompt (digits 0..9, then the null prompt 10), which diffusers' UNet takes as
//!   `encoder_hidden_states`, with the same id as `class_labels`;
//! - `scheduler/scheduler_config.json`: DDIM on DDPM's linear β, trailing spacing, the last
//!   step ending at ᾱ_0, as sqdf samples the model (src/tasks/digits/process.rs);
//! - `README.md`: how to call it.
//!
//! `tests/it/parity.rs` checks that the exported folder matches what diffusers writes and that
//! the network gives diffusers' ε.

use crate::models::class_conditional::ClassConditionalUNet;
use crate::tasks::digits::process;
use crate::tasks::sd15::hf_config;
use crate::tensor_io::{expected_params, write_atomic, write_file_atomic};
use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The key of the prompts' context in the digits weight file.
const PROMPT_KEY: &str = "prompt_embeddings";

#[derive(Args)]
pub struct ExportArgs {
    /// The folder to write (created; files in it are replaced).
    pub out: PathBuf,
    /// The digits UNet weight file.
    #[arg(long, default_value = "models/digits/unet.safetensors")]
    pub model: PathBuf,
}

pub fn run(args: ExportArgs) -> Result<()> {
    export_digits(&args.model, &args.out)?;
    println!("{}", args.out.display());
    Ok(())
}

/// Writes the digits UNet at `model` as a diffusers folder `out`.
pub fn export_digits(model: &Path, out: &Path) -> Result<()> {
    let (_, cfg, tensors) = process::load_unet(model, &Device::Cpu, "sqdf pretrain digits")?;
    let expected = expected_params(|vb| ClassConditionalUNet::new(vb, &cfg, None))?;
    let mut unet: BTreeMap<String, Tensor> = BTreeMap::new();
    for (k, _) in expected.iter().filter(|(k, _)| k != PROMPT_KEY) {
        unet.insert(k.clone(), tensors[k].to_dtype(DType::F32)?);
    }
    let prompts = tensors[PROMPT_KEY].to_dtype(DType::F32)?;

    let json = |v: &serde_json::Value| serde_json::to_string_pretty(v).expect("JSON values print");
    std::fs::create_dir_all(out.join("unet"))?;
    std::fs::create_dir_all(out.join("scheduler"))?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    write_atomic(
        &out.join("unet/diffusion_pytorch_model.safetensors"),
        &unet,
        meta.clone(),
    )?;
    write_file_atomic(
        &out.join("unet/config.json"),
        json(&hf_config::unet(&cfg.unet)),
    )?;
    write_atomic(
        &out.join("prompt_embeds.safetensors"),
        &BTreeMap::from([("prompt_embeds".to_string(), prompts)]),
        meta,
    )?;
    let s = process::schedule();
    write_file_atomic(
        &out.join("scheduler/scheduler_config.json"),
        json(&scheduler_config(s.train_steps())),
    )?;
    write_file_atomic(&out.join("README.md"), readme(model))
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

/// diffusers' `DDIMScheduler` for the digits process: DDPM's linear β (1e-4 to 0.02),
/// trailing spacing, `set_alpha_to_one = false` (the last step ends at ᾱ_0).
fn scheduler_config(train_steps: usize) -> serde_json::Value {
    serde_json::json!({
        "_class_name": "DDIMScheduler",
        "_diffusers_version": hf_config::DIFFUSERS_VERSION,
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "beta_start": 0.0001,
        "clip_sample": false,
        "clip_sample_range": 1.0,
        "dynamic_thresholding_ratio": 0.995,
        "num_train_timesteps": train_steps,
        "prediction_type": "epsilon",
        "rescale_betas_zero_snr": false,
        "sample_max_value": 1.0,
        "set_alpha_to_one": false,
        "steps_offset": 0,
        "thresholding": false,
        "timestep_spacing": "trailing",
        "trained_betas": null,
    })
}

fn readme(model: &Path) -> String {
    format!(
        r#"# sqdf digits UNet, diffusers layout

Exported by `sqdf export` from `{}`: a class-conditional UNet2DConditionModel in pixel
space (28x28, one channel, values in [-1, 1]). Prompt `c` is a digit 0..9, or 10 for the
null prompt of classifier-free guidance; it enters twice, as the context
`prompt_embeds[c]` (cross-attention) and as `class_labels=c`.

```python
import torch
from diffusers import DDIMScheduler, UNet2DConditionModel
from safetensors.torch import load_file

unet = UNet2DConditionModel.from_pretrained(OUT, subfolder="unet")
scheduler = DDIMScheduler.from_pretrained(OUT, subfolder="scheduler")
prompts = load_file(f"{{OUT}}/prompt_embeds.safetensors")["prompt_embeds"]
c = torch.tensor([3])
x = torch.randn(1, 1, 28, 28)
scheduler.set_timesteps(50)
for t in scheduler.timesteps:
    eps = unet(x, t, encoder_hidden_states=prompts[c], class_labels=c).sample
    x = scheduler.step(eps, t, x, eta=1.0).prev_sample
```

sqdf samples with guidance 5 (eps = eps_null + 5 (eps_c - eps_null)) on the same 50-step
trailing grid; see docs/sd15.md in the sqdf repository for where its DDIM step and
diffusers' can differ (step counts that do not divide 1000).
"#,
        model.display()
    )
}
