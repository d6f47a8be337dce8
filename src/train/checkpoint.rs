//! One file holds everything a run needs to continue exactly: policy weights, AdamW
//! moments, the replay buffer, the RNG state, the epoch and the script generation.
//! Written atomically (tmp file, fsync, rename): a crash mid-write leaves the last one.

use super::AdamW;
use crate::replay::ReplayBuffer;
use crate::rng::Rng;
use crate::script::RunConfig;
use crate::tensor_io;
use anyhow::{anyhow, bail, Result};
use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

pub const FILE: &str = "checkpoint.safetensors";
const META_KEY: &str = "sqdf";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointState {
    pub epoch: usize,
    pub generation: u64,
    pub script: String,
    /// FNV-1a of the script sources at the checkpoint: a resume with other sources is a new generation.
    pub script_hash: String,
    pub config: RunConfig,
    pub optim_step: u64,
    pub rng: Rng,
    pub buffer_next: usize,
    pub buffer_pushed: u64,
    pub nan_streak: usize,
    /// A black-box run's rounds (absent in other runs and in older checkpoints).
    #[serde(default)]
    pub blackbox: Option<BlackBoxState>,
}

/// What Algorithm 2 adds to a checkpoint besides tensors (the labelled set and the
/// previous round's policy are tensors, `blackbox.*` and `previous.*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlackBoxState {
    /// Rounds started so far.
    pub round: usize,
    pub oracle_used: usize,
    pub oracle_rng: Rng,
}

/// FNV-1a, 64 bit: a stable fingerprint of script sources.
pub fn fingerprint(parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0)) {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    format!("{h:016x}")
}

pub fn save(
    path: &Path,
    state: &CheckpointState,
    policy: &[(String, Var)],
    optim: &AdamW,
    buffer: &ReplayBuffer,
    extra: Vec<(String, Tensor)>,
) -> Result<()> {
    let mut t: BTreeMap<String, Tensor> = extra.into_iter().collect();
    for (j, (name, var)) in policy.iter().enumerate() {
        t.insert(format!("policy.{name}"), var.as_tensor().clone());
        t.insert(format!("optim.m.{name}"), optim.m[j].clone());
        t.insert(format!("optim.v.{name}"), optim.v[j].clone());
    }
    let (states, cond, reward, _, _) = buffer.to_tensors()?;
    t.insert("buffer.states".into(), states);
    t.insert("buffer.cond".into(), cond);
    t.insert("buffer.reward".into(), reward);
    t.insert("buffer.log_prob".into(), buffer.log_probs_tensor()?);
    let meta = HashMap::from([(META_KEY.to_string(), serde_json::to_string(state)?)]);
    tensor_io::write_atomic(path, &t, meta)
}

pub struct Loaded {
    pub state: CheckpointState,
    pub tensors: HashMap<String, Tensor>,
}

pub fn load(path: &Path) -> Result<Loaded> {
    let file = tensor_io::read(path, &Device::Cpu)?;
    let raw = file.metadata.get(META_KEY).ok_or_else(|| {
        anyhow!(
            "{} is not an sqdf checkpoint (no `{META_KEY}` metadata)",
            path.display()
        )
    })?;
    let state: CheckpointState = serde_json::from_str(raw)
        .map_err(|e| anyhow!("{}: unreadable checkpoint metadata: {e}", path.display()))?;
    Ok(Loaded {
        state,
        tensors: file.tensors,
    })
}

impl Loaded {
    pub fn get(&self, key: &str, path: &Path) -> Result<&Tensor> {
        self.tensors
            .get(key)
            .ok_or_else(|| anyhow!("{}: checkpoint has no `{key}`", path.display()))
    }

    /// The policy weights alone, under their model names.
    pub fn policy_tensors(&self) -> HashMap<String, Tensor> {
        self.prefixed("policy.")
    }

    /// The tensors saved under `prefix`, without it.
    pub fn prefixed(&self, prefix: &str) -> HashMap<String, Tensor> {
        self.tensors
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(prefix).map(|n| (n.to_string(), v.clone())))
            .collect()
    }

    /// Writes the saved policy, moments and buffer into a freshly built run.
    pub fn restore(
        &self,
        path: &Path,
        policy: &[(String, Var)],
        optim: &mut AdamW,
        buffer: &mut ReplayBuffer,
    ) -> Result<()> {
        for (j, (name, var)) in policy.iter().enumerate() {
            let w = self.get(&format!("policy.{name}"), path)?;
            if w.dims() != var.dims() {
                bail!(
                    "{}: policy.{name} has shape {:?}, the model expects {:?}",
                    path.display(),
                    w.dims(),
                    var.dims()
                );
            }
            var.set(&w.to_device(var.device())?)?;
            optim.m[j] = self
                .get(&format!("optim.m.{name}"), path)?
                .to_device(var.device())?;
            optim.v[j] = self
                .get(&format!("optim.v.{name}"), path)?
                .to_device(var.device())?;
        }
        optim.step = self.state.optim_step;
        buffer.restore(
            self.get("buffer.states", path)?,
            self.get("buffer.cond", path)?,
            self.get("buffer.reward", path)?,
            self.state.buffer_next,
            self.state.buffer_pushed,
        )?;
        // Checkpoints written before DDPO existed have no log-probabilities: they stay NaN,
        // which only a PPO loss reads (and then fails loudly with a non-finite loss).
        match self.tensors.get("buffer.log_prob") {
            Some(t) => buffer.restore_log_probs(t),
            None => Ok(()),
        }
    }
}
