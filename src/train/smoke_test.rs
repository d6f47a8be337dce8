//! Calls every hook of a newly loaded script once on a tiny batch before it is trusted with
//! a run (at start and on every reload), so that a broken script fails here, not mid-epoch.
//! It draws from its own RNG: testing a script never shifts the run's random stream.

use crate::rng::{randn, shared};
use crate::script::{Batch, LossContext, Script, TensorEnv, Trajectories, UpdateOn};
use crate::tasks::TaskModels;
use anyhow::{bail, Result};
use std::sync::Arc;

pub fn smoke_test(script: &Script, models: &Arc<TaskModels>, cond: u32) -> Result<()> {
    let rng = shared(0x5eed);
    script.set_tensor_env(TensorEnv {
        device: models.device.clone(),
        rng: rng.clone(),
    });
    let steps = models.sampler.steps();
    let discount = script.discounts(steps)?;
    script.priority(1.0, 0, models.sampler.timestep(steps - 1), cond)?;

    // The first and the last step: the last one exercises x0_hat's identity case.
    let idx = [0, steps - 1];
    let mut shape = vec![idx.len()];
    shape.extend(&models.state_shape);
    let (x, next, traj) = {
        let mut r = rng.lock().unwrap();
        let mut traj_shape = vec![idx.len(), steps + 1];
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
        &idx,
        &[0.0, 0.0],
        &[cond, cond],
        &models.sampler,
        &discount,
    )?;
    script.reward(&x, &batch.cond)?;
    let ctx = LossContext {
        models: models.clone(),
        reward: script.reward_fn(),
        config: script.config_table.clone(),
        x0: script.config.x0,
        rng,
        epoch: 0,
        origin: script.path.display().to_string(),
        x0_steps: script.config.x0_steps,
        update: 1,
        buffer_rewards: Arc::new((vec![cond, cond], vec![0.0, 1.0])),
    };
    let out = match script.config.update_on {
        UpdateOn::States => script.loss(batch, ctx)?,
        UpdateOn::Trajectories => {
            // Two random trajectories whose actions had log-probability 0.
            let lp = candle_core::Tensor::zeros((2, steps), crate::DTYPE, &models.device)?;
            let t = Trajectories::from_parts(
                traj,
                lp,
                vec![0.0, 1.0],
                vec![cond, cond],
                &models.sampler,
                &discount,
            );
            script.loss(t, ctx)?
        }
    };
    if let Err(e) = out.loss.backward() {
        bail!(
            "{}: hook `loss` returned a tensor whose gradient cannot be computed: {e}",
            script.path.display()
        )
    }
    Ok(())
}
