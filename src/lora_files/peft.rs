//! The diffusers/PEFT LoRA format: `unet.<module>.lora_A.weight` [r, in(, k, k)] and
//! `unet.<module>.lora_B.weight` [out, r(, 1, 1)], what `pipe.load_lora_weights(path)`
//! (`StableDiffusionLoraLoaderMixin`) reads and `save_lora_weights` writes. diffusers'
//! LoRA training scripts pass the state through `convert_state_dict_to_diffusers` first,
//! which renames A and B to `.lora.down.weight` and `.lora.up.weight`; those names are read
//! as A and B (tests/it/parity.rs loads both files diffusers 0.42 writes).
//!
//! How diffusers learns alpha (read in diffusers' `loaders/lora_pipeline.py`,
//! `loaders/peft.py::load_lora_adapter`, `utils/peft_utils.py::get_peft_kwargs` and
//! `_create_lora_config`, `loaders/lora_base.py`):
//!
//! - A plain PEFT-format state dict carries no alpha. `get_peft_kwargs` takes the rank
//!   from `lora_B.shape[1]` and sets `lora_alpha = r` (scale 1): the file means
//!   `W + B A`.
//! - `network_alphas` exist only for kohya files: `_convert_non_diffusers_lora_to_diffusers`
//!   turns each `lora_unet_*.alpha` into `unet.<module>.alpha` and passes them as
//!   `lora_alpha` / `alpha_pattern`. They cannot be given alongside PEFT keys in one file.
//! - Since diffusers 0.34 (PR #11324, June 2025) `save_lora_weights(...,
//!   unet_lora_adapter_metadata=...)` writes the PEFT `LoraConfig` as JSON under the
//!   safetensors metadata key `lora_adapter_metadata` (keys prefixed `unet.`, e.g.
//!   `unet.lora_alpha`), and `lora_state_dict` reads it back and uses it instead of the
//!   inferred config. Older diffusers ignore it and use alpha = rank.
//!
//! So there is no alpha a plain safetensors file can state that every diffusers version
//! honours. [`save_peft`] therefore folds the scale into B: the file holds `A` and
//! `(alpha/rank) B` and means exactly our model under alpha = rank, which is what every
//! diffusers version assumes when the file has no `lora_adapter_metadata` (and we write
//! none). The training alpha is kept only as information in the metadata
//! (`sqdf.trained_alpha`). Reading a PEFT file ([`from_peft`]) honours
//! `lora_adapter_metadata` when a diffusers >= 0.34 file has it (`lora_alpha`,
//! `use_rslora`), and otherwise reports alpha = rank.

use super::{
    check_complete, checked_adapters, expected_modules, fit, scale_tensor, LoadedLora, LoraFormat,
    LORA_A, LORA_B,
};
use crate::nn::LoraConfig;
use anyhow::{anyhow, bail, Result};
use candle_core::Tensor;
use candle_nn::VarMap;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The prefix diffusers' `StableDiffusionLoraLoaderMixin` gives UNet adapters (`unet_name`).
pub const PEFT_UNET_PREFIX: &str = "unet.";

/// The safetensors metadata key under which diffusers >= 0.34 stores the LoraConfig as JSON.
pub const LORA_ADAPTER_METADATA_KEY: &str = "lora_adapter_metadata";

/// The diffusers/PEFT state dict of an adapter VarMap trained under `cfg`: keys
/// `unet.<module>.lora_A.weight` = A and `unet.<module>.lora_B.weight` = (alpha/rank) B,
/// so the file means the same model under diffusers' default alpha = rank.
pub fn peft_state_dict(adapters: &VarMap, cfg: &LoraConfig) -> Result<BTreeMap<String, Tensor>> {
    let mut out = BTreeMap::new();
    for (m, ad) in checked_adapters(adapters, cfg)? {
        out.insert(format!("{PEFT_UNET_PREFIX}{m}{LORA_A}"), ad.a);
        out.insert(
            format!("{PEFT_UNET_PREFIX}{m}{LORA_B}"),
            scale_tensor(&ad.b, cfg.scale())?,
        );
    }
    Ok(out)
}

/// Writes [`peft_state_dict`] to `path` (atomically), loadable with diffusers'
/// `pipe.load_lora_weights(path)`; the scale alpha/rank is folded into B (module doc).
pub fn save_peft(path: &Path, adapters: &VarMap, cfg: &LoraConfig) -> Result<()> {
    let tensors = peft_state_dict(adapters, cfg)?;
    let metadata = HashMap::from([
        // What diffusers' own save writes.
        ("format".to_string(), "pt".to_string()),
        ("sqdf.rank".to_string(), cfg.rank.to_string()),
        ("sqdf.trained_alpha".to_string(), cfg.alpha.to_string()),
        (
            "sqdf.note".to_string(),
            "lora_B holds (trained_alpha/rank) * B: the file means W + B A (alpha = rank)"
                .to_string(),
        ),
    ]);
    crate::tensor_io::write_atomic(path, &tensors, metadata)
}

/// What a diffusers `lora_adapter_metadata` says about the scale, for the UNet.
struct PeftMeta {
    lora_alpha: Option<f64>,
    rank: Option<usize>,
    use_rslora: bool,
}

