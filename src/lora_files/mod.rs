//! LoRA files: diffusers (PEFT) and kohya formats, and merging a kohya LoRA into base weights.
//!
//! Our adapters live in a VarMap as `<module>.lora_A.weight` [rank, in(, k, k)] and
//! `<module>.lora_B.weight` [out, rank(, 1, 1)] with the scale alpha/rank of a
//! [`LoraConfig`] (see `nn::lora`, `nn::lora_conv`). This module writes them as
//!
//! - [`peft`]: the diffusers/PEFT format that `pipe.load_lora_weights(path)` reads
//!   (`unet.<module>.lora_A.weight`, `unet.<module>.lora_B.weight`), with the scale folded
//!   into B (the file has no place for alpha that every diffusers version reads; see there);
//! - [`kohya`]: `lora_unet_<module with '.' -> '_'>.lora_down.weight` (= A),
//!   `.lora_up.weight` (= B) and `.alpha` (scalar f32), the format of kohya's sd-scripts,
//!   A1111 and ComfyUI;
//!
//! reads either back ([`load_lora`], format detected from the keys) into tensors named as
//! our VarMap expects, and merges a kohya file into base weights ([`merge`]), which is how
//! LCM-LoRA for SD-1.5 is applied.

pub mod kohya;
pub mod merge;
pub mod peft;

use anyhow::{anyhow, bail, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

pub use kohya::{kohya_name, kohya_state_dict, save_kohya, KOHYA_UNET_PREFIX};
pub use merge::{merge_kohya, merge_kohya_file, Merged};
pub use peft::{peft_state_dict, save_peft, PEFT_UNET_PREFIX};

/// Suffix of a down-projection (A) in our VarMap and in PEFT files.
pub const LORA_A: &str = ".lora_A.weight";
/// Suffix of an up-projection (B) in our VarMap and in PEFT files.
pub const LORA_B: &str = ".lora_B.weight";

/// The on-disk layout of a LoRA file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoraFormat {
    /// diffusers/PEFT: `unet.<module>.lora_A.weight`, `unet.<module>.lora_B.weight` (or
    /// diffusers' `unet.<module>.lora.down.weight`, `unet.<module>.lora.up.weight`).
    Peft,
    /// kohya: `lora_unet_<module_with_underscores>.lora_down.weight`, `.lora_up.weight`, `.alpha`.
    Kohya,
}

/// Adapters read from a LoRA file, named and shaped as our VarMap expects
/// (`<module>.lora_A.weight`, `<module>.lora_B.weight`).
///
/// The model they describe is `W + (alpha/rank) B A` for every module, with the `rank` and
/// `alpha` here: build the LoRA model with `LoraConfig { rank, alpha, .. }` and set its
/// VarMap from `tensors` (`tensor_io::set_vars`), or call [`LoadedLora::rescale_to`] first
/// to use another alpha.
#[derive(Debug, Clone)]
pub struct LoadedLora {
    pub format: LoraFormat,
    pub tensors: HashMap<String, Tensor>,
    pub rank: usize,
    pub alpha: f64,
}

impl LoadedLora {
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// The same model stated with another alpha: every B is multiplied by old/new alpha.
    pub fn rescale_to(mut self, alpha: f64) -> Result<Self> {
        if !(alpha.is_finite() && alpha != 0.0) {
            bail!("cannot restate a LoRA with alpha {alpha}");
        }
        let factor = self.alpha / alpha;
        for (name, t) in self.tensors.iter_mut() {
            if name.ends_with(LORA_B) {
                *t = scale_tensor(t, factor)?;
            }
        }
        self.alpha = alpha;
        Ok(self)
    }
}

/// The (name, shape) of every variable of an adapter VarMap, sorted by name: what
/// [`load_lora`] expects to find.
pub fn expected_adapters(varmap: &VarMap) -> Vec<(String, Vec<usize>)> {
    crate::tensor_io::sorted_vars(varmap)
        .into_iter()
        .map(|(k, v)| (k, v.dims().to_vec()))
        .collect()
}

