//! The `sd15` task: the policy (LoRA on the attention projections of SD-1.5's UNet), the
//! frozen reference (the same base weights without adapters), LCM-LoRA merged into a
//! frozen copy as f_ψ, and the rewards `aesthetic`, `clip_score`, `hps` and `pickscore`.

use super::layout::{self, Layout};
use super::parts::{self, Sd15Parts};
use super::prompt_unet::PromptUNet;
use super::{lcm, prompt_text, prompts};
use crate::diffusion::{BetaSchedule, DdimSampler, NoiseSchedule, Spacing};
use crate::models::guidance::Guided;
use crate::models::{Denoiser, UNet2DConditionModel, UNetConfig};
use crate::nn::lora::{LoraBuilder, LoraConfig};
use crate::rng::{seeded, Rng};
use crate::run_log::RunLog;
use crate::script::{RunConfig, Script, TensorFn, X0Estimator};
use crate::tasks::{Task, TaskModels, TrainCommand};
use crate::tensor_io::{check_params, expected_params, read};
use crate::text::ClipTokenizer;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::Rng as _;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

#[derive(Default)]
pub struct Sd15Task {
    /// The frozen networks, shared by the rewards and the evaluation (loaded by `build`).
    parts: OnceLock<Arc<Sd15Parts>>,
}

/// SD-1.5's noise schedule: scaled-linear β from 0.00085 to 0.012 over 1000 steps.
pub fn schedule() -> NoiseSchedule {
    NoiseSchedule::new(BetaSchedule::STABLE_DIFFUSION, 1000)
}

/// diffusers' DDIMScheduler as SD-1.5 ships it: leading spacing with offset 1 (981, 961,
/// ..., 1) and `set_alpha_to_one = false` (the last step ends at ᾱ_0, so its σ > 0).
pub fn sampler(schedule: &NoiseSchedule, steps: usize, eta: f64) -> DdimSampler {
    DdimSampler::new(
        schedule,
        steps,
        eta,
        Spacing::Leading { offset: 1 },
        schedule.alpha_bar(0),
    )
}

/// `rewards.<name>(x0, cond)`: a score of the image against its prompt.
fn prompt_reward(
    name: &'static str,
    parts: &Arc<Sd15Parts>,
    score: fn(&Sd15Parts, &Tensor, &Tensor) -> candle_core::Result<Tensor>,
) -> (String, TensorFn) {
    let parts = parts.clone();
    let f = move |x: &Tensor, cond: Option<&Tensor>| match cond {
        Some(cond) => score(&parts, x, cond),
        None => candle_core::bail!("rewards.{name}(x0, cond) needs the condition ids"),
    };
    (name.into(), Arc::new(f))
}

/// The UNet's config (unet/config.json, or SD-1.5's).
pub fn unet_config(layout: &Layout) -> Result<UNetConfig> {
    let cfg = layout::config_or(layout.config_of(layout::UNET), UNetConfig::sd15(), |s| {
        serde_json::from_str(s)
    })?;
    cfg.validate()
        .map_err(|e| anyhow::anyhow!("{}: {e}", layout.path(layout::UNET).display()))?;
    Ok(cfg)
}

/// The base UNet's tensors, checked against the config (a missing key or a wrong shape
/// names the file and the key), in `dtype` on `device`.
pub fn load_unet_tensors(
    layout: &Layout,
    cfg: &UNetConfig,
    device: &Device,
    dtype: DType,
) -> Result<HashMap<String, Tensor>> {
    let path = layout.path(layout::UNET);
    let file = read(&path, &Device::Cpu)?;
    let expected = expected_params(|vb| UNet2DConditionModel::new(vb, cfg, None))?;
    check_params(&path, &file, &expected)?;
    expected
        .iter()
        .map(|(k, _)| {
            Ok((
                k.clone(),
                file.tensors[k].to_dtype(dtype)?.to_device(device)?,
            ))
        })
        .collect()
}

