//! A batch of buffer states as Lua sees it (`batch.x`, `batch.k`, ...).

use super::tensor::LuaTensor;
use super::tensor_memory::Charge;
use crate::diffusion::DdimSampler;
use crate::replay::{ReplayBuffer, StateRef};
use anyhow::Result;
use candle_core::{Device, Tensor};
use mlua::{UserData, UserDataFields};
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct Batch {
    pub refs: Vec<StateRef>,
    /// Sampling index i of each state (0 = x_T).
    pub idx: Vec<usize>,
    /// x_t, [B, ...].
    pub x: Tensor,
    /// The action the trajectory took, x_{t-1}, [B, ...].
    pub next: Tensor,
    /// Training timestep τ_i, f32 [B].
    pub t: Tensor,
    /// k = T - 1 - i, the discount exponent (Eq. 15: γ^{t-1}), f32 [B].
    pub k: Tensor,
    /// discount(k) from the script's hook, f32 [B].
    pub discount: Tensor,
    /// The stored final reward of each state's trajectory, f32 [B].
    pub reward: Tensor,
    /// Condition ids, u32 [B].
    pub cond: Tensor,
    /// log p(next | x) under the policy that sampled the action, f32 [B] (NaN if unknown).
    pub log_prob: Tensor,
    /// The sandbox's charge for a batch a script made (`traj:at`), None for the framework's.
    pub charge: Option<Arc<Charge>>,
}

impl Batch {
    /// Gathers `refs` from the buffer; `discount[k]` is the hook's value for each k.
    pub fn gather(
        buffer: &ReplayBuffer,
        refs: &[StateRef],
        sampler: &DdimSampler,
        discount: &[f64],
        device: &Device,
    ) -> Result<Self> {
        let (x, next) = buffer.gather(refs, device)?;
        let idx: Vec<usize> = refs.iter().map(|r| r.i).collect();
        let reward: Vec<f32> = refs.iter().map(|r| buffer.reward(r.slot)).collect();
        let cond: Vec<u32> = refs.iter().map(|r| buffer.cond(r.slot)).collect();
        let mut b = Self::from_parts(x, next, &idx, &reward, &cond, sampler, discount)?;
        b.refs = refs.to_vec();
        let lp: Vec<f32> = refs.iter().map(|&r| buffer.log_prob(r)).collect();
        b.log_prob = Tensor::from_vec(lp, refs.len(), device)?;
        Ok(b)
    }

    /// A batch from tensors: states x at sampling indices `idx`, the actions `next` taken.
    pub fn from_parts(
        x: Tensor,
        next: Tensor,
        idx: &[usize],
        reward: &[f32],
        cond: &[u32],
        sampler: &DdimSampler,
        discount: &[f64],
    ) -> Result<Self> {
        let device = x.device().clone();
        let (n, steps) = (idx.len(), sampler.steps());
        let f = |v: Vec<f32>| Tensor::from_vec(v, n, &device);
        Ok(Self {
            t: sampler.timesteps_tensor(idx, &device)?,
            k: f(idx.iter().map(|&i| (steps - 1 - i) as f32).collect())?,
            discount: f(idx
                .iter()
                .map(|&i| discount[steps - 1 - i] as f32)
                .collect())?,
            reward: f(reward.to_vec())?,
            cond: Tensor::from_vec(cond.to_vec(), n, &device)?,
            log_prob: Tensor::full(f32::NAN, n, &device)?,
            refs: idx.iter().map(|&i| StateRef { slot: 0, i }).collect(),
            idx: idx.to_vec(),
            x,
            next,
            charge: None,
        })
    }

    pub fn size(&self) -> usize {
        self.idx.len()
    }
}

impl UserData for Batch {
    fn add_fields<F: UserDataFields<Self>>(f: &mut F) {
        f.add_field_method_get("x", |_, b| Ok(LuaTensor::new(b.x.clone())));
        f.add_field_method_get("next", |_, b| Ok(LuaTensor::new(b.next.clone())));
        f.add_field_method_get("t", |_, b| Ok(LuaTensor::new(b.t.clone())));
        f.add_field_method_get("k", |_, b| Ok(LuaTensor::new(b.k.clone())));
        f.add_field_method_get("discount", |_, b| Ok(LuaTensor::new(b.discount.clone())));
        f.add_field_method_get("reward", |_, b| Ok(LuaTensor::new(b.reward.clone())));
        f.add_field_method_get("cond", |_, b| Ok(LuaTensor::new(b.cond.clone())));
        f.add_field_method_get("log_prob", |_, b| Ok(LuaTensor::new(b.log_prob.clone())));
        f.add_field_method_get("size", |_, b| Ok(b.size()));
    }
}
