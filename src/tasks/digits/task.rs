//! The `digits` task: build the policy (LoRA on the pretrained UNet, or every weight), the
//! frozen reference, the consistency model and the rewards offered to scripts; evaluate.

use super::eval_cache::{self, CacheKey};
use super::evaluate::{evaluate, real_features, sample_all};
use super::process::{distillation_grid, load_unet, sampler, schedule};
use super::{classifier, data, reward, CONSISTENCY_FILE, EVAL_SEED, UNET_FILE};
use crate::diffusion::consistency::BoundaryScalings;
use crate::models::class_conditional::{ClassConditionalUNet, NULL_PROMPT};
use crate::models::classifier::Classifier;
use crate::models::guidance::Guided;
use crate::models::{ConsistencyModel, Denoiser};
use crate::nn::lora::{LoraBuilder, LoraConfig};
use crate::rewards::gold::boldness;
use crate::rng::{seeded, Rng};
use crate::run_log::RunLog;
use crate::script::{RunConfig, Script, TensorFn, X0Estimator};
use crate::tasks::{Task, TaskModels, TrainCommand};
use crate::tensor_io::read;
use anyhow::{Context, Result};
use candle_core::{Device, Module, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::Rng as _;
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// The classifier and the held-out features the evaluation needs, loaded once.
struct EvalNets {
    classifier: Classifier,
    real: Tensor,
}

#[derive(Default)]
pub struct DigitsTask {
    eval: OnceLock<EvalNets>,
}

pub fn load_consistency(dir: &Path, device: &Device) -> Result<ConsistencyModel> {
    let path = dir.join(CONSISTENCY_FILE);
    let (net, _, _) = load_unet(&path, device, "sqdf distill digits")?;
    let file_meta = read(&path, device)?.metadata;
    let scalings = match file_meta.get("scalings") {
        Some(s) => serde_json::from_str(s)?,
        None => BoundaryScalings::default(),
    };
    Ok(ConsistencyModel {
        net: Arc::new(net),
        scalings,
        schedule: schedule(),
        grid: distillation_grid(),
    })
}

/// The classifier's penultimate features of samples, frozen: the surrogate's input in
/// black-box runs (the paper's surrogate reads CLIP features).
fn features(dir: &Path, device: &Device) -> Result<TensorFn> {
    let c = Arc::new(classifier::load(dir, device)?);
    Ok(Arc::new(move |x: &Tensor, _: Option<&Tensor>| {
        Ok(c.forward_all(x)?.features)
    }))
}

/// Whether two trait objects are the same model (the reference evaluated as itself).
fn same(a: &dyn Denoiser, b: &dyn Denoiser) -> bool {
    std::ptr::eq(
        a as *const dyn Denoiser as *const u8,
        b as *const dyn Denoiser as *const u8,
    )
}

impl Task for DigitsTask {
    fn name(&self) -> &'static str {
        "digits"
    }

    fn build(&self, dir: &Path, run: &RunConfig, device: &Device) -> Result<TaskModels> {
        let path = dir.join(UNET_FILE);
        let (reference, cfg, base) = load_unet(&path, device, "sqdf pretrain digits")?;
        let policy_vars = VarMap::new();
        let lora = LoraConfig {
            rank: run.lora_rank,
            // alpha = rank (scale 1), as diffusers' LoRA training scripts set it.
            alpha: run.lora_rank as f64,
            convs: run.lora_convs,
        };
        // The UNet with adapters read from `adapters` (a VarMap's variables, or detached views).
        let with_adapters = |adapters: VarBuilder| {
            let builder = LoraBuilder::new(lora.clone(), adapters);
            ClassConditionalUNet::new(
                VarBuilder::from_tensors(base.clone(), crate::DTYPE, device),
                &cfg,
                Some(&builder),
            )
        };
        // SEIKO's KL reference: the policy as it was at the start of the black-box round.
        let previous_vars = VarMap::new();
        let previous = if run.kl_reference == crate::script::config::KlReference::Previous
            && run.lora_rank > 0
        {
            Some(
                with_adapters(VarBuilder::from_varmap(
                    &previous_vars,
                    crate::DTYPE,
                    device,
                ))?
                .with_trainable(previous_vars.all_vars()),
            )
        } else {
            None
        };
        let policy = if run.lora_rank > 0 {
            let net = with_adapters(VarBuilder::from_varmap(&policy_vars, crate::DTYPE, device))?;
            // Adapters start from the run's seed (candle's own init is unseeded); B stays 0.
            crate::nn::init::seeded_init(&policy_vars, &mut seeded(run.seed ^ 0x10_4a))?;
            net
        } else {
            let net = ClassConditionalUNet::new(
                VarBuilder::from_varmap(&policy_vars, crate::DTYPE, device),
                &cfg,
                None,
            )?;
            crate::tensor_io::set_vars(&policy_vars, &base, &path)?;
            net
        }
        .with_trainable(policy_vars.all_vars());
        // The policy again on detached views of its variables, for sampling without a graph.
        let detached = policy_vars
            .data()
            .lock()
            .map_err(|_| anyhow::anyhow!("the policy's variables are poisoned"))?
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .collect::<std::collections::HashMap<_, _>>();
        let detached = VarBuilder::from_tensors(detached, crate::DTYPE, device);
        let policy_no_grad = if run.lora_rank > 0 {
            with_adapters(detached)?
        } else {
            ClassConditionalUNet::new(detached, &cfg, None)?
        }
        .with_trainable(Vec::new());
        let guided = |net: ClassConditionalUNet| -> Arc<dyn Denoiser> {
            Arc::new(Guided {
                inner: Arc::new(net),
                scale: run.guidance,
                null: NULL_PROMPT,
            })
        };
        let consistency = if run.x0 == X0Estimator::Consistency
            || dir.join(CONSISTENCY_FILE).is_file()
        {
            Some(load_consistency(dir, device).context("config.x0 = \"consistency\" needs the consistency model; set config.x0 = \"tweedie\" to run without it")?)
        } else {
            None
        };
        let learned = Arc::new(reward::load(dir, device)?);
        let rewards: Vec<(String, TensorFn)> = vec![
            (
                "learned".into(),
                Arc::new(move |x: &Tensor, _: Option<&Tensor>| learned.forward(x)),
            ),
            (
                "gold".into(),
                Arc::new(|x: &Tensor, _: Option<&Tensor>| boldness(x)),
            ),
        ];
        let s = schedule();
        Ok(TaskModels {
            device: device.clone(),
            sampler: sampler(&s, run.steps, run.eta),
            schedule: s,
            state_shape: vec![
                cfg.unet.in_channels,
                cfg.unet.sample_size,
                cfg.unet.sample_size,
            ],
            policy: guided(policy),
            policy_vars,
            policy_no_grad: Some(guided(policy_no_grad)),
            reference: guided(reference),
            consistency,
            rewards,
            features: Some(features(dir, device)?),
            previous: previous.map(|p| (guided(p), previous_vars)),
        })
    }

    fn pretrain(&self, cmd: &TrainCommand) -> Result<()> {
        super::unet::run(cmd)
    }

    fn distill(&self, cmd: &TrainCommand) -> Result<()> {
        super::distill::run(cmd)
    }

    fn conditions(&self, n: usize, rng: &mut Rng) -> Vec<u32> {
        (0..n).map(|_| rng.random_range(0..10)).collect()
    }

    /// Both use the fixed evaluation seed; along training the count is PER_PROMPT_ALONG.
    fn along_equals_after(&self, cfg: &crate::script::RunConfig) -> bool {
        cfg.eval_per_prompt == super::evaluate::PER_PROMPT_ALONG
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
        let per_prompt = if along {
            super::evaluate::PER_PROMPT_ALONG
        } else {
            script.config.eval_per_prompt
        };

        let dir = crate::tasks::weights_dir("digits", script.config.weights.as_deref());
        let nets = match self.eval.get() {
            Some(n) => n,
            None => {
                let classifier = classifier::load(&dir, &models.device)?;
                let (_, held) = data(&models.device)?;
                let real = real_features(&classifier, &held.images)?;
                let _ = self.eval.set(EvalNets { classifier, real });
                self.eval.get().expect("just set")
            }
        };
        let is_reference = same(policy, models.reference.as_ref());
        let cfg = &script.config;
        // Fixed evaluation noise whatever the run's seed: across seeds, the spread of a
        // metric is the training's, and every seed reuses the pretrained model's samples.
        let seed = EVAL_SEED;
        let key = CacheKey {
            protocol: eval_cache::PROTOCOL,
            unet: eval_cache::file_fingerprint(&dir.join(UNET_FILE))?,
            steps: cfg.steps,
            eta: cfg.eta,
            guidance: cfg.guidance,
            seed,
        };
        let cached = if is_reference {
            eval_cache::load(&dir, &key, per_prompt, &models.device)
        } else {
            None
        };
        let (samples, kl) = match cached {
            Some(samples) => {
                log.info(format!(
                    "{label}: the pretrained model's samples from {}",
                    dir.join(eval_cache::FILE).display()
                ));
                (samples, Some(0.0))
            }
            None => {
                // Along training the KL is left out (None, NaN in the JSON): it doubles the
                // cost, and Fig. 3 does not plot it; eval.json's `after` has it.
                let (samples, kl) =
                    sample_all(models, policy, !is_reference && !along, seed, per_prompt)?;
                let kl = (is_reference || !along).then_some(kl);
                // `sqdf eval` of the pretrained model (label "pretrained") refreshes the cache,
                // as `sqdf pretrain digits` writes it.
                if is_reference && label == "pretrained" {
                    eval_cache::save(&dir, &key, per_prompt, &samples)?;
                    log.info(format!(
                        "saved the pretrained samples as {}",
                        dir.join(eval_cache::FILE).display()
                    ));
                }
                (samples, kl)
            }
        };
        let m = evaluate(
            &samples,
            kl,
            script,
            &nets.classifier,
            &nets.real,
            out_dir,
            label,
            log,
        )?;
        Ok(serde_json::to_value(m)?)
    }
}