impl Task for Sd15Task {
    fn name(&self) -> &'static str {
        "sd15"
    }

    fn build(&self, dir: &Path, run: &RunConfig, device: &Device) -> Result<TaskModels> {
        let layout = Layout::new(dir);
        layout.check()?;
        if run.lora_rank == 0 {
            bail!("the sd15 task trains LoRA adapters only: config.lora_rank must be at least 1 (paper: 4)");
        }
        let dtype = run.frozen_dtype(device)?;
        let prompt_file = run
            .prompts
            .as_ref()
            .map(Into::into)
            .unwrap_or_else(prompts::default_path);
        let mut prompts = prompts::load(&prompt_file)?;
        // Evaluation prompts after the training ones: ids n_train.. (Appendix D.3).
        let n_train = prompts.len();
        if let Some(eval_file) = &run.eval_prompts {
            prompts.extend(prompts::load(Path::new(eval_file))?);
        }
        let tokenizer =
            ClipTokenizer::from_files(&layout.path(layout::VOCAB), &layout.path(layout::MERGES))?;

        // Text states of every prompt and, last, of "" (classifier-free guidance's ∅).
        let text_cfg = parts::text_encoder_config(&layout)?;
        let text = crate::models::clip::load_text(
            &layout.path(layout::TEXT_ENCODER),
            &text_cfg,
            device,
            dtype,
            false,
        )?;
        let mut all = prompts.clone();
        all.push(String::new());
        let states = prompt_text::text_states(&text, &tokenizer, &all, device)?;
        drop(text);

        let cfg = unet_config(&layout)?;
        let base = load_unet_tensors(&layout, &cfg, device, dtype)?;
        let unet =
            |tensors: HashMap<String, Tensor>, lora: Option<&LoraBuilder>| -> Result<PromptUNet> {
                Ok(PromptUNet {
                    // Blocks without adapters recompute their activations in the
                    // backward (docs/sd15.md, "Memory"): all of the LCM copy, the policy's resnets.
                    unet: UNet2DConditionModel::new(
                        VarBuilder::from_tensors(tensors, dtype, device),
                        &cfg,
                        lora,
                    )?
                    .with_checkpointing(true),
                    prompts: states.clone(),
                })
            };
        let policy_vars = VarMap::new();
        let builder = LoraBuilder::new(
            LoraConfig {
                rank: run.lora_rank,
                // alpha = rank (scale 1), as diffusers' LoRA training scripts set it.
                alpha: run.lora_rank as f64,
                convs: run.lora_convs,
            },
            // Adapters train in f32 whatever the frozen dtype (nn::lora::adapter).
            VarBuilder::from_varmap(&policy_vars, DType::F32, device),
        );
        let policy = unet(base.clone(), Some(&builder))?;
        crate::nn::init::seeded_init(&policy_vars, &mut seeded(run.seed ^ 0x10_4a))?;
        let reference = unet(base.clone(), None)?;
        let null = reference.null_id()?;
        let s = schedule();
        let consistency = if run.x0 == X0Estimator::Consistency {
            let lcm_path = layout.path(layout::LCM_LORA);
            let merged = crate::lora_files::merge::merge_kohya_file(&lcm_path, base.clone())
                .with_context(|| format!("merging the LCM-LoRA {}", lcm_path.display()))?;
            Some(lcm::consistency(unet(merged.tensors, None)?, s.clone()))
        } else {
            None
        };
        drop(base);

        let parts = match self.parts.get() {
            Some(p) => p.clone(),
            None => {
                let p = Arc::new(Sd15Parts::load(
                    &layout,
                    prompts.clone(),
                    n_train,
                    &tokenizer,
                    device,
                    dtype,
                )?);
                let _ = self.parts.set(p.clone());
                p
            }
        };
        let a = parts.clone();
        let rewards: Vec<(String, TensorFn)> = vec![
            (
                "aesthetic".into(),
                Arc::new(move |x: &Tensor, _: Option<&Tensor>| a.aesthetic(x)),
            ),
            prompt_reward("clip_score", &parts, Sd15Parts::clip_score),
            prompt_reward("hps", &parts, Sd15Parts::hps),
            prompt_reward("pickscore", &parts, Sd15Parts::pickscore),
        ];
        let guided = |net: PromptUNet| -> Arc<dyn Denoiser> {
            Arc::new(Guided {
                inner: Arc::new(net),
                scale: run.guidance,
                null,
            })
        };
        let latent = cfg.sample_size;
        Ok(TaskModels {
            device: device.clone(),
            sampler: sampler(&s, run.steps, run.eta),
            schedule: s,
            state_shape: vec![cfg.in_channels, latent, latent],
            policy: guided(policy),
            policy_vars,
            policy_no_grad: None,
            reference: guided(reference),
            consistency,
            rewards,
            features: None,
            previous: None,
        })
    }

    fn pretrain(&self, _: &TrainCommand) -> Result<()> {
        bail!("sd15 is not pretrained here: it loads the public SD-1.5 weights (docs/sd15.md)")
    }

    fn distill(&self, _: &TrainCommand) -> Result<()> {
        bail!("sd15's consistency model is the public LCM-LoRA for SD-1.5, not distilled here")
    }

    fn conditions(&self, n: usize, rng: &mut Rng) -> Vec<u32> {
        let p = self.parts.get().map_or(1, |p| p.train_prompts) as u32;
        (0..n).map(|_| rng.random_range(0..p)).collect()
    }

    fn evaluate(
        &self,
        models: &TaskModels,
        policy: &dyn Denoiser,
        script: &Script,
        out_dir: &Path,
        label: &str,
        log: &RunLog,
        along: bool,
    ) -> Result<serde_json::Value> {
        let parts = self
            .parts
            .get()
            .context("the sd15 task evaluates after `build`")?;
        super::evaluate::evaluate(models, parts, policy, script, out_dir, label, log, along)
    }
}
