//! The pretrained model's evaluation samples, saved once by `sqdf pretrain digits`: every
//! run evaluates the pretrained model on the same seeds, so the 320 guided 50-step samples
//! are the same every time. A run uses them only when everything that made them matches
//! (the UNet file's bytes, steps, η, guidance, seed); otherwise it samples afresh.

use crate::tensor_io::{read, write_atomic};
use anyhow::Result;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

pub const FILE: &str = "eval_pretrained.safetensors";

/// Bumped whenever the evaluation's sampling changes (prompts, samples per prompt, seeding,
/// grid): a cache of an older protocol is never used.
pub const PROTOCOL: u32 = 1;

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

/// The cached samples [prompts * per_prompt, ...] if the cache exists and its key matches.
pub fn load(dir: &Path, key: &CacheKey, device: &Device) -> Option<Tensor> {
    let file = read(&dir.join(FILE), device).ok()?;
    let saved: CacheKey = serde_json::from_str(file.metadata.get("key")?).ok()?;
    if &saved != key {
        return None;
    }
    let samples = file.tensors.get("samples")?;
    let expected = [
        super::evaluate::PROMPTS * super::evaluate::PER_PROMPT,
        1,
        28,
        28,
    ];
    (samples.dims() == expected).then(|| samples.clone())
}

pub fn save(dir: &Path, key: &CacheKey, samples: &Tensor) -> Result<()> {
    let t = BTreeMap::from([("samples".to_string(), samples.clone())]);
    let meta = HashMap::from([("key".to_string(), serde_json::to_string(key)?)]);
    write_atomic(&dir.join(FILE), &t, meta)
}
