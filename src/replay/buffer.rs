//! Whole trajectories x_T..x_0 with their condition and final reward, in a FIFO of fixed
//! capacity (the released code keeps 1024). States are kept on the host in one flat
//! array, so pushing a trajectory overwrites its slot in place and a batch is one gather.

use super::SumTree;
use crate::rng::Rng;
use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use rand::Rng as _;

/// One state of one stored trajectory: sampling index i in 0..T (the action x_{i+1} exists).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StateRef {
    pub slot: usize,
    pub i: usize,
}

#[derive(Debug, Clone)]
pub struct ReplayBuffer {
    capacity: usize,
    steps: usize,
    state_shape: Vec<usize>,
    state_len: usize,
    states: Vec<f32>,
    cond: Vec<u32>,
    reward: Vec<f32>,
    /// log p(x_{i+1} | x_i) of each stored action under the policy that sampled it (DDPO's
    /// old log-probabilities); NaN until `set_log_probs`.
    log_prob: Vec<f32>,
    next: usize,
    pushed: u64,
    priorities: SumTree,
}

impl ReplayBuffer {
    /// A buffer of `capacity` trajectories of `steps` actions (steps + 1 states) each.
    pub fn new(capacity: usize, steps: usize, state_shape: &[usize]) -> Self {
        assert!(capacity > 0 && steps > 0);
        Self {
            capacity,
            steps,
            state_shape: state_shape.to_vec(),
            state_len: state_shape.iter().product(),
            states: Vec::new(),
            cond: Vec::new(),
            reward: Vec::new(),
            log_prob: Vec::new(),
            next: 0,
            pushed: 0,
            priorities: SumTree::new(capacity * steps),
        }
    }

    /// Stored trajectories.
    pub fn len(&self) -> usize {
        self.cond.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cond.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn steps(&self) -> usize {
        self.steps
    }

    pub fn state_shape(&self) -> &[usize] {
        &self.state_shape
    }

    /// Trajectories pushed over the buffer's life (more than `len` once it wraps).
    pub fn pushed(&self) -> u64 {
        self.pushed
    }

    /// The slot the next push writes (FIFO position).
    pub fn next_slot(&self) -> usize {
        self.next
    }

    pub fn reward(&self, slot: usize) -> f32 {
        self.reward[slot]
    }

    pub fn cond(&self, slot: usize) -> u32 {
        self.cond[slot]
    }

    fn traj_len(&self) -> usize {
        (self.steps + 1) * self.state_len
    }

    /// State i (0 = x_T, steps = x_0) of the trajectory in `slot`.
    pub fn state(&self, slot: usize, i: usize) -> &[f32] {
        let o = slot * self.traj_len() + i * self.state_len;
        &self.states[o..o + self.state_len]
    }

    /// Stores one trajectory (its steps + 1 states, flattened), evicting the oldest when
    /// full. Its states get priority 0 until `set_priority`; returns the slot.
    pub fn push(&mut self, states: &[f32], cond: u32, reward: f32) -> Result<usize> {
        if states.len() != self.traj_len() {
            bail!(
                "a trajectory of {} steps with states of shape {:?} has {} values, got {}",
                self.steps,
                self.state_shape,
                self.traj_len(),
                states.len()
            );
        }
        let slot = self.next;
        if slot == self.cond.len() {
            self.states.extend_from_slice(states);
            self.cond.push(cond);
            self.reward.push(reward);
            self.log_prob
                .extend(std::iter::repeat_n(f32::NAN, self.steps));
        } else {
            let o = slot * self.traj_len();
            self.states[o..o + states.len()].copy_from_slice(states);
            self.cond[slot] = cond;
            self.reward[slot] = reward;
            self.log_prob[slot * self.steps..(slot + 1) * self.steps].fill(f32::NAN);
        }
        for i in 0..self.steps {
            self.priorities.set(slot * self.steps + i, 0.0);
        }
        self.next = (slot + 1) % self.capacity;
        self.pushed += 1;
        Ok(slot)
    }

    /// The behaviour policy's log-probability of every action of the trajectory in `slot`.
    pub fn set_log_probs(&mut self, slot: usize, log_probs: &[f32]) -> Result<()> {
        if log_probs.len() != self.steps || slot >= self.len() {
            bail!(
                "log-probabilities of slot {slot}: expected {} values for a stored slot (< {}), got {}",
                self.steps,
                self.len(),
                log_probs.len()
            );
        }
        self.log_prob[slot * self.steps..(slot + 1) * self.steps].copy_from_slice(log_probs);
        Ok(())
    }

    pub fn log_prob(&self, r: StateRef) -> f32 {
        self.log_prob[r.slot * self.steps + r.i]
    }

    /// The slots of the `n` most recently pushed trajectories, oldest first.
    pub fn latest(&self, n: usize) -> Vec<usize> {
        let n = n.min(self.len());
        (0..n)
            .map(|j| (self.next + self.capacity - n + j) % self.capacity)
            .collect()
    }

    /// Every stored trajectory's (condition, final reward), oldest first (statistics per
    /// prompt over the most recent ones).
    pub fn rewards_in_push_order(&self) -> (Vec<u32>, Vec<f32>) {
        self.latest(self.len())
            .into_iter()
            .map(|s| (self.cond[s], self.reward[s]))
            .unzip()
    }

    pub fn set_priority(&mut self, r: StateRef, p: f64) {
        self.priorities.set(r.slot * self.steps + r.i, p);
    }

    pub fn priority(&self, r: StateRef) -> f64 {
        self.priorities.get(r.slot * self.steps + r.i)
    }

    pub fn total_priority(&self) -> f64 {
        self.priorities.total()
    }

    /// Every stored state that has an action, in slot order.
    pub fn all_states(&self) -> impl Iterator<Item = StateRef> + '_ {
        (0..self.len()).flat_map(move |slot| (0..self.steps).map(move |i| StateRef { slot, i }))
    }

