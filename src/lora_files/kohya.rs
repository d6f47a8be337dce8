//! The kohya (sd-scripts, A1111, ComfyUI) LoRA format for a diffusers-named UNet:
//! `lora_unet_<module path with '.' -> '_'>.lora_down.weight` (= our A),
//! `.lora_up.weight` (= our B) and `.alpha` (a scalar f32; scale alpha/rank, and a
//! missing alpha means alpha = rank).
//!
//! Shapes: a linear module has down [r, in], up [out, r]; a convolution down
//! [r, in, k, k] (the base's kernel) and up [out, r, 1, 1]. These are exactly the shapes
//! of our adapters (`nn::lora::Proj`, `nn::lora_conv::ConvProj`), so nothing is reshaped
//! on save; on load a linear adapter stored as a 1x1 convolution ([r, in, 1, 1], as some
//! trainers write `proj_in`/`proj_out`) is reshaped to [r, in].
//!
//! diffusers reads these files too (`_convert_non_diffusers_lora_to_diffusers` turns each
//! `.alpha` into a per-module network alpha), so no scale is folded here.

use super::{
    check_complete, checked_adapters, expected_modules, fit, scalar, scale_tensor, LoadedLora,
    LoraFormat, LORA_A, LORA_B,
};
use crate::nn::LoraConfig;
use anyhow::{anyhow, bail, Result};
use candle_core::{DType, Tensor};
use candle_nn::VarMap;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The prefix of UNet modules in kohya files.
pub const KOHYA_UNET_PREFIX: &str = "lora_unet_";

const DOWN: &str = "lora_down.weight";
const UP: &str = "lora_up.weight";
const ALPHA: &str = "alpha";

/// kohya's name for the module at `path` (`down_blocks.0.resnets.0.conv1` ->
/// `lora_unet_down_blocks_0_resnets_0_conv1` with the UNet prefix).
pub fn kohya_name(prefix: &str, path: &str) -> String {
    format!("{prefix}{}", path.replace('.', "_"))
}

/// The kohya state dict of an adapter VarMap trained under `cfg`: down = A, up = B,
/// alpha = cfg.alpha (scalar f32) for every module. Two module paths that give the same
/// kohya name are an error.
pub fn kohya_state_dict(adapters: &VarMap, cfg: &LoraConfig) -> Result<BTreeMap<String, Tensor>> {
    let mut out = BTreeMap::new();
    let mut seen: HashMap<String, String> = HashMap::new();
    for (m, ad) in checked_adapters(adapters, cfg)? {
        let k = kohya_name(KOHYA_UNET_PREFIX, &m);
        if let Some(other) = seen.insert(k.clone(), m.clone()) {
            bail!("modules `{other}` and `{m}` both have the kohya name `{k}`");
        }
        let alpha = Tensor::new(cfg.alpha as f32, ad.a.device())?;
        out.insert(format!("{k}.{DOWN}"), ad.a);
        out.insert(format!("{k}.{UP}"), ad.b);
        out.insert(format!("{k}.{ALPHA}"), alpha);
    }
    Ok(out)
}

/// Writes [`kohya_state_dict`] to `path` (atomically), with kohya's `ss_network_*`
/// metadata so that UIs show the rank and alpha.
pub fn save_kohya(path: &Path, adapters: &VarMap, cfg: &LoraConfig) -> Result<()> {
    let tensors = kohya_state_dict(adapters, cfg)?;
    let metadata = HashMap::from([
        ("ss_network_module".to_string(), "networks.lora".to_string()),
        ("ss_network_dim".to_string(), cfg.rank.to_string()),
        ("ss_network_alpha".to_string(), cfg.alpha.to_string()),
    ]);
    crate::tensor_io::write_atomic(path, &tensors, metadata)
}

/// One kohya module's tensors.
#[derive(Default)]
pub(crate) struct KohyaModule {
    pub down: Option<(String, Tensor)>,
    pub up: Option<(String, Tensor)>,
    pub alpha: Option<(String, Tensor)>,
}

