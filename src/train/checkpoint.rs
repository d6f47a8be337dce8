//! One file holds everything a run needs to continue exactly: policy weights, AdamW
//! moments, the replay buffer, the RNG state, the epoch and the script generation.
//! Written atomically (tmp file, fsync, rename): a crash mid-write leaves the last one.
//! Every tensor and the run state carry a CRC-32, checked when the file is loaded: a
//! damaged checkpoint is an error naming the file and the key, never a silent resume.

use super::AdamW;
use crate::replay::ReplayBuffer;
use crate::rng::Rng;
use crate::script::RunConfig;
use crate::tensor_io;
use anyhow::{anyhow, bail, Result};
use candle_core::{DType, Device, Tensor, Var};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

pub const FILE: &str = "checkpoint.safetensors";
const META_KEY: &str = "sqdf";
/// The checksums' metadata key (`Checksums`).
const CRC_KEY: &str = "sqdf.crc32";

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
    write(path, state, &t)
}

/// The checksums a checkpoint carries (metadata `sqdf.crc32`): a CRC-32 of the run state's
/// JSON and one of every tensor (`tensor_io::tensor_crc`: name, dtype, shape and bytes).
#[derive(Debug, Serialize, Deserialize)]
struct Checksums {
    state: u32,
    tensors: BTreeMap<String, u32>,
}

/// Writes a checkpoint of `state` and `tensors` with their checksums, atomically.
pub fn write(
    path: &Path,
    state: &CheckpointState,
    tensors: &BTreeMap<String, Tensor>,
) -> Result<()> {
    let state = serde_json::to_string(state)?;
    let sums = Checksums {
        state: crc32fast::hash(state.as_bytes()),
        tensors: tensor_io::tensor_crcs(tensors)?,
    };
    let meta = HashMap::from([
        (META_KEY.to_string(), state),
        (CRC_KEY.to_string(), serde_json::to_string(&sums)?),
    ]);
    tensor_io::write_atomic(path, tensors, meta)
}

pub struct Loaded {
    pub state: CheckpointState,
    pub tensors: HashMap<String, Tensor>,
    /// Whether the file carried checksums (and so was verified); false only for
    /// checkpoints written before sqdf wrote them.
    pub checked: bool,
}

/// A checkpoint, its checksums verified: a damaged file (a changed byte anywhere, a key
/// added or missing) is an error naming the file and, where it can, the key.
pub fn load(path: &Path) -> Result<Loaded> {
    load_bytes(path, &tensor_io::read_bytes(path)?)
}

/// `load` of a checkpoint's bytes, read from `path` (which the errors name).
pub fn load_bytes(path: &Path, bytes: &[u8]) -> Result<Loaded> {
    let damaged = |e: &dyn std::fmt::Display| {
        anyhow!(
            "{} is damaged: not a valid safetensors file ({e}); resume from a copy, or start the run again",
            path.display()
        )
    };
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| damaged(&e))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let raw = meta.get(META_KEY).ok_or_else(|| {
        anyhow!(
            "{} is not an sqdf checkpoint (no `{META_KEY}` metadata)",
            path.display()
        )
    })?;
    // Only these two keys: a damaged name of the checksums' key must not pass for a
    // checkpoint from before checksums.
    if let Some(k) = meta.keys().find(|k| *k != META_KEY && *k != CRC_KEY) {
        return Err(anyhow!(
            "{} is damaged: unknown metadata key `{k}`; resume from a copy, or start the run again",
            path.display()
        ));
    }
    let checked = match meta.get(CRC_KEY) {
        Some(sums) => {
            verify(path, bytes, raw, sums)?;
            true
        }
        None => false,
    };
    let state: CheckpointState = serde_json::from_str(raw)
        .map_err(|e| anyhow!("{}: unreadable checkpoint metadata: {e}", path.display()))?;
    let tensors =
        candle_core::safetensors::load_buffer(bytes, &Device::Cpu).map_err(|e| damaged(&e))?;
    Ok(Loaded {
        state,
        tensors,
        checked,
    })
}

/// Checks the run state and every tensor of `bytes` against the checksums `sums`.
fn verify(path: &Path, bytes: &[u8], state: &str, sums: &str) -> Result<()> {
    let damaged = |what: String| {
        anyhow!(
            "{} is damaged: {what}; resume from a copy, or start the run again",
            path.display()
        )
    };
    let sums: Checksums = serde_json::from_str(sums).map_err(|e| {
        damaged(format!(
            "its checksums (metadata `{CRC_KEY}`) are unreadable: {e}"
        ))
    })?;
    let computed = crc32fast::hash(state.as_bytes());
    if computed != sums.state {
        return Err(damaged(format!(
            "the run state (metadata `{META_KEY}`) fails its checksum (stored {:08x}, computed {computed:08x})",
            sums.state
        )));
    }
    let file = SafeTensors::deserialize(bytes)
        .map_err(|e| damaged(format!("not a valid safetensors file ({e})")))?;
    let mut names: Vec<(&str, _)> = file.iter().collect();
    names.sort_by(|a, b| a.0.cmp(b.0));
    for (name, view) in names {
        let Some(&stored) = sums.tensors.get(name) else {
            return Err(damaged(format!("key `{name}` has no checksum")));
        };
        let computed = tensor_io::tensor_crc(name, view.dtype(), view.shape(), view.data());
        if computed != stored {
            return Err(damaged(format!(
                "key `{name}` fails its checksum (stored {stored:08x}, computed {computed:08x})"
            )));
        }
    }
    if let Some(name) = sums.tensors.keys().find(|k| file.tensor(k).is_err()) {
        return Err(damaged(format!("key `{name}` is missing")));
    }
    Ok(())
}