    /// n states drawn uniformly with replacement.
    pub fn sample_uniform(&self, n: usize, rng: &mut Rng) -> Result<Vec<StateRef>> {
        if self.is_empty() {
            bail!("cannot sample from an empty replay buffer")
        }
        Ok((0..n)
            .map(|_| StateRef {
                slot: rng.random_range(0..self.len()),
                i: rng.random_range(0..self.steps),
            })
            .collect())
    }

    /// n states drawn with replacement in proportion to their priorities (no importance
    /// weights, as in the released code). None when every priority is zero.
    pub fn sample_prioritised(&self, n: usize, rng: &mut Rng) -> Option<Vec<StateRef>> {
        let total = self.priorities.total();
        if total.is_nan() || total <= 0.0 {
            return None;
        }
        Some(
            (0..n)
                .map(|_| {
                    let leaf = self.priorities.find(rng.random::<f64>() * total);
                    StateRef {
                        slot: leaf / self.steps,
                        i: leaf % self.steps,
                    }
                })
                .collect(),
        )
    }

    /// The states at `refs` and the stored actions that followed them, each [B, shape...].
    pub fn gather(&self, refs: &[StateRef], device: &Device) -> Result<(Tensor, Tensor)> {
        let mut x = Vec::with_capacity(refs.len() * self.state_len);
        let mut next = Vec::with_capacity(refs.len() * self.state_len);
        for r in refs {
            x.extend_from_slice(self.state(r.slot, r.i));
            next.extend_from_slice(self.state(r.slot, r.i + 1));
        }
        let mut shape = vec![refs.len()];
        shape.extend(&self.state_shape);
        Ok((
            Tensor::from_vec(x, shape.clone(), device)?,
            Tensor::from_vec(next, shape, device)?,
        ))
    }

    /// The buffer's contents for a checkpoint: states [len, steps+1, shape...], conds, rewards,
    /// and (next, pushed). Priorities are not saved: they are recomputed from the hook.
    pub fn to_tensors(&self) -> Result<(Tensor, Tensor, Tensor, usize, u64)> {
        let mut shape = vec![self.len(), self.steps + 1];
        shape.extend(&self.state_shape);
        Ok((
            Tensor::from_vec(self.states.clone(), shape, &Device::Cpu)?,
            Tensor::from_vec(self.cond.clone(), self.len(), &Device::Cpu)?,
            Tensor::from_vec(self.reward.clone(), self.len(), &Device::Cpu)?,
            self.next,
            self.pushed,
        ))
    }

    /// The stored log-probabilities, [len, steps], for a checkpoint.
    pub fn log_probs_tensor(&self) -> Result<Tensor> {
        Ok(Tensor::from_vec(
            self.log_prob.clone(),
            (self.len(), self.steps),
            &Device::Cpu,
        )?)
    }

    /// Restores log-probabilities saved by `log_probs_tensor` (after `restore`).
    pub fn restore_log_probs(&mut self, t: &Tensor) -> Result<()> {
        if t.dims() != [self.len(), self.steps] {
            bail!(
                "the checkpoint's buffer log-probabilities have shape {:?}, expected [{}, {}]",
                t.dims(),
                self.len(),
                self.steps
            );
        }
        self.log_prob = t.flatten_all()?.to_vec1::<f32>()?;
        Ok(())
    }

    /// Restores contents saved by `to_tensors` into an empty buffer of the same geometry;
    /// contents or indices that do not fit it are an error (never a later out-of-range slot).
    pub fn restore(
        &mut self,
        states: &Tensor,
        cond: &Tensor,
        reward: &Tensor,
        next: usize,
        pushed: u64,
    ) -> Result<()> {
        let n = cond.dim(0)?;
        let mut shape = vec![n, self.steps + 1];
        shape.extend(&self.state_shape);
        let consistent = reward.dims() == [n] && states.dims() == shape.as_slice();
        // A FIFO that has not wrapped writes its next trajectory after the stored ones.
        let next_ok = next < self.capacity && (n == self.capacity || next == n);
        if !consistent || n > self.capacity || !next_ok || pushed < n as u64 {
            bail!(
                "the checkpoint's buffer has states {:?} (next {next}), this run's buffer expects [n <= {}, {}, {:?}]",
                states.dims(),
                self.capacity,
                self.steps + 1,
                self.state_shape
            );
        }
        self.states = states.flatten_all()?.to_vec1::<f32>()?;
        self.cond = cond.to_vec1::<u32>()?;
        self.reward = reward.to_vec1::<f32>()?;
        self.log_prob = vec![f32::NAN; n * self.steps];
        self.next = next;
        self.pushed = pushed;
        self.priorities = SumTree::new(self.capacity * self.steps);
        Ok(())
    }
}
