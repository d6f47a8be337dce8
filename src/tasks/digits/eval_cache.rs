//! The pretrained model's evaluation samples, saved once by `sqdf pretrain digits`: every
//! run evaluates the pretrained model on the same seeds, so the 320 guided 50-step samples
//! are the same every time. A run uses them only when everything that made them matches
//! (the UNet file's bytes, steps, η, guidance, seed); otherwise it samples afresh. The file
//! holds one tensor per evaluation size: `samples` (the protocol's 32 per digit) and
//! `samples_8` (the evaluations along training, 8 per digit).

use crate::tensor_io::{read, write_atomic};
use anyhow::Result;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

pub const FILE: &str = "eval_pretrained.safetensors";

/// Bumped whenever the evaluation's sampling changes (prompts, samples per prompt, seeding,
/// grid, batching): a cache of an older protocol is never used. 2: several prompts per
/// sampling batch, which changes the samples by rounding (at most about 4e-4). 3: the
/// UNet's CPU forward in parts of `unet::CPU_PART_ROWS` rows (rounding again).
pub const PROTOCOL: u32 = 3;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheKey {
    pub protocol: u32,
    /// FNV-1a of the UNet weight file's bytes.
    pub unet: String,
    pub steps: usize,
    pub eta: f64,
    pub guidance: f64,
    pub seed: u64,
}

/// FNV-1a, 64 bit, of a file's bytes.
pub fn file_fingerprint(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path)?;
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    Ok(format!("{h:016x}"))
}

fn name(per_prompt: usize) -> String {
    if per_prompt == super::evaluate::PER_PROMPT {
        "samples".into()
    } else {
        format!("samples_{per_prompt}")
    }
}

/// The file's tensors if it exists and its key matches.
fn matching(dir: &Path, key: &CacheKey, device: &Device) -> Option<HashMap<String, Tensor>> {
    let file = read(&dir.join(FILE), device).ok()?;
    let saved: CacheKey = serde_json::from_str(file.metadata.get("key")?).ok()?;
    (&saved == key).then_some(file.tensors)
}

/// The cached samples [prompts * per_prompt, ...] if the cache exists, its key matches and
/// it holds this size.
pub fn load(dir: &Path, key: &CacheKey, per_prompt: usize, device: &Device) -> Option<Tensor> {
    let tensors = matching(dir, key, device)?;
    let samples = tensors.get(&name(per_prompt))?;
    let expected = [super::evaluate::PROMPTS * per_prompt, 1, 28, 28];
    (samples.dims() == expected).then(|| samples.clone())
}

/// Stores the samples of one size, keeping the other sizes if the key still matches.
pub fn save(dir: &Path, key: &CacheKey, per_prompt: usize, samples: &Tensor) -> Result<()> {
    let mut t: BTreeMap<String, Tensor> = matching(dir, key, &Device::Cpu)
        .unwrap_or_default()
        .into_iter()
        .collect();
    t.insert(name(per_prompt), samples.to_device(&Device::Cpu)?);
    let meta = HashMap::from([("key".to_string(), serde_json::to_string(key)?)]);
    write_atomic(&dir.join(FILE), &t, meta)
}
