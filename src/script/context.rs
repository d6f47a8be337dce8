//! `ctx`, the second argument of the `loss` hook: the models a loss may call, as Lua
//! methods. The policy step keeps its graph (gradients reach θ); reference, consistency
//! model and Tweedie estimates are frozen (the consistency model still passes gradient to
//! its input, which is how the reward gradient reaches x_{t-1} in Eq. 12).

use super::batch::Batch;
use super::config::X0Estimator;
use super::limits::Limits;
use super::messages::lua_err;
use super::reward_hook::call_reward;
use super::tensor::{lock_rng, run, run_lua, LuaTensor, Op};
use crate::diffusion::kl::{gaussian_kl, KlForm};
use crate::diffusion::log_prob::gaussian_log_prob;
use crate::diffusion::{per_sample, tweedie, Step};
use crate::rng::SharedRng;
use crate::tasks::TaskModels;
use candle_core::Tensor;
use mlua::prelude::*;
use mlua::{UserData, UserDataFields, UserDataMethods};
use std::sync::Arc;

pub struct LossContext {
    pub models: Arc<TaskModels>,
    pub reward: LuaFunction,
    pub config: LuaTable,
    pub x0: X0Estimator,
    pub rng: SharedRng,
    pub epoch: usize,
    pub origin: String,
    /// DDIM steps of the `ddim` x0 estimator.
    pub x0_steps: usize,
    /// 1 for the first update after the epoch's trajectories were sampled, 2 for the next...
    /// (an on-policy loss knows whether its stored actions are still the policy's own).
    pub update: usize,
    /// 1 for the first micro-batch of this update (`config.micro_batch`), 2 for the next...:
    /// a loss that draws one random choice per update (SEIKO's K) draws it at 1.
    pub micro_batch: usize,
    /// (condition, final reward) of every trajectory in the replay buffer, oldest first.
    pub buffer_rewards: Arc<(Vec<u32>, Vec<f32>)>,
    /// One noise stream per row of this micro-batch (`rng::row_stream` of the update's key
    /// and the row's place in the whole batch): `randn_like` and `noise_to` of a tensor with
    /// one row per batch row draw row j from stream j, so the noise does not depend on how
    /// the batch is split into micro-batches or ranks. None: every draw from `rng`.
    pub rows: Option<Arc<std::sync::Mutex<Vec<crate::rng::Rng>>>>,
    /// This process's rank and the job's number of ranks (0 and 1 on one process): a loss
    /// sees its rank's share of the batch.
    pub rank: usize,
    pub ranks: usize,
}

/// A step's tensors as a table, each charged to the script (with `x`, which their graph
/// holds, when the script made it).
fn step_table(lua: &Lua, op: &Op, s: Step, x: &LuaTensor) -> LuaResult<LuaTable> {
    let t = lua.create_table()?;
    t.set("mean", op.wrap(s.mean, &[x])?)?;
    t.set("sigma", op.wrap(s.sigma, &[x])?)?;
    t.set("x0", op.wrap(s.x0, &[x])?)?;
    Ok(t)
}

/// Runs a model call: checked against the sandbox's cap on model calls, with the script's
/// clock paused (the model's time is not the script's), its outputs (`k` tensors shaped
/// like `x`) admitted before it runs.
fn model_call<T>(
    lua: &Lua,
    name: &'static str,
    x: &Tensor,
    k: usize,
    f: impl FnOnce() -> LuaResult<T>,
) -> LuaResult<(Op, T)> {
    model_calls(lua, name, x, k, 1, f)
}

/// `model_call` for a call that runs a model `runs` times (`ctx:ddim`).
fn model_calls<T>(
    lua: &Lua,
    name: &'static str,
    x: &Tensor,
    k: usize,
    runs: u64,
    f: impl FnOnce() -> LuaResult<T>,
) -> LuaResult<(Op, T)> {
    let op = Op::start(lua, name)?;
    op.admit_like(lua, x, k)?;
    let limits = Limits::of(lua)?;
    let out = {
        let _paused = limits.model_calls(name, runs)?;
        run_lua(name, f)?
    };
    Ok((op, out))
}

/// Model runs of an x0 estimator (`x0 = "ddim"` takes `x0_steps`).
fn estimator_runs(which: X0Estimator, x0_steps: usize) -> u64 {
    match which {
        X0Estimator::Ddim => x0_steps as u64,
        _ => 1,
    }
}