/// Groups kohya keys by module (the part before the first '.'), sorted; a key with
/// another suffix than `lora_down.weight`, `lora_up.weight`, `alpha` (LyCORIS, DoRA...)
/// or a module without both down and up is an error naming the file and the key.
pub(crate) fn group_kohya(
    source: &str,
    tensors: &HashMap<String, Tensor>,
) -> Result<BTreeMap<String, KohyaModule>> {
    let mut modules: BTreeMap<String, KohyaModule> = BTreeMap::new();
    let mut keys: Vec<&String> = tensors.keys().collect();
    keys.sort();
    for key in keys {
        let (module, suffix) = key.split_once('.').ok_or_else(|| {
            anyhow!("{source}: key `{key}` is not a kohya LoRA key (`<module>.lora_down.weight`)")
        })?;
        let entry = modules.entry(module.to_string()).or_default();
        let slot = match suffix {
            DOWN => &mut entry.down,
            UP => &mut entry.up,
            ALPHA => &mut entry.alpha,
            _ => bail!(
                "{source}: key `{key}` is not a kohya LoRA weight (`.lora_down.weight`, `.lora_up.weight`, `.alpha`); LyCORIS/DoRA files are not supported"
            ),
        };
        *slot = Some((key.clone(), tensors[key].clone()));
    }
    for (m, e) in &modules {
        if e.down.is_none() || e.up.is_none() {
            let has = e
                .down
                .as_ref()
                .or(e.up.as_ref())
                .or(e.alpha.as_ref())
                .unwrap();
            bail!(
                "{source}: module `{m}` (key `{}`) lacks its lora_down or lora_up weight",
                has.0
            );
        }
    }
    Ok(modules)
}

/// The alpha of a kohya module: its `.alpha`, or its rank when it has none.
pub(crate) fn module_alpha(source: &str, m: &KohyaModule, rank: usize) -> Result<f64> {
    match &m.alpha {
        Some((key, t)) => scalar(source, key, t),
        None => Ok(rank as f64),
    }
}

/// Reads kohya tensors into our names, mapping each kohya module back through the
/// expected adapters' paths. One alpha is reported (the most common one); a module whose
/// own alpha differs has the ratio folded into its B, so every module keeps its scale.
pub(crate) fn from_kohya(
    source: &str,
    tensors: &HashMap<String, Tensor>,
    expected: &[(String, Vec<usize>)],
) -> Result<LoadedLora> {
    let (modules, shapes) = expected_modules(expected)?;
    // kohya name -> our module path; a name two paths share is only an error when used.
    let mut by_name: HashMap<String, Vec<&str>> = HashMap::new();
    for m in &modules {
        by_name
            .entry(kohya_name(KOHYA_UNET_PREFIX, m))
            .or_default()
            .push(m);
    }
    let grouped = group_kohya(source, tensors)?;
    let mut found = Vec::new();
    let mut rank = None;
    for (kname, km) in &grouped {
        let (down_key, down) = km.down.as_ref().unwrap();
        let (up_key, up) = km.up.as_ref().unwrap();
        let path = match by_name.get(kname).map(|v| v.as_slice()) {
            Some([p]) => *p,
            Some(several) => bail!(
                "{source}: key `{down_key}` is ambiguous: modules {several:?} all have the kohya name `{kname}`"
            ),
            None if kname.starts_with("lora_te") => bail!(
                "{source}: key `{down_key}` adapts the text encoder; sqdf's LoRA covers the UNet only (a file trained with text-encoder adapters describes another model)"
            ),
            None => bail!("{source}: key `{down_key}` maps to no module of the model"),
        };
        let a = fit(source, down_key, down, &format!("{path}{LORA_A}"), &shapes)?;
        let b = fit(source, up_key, up, &format!("{path}{LORA_B}"), &shapes)?;
        let r = a.dims()[0];
        rank.get_or_insert(r);
        let alpha = module_alpha(source, km, r)?;
        found.push((path.to_string(), a, b, alpha));
    }
    let rank = rank.ok_or_else(|| anyhow!("{source}: holds no LoRA modules"))?;
    // The most common alpha (ties: the smallest), compared bit for bit.
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for (.., alpha) in &found {
        *counts.entry(alpha.to_bits()).or_default() += 1;
    }
    let common = counts
        .iter()
        .map(|(bits, n)| (f64::from_bits(*bits), *n))
        .max_by(|x, y| x.1.cmp(&y.1).then(y.0.total_cmp(&x.0)))
        .map(|(a, _)| a)
        .unwrap();
    if common == 0.0 {
        bail!("{source}: alpha is 0 (the LoRA changes nothing)");
    }
    let mut out = HashMap::new();
    for (path, a, b, alpha) in found {
        let b = if alpha == common {
            b
        } else {
            scale_tensor(&b, alpha / common)?
        };
        out.insert(format!("{path}{LORA_A}"), a);
        out.insert(format!("{path}{LORA_B}"), b);
    }
    check_complete(source, &out, expected)?;
    Ok(LoadedLora {
        format: LoraFormat::Kohya,
        tensors: out,
        rank,
        alpha: common,
    })
}

/// `up.flatten(1) @ down.flatten(1)` in f32: [out, in * k * k].
pub(crate) fn up_down(up: &Tensor, down: &Tensor) -> Result<Tensor> {
    let up = up.to_dtype(DType::F32)?.flatten_from(1)?;
    let down = down.to_dtype(DType::F32)?.flatten_from(1)?;
    Ok(up.matmul(&down)?)
}