fn parse_metadata(source: &str, metadata: &HashMap<String, String>) -> Result<Option<PeftMeta>> {
    let Some(raw) = metadata.get(LORA_ADAPTER_METADATA_KEY) else {
        return Ok(None);
    };
    let json: serde_json::Value = serde_json::from_str(raw).map_err(|e| {
        anyhow!("{source}: metadata `{LORA_ADAPTER_METADATA_KEY}` is not valid JSON: {e}")
    })?;
    let obj = json.as_object().ok_or_else(|| {
        anyhow!("{source}: metadata `{LORA_ADAPTER_METADATA_KEY}` is not a JSON object")
    })?;
    // diffusers packs the config with the component's prefix (`unet.lora_alpha`); accept
    // an unprefixed config too.
    let get = |k: &str| {
        obj.get(&format!("{PEFT_UNET_PREFIX}{k}"))
            .or_else(|| obj.get(k))
    };
    let non_empty = |k: &str| {
        get(k)
            .map(|v| !(v.is_null() || v.as_object().is_some_and(|o| o.is_empty())))
            .unwrap_or(false)
    };
    for k in ["alpha_pattern", "rank_pattern"] {
        if non_empty(k) {
            bail!("{source}: `{LORA_ADAPTER_METADATA_KEY}` sets a per-module `{k}`, which is not supported (one rank and alpha for all modules)");
        }
    }
    if get("use_dora").and_then(|v| v.as_bool()) == Some(true) {
        bail!(
            "{source}: a DoRA adapter (`use_dora` in `{LORA_ADAPTER_METADATA_KEY}`), not supported"
        );
    }
    Ok(Some(PeftMeta {
        lora_alpha: get("lora_alpha").and_then(|v| v.as_f64()),
        rank: get("r").and_then(|v| v.as_u64()).map(|r| r as usize),
        use_rslora: get("use_rslora").and_then(|v| v.as_bool()).unwrap_or(false),
    }))
}

/// diffusers' names for A and B (`convert_state_dict_to_diffusers`).
pub const DIFFUSERS_DOWN: &str = ".lora.down.weight";
pub const DIFFUSERS_UP: &str = ".lora.up.weight";

/// `key` with A and B named as PEFT names them (`.lora_A.weight`, `.lora_B.weight`), or
/// None when it is neither.
pub(crate) fn peft_name(key: &str) -> Option<String> {
    if key.ends_with(LORA_A) || key.ends_with(LORA_B) {
        return Some(key.to_string());
    }
    if let Some(m) = key.strip_suffix(DIFFUSERS_DOWN) {
        return Some(format!("{m}{LORA_A}"));
    }
    key.strip_suffix(DIFFUSERS_UP)
        .map(|m| format!("{m}{LORA_B}"))
}

/// Reads diffusers/PEFT tensors (keys with or without the `unet.` prefix) into our names.
pub(crate) fn from_peft(
    source: &str,
    tensors: &HashMap<String, Tensor>,
    metadata: &HashMap<String, String>,
    expected: &[(String, Vec<usize>)],
) -> Result<LoadedLora> {
    let (_, shapes) = expected_modules(expected)?;
    let mut keys: Vec<&String> = tensors.keys().collect();
    keys.sort();
    let mut out = HashMap::new();
    let mut rank = None;
    for key in keys {
        let Some(canonical) = peft_name(key) else {
            bail!("{source}: key `{key}` is not a LoRA A/B weight (`*.lora_A.weight`, `*.lora_B.weight`, or diffusers' `*.lora.down.weight`, `*.lora.up.weight`); LoRA biases, DoRA and other extras are not supported");
        };
        let name = canonical
            .strip_prefix(PEFT_UNET_PREFIX)
            .unwrap_or(&canonical);
        if name.starts_with("text_encoder") {
            bail!("{source}: key `{key}` adapts the text encoder; sqdf's LoRA covers the UNet only (a file trained with text-encoder adapters describes another model)");
        }
        if !shapes.contains_key(name) {
            bail!("{source}: key `{key}` maps to no adapter of the model (`{name}`)");
        }
        let t = fit(source, key, &tensors[key], name, &shapes)?;
        if name.ends_with(LORA_A) {
            rank.get_or_insert(t.dims()[0]);
        }
        out.insert(name.to_string(), t);
    }
    check_complete(source, &out, expected)?;
    let rank = rank.ok_or_else(|| anyhow!("{source}: holds no lora_A weights"))?;
    let alpha = match parse_metadata(source, metadata)? {
        None => rank as f64,
        Some(meta) => {
            if let Some(r) = meta.rank {
                if r != rank {
                    bail!("{source}: `{LORA_ADAPTER_METADATA_KEY}` says r = {r}, the tensors have rank {rank}");
                }
            }
            // diffusers builds `LoraConfig(**metadata)`, so a missing `lora_alpha` is PEFT's
            // default, 8.
            let alpha = meta.lora_alpha.unwrap_or(8.0);
            // rsLoRA scales by alpha / sqrt(r); as alpha' / r that is alpha' = alpha sqrt(r).
            if meta.use_rslora {
                alpha * (rank as f64).sqrt()
            } else {
                alpha
            }
        }
    };
    Ok(LoadedLora {
        format: LoraFormat::Peft,
        tensors: out,
        rank,
        alpha,
    })
}