/// Reads a LoRA file of either format into adapters named as our VarMap expects.
///
/// `expected` lists every adapter variable of the model (`expected_adapters` of its
/// VarMap, or names and shapes from elsewhere): kohya's underscore names are mapped back
/// through it (`path.replace('.', '_')` cannot be inverted). A key that maps to no
/// expected module is an error naming the file and the key; so is a shape that does not
/// fit (naming both shapes) and an expected adapter missing from the file. A linear
/// adapter stored as a 1x1 convolution ([r, in, 1, 1] for [r, in]) or the other way round
/// is reshaped: the two mean the same map.
pub fn load_lora(
    path: &Path,
    expected: &[(String, Vec<usize>)],
    device: &Device,
) -> Result<LoadedLora> {
    let file = crate::tensor_io::read(path, device)?;
    load_lora_tensors(
        &path.display().to_string(),
        &file.tensors,
        &file.metadata,
        expected,
    )
}

/// [`load_lora`] on tensors already read; `source` names them in errors.
pub fn load_lora_tensors(
    source: &str,
    tensors: &HashMap<String, Tensor>,
    metadata: &HashMap<String, String>,
    expected: &[(String, Vec<usize>)],
) -> Result<LoadedLora> {
    match detect_format(source, tensors)? {
        LoraFormat::Peft => peft::from_peft(source, tensors, metadata, expected),
        LoraFormat::Kohya => kohya::from_kohya(source, tensors, expected),
    }
}

/// Which format a file's keys are in; a mix, or neither, is an error naming the file.
pub fn detect_format(source: &str, tensors: &HashMap<String, Tensor>) -> Result<LoraFormat> {
    let mut keys: Vec<&String> = tensors.keys().collect();
    keys.sort();
    let is_peft = |k: &str| peft::peft_name(k).is_some();
    let is_kohya = |k: &str| k.starts_with("lora_") && k.contains('.') && !is_peft(k);
    let peft = keys.iter().find(|k| is_peft(k));
    let kohya = keys.iter().find(|k| is_kohya(k));
    match (peft, kohya) {
        (Some(p), Some(k)) => bail!(
            "{source}: mixes diffusers/PEFT keys (`{p}`) with kohya keys (`{k}`); cannot tell its format"
        ),
        (Some(_), None) => Ok(LoraFormat::Peft),
        (None, Some(_)) => Ok(LoraFormat::Kohya),
        (None, None) => match keys.first() {
            None => bail!("{source}: holds no tensors, not a LoRA file"),
            Some(k) => bail!(
                "{source}: not a LoRA file in diffusers/PEFT (`*.lora_A.weight`) or kohya \
                 (`lora_unet_*.lora_down.weight`) format (first key `{k}`)"
            ),
        },
    }
}

/// The expected shape of every adapter variable, by name.
pub(crate) type Shapes<'a> = HashMap<&'a str, &'a [usize]>;

/// One adapted module: its A and B.
pub(crate) struct Adapter {
    pub a: Tensor,
    pub b: Tensor,
}

/// Groups adapter tensors named `<module>.lora_A.weight` / `<module>.lora_B.weight` by
/// module (sorted); any other name, or a module with only one of A and B, is an error.
pub(crate) fn group_adapters(
    tensors: &BTreeMap<String, Tensor>,
) -> Result<BTreeMap<String, Adapter>> {
    let mut a = BTreeMap::new();
    let mut b = BTreeMap::new();
    for (name, t) in tensors {
        if let Some(m) = name.strip_suffix(LORA_A) {
            a.insert(m.to_string(), t.clone());
        } else if let Some(m) = name.strip_suffix(LORA_B) {
            b.insert(m.to_string(), t.clone());
        } else {
            bail!("`{name}` is not a LoRA adapter variable (`<module>.lora_A.weight` or `<module>.lora_B.weight`)");
        }
    }
    let mut out = BTreeMap::new();
    for (m, at) in a {
        let bt = b
            .remove(&m)
            .ok_or_else(|| anyhow!("adapter `{m}` has {m}{LORA_A} but no {m}{LORA_B}"))?;
        out.insert(m, Adapter { a: at, b: bt });
    }
    if let Some(m) = b.keys().next() {
        bail!("adapter `{m}` has {m}{LORA_B} but no {m}{LORA_A}");
    }
    Ok(out)
}

