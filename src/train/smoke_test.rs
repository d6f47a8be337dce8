//! Calls every hook of a newly loaded script once on a tiny batch before it is trusted with
//! a run (at start and on every reload), so that a broken script fails here, not mid-epoch.
//! It draws from its own RNG: testing a script never shifts the run's random stream.

use crate::blackbox::rounds::{OracleAccess, Rounds};
use crate::rng::{randn, shared};
use crate::script::{Batch, LossContext, Script, TensorEnv, Trajectories, UpdateOn};
use crate::tasks::TaskModels;
use anyhow::{anyhow, bail, Result};
use std::sync::Arc;

/// `oracle`: a black-box run's rounds, whose oracle the loss may not query (as in updates).
pub fn smoke_test(
    script: &Script,
    models: &Arc<TaskModels>,
    cond: u32,
    oracle: Option<&Rounds>,
) -> Result<()> {
    let origin = script.path.display();
    crate::script::config_bounds::check_memory(&script.config, &models.state_shape, None)
        .map_err(|e| anyhow!("{origin}: {e:#}"))?;
    check_stochastic(&models.sampler, script.config.steps)
        .map_err(|e| anyhow!("{origin}: {e:#}"))?;
    let rng = shared(0x5eed);
    script.set_tensor_env(TensorEnv {
        device: models.device.clone(),
        rng: rng.clone(),
    });
    let steps = models.sampler.steps();
    let discount = script.discounts(steps)?;
    script.priority(1.0, 0, models.sampler.timestep(steps - 1), cond)?;

    // The first and the last step (the last one exercises x0_hat's identity case), together
    // or, with micro-batches of 1 (SD-1.5 on a GPU, where two states may not fit), one at
    // a time.
    let groups: Vec<Vec<usize>> = if script.config.micro_batch_size() == 1 {
        vec![vec![0], vec![steps - 1]]
    } else {
        vec![vec![0, steps - 1]]
    };
    for idx in groups {
        smoke_loss(script, models, cond, &rng, &discount, &idx, oracle)?;
    }
    Ok(())
}

/// With η > 0 every step of the grid must be stochastic: the KL of the soft Q (Eq. 10) and
/// the policy's log-probabilities divide by σ. A grid whose last step starts at training
/// timestep 0 while the end point is ᾱ_0 has σ = 0 there.
fn check_stochastic(sampler: &crate::diffusion::DdimSampler, steps: usize) -> Result<()> {
    if sampler.eta() == 0.0 {
        return Ok(());
    }
    if let Some(i) = (0..sampler.steps()).find(|&i| sampler.sigma(i) <= 0.0) {
        bail!(
            "config.steps = {steps}: step {i} of the DDIM grid (training timestep {}) has σ = 0, so its KL and log-probability are undefined; use fewer steps (on a 1000-timestep grid with trailing spacing, at most 666)",
            sampler.timestep(i)
        )
    }
    Ok(())
}

/// One call of `reward` and `loss` (and backward) on random states at step indices `idx`.
fn smoke_loss(
    script: &Script,
    models: &Arc<TaskModels>,
    cond: u32,
    rng: &crate::rng::SharedRng,
    discount: &[f64],
    idx: &[usize],
    oracle: Option<&Rounds>,
) -> Result<()> {
    let steps = models.sampler.steps();
    let n = idx.len();
    let mut shape = vec![n];
    shape.extend(&models.state_shape);
    let (x, next, traj) = {
        let mut r = rng.lock().unwrap();
        let mut traj_shape = vec![n, steps + 1];
        traj_shape.extend(&models.state_shape);
        (
            randn(&mut r, shape.clone(), &models.device)?,
            randn(&mut r, shape, &models.device)?,
            randn(&mut r, traj_shape, &models.device)?,
        )
    };
    let batch = Batch::from_parts(
        x.clone(),
        next,
        idx,
        &vec![0.0; n],
        &vec![cond; n],
        &models.sampler,
        discount,
    )?;
    script.reward(&x, &batch.cond)?;
    if script.has_buffer_reward() {
        script.buffer_reward(&x, &batch.cond)?;
    }
    let ctx = LossContext {
        models: models.clone(),
        reward: script.reward_fn(),
        config: script.config_table.clone(),
        x0: script.config.x0,
        rng: rng.clone(),
        epoch: 0,
        origin: script.path.display().to_string(),
        x0_steps: script.config.x0_steps,
        update: 1,
        micro_batch: 1,
        buffer_rewards: Arc::new((vec![cond; n], (0..n).map(|i| i as f32).collect())),
        rows: None,
        rank: 0,
        ranks: 1,
    };
    let refusing = oracle.map(|r| r.access(OracleAccess::Refuse));
    let out = match script.config.update_on {
        UpdateOn::States => script.loss(batch, ctx),
        UpdateOn::Trajectories => {
            // Random trajectories whose actions had log-probability 0.
            let lp = candle_core::Tensor::zeros((n, steps), crate::DTYPE, &models.device)?;
            let t = Trajectories::from_parts(
                traj,
                lp,
                (0..n).map(|i| i as f32).collect(),
                vec![cond; n],
                &models.sampler,
                discount,
            );
            script.loss(t, ctx)
        }
    };
    drop(refusing);
    let out = out?;
    if let Err(e) = out.loss.backward() {
        bail!(
            "{}: hook `loss` returned a tensor whose gradient cannot be computed: {e}",
            script.path.display()
        )
    }
    Ok(())
}
