//! `ctx`, the second argument of the `loss` hook: the models a loss may call, as Lua
//! methods. The policy step keeps its graph (gradients reach θ); reference, consistency
//! model and Tweedie estimates are frozen (the consistency model still passes gradient to
//! its input, which is how the reward gradient reaches x_{t-1} in Eq. 12).

use super::batch::Batch;
use super::config::X0Estimator;
use super::experiment::call_reward;
use super::tensor::{lua_err, LuaTensor};
use crate::diffusion::kl::{gaussian_kl, KlForm};
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
}

fn step_table(lua: &Lua, s: Step) -> LuaResult<LuaTable> {
    let t = lua.create_table()?;
    t.set("mean", LuaTensor(s.mean))?;
    t.set("sigma", LuaTensor(s.sigma))?;
    t.set("x0", LuaTensor(s.x0))?;
    Ok(t)
}

fn step_from(t: &LuaTable) -> LuaResult<(Tensor, Tensor)> {
    let mean: LuaTensor = t
        .get("mean")
        .map_err(|_| lua_err("a step needs a `mean` tensor"))?;
    let sigma: LuaTensor = t
        .get("sigma")
        .map_err(|_| lua_err("a step needs a `sigma` tensor"))?;
    Ok((mean.0, sigma.0))
}

impl LossContext {
    /// One step of p_θ (policy = true, with gradient) or p' (detached) from the batch's x_t.
    pub fn step(&self, b: &Batch, policy: bool) -> candle_core::Result<Step> {
        let m = &self.models;
        let net = if policy { &m.policy } else { &m.reference };
        let mut eps = net.eps(&b.x, &b.t, &b.cond)?;
        if !policy {
            eps = eps.detach();
        }
        m.sampler.step(&b.x, &eps, &b.idx)
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
        f.add_field_method_get("steps", |_, c| Ok(c.models.sampler.steps()));
    }

    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("policy_step", |lua, c, b: LuaAnyUserData| {
            let b = b.borrow::<Batch>()?;
            step_table(lua, c.step(&b, true).map_err(lua_err)?)
        });
        m.add_method("reference_step", |lua, c, b: LuaAnyUserData| {
            let b = b.borrow::<Batch>()?;
            step_table(lua, c.step(&b, false).map_err(lua_err)?)
        });
        m.add_method("x0_hat", |_, c, (x, b): (LuaTensor, LuaAnyUserData)| {
            let b = b.borrow::<Batch>()?;
            c.x0_hat(&x.0, &b, c.x0).map(LuaTensor)
        });
        m.add_method(
            "consistency",
            |_, c, (x, b): (LuaTensor, LuaAnyUserData)| {
                let b = b.borrow::<Batch>()?;
                c.x0_hat(&x.0, &b, X0Estimator::Consistency).map(LuaTensor)
            },
        );
        m.add_method("tweedie", |_, c, (x, b): (LuaTensor, LuaAnyUserData)| {
            let b = b.borrow::<Batch>()?;
            c.x0_hat(&x.0, &b, X0Estimator::Tweedie).map(LuaTensor)
        });
        m.add_method("reward", |_, c, (x0, b): (LuaTensor, LuaAnyUserData)| {
            let cond = b.borrow::<Batch>()?.cond.clone();
            call_reward(&c.reward, &c.config, &x0.0, &cond).map(LuaTensor)
        });
        m.add_method("randn_like", |_, c, t: LuaTensor| {
            let mut rng = c.rng.lock().unwrap();
            crate::rng::randn(&mut rng, t.0.shape(), t.0.device())
                .map(LuaTensor)
                .map_err(lua_err)
        });
        m.add_method(
            "kl",
            |_, _, (p, q, form): (LuaTable, LuaTable, Option<String>)| {
                let form = form.unwrap_or_else(|| "released".into());
                let form = KlForm::parse(&form).ok_or_else(|| {
                    lua_err(format!(
                        "ctx:kl: form must be \"released\" or \"exact\", got \"{form}\""
                    ))
                })?;
                let ((mp, sp), (mq, _)) = (step_from(&p)?, step_from(&q)?);
                gaussian_kl(&mp, &mq, &sp, form)
                    .map(LuaTensor)
                    .map_err(lua_err)
            },
        );
    }
}