fn step_from(t: &LuaTable) -> LuaResult<(LuaTensor, LuaTensor)> {
    let mean: LuaTensor = t
        .get("mean")
        .map_err(|_| lua_err("a step needs a `mean` tensor"))?;
    let sigma: LuaTensor = t
        .get("sigma")
        .map_err(|_| lua_err("a step needs a `sigma` tensor"))?;
    Ok((mean, sigma))
}

impl LossContext {
    /// Standard normal noise of `shape`: per row from `rows` when its first dimension is
    /// the batch's rows, else from the shared stream.
    pub fn randn(
        &self,
        shape: &candle_core::Shape,
        device: &candle_core::Device,
    ) -> candle_core::Result<Tensor> {
        if let Some(rows) = &self.rows {
            let mut rows = rows.lock().unwrap_or_else(|p| p.into_inner());
            if shape.dims().first() == Some(&rows.len()) {
                return crate::rng::randn_rows(&mut rows, shape, device);
            }
        }
        let mut rng = lock_rng(&self.rng);
        crate::rng::randn(&mut rng, shape, device)
    }

    /// One step of p_θ (policy = true, with gradient) or of the KL's reference (detached):
    /// p', or the previous round's policy with `config.kl_reference = "previous"`.
    pub fn step(&self, b: &Batch, policy: bool) -> candle_core::Result<Step> {
        self.step_from(b, &b.x, policy)
    }

    /// The same step taken from `x` instead of the stored x_t (at the batch's timesteps):
    /// DRaFT-K chains K of these, the graph running through every `x`. The reference's ε is
    /// detached only when `x` carries no graph to pass on.
    pub fn step_from(&self, b: &Batch, x: &Tensor, policy: bool) -> candle_core::Result<Step> {
        let m = &self.models;
        let net = if policy { &m.policy } else { m.kl_reference() };
        let mut eps = net.eps(x, &b.t, &b.cond)?;
        if !policy && !x.track_op() {
            eps = eps.detach();
        }
        m.sampler.step(x, &eps, &b.idx)
    }

    /// q(x_t | x_0) at the batch's timesteps: √ᾱ x0 + √(1-ᾱ) ε (DRaFT-LV re-noises x_0).
    pub fn noise_to(&self, x0: &Tensor, b: &Batch) -> LuaResult<Tensor> {
        let m = &self.models;
        let a: Vec<f64> = b.idx.iter().map(|&i| m.sampler.alpha_bar(i)).collect();
        let eps = self.randn(x0.shape(), x0.device()).map_err(lua_err)?;
        let sa: Vec<f64> = a.iter().map(|v| v.sqrt()).collect();
        let sb: Vec<f64> = a.iter().map(|v| (1.0 - v).sqrt()).collect();
        (|| {
            x0.broadcast_mul(&per_sample(&sa, x0)?)?
                .add(&eps.broadcast_mul(&per_sample(&sb, x0)?)?)
        })()
        .map_err(lua_err)
    }

    /// x̂0 by `n` deterministic DDIM steps of the frozen reference from the states after the
    /// batch's step down to t = 0, differentiable in `x_prev` through all of them (Table 2's
    /// n-step ablation: n reference calls instead of one consistency-model call).
    pub fn ddim_next(&self, x_prev: &Tensor, b: &Batch, n: usize) -> candle_core::Result<Tensor> {
        let m = &self.models;
        let start: Vec<usize> = b.idx.iter().map(|&i| m.sampler.time_of(i + 1)).collect();
        // t_j = τ (n - j) / n, j = 0..n: an even grid from the state's timestep to 0.
        let t_at = |j: usize| -> Vec<usize> {
            start
                .iter()
                .map(|&t| (t as f64 * (n - j) as f64 / n as f64).round() as usize)
                .collect()
        };
        let mut x = x_prev.clone();
        let mut x0 = x.clone();
        for j in 0..n {
            let t = t_at(j);
            let tt: Vec<f32> = t.iter().map(|&v| v as f32).collect();
            let t_tensor = Tensor::from_vec(tt, t.len(), x.device())?;
            let eps = m.reference.eps(&x, &t_tensor, &b.cond)?;
            let a: Vec<f64> = t.iter().map(|&v| m.schedule.alpha_bar(v)).collect();
            x0 = tweedie::x0_from_eps_with(&x, &eps, &a)?;
            if j + 1 < n {
                let a_next: Vec<f64> = t_at(j + 1)
                    .iter()
                    .map(|&v| m.schedule.alpha_bar(v))
                    .collect();
                let sa: Vec<f64> = a_next.iter().map(|v| v.sqrt()).collect();
                let sb: Vec<f64> = a_next.iter().map(|v| (1.0 - v).sqrt()).collect();
                x = x0
                    .broadcast_mul(&per_sample(&sa, &x)?)?
                    .add(&eps.broadcast_mul(&per_sample(&sb, &x)?)?)?;
            }
        }
        Ok(x0)
    }