impl Loaded {
    pub fn get(&self, key: &str, path: &Path) -> Result<&Tensor> {
        self.tensors
            .get(key)
            .ok_or_else(|| anyhow!("{}: checkpoint has no `{key}`", path.display()))
    }

    /// `key`, which must have this dtype and shape.
    pub fn get_as(&self, key: &str, dtype: DType, dims: &[usize], path: &Path) -> Result<&Tensor> {
        let t = self.get(key, path)?;
        if t.dtype() != dtype {
            bail!(
                "{}: `{key}` is {:?}, this run expects {dtype:?}",
                path.display(),
                t.dtype()
            );
        }
        if t.dims() != dims {
            bail!(
                "{}: `{key}` has shape {:?}, this run expects {dims:?}",
                path.display(),
                t.dims()
            );
        }
        Ok(t)
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

    /// Writes the saved policy, moments and buffer into a freshly built run. Every part is
    /// checked (key, dtype, shape, the buffer's indices) before anything is set, and a
    /// part that does not fit is an error naming the file and the key.
    pub fn restore(
        &self,
        path: &Path,
        policy: &[(String, Var)],
        optim: &mut AdamW,
        buffer: &mut ReplayBuffer,
    ) -> Result<()> {
        let mut parts = Vec::with_capacity(policy.len());
        for (name, var) in policy {
            let (dtype, dims) = (var.dtype(), var.dims());
            parts.push((
                self.get_as(&format!("policy.{name}"), dtype, dims, path)?,
                self.get_as(&format!("optim.m.{name}"), dtype, dims, path)?,
                self.get_as(&format!("optim.v.{name}"), dtype, dims, path)?,
            ));
        }
        let (states, cond, reward, log_prob) = self.buffer_parts(path, buffer)?;
        for (j, ((_, var), (w, m, v))) in policy.iter().zip(parts).enumerate() {
            var.set(&w.to_device(var.device())?)?;
            optim.m[j] = m.to_device(var.device())?;
            optim.v[j] = v.to_device(var.device())?;
        }
        optim.step = self.state.optim_step;
        buffer
            .restore(
                states,
                cond,
                reward,
                self.state.buffer_next,
                self.state.buffer_pushed,
            )
            .map_err(|e| anyhow!("{}: {e:#}", path.display()))?;
        // Checkpoints written before DDPO existed have no log-probabilities: they stay NaN,
        // which only a PPO loss reads (and then fails loudly with a non-finite loss).
        match log_prob {
            Some(t) => buffer
                .restore_log_probs(t)
                .map_err(|e| anyhow!("{}: {e:#}", path.display())),
            None => Ok(()),
        }
    }

    /// The buffer's tensors, checked against `buffer`'s geometry, and its indices
    /// (`buffer_next`, `buffer_pushed`) checked against what it holds.
    #[allow(clippy::type_complexity)]
    fn buffer_parts(
        &self,
        path: &Path,
        buffer: &ReplayBuffer,
    ) -> Result<(&Tensor, &Tensor, &Tensor, Option<&Tensor>)> {
        let cond = self.get("buffer.cond", path)?;
        let n = match cond.dims() {
            [n] => *n,
            d => bail!(
                "{}: `buffer.cond` has shape {d:?}, expected one dimension",
                path.display()
            ),
        };
        let cond = self.get_as("buffer.cond", DType::U32, &[n], path)?;
        let (cap, steps) = (buffer.capacity(), buffer.steps());
        if n > cap {
            bail!(
                "{}: `buffer.cond` holds {n} trajectories, more than config.capacity = {cap}",
                path.display()
            );
        }
        let mut dims = vec![n, steps + 1];
        dims.extend(buffer.state_shape());
        let states = self.get_as("buffer.states", DType::F32, &dims, path)?;
        let reward = self.get_as("buffer.reward", DType::F32, &[n], path)?;
        let log_prob = match self.tensors.contains_key("buffer.log_prob") {
            true => Some(self.get_as("buffer.log_prob", DType::F32, &[n, steps], path)?),
            false => None,
        };
        let (next, pushed) = (self.state.buffer_next, self.state.buffer_pushed);
        // A FIFO fills slots 0, 1, ... then wraps: the next slot is the count while it
        // fills, pushed mod capacity once full.
        let expected = if n < cap {
            n
        } else {
            (pushed % cap as u64) as usize
        };
        if next != expected {
            bail!(
                "{}: `buffer_next` = {next} is out of range: the buffer holds {n} of {cap} trajectories ({pushed} pushed), so its next slot is {expected}",
                path.display()
            );
        }
        if pushed < n as u64 || (n < cap && pushed != n as u64) {
            bail!(
                "{}: `buffer_pushed` = {pushed} does not match the {n} trajectories the buffer holds (capacity {cap})",
                path.display()
            );
        }
        Ok((states, cond, reward, log_prob))
    }
}
