//! Loading frozen models of any dtype from safetensors or PyTorch (`.pth`) files, checked
//! first: every parameter the model asks for must be in the file with the right shape, and
//! a missing key or a wrong shape is an error naming the file and the key
//! (`tensor_io::check_params`). Only the keys the model asks for are converted: the vision
//! tower read from a whole CLIP checkpoint leaves its text tower on disk.

use crate::tensor_io::{check_params, expected_params, WeightFile};
use anyhow::{anyhow, Context, Result};
use candle_core::pickle::PthTensors;
use candle_core::safetensors::Load;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use std::collections::HashMap;
use std::path::Path;

/// Whether `path` is a PyTorch pickle archive (`torch.save`): `.pth`, `.pt`, `.bin`,
/// `.pth.tar`.
/// Anything else is read as safetensors.
pub fn is_pickle(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    name.ends_with(".pth.tar")
        || matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("pth" | "pt" | "bin")
        )
}

/// The tensors of `path` named in `names` that it holds (on the CPU, in the file's dtype);
/// absent names are left for `check_params` to report. A PyTorch file is read lazily (only
/// the named tensors), whether it holds the state dict itself or `{"state_dict": ...}`
/// (training checkpoints such as HPSv2's), with or without DistributedDataParallel's
/// `module.` prefix on the keys; a legacy (pre-1.6, non-zip) file is read whole
/// (`torch_legacy`).
pub fn read_tensors(path: &Path, names: &[&str]) -> Result<HashMap<String, Tensor>> {
    if is_pickle(path) {
        if !path.exists() {
            anyhow::bail!("weight file {} not found", path.display());
        }
        if crate::torch_legacy::is_legacy(path) {
            let mut file = crate::torch_legacy::read(path)?;
            let mut out = HashMap::new();
            for &n in names {
                for stored in [n.to_string(), format!("module.{n}")] {
                    if let Some(why) = file.unreadable.get(&stored) {
                        anyhow::bail!("{}: `{stored}` cannot be read: {why}", path.display());
                    }
                    if let Some(t) = file.tensors.remove(&stored) {
                        out.insert(n.to_string(), t);
                        break;
                    }
                }
            }
            return Ok(out);
        }
        let unreadable = |e: candle_core::Error| {
            anyhow!("{} is not a readable PyTorch file: {e}", path.display())
        };
        let file = match PthTensors::new(path, Some("state_dict")) {
            Ok(nested) => nested,
            Err(_) => PthTensors::new(path, None).map_err(unreadable)?,
        };
        let mut out = HashMap::new();
        for &name in names {
            for stored in [name.to_string(), format!("module.{name}")] {
                if let Some(t) = file.get(&stored).map_err(unreadable)? {
                    out.insert(name.to_string(), t);
                    break;
                }
            }
        }
        return Ok(out);
    }
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow!("weight file {} not found", path.display()),
        _ => anyhow!("cannot read weight file {}: {e}", path.display()),
    })?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow!("{} is not a valid safetensors file: {e}", path.display()))?;
    let mut out = HashMap::new();
    for &name in names {
        if let Ok(view) = st.tensor(name) {
            let t = view
                .load(&Device::Cpu)
                .with_context(|| format!("{}: reading `{name}`", path.display()))?;
            out.insert(name.to_string(), t);
        }
    }
    Ok(out)
}

/// Which of `names` the file at `path` holds, reading only a safetensors file's header (a
/// PyTorch file's named tensors are read). A missing or malformed file is an error naming it.
pub fn which_keys(path: &Path, names: &[&str]) -> Result<Vec<String>> {
    if is_pickle(path) {
        return Ok(read_tensors(path, names)?.into_keys().collect());
    }
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow!("weight file {} not found", path.display()),
        _ => anyhow!("cannot read weight file {}: {e}", path.display()),
    })?;
    let bad = |e: String| anyhow!("{} is not a valid safetensors file: {e}", path.display());
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|e| bad(e.to_string()))?;
    let len = u64::from_le_bytes(len);
    if len > 100_000_000 {
        return Err(bad(format!("a {len}-byte header")));
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header).map_err(|e| bad(e.to_string()))?;
    let header: HashMap<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| bad(e.to_string()))?;
    Ok(names
        .iter()
        .filter(|n| header.contains_key(**n))
        .map(|n| n.to_string())
        .collect())
}

/// Builds a frozen model from `path` in `dtype` on `device`, after checking that the file
/// holds every parameter `build` asks for with the shape it expects.
pub fn build_checked<M>(
    path: &Path,
    device: &Device,
    dtype: DType,
    build: impl Fn(VarBuilder) -> candle_core::Result<M>,
) -> Result<M> {
    let expected = expected_params(&build)?;
    let names: Vec<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    let file = WeightFile {
        tensors: read_tensors(path, &names)?,
        metadata: HashMap::new(),
    };
    check_params(path, &file, &expected)?;
    let tensors = file
        .tensors
        .into_iter()
        .map(|(k, t)| Ok((k, t.to_device(device)?.to_dtype(dtype)?)))
        .collect::<candle_core::Result<HashMap<_, _>>>()?;
    build(VarBuilder::from_tensors(tensors, dtype, device))
        .with_context(|| format!("building the model from {}", path.display()))
}

/// exp(`logit_scale`) of a CLIP checkpoint: the temperature its similarities are
/// multiplied by (PickScore's scores are this times the cosine). A missing or non-scalar
/// key is an error naming the file.
pub fn logit_scale_exp(path: &Path) -> Result<f64> {
    let v = read_tensors(path, &["logit_scale"])?
        .remove("logit_scale")
        .ok_or_else(|| anyhow!("{}: missing key `logit_scale`", path.display()))?
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    match v[..] {
        [ls] => Ok(ls.exp()),
        _ => Err(anyhow!(
            "{}: `logit_scale` holds {} values, not one",
            path.display(),
            v.len()
        )),
    }
}
