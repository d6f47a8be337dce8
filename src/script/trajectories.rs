//! Whole trajectories as Lua sees them, for on-policy losses (`update_on =
//! "trajectories"`: DRaFT, ReFL, DDPO): `traj:at(i)` is the batch of every trajectory's
//! state i with the action taken from it, so a loss can walk any steps it likes.

use super::batch::Batch;
use super::messages::lua_err;
use super::tensor::{LuaTensor, Op};
use crate::diffusion::DdimSampler;
use crate::replay::{ReplayBuffer, StateRef};
use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use mlua::{UserData, UserDataFields, UserDataMethods};

#[derive(Clone, Debug)]
pub struct Trajectories {
    /// x_T, ..., x_0 of each trajectory, [B, T+1, ...].
    pub states: Tensor,
    /// log p(x_{i+1} | x_i) under the sampling policy, [B, T].
    pub log_prob: Tensor,
    pub reward: Vec<f32>,
    pub cond: Vec<u32>,
    sampler: DdimSampler,
    discount: Vec<f64>,
}

impl Trajectories {
    /// The trajectories in buffer `slots`.
    pub fn from_buffer(
        buffer: &ReplayBuffer,
        slots: &[usize],
        sampler: &DdimSampler,
        discount: &[f64],
        device: &Device,
    ) -> Result<Self> {
        let steps = buffer.steps();
        let (mut x, mut lp) = (Vec::new(), Vec::new());
        for &slot in slots {
            for i in 0..=steps {
                x.extend_from_slice(buffer.state(slot, i));
            }
            lp.extend((0..steps).map(|i| buffer.log_prob(StateRef { slot, i })));
        }
        let mut shape = vec![slots.len(), steps + 1];
        shape.extend(buffer.state_shape());
        Ok(Self {
            states: Tensor::from_vec(x, shape, device)?,
            log_prob: Tensor::from_vec(lp, (slots.len(), steps), device)?,
            reward: slots.iter().map(|&s| buffer.reward(s)).collect(),
            cond: slots.iter().map(|&s| buffer.cond(s)).collect(),
            sampler: sampler.clone(),
            discount: discount.to_vec(),
        })
    }

    /// Trajectories from tensors (the smoke test's random ones, tests).
    pub fn from_parts(
        states: Tensor,
        log_prob: Tensor,
        reward: Vec<f32>,
        cond: Vec<u32>,
        sampler: &DdimSampler,
        discount: &[f64],
    ) -> Self {
        Self {
            states,
            log_prob,
            reward,
            cond,
            sampler: sampler.clone(),
            discount: discount.to_vec(),
        }
    }

    pub fn size(&self) -> usize {
        self.cond.len()
    }

    pub fn steps(&self) -> usize {
        self.sampler.steps()
    }

    /// Every trajectory's state i (0 = x_T) and the action x_{i+1} it took, as a batch.
    pub fn at(&self, i: usize) -> Result<Batch> {
        let steps = self.steps();
        if i >= steps {
            anyhow::bail!(
                "traj:at({i}): a state index is in 0..{} (0 is x_T)",
                steps - 1
            );
        }
        let idx = vec![i; self.size()];
        let mut b = Batch::from_parts(
            self.states.narrow(1, i, 1)?.squeeze(1)?,
            self.states.narrow(1, i + 1, 1)?.squeeze(1)?,
            &idx,
            &self.reward,
            &self.cond,
            &self.sampler,
            &self.discount,
        )?;
        b.log_prob = self.log_prob.narrow(1, i, 1)?.squeeze(1)?;
        Ok(b)
    }

    /// x_0 of every trajectory.
    pub fn x0(&self) -> Result<Tensor> {
        Ok(self.states.narrow(1, self.steps(), 1)?.squeeze(1)?)
    }
}

impl UserData for Trajectories {
    fn add_fields<F: UserDataFields<Self>>(f: &mut F) {
        f.add_field_method_get("size", |_, t| Ok(t.size()));
        f.add_field_method_get("steps", |_, t| Ok(t.steps()));
        // Each access makes a tensor: charged to the script like its own.
        f.add_field_method_get("x0", |lua, t| {
            let op = Op::start(lua, "traj.x0")?;
            op.wrap(t.x0().map_err(lua_err)?, &[])
        });
        f.add_field_method_get("reward", |lua, t| {
            let op = Op::start(lua, "traj.reward")?;
            op.admit(lua, &[t.size() as u128], crate::DTYPE)?;
            op.made(
                Tensor::from_vec(t.reward.clone(), t.size(), t.states.device()),
                &[],
            )
        });
        f.add_field_method_get("cond", |lua, t| {
            let op = Op::start(lua, "traj.cond")?;
            op.admit(lua, &[t.size() as u128], DType::U32)?;
            op.made(
                Tensor::from_vec(t.cond.clone(), t.size(), t.states.device()),
                &[],
            )
        });
        f.add_field_method_get("log_prob", |_, t| Ok(LuaTensor::new(t.log_prob.clone())));
    }

    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("at", |lua, t, i: usize| {
            let op = Op::start(lua, "traj:at")?;
            // The batch's own small tensors (t, k, discount, reward, cond), charged with it.
            op.admit(lua, &[t.size() as u128 * 5], crate::DTYPE)?;
            let mut b = t.at(i).map_err(lua_err)?;
            b.charge = Some(op.charge_bytes(t.size() as u64 * 20 + 2048));
            Ok(b)
        });
    }
}
