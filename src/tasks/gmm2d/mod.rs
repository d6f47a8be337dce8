//! `gmm2d`: the paper's 2-D toy (Appendix D.2.1, Fig. 2). An MLP denoiser pretrained on
//! nine Gaussians, a consistency model distilled from it, and an evaluation against the
//! closed-form KL-regularised optimum of a linear reward.

mod distill;
mod linear_reward;
mod pretrain;

use super::{cond_tensor, Task, TaskModels, TrainCommand};
use crate::data::GaussianMixture;
use crate::diffusion::consistency::BoundaryScalings;
use crate::eval::scatter::{scatter_png, Panel};
use crate::eval::toy::toy_metrics;
use crate::models::{ConsistencyModel, Denoiser, ToyMlp, ToyMlpConfig};
use crate::rng::{seeded, Rng};
use crate::run_log::RunLog;
use crate::script::{RunConfig, Script, X0Estimator};
use crate::tensor_io::{self, build_frozen, build_trainable, WeightFile};
use crate::train::rollout;
use anyhow::{anyhow, Context, Result};
use candle_core::Device;
use serde_json::json;
use std::path::Path;
use std::sync::Arc;

pub use linear_reward::probe_linear;

pub const DENOISER_FILE: &str = "denoiser.safetensors";
pub const CONSISTENCY_FILE: &str = "consistency.safetensors";
/// Evaluation noise is seeded apart from training noise: before and after see the same x_T.
pub(crate) const EVAL_SEED: u64 = 0xe7a1;

pub use crate::tasks::ddpm_process::{distillation_grid, sampler, schedule};

pub struct Gmm2d;

fn model_config(path: &Path, file: &WeightFile) -> Result<ToyMlpConfig> {
    match file.metadata.get("config") {
        Some(c) => serde_json::from_str(c)
            .map_err(|e| anyhow!("{}: bad `config` metadata: {e}", path.display())),
        None => Ok(ToyMlpConfig::default()),
    }
}

/// The toy's weight files, read with a hint at the command that makes them.
fn read_weights(path: &Path, device: &Device, command: &str) -> Result<WeightFile> {
    tensor_io::read(path, device).with_context(|| {
        format!(
            "the gmm2d task needs {}; `{command}` makes it",
            path.display()
        )
    })
}

pub fn load_frozen(path: &Path, device: &Device, command: &str) -> Result<(ToyMlp, WeightFile)> {
    let file = read_weights(path, device, command)?;
    let cfg = model_config(path, &file)?;
    Ok((
        build_frozen(path, &file, device, |vb| ToyMlp::new(vb, &cfg))?,
        file,
    ))
}

pub fn load_consistency(dir: &Path, device: &Device) -> Result<ConsistencyModel> {
    let path = dir.join(CONSISTENCY_FILE);
    let (net, file) = load_frozen(&path, device, "sqdf distill gmm2d")?;
    let scalings = match file.metadata.get("scalings") {
        Some(s) => serde_json::from_str(s)
            .map_err(|e| anyhow!("{}: bad `scalings` metadata: {e}", path.display()))?,
        None => BoundaryScalings::default(),
    };
    Ok(ConsistencyModel {
        net: Arc::new(net),
        scalings,
        schedule: schedule(),
        grid: distillation_grid(),
    })
}

impl Task for Gmm2d {
    fn name(&self) -> &'static str {
        "gmm2d"
    }

    fn build(&self, dir: &Path, run: &RunConfig, device: &Device) -> Result<TaskModels> {
        let need_consistency = run.x0 == X0Estimator::Consistency;
        let path = dir.join(DENOISER_FILE);
        let file = read_weights(&path, device, "sqdf pretrain gmm2d")?;
        let cfg = model_config(&path, &file)?;
        let (policy, policy_vars) =
            build_trainable(&path, &file, device, |vb| ToyMlp::new(vb, &cfg))?;
        let reference = build_frozen(&path, &file, device, |vb| ToyMlp::new(vb, &cfg))?;
        let consistency = if need_consistency || dir.join(CONSISTENCY_FILE).is_file() {
            Some(load_consistency(dir, device).context("config.x0 = \"consistency\" needs the consistency model; set config.x0 = \"tweedie\" to run without it")?)
        } else {
            None
        };
        let s = schedule();
        Ok(TaskModels {
            device: device.clone(),
            sampler: sampler(&s, run.steps, run.eta),
            schedule: s,
            state_shape: vec![cfg.data_dim],
            policy: Arc::new(policy),
            policy_vars,
            policy_no_grad: None,
            reference: Arc::new(reference),
            consistency,
            rewards: Vec::new(),
            features: None,
            previous: None,
        })
    }

    fn pretrain(&self, cmd: &TrainCommand) -> Result<()> {
        pretrain::run(cmd)
    }

    fn distill(&self, cmd: &TrainCommand) -> Result<()> {
        distill::run(cmd)
    }

    fn conditions(&self, n: usize, _: &mut Rng) -> Vec<u32> {
        vec![0; n]
    }

    fn evaluate(
        &self,
        models: &TaskModels,
        policy: &dyn Denoiser,
        script: &Script,
        out_dir: &Path,
        label: &str,
        log: &RunLog,
        _along: bool,
    ) -> Result<serde_json::Value> {
        let cfg = &script.config;
        let mut rng = seeded(cfg.seed.wrapping_add(EVAL_SEED));
        let cond = cond_tensor(&vec![0; cfg.eval_samples], &models.device)?;
        let (x0, _) = rollout::sample(
            policy,
            &models.sampler,
            &models.state_shape,
            &cond,
            &mut rng,
            false,
        )?;
        let rewards: Vec<f64> = script
            .reward(&x0, &cond)?
            .to_vec1::<f32>()?
            .iter()
            .map(|&r| r as f64)
            .collect();
        let points: Vec<[f64; 2]> = x0
            .to_vec2::<f32>()?
            .iter()
            .map(|p| [p[0] as f64, p[1] as f64])
            .collect();
        let grid = GaussianMixture::paper_grid();
        let w = probe_linear(script, &models.device)?;
        let optimum = match w {
            Some(w) if cfg.alpha > 0.0 => Some(grid.tilted(w, cfg.alpha)),
            _ => None,
        };
        let m = toy_metrics(&points, &rewards, &grid, optimum.as_ref());
        let png = out_dir.join(format!("samples_{label}.png"));
        let title = format!(
            "{label}: reward {:.2}, log-lik {:.2}, modes {}/9",
            m.reward_mean, m.loglik_mean, m.mode_coverage
        );
        let marks = optimum
            .as_ref()
            .map(|o| o.means.clone())
            .unwrap_or_else(|| grid.means.clone());
        scatter_png(
            &png,
            &[Panel {
                title,
                points: &points,
                marks: &marks,
            }],
            1,
            7.0,
        )?;
        log.info(format!(
            "{label}: reward {:.3}, log-likelihood {:.3}, modes {}/9, tv_to_optimum {} ({})",
            m.reward_mean,
            m.loglik_mean,
            m.mode_coverage,
            m.tv_to_optimum
                .map(|t| format!("{t:.3}"))
                .unwrap_or_else(|| "n/a".into()),
            png.display()
        ));
        let mut v = serde_json::to_value(&m)?;
        v["optimum"] = match (&optimum, w) {
            (Some(o), Some(w)) => json!({ "w": w, "alpha": cfg.alpha, "mode_weights": o.weights }),
            _ => json!(null),
        };
        Ok(v)
    }
}
