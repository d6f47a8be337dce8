//! Merging a kohya LoRA file (e.g. LCM-LoRA for SD-1.5) into base weights:
//! `W' = W + (alpha/rank) * (up.flatten(1) @ down.flatten(1)).reshape(W.shape)` for every
//! module, 3x3 convolutions included (down [r, in, 3, 3], up [out, r, 1, 1]).
//!
//! A kohya module is found by mapping every base key `X.weight` to
//! `<prefix>` + `X.replace('.', '_')` (`lora_unet_` for a diffusers-named UNet). The math
//! is done in f32 on the base tensor's device and cast back to the base dtype.

use super::kohya::{group_kohya, kohya_name, module_alpha, up_down, KOHYA_UNET_PREFIX};
use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// The prefixes kohya gives the parts of an SD pipeline. A file's modules under another
/// of these than the one merged belong to another model (the text encoder) and are
/// skipped, not errors.
pub const KOHYA_PREFIXES: [&str; 4] = ["lora_unet_", "lora_te_", "lora_te1_", "lora_te2_"];

/// Base weights with a LoRA merged in.
#[derive(Debug)]
pub struct Merged {
    /// The base map with every changed tensor replaced.
    pub tensors: HashMap<String, Tensor>,
    /// The base keys that changed, sorted.
    pub merged: Vec<String>,
    /// The file's modules that belong to another model of the pipeline (another kohya
    /// prefix, e.g. `lora_te_...` when merging a UNet), sorted; not merged.
    pub skipped: Vec<String>,
}

/// Reads a kohya LoRA file and merges its `lora_unet_` modules into `base` (diffusers
/// UNet keys). See [`merge_kohya`].
pub fn merge_kohya_file(path: &Path, base: HashMap<String, Tensor>) -> Result<Merged> {
    let device = base
        .values()
        .next()
        .map(|t| t.device().clone())
        .unwrap_or(candle_core::Device::Cpu);
    let file = crate::tensor_io::read(path, &device)?;
    merge_kohya(
        &path.display().to_string(),
        &file.tensors,
        base,
        KOHYA_UNET_PREFIX,
    )
}

/// Merges kohya LoRA tensors (named `source` in errors) into `base`, for the modules under
/// `prefix`. Every module under `prefix` must map to a base key `X.weight` with a fitting
/// shape (else an error naming the source and the key); a missing `.alpha` means
/// alpha = rank; modules under another of [`KOHYA_PREFIXES`] are skipped and listed; any
/// other key is an error.
pub fn merge_kohya(
    source: &str,
    lora: &HashMap<String, Tensor>,
    mut base: HashMap<String, Tensor>,
    prefix: &str,
) -> Result<Merged> {
    // kohya name -> base key, from the base's own keys; names two keys share are recorded.
    let mut by_name: HashMap<String, Vec<&str>> = HashMap::new();
    for key in base.keys() {
        if let Some(x) = key.strip_suffix(".weight") {
            by_name.entry(kohya_name(prefix, x)).or_default().push(key);
        }
    }
    let grouped = group_kohya(source, lora)?;
    let mut updates = Vec::new();
    let mut skipped = Vec::new();
    for (kname, km) in &grouped {
        let (down_key, down) = km.down.as_ref().unwrap();
        let (up_key, up) = km.up.as_ref().unwrap();
        if !kname.starts_with(prefix) {
            if KOHYA_PREFIXES.iter().any(|p| kname.starts_with(p)) {
                skipped.push(kname.clone());
                continue;
            }
            bail!("{source}: key `{down_key}` is not a kohya LoRA module under `{prefix}`");
        }
        let base_key = match by_name.get(kname).map(|v| v.as_slice()) {
            Some([k]) => k.to_string(),
            Some(several) => {
                bail!("{source}: key `{down_key}` is ambiguous: base keys {several:?} all map to `{kname}`")
            }
            None => bail!("{source}: key `{down_key}` maps to no base weight (no `X.weight` with `{prefix}X` = `{kname}`)"),
        };
        let w = &base[&base_key];
        let rank = down.dims().first().copied().unwrap_or(0);
        let up_rank = up.dims().get(1).copied().unwrap_or(0);
        let out = up.dims().first().copied().unwrap_or(0);
        let fits = rank > 0
            && up_rank == rank
            && up.elem_count() == out * rank
            && w.dims().first() == Some(&out)
            && down.elem_count() * out == w.elem_count() * rank;
        if !fits {
            bail!(
                "{source}: `{down_key}` {:?} and `{up_key}` {:?} do not fit the base weight `{base_key}` {:?}",
                down.dims(),
                up.dims(),
                w.dims()
            );
        }
        let alpha = module_alpha(source, km, rank)?;
        let scale = alpha / rank as f64;
        let dev = w.device();
        let delta = up_down(&up.to_device(dev)?, &down.to_device(dev)?)?
            .affine(scale, 0.0)?
            .reshape(w.dims())?;
        let merged = (w.to_dtype(DType::F32)? + delta)?.to_dtype(w.dtype())?;
        updates.push((base_key, merged));
    }
    let mut merged_keys = Vec::with_capacity(updates.len());
    for (k, t) in updates {
        base.insert(k.clone(), t);
        merged_keys.push(k);
    }
    merged_keys.sort();
    Ok(Merged {
        tensors: base,
        merged: merged_keys,
        skipped,
    })
}
