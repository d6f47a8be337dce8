//! The parity dump: fixed seeded inputs and sqdf's outputs for each quantity the peer
//! recomputes (ε, guided ε, one DDIM step, the consistency model's x0, the learned reward,
//! and one whole SQDF update: loss, gradients, weights after AdamW), in one safetensors file.

use super::trainer;
use super::work::{Inputs, Nets};
use crate::diffusion::log_prob::gaussian_log_prob;
use crate::models::guidance::Guided;
use crate::models::Denoiser;
use crate::rng::{randn, seeded};
use crate::run_log::RunLog;
use crate::script::Batch;
use crate::tasks::weights_dir;
use crate::tensor_io::{sorted_vars, write_atomic};
use crate::train::grad_clip::clip_grad_norm;
use crate::train::Trainer;
use anyhow::{anyhow, Result};
use candle_core::Tensor;
use rand::Rng as _;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Seed of every input in the dump.
const SEED: u64 = 0x9ee7;

/// Writes `dir/parity.safetensors`: inputs and sqdf's outputs on `batch` samples with the
/// models and config of `script`. The update's LoRA B matrices are first set to small
/// seeded values (a fresh B = 0 would leave every A without gradient); its noise is the
/// draw the loss makes from the run's generator. Returns the file's path.
pub fn dump(script: &Path, batch: usize, dir: &Path, log: Arc<RunLog>) -> Result<PathBuf> {
    let (mut t, run_dir) = trainer(script, batch, log)?;
    let cfg = t.script.config.clone();
    let m = t.models.clone();
    let nets = Nets::load(
        &weights_dir(&cfg.task, cfg.weights.as_deref()),
        cfg.lora_rank,
        cfg.seed,
        &m.device,
    )?;
    let mut rng = seeded(SEED);
    let mut i = Inputs::random(&t, batch, &mut rng)?;
    // The first and last step of the grid are always among the states.
    i.idx[0] = 0;
    i.idx[1] = m.sampler.steps() - 1;
    i.t = m.sampler.timesteps_tensor(&i.idx, &m.device)?;
    let mut out: BTreeMap<String, Tensor> = BTreeMap::new();
    let idx_u32: Vec<u32> = i.idx.iter().map(|&v| v as u32).collect();
    out.insert("x".into(), i.x.clone());
    out.insert("idx".into(), Tensor::new(idx_u32.as_slice(), &m.device)?);
    out.insert("t".into(), i.t.clone());
    out.insert("cond".into(), i.cond.clone());

    // ε of the frozen UNet, and guided (the run's reference, its guidance scale).
    out.insert("eps".into(), nets.base.eps(&i.x, &i.t, &i.cond)?);
    let guided = Guided {
        inner: Arc::new(nets.base.clone()),
        scale: cfg.guidance,
        null: crate::models::class_conditional::NULL_PROMPT,
    };
    let eps_guided = guided.eps(&i.x, &i.t, &i.cond)?;
    // One η-step of the run's sampler from the guided ε, with fixed noise.
    let step = m.sampler.step(&i.x, &eps_guided, &i.idx)?;
    let z = randn(&mut rng, i.x.shape(), &m.device)?;
    let next = step.mean.add(&z.broadcast_mul(&step.sigma)?)?;
    out.insert(
        "ddim_log_prob".into(),
        gaussian_log_prob(&next, &step.mean, &step.sigma)?,
    );
    out.insert("eps_guided".into(), eps_guided);
    out.insert("ddim_z".into(), z);
    out.insert("ddim_mean".into(), step.mean);
    out.insert("ddim_sigma".into(), step.sigma.flatten_all()?);
    out.insert("ddim_x0".into(), step.x0.clone());
    out.insert("ddim_next".into(), next);

    // The consistency model at arbitrary training timesteps (snapped to its grid; 0 is
    // the boundary where it is the identity).
    let cm = m
        .consistency
        .as_ref()
        .ok_or_else(|| anyhow!("the parity dump needs the task's consistency model"))?;
    let mut cm_t: Vec<usize> = (0..batch).map(|_| rng.random_range(0..1000)).collect();
    cm_t[0] = 0;
    cm_t[1] = 999;
    out.insert("cm_x0".into(), cm.x0(&i.x, &cm_t, &i.cond)?);
    let cm_t: Vec<u32> = cm_t.iter().map(|&v| v as u32).collect();
    out.insert("cm_t".into(), Tensor::new(cm_t.as_slice(), &m.device)?);

    // The learned reward (unscaled) of images in [-1, 1].
    let images = step.x0.clamp(-1f32, 1f32)?;
    let learned = &m
        .rewards
        .iter()
        .find(|(name, _)| name == "learned")
        .ok_or_else(|| anyhow!("the task offers no `learned` reward"))?
        .1;
    out.insert("reward".into(), learned(&images, None)?);
    out.insert("reward_images".into(), images);

    update(&mut t, &i, &mut out)?;
    let meta = HashMap::from([(
        "config".to_string(),
        json!({
            "alpha": cfg.alpha,
            "gamma": cfg.gamma,
            "lr": cfg.lr,
            "weight_decay": cfg.weight_decay,
            "grad_clip": cfg.grad_clip,
            "guidance": cfg.guidance,
            "steps": cfg.steps,
            "eta": cfg.eta,
            "lora_rank": cfg.lora_rank,
            "script": script.display().to_string(),
        })
        .to_string(),
    )]);
    let path = dir.join("parity.safetensors");
    write_atomic(&path, &out, meta)?;
    let _ = std::fs::remove_dir_all(&run_dir);
    Ok(path)
}