    /// Tweedie's x0 of the frozen reference at the states after the batch's step,
    /// differentiable in `x_prev`.
    pub fn tweedie_next(&self, x_prev: &Tensor, b: &Batch) -> candle_core::Result<Tensor> {
        let m = &self.models;
        let next: Vec<usize> = b.idx.iter().map(|&i| i + 1).collect();
        let t = m.sampler.timesteps_tensor(&next, x_prev.device())?;
        // Not detached: the reward gradient reaches x_{t-1} through ε' as well (Eq. 12 needs
        // dx̂0/dx_{t-1}); the reference's weights are not variables, so none reaches them.
        let eps = m.reference.eps(x_prev, &t, &b.cond)?;
        let a: Vec<f64> = next.iter().map(|&i| m.sampler.alpha_bar(i)).collect();
        tweedie::x0_from_eps_with(x_prev, &eps, &a)
    }

    /// f_ψ(x_{t-1}) at the states after the batch's step.
    pub fn consistency_next(&self, x_prev: &Tensor, b: &Batch) -> LuaResult<Tensor> {
        let m = &self.models;
        let cm = m.consistency.as_ref().ok_or_else(|| {
            lua_err(
                "this task has no consistency model; set config.x0 = \"tweedie\" or distill one",
            )
        })?;
        let t: Vec<usize> = b.idx.iter().map(|&i| m.sampler.time_of(i + 1)).collect();
        cm.x0(x_prev, &t, &b.cond).map_err(lua_err)
    }

    /// x̂0(x_{t-1}) for the soft Q (Eq. 15-16); the last step's x_{t-1} is x_0 itself.
    pub fn x0_hat(&self, x_prev: &Tensor, b: &Batch, which: X0Estimator) -> LuaResult<Tensor> {
        let est = match which {
            X0Estimator::Consistency => self.consistency_next(x_prev, b)?,
            X0Estimator::Tweedie => self.tweedie_next(x_prev, b).map_err(lua_err)?,
            X0Estimator::Ddim => self.ddim_next(x_prev, b, self.x0_steps).map_err(lua_err)?,
        };
        let steps = self.models.sampler.steps();
        let last: Vec<f64> = b
            .idx
            .iter()
            .map(|&i| if i + 1 == steps { 1.0 } else { 0.0 })
            .collect();
        if last.iter().all(|&l| l == 0.0) {
            return Ok(est);
        }
        let mask = per_sample(&last, x_prev).map_err(lua_err)?;
        let keep = mask.affine(-1.0, 1.0).map_err(lua_err)?;
        x_prev
            .broadcast_mul(&mask)
            .and_then(|a| a.add(&est.broadcast_mul(&keep)?))
            .map_err(lua_err)
    }
}