/// The adapters of a VarMap with the config they were trained under, checked: every A is
/// [rank, ...] and every B [out, rank, ...].
pub(crate) fn checked_adapters(
    varmap: &VarMap,
    cfg: &crate::nn::LoraConfig,
) -> Result<BTreeMap<String, Adapter>> {
    let tensors: BTreeMap<String, Tensor> = crate::tensor_io::sorted_vars(varmap)
        .into_iter()
        .map(|(k, v)| (k, v.as_tensor().detach()))
        .collect();
    check_config(cfg)?;
    let adapters = group_adapters(&tensors)?;
    if adapters.is_empty() {
        bail!("the VarMap holds no LoRA adapters");
    }
    for (m, ad) in &adapters {
        let (a, b) = (ad.a.dims(), ad.b.dims());
        if a.len() < 2 || a[0] != cfg.rank || b.len() < 2 || b[1] != cfg.rank {
            bail!(
                "adapter `{m}`: lora_A {a:?} and lora_B {b:?} do not have the config's rank {} \
                 (expected A [rank, in, ...], B [out, rank, ...])",
                cfg.rank
            );
        }
    }
    Ok(adapters)
}

pub(crate) fn check_config(cfg: &crate::nn::LoraConfig) -> Result<()> {
    if cfg.rank == 0 || !cfg.alpha.is_finite() {
        bail!("invalid LoRA config: rank {} alpha {}", cfg.rank, cfg.alpha);
    }
    Ok(())
}

/// `t * factor`, computed in f32 and cast back to `t`'s dtype.
pub(crate) fn scale_tensor(t: &Tensor, factor: f64) -> Result<Tensor> {
    if factor == 1.0 {
        return Ok(t.clone());
    }
    Ok(t.to_dtype(DType::F32)?
        .affine(factor, 0.0)?
        .to_dtype(t.dtype())?)
}

/// Whether a file's shape can stand for the expected one: equal, or equal once trailing
/// 1x1 kernel dimensions are dropped (a linear map stored as a 1x1 convolution).
pub(crate) fn shape_fits(found: &[usize], expected: &[usize]) -> bool {
    fn core(d: &[usize]) -> &[usize] {
        let mut n = d.len();
        while n > 2 && d[n - 1] == 1 {
            n -= 1;
        }
        &d[..n]
    }
    found == expected || core(found) == core(expected)
}

/// Places a file tensor under its expected name and shape, or says why not.
pub(crate) fn fit(
    source: &str,
    key: &str,
    t: &Tensor,
    name: &str,
    expected: &Shapes,
) -> Result<Tensor> {
    let shape = expected.get(name).ok_or_else(|| {
        anyhow!("{source}: key `{key}` maps to `{name}`, which the model does not have")
    })?;
    if !shape_fits(t.dims(), shape) {
        bail!(
            "{source}: key `{key}` has shape {:?}, the model's `{name}` has shape {shape:?}",
            t.dims()
        );
    }
    Ok(if t.dims() == *shape {
        t.clone()
    } else {
        t.reshape(*shape)?
    })
}

/// The modules of the expected adapter list (names without `.lora_A.weight`), and the
/// shape of every expected variable; non-adapter names are an error.
pub(crate) fn expected_modules(
    expected: &[(String, Vec<usize>)],
) -> Result<(Vec<String>, Shapes<'_>)> {
    let mut modules = Vec::new();
    let mut shapes = HashMap::new();
    for (name, shape) in expected {
        if let Some(m) = name.strip_suffix(LORA_A) {
            modules.push(m.to_string());
        } else if !name.ends_with(LORA_B) {
            bail!("expected adapter `{name}` is not named `<module>.lora_A.weight` or `<module>.lora_B.weight`");
        }
        shapes.insert(name.as_str(), shape.as_slice());
    }
    modules.sort();
    Ok((modules, shapes))
}

/// Errors unless every expected variable was found.
pub(crate) fn check_complete(
    source: &str,
    found: &HashMap<String, Tensor>,
    expected: &[(String, Vec<usize>)],
) -> Result<()> {
    let missing: Vec<&str> = expected
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| !found.contains_key(*n))
        .collect();
    if let Some(first) = missing.first() {
        bail!(
            "{source}: has no adapter for {} of the model's {} adapter variables (first: `{first}`)",
            missing.len(),
            expected.len()
        );
    }
    Ok(())
}

/// The single-element tensor as f64 (kohya's `.alpha` is a scalar, sometimes [1]).
pub(crate) fn scalar(source: &str, key: &str, t: &Tensor) -> Result<f64> {
    if t.elem_count() != 1 {
        bail!(
            "{source}: key `{key}` should be a scalar, it has shape {:?}",
            t.dims()
        );
    }
    Ok(t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?[0])
}