/// One SQDF update as `Trainer::update` makes it (one micro-batch), on the states of
/// `i`: the script's loss, backward, gradient clipping, AdamW. Records the adapters before,
/// the noise the loss draws, the loss and its logged numbers, the gradients before
/// clipping, their norm, and the adapters after.
fn update(t: &mut Trainer, i: &Inputs, out: &mut BTreeMap<String, Tensor>) -> Result<()> {
    let cfg = t.script.config.clone();
    let m = t.models.clone();
    let dev = &m.device;
    let mut rng = seeded(SEED + 1);
    for (name, var) in sorted_vars(&m.policy_vars) {
        if name.contains("lora_B") {
            var.set(&randn(&mut rng, var.shape(), dev)?.affine(0.02, 0.0)?)?;
        }
        out.insert(format!("lora.{name}"), var.as_tensor().copy()?);
    }
    let cond: Vec<u32> = i.cond.to_vec1()?;
    let zeros = vec![0f32; cond.len()];
    let batch = Batch::from_parts(
        i.x.clone(),
        i.x.zeros_like()?,
        &i.idx,
        &zeros,
        &cond,
        &m.sampler,
        t.discounts(),
    )?;
    // The loss draws its reparameterisation noise (Eq. 12) from the run's generator: the
    // same draw from a copy of it is that noise.
    let z = randn(&mut t.rng.lock().unwrap().clone(), i.x.shape(), dev)?;
    out.insert("update_z".into(), z);
    let ctx = t.context();
    let loss_out = t.script.loss(batch, ctx)?;
    let scalar = |v: f64| Tensor::new(&[v as f32], dev);
    for (k, v) in &loss_out.stats {
        out.insert(format!("update_{k}"), scalar(*v)?);
    }
    let store = loss_out.loss.backward()?;
    out.insert("update_loss".into(), loss_out.loss.reshape(1)?);
    let mut grads: Vec<Option<Tensor>> = t
        .optim
        .params
        .iter()
        .map(|(_, v)| store.get(v.as_tensor()).cloned())
        .collect();
    for ((name, _), g) in t.optim.params.iter().zip(&grads) {
        if let Some(g) = g {
            out.insert(format!("grad.{name}"), g.clone());
        }
    }
    let norm = clip_grad_norm(&mut grads, cfg.grad_clip)?;
    out.insert("update_grad_norm".into(), scalar(norm)?);
    t.optim.step(&grads, cfg.lr, cfg.weight_decay)?;
    for (name, var) in &t.optim.params {
        out.insert(format!("after.{name}"), var.as_tensor().copy()?);
    }
    Ok(())
}