impl UserData for LossContext {
    fn add_fields<F: UserDataFields<Self>>(f: &mut F) {
        f.add_field_method_get("config", |_, c| Ok(c.config.clone()));
        f.add_field_method_get("epoch", |_, c| Ok(c.epoch));
        f.add_field_method_get("update", |_, c| Ok(c.update));
        f.add_field_method_get("micro_batch", |_, c| Ok(c.micro_batch));
        f.add_field_method_get("rank", |_, c| Ok(c.rank));
        f.add_field_method_get("ranks", |_, c| Ok(c.ranks));
        f.add_field_method_get("steps", |_, c| Ok(c.models.sampler.steps()));
    }

    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        // ctx:policy_step(batch[, x]): from x instead of batch.x when given (DRaFT-K).
        for (name, policy) in [("ctx:policy_step", true), ("ctx:reference_step", false)] {
            let method = name.trim_start_matches("ctx:");
            m.add_method(
                method,
                move |lua, c, (b, x): (LuaAnyUserData, Option<LuaTensor>)| {
                    let b = b.borrow::<Batch>()?;
                    let x = x.unwrap_or_else(|| LuaTensor::new(b.x.clone()));
                    let (op, s) = model_call(lua, name, &x.0, 3, || {
                        c.step_from(&b, &x.0, policy).map_err(lua_err)
                    })?;
                    step_table(lua, &op, s, &x)
                },
            );
        }
        // ctx:log_prob(step, x): log p(x | x_t) under a step's Gaussian, mean over dims, [B].
        m.add_method("log_prob", |lua, _, (s, x): (LuaTable, LuaTensor)| {
            let op = Op::start(lua, "ctx:log_prob")?;
            let (mean, sigma) = step_from(&s)?;
            op.admit_like(lua, &x.0, 3)?;
            let out = run("ctx:log_prob", || {
                gaussian_log_prob(&x.0, &mean.0, &sigma.0)
            })?;
            op.wrap(out, &[&x, &mean, &sigma])
        });
        m.add_method(
            "noise_to",
            |lua, c, (x0, b): (LuaTensor, LuaAnyUserData)| {
                let op = Op::start(lua, "ctx:noise_to")?;
                let b = b.borrow::<Batch>()?;
                op.admit_like(lua, &x0.0, 4)?;
                let out = run_lua("ctx:noise_to", || c.noise_to(&x0.0, &b))?;
                op.wrap(out, &[&x0])
            },
        );
        m.add_method(
            "ddim",
            |lua, c, (x, b, n): (LuaTensor, LuaAnyUserData, Option<usize>)| {
                let b = b.borrow::<Batch>()?;
                let n = n.unwrap_or(c.x0_steps).max(1);
                let (op, out) = model_calls(lua, "ctx:ddim", &x.0, 1, n as u64, || {
                    c.ddim_next(&x.0, &b, n).map_err(lua_err)
                })?;
                op.wrap(out, &[&x])
            },
        );
        // ctx:buffer_rewards(): {cond = u32 [N], reward = [N]} of every stored trajectory
        // (DDPO's per-prompt statistics; they survive reloads and resumes with the buffer).
        m.add_method("buffer_rewards", |lua, c, ()| {
            let op = Op::start(lua, "ctx:buffer_rewards")?;
            let (cond, reward) = &*c.buffer_rewards;
            op.admit(
                lua,
                &[cond.len() as u128, reward.len() as u128],
                crate::DTYPE,
            )?;
            let dev = &c.models.device;
            let t = lua.create_table()?;
            t.set(
                "cond",
                op.made(Tensor::from_vec(cond.clone(), cond.len(), dev), &[])?,
            )?;
            t.set(
                "reward",
                op.made(Tensor::from_vec(reward.clone(), reward.len(), dev), &[])?,
            )?;
            Ok(t)
        });
        type Estimator = (&'static str, &'static str, Option<X0Estimator>);
        let estimators: [Estimator; 3] = [
            ("x0_hat", "ctx:x0_hat", None),
            (
                "consistency",
                "ctx:consistency",
                Some(X0Estimator::Consistency),
            ),
            ("tweedie", "ctx:tweedie", Some(X0Estimator::Tweedie)),
        ];
        for (method, name, which) in estimators {
            m.add_method(
                method,
                move |lua, c, (x, b): (LuaTensor, LuaAnyUserData)| {
                    let b = b.borrow::<Batch>()?;
                    let which = which.unwrap_or(c.x0);
                    let runs = estimator_runs(which, c.x0_steps);
                    let (op, out) =
                        model_calls(lua, name, &x.0, 1, runs, || c.x0_hat(&x.0, &b, which))?;
                    op.wrap(out, &[&x])
                },
            );
        }
        m.add_method("reward", |lua, c, (x0, b): (LuaTensor, LuaAnyUserData)| {
            let op = Op::start(lua, "ctx:reward")?;
            let cond = b.borrow::<Batch>()?.cond.clone();
            let out = call_reward(&c.reward, &c.config, &x0.0, &cond)?;
            op.wrap(out, &[&x0])
        });
        m.add_method("randn_like", |lua, c, t: LuaTensor| {
            let op = Op::start(lua, "ctx:randn_like")?;
            op.admit(lua, &[t.0.elem_count() as u128], crate::DTYPE)?;
            op.made(c.randn(t.0.shape(), t.0.device()), &[])
        });
        m.add_method(
            "kl",
            |lua, _, (p, q, form): (LuaTable, LuaTable, Option<String>)| {
                let op = Op::start(lua, "ctx:kl")?;
                let form = form.unwrap_or_else(|| "released".into());
                let form = KlForm::parse(&form).ok_or_else(|| {
                    lua_err(format!(
                        "ctx:kl: form must be \"released\" or \"exact\", got \"{form}\""
                    ))
                })?;
                let ((mp, sp), (mq, _)) = (step_from(&p)?, step_from(&q)?);
                op.admit_like(lua, &mp.0, 4)?;
                let out = run("ctx:kl", || gaussian_kl(&mp.0, &mq.0, &sp.0, form))?;
                op.wrap(out, &[&mp, &mq, &sp])
            },
        );
    }
}
