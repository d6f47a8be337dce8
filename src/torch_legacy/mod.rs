//! PyTorch's legacy `torch.save` format (before 1.6, and `_use_new_zipfile_serialization=
//! False`): five pickles in a row (magic number, protocol version, system info, the saved
//! object, the list of storage keys), then each storage as an 8-byte element count and its
//! raw little-endian data, in the order of that list. The lpips package still ships its
//! linear layers this way; candle reads only the zip format.

pub mod pickle;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use pickle::Value;
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

/// torch's legacy magic number 0x1950a86a20f9469cfc6c, the first pickle of the file.
const MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

/// Whether `path` starts as a legacy file does (a pickle, not a zip archive's "PK").
pub fn is_legacy(path: &Path) -> bool {
    let mut head = [0u8; 2];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|_| head == [0x80, 0x02])
}

/// A tensor's place in a storage: `_rebuild_tensor_v2(storage, offset, size, stride, ...)`.
struct TensorRef {
    storage: String,
    dtype: DType,
    offset: usize,
    shape: Vec<usize>,
}

fn ints(v: &Value) -> Option<Vec<usize>> {
    match v {
        Value::Tuple(items) => items
            .iter()
            .map(|i| match i {
                Value::Int(n) if *n >= 0 => Some(*n as usize),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

fn storage_dtype(class: &str) -> Option<DType> {
    Some(match class {
        "FloatStorage" => DType::F32,
        "HalfStorage" => DType::F16,
        "BFloat16Storage" => DType::BF16,
        "DoubleStorage" => DType::F64,
        "LongStorage" => DType::I64,
        "ByteStorage" => DType::U8,
        _ => return None,
    })
}

/// The tensor a value rebuilds, if it is one (a plain tensor or an `nn.Parameter`).
fn tensor_ref(v: &Value) -> Option<TensorRef> {
    let Value::Reduce(callable, args) = v else {
        return None;
    };
    let (Value::Global(module, name), Value::Tuple(args)) = (&**callable, &**args) else {
        return None;
    };
    match (module.as_str(), name.as_str()) {
        ("torch._utils", "_rebuild_parameter") => return tensor_ref(args.first()?),
        ("torch._utils", "_rebuild_tensor_v2") => {}
        _ => return None,
    }
    let Value::PersistentId(pid) = args.first()? else {
        return None;
    };
    let Value::Tuple(pid) = &**pid else {
        return None;
    };
    // ('storage', torch.FloatStorage, key, location, numel, view_metadata)
    let (Value::Global(_, class), Value::Str(key)) = (pid.get(1)?, pid.get(2)?) else {
        return None;
    };
    let offset = match args.get(1)? {
        Value::Int(n) if *n >= 0 => *n as usize,
        _ => return None,
    };
    let (shape, stride) = (ints(args.get(2)?)?, ints(args.get(3)?)?);
    let contiguous: Vec<usize> = (0..shape.len())
        .map(|i| shape[i + 1..].iter().product())
        .collect();
    if stride != contiguous && shape.iter().product::<usize>() > 1 {
        return None;
    }
    Some(TensorRef {
        storage: key.clone(),
        dtype: storage_dtype(class)?,
        offset,
        shape,
    })
}

/// (name, value) pairs of a state dict: a dict, an `OrderedDict` rebuilt from a list of
/// [key, value] pairs, either with `BUILD` state (its `_metadata`) on top.
fn entries(v: &Value) -> Vec<(String, &Value)> {
    let pairs: Vec<(&Value, &Value)> = match v {
        Value::Build(obj, _) => return entries(obj),
        Value::Dict(d) => d.iter().map(|(k, v)| (k, v)).collect(),
        Value::Reduce(_, args) => match &**args {
            Value::Tuple(a) => match a.first() {
                Some(Value::List(items)) => items
                    .iter()
                    .filter_map(|p| match p {
                        Value::List(kv) | Value::Tuple(kv) if kv.len() == 2 => {
                            Some((&kv[0], &kv[1]))
                        }
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            },
            _ => Vec::new(),
        },
        _ => Vec::new(),
    };
    pairs
        .into_iter()
        .filter_map(|(k, v)| match k {
            Value::Str(s) => Some((s.clone(), v)),
            _ => None,
        })
        .collect()
}

/// The tensors of a legacy file, by state-dict key (nested under `state_dict` or not).
pub fn read(path: &Path) -> Result<HashMap<String, Tensor>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    read_bytes(&bytes).with_context(|| format!("{} (a legacy PyTorch file)", path.display()))
}

fn read_bytes(bytes: &[u8]) -> Result<HashMap<String, Tensor>> {
    let mut r = bytes;
    if pickle::load(&mut r)? != Value::BigInt(MAGIC.to_vec()) {
        bail!("not a PyTorch file: wrong magic number");
    }
    let _protocol = pickle::load(&mut r)?;
    let _sys_info = pickle::load(&mut r)?;
    let object = pickle::load(&mut r)?;
    let Value::List(keys) = pickle::load(&mut r)? else {
        bail!("the storage key list is missing");
    };
    let mut top = entries(&object);
    if let Some((_, nested)) = top.iter().find(|(k, _)| k == "state_dict") {
        top = entries(nested);
    }
    let refs: Vec<(String, TensorRef)> = top
        .into_iter()
        .filter_map(|(k, v)| Some((k, tensor_ref(v)?)))
        .collect();
    let dtype_of: HashMap<&str, DType> = refs
        .iter()
        .map(|(_, t)| (t.storage.as_str(), t.dtype))
        .collect();
    let mut storages = HashMap::new();
    for key in keys {
        let Value::Str(key) = key else {
            bail!("a storage key is not a string");
        };
        let dtype = *dtype_of
            .get(key.as_str())
            .ok_or_else(|| anyhow!("storage {key} belongs to no tensor"))?;
        let mut count = [0u8; 8];
        r.read_exact(&mut count)?;
        let n = u64::from_le_bytes(count) as usize;
        let len = n.saturating_mul(dtype.size_in_bytes());
        if r.len() < len {
            bail!("storage {key} is cut short");
        }
        let (data, rest) = r.split_at(len);
        r = rest;
        let t = Tensor::from_raw_buffer(data, dtype, &[n], &Device::Cpu)?;
        storages.insert(key, t);
    }
    refs.into_iter()
        .map(|(name, t)| {
            let storage = storages
                .get(&t.storage)
                .ok_or_else(|| anyhow!("`{name}`: storage {} is missing", t.storage))?;
            let n: usize = t.shape.iter().product();
            let v = storage
                .narrow(0, t.offset, n)?
                .reshape(t.shape.as_slice())?;
            Ok((name, v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// lpips' own linear layers, in the legacy format (tests/fixtures/parity/lpips).
    fn alex_pth() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity/lpips/alex.pth")
    }

    #[test]
    fn reads_every_tensor_of_lpips_legacy_file() {
        let path = alex_pth();
        assert!(is_legacy(&path));
        let t = read(&path).unwrap();
        let mut keys: Vec<_> = t.keys().cloned().collect();
        keys.sort();
        assert_eq!(keys.len(), 5);
        assert_eq!(keys[0], "lin0.model.1.weight");
        assert_eq!(t["lin1.model.1.weight"].dims(), &[1, 192, 1, 1]);
        assert_eq!(t["lin4.model.1.weight"].dtype(), DType::F32);
    }

    #[test]
    fn a_cut_file_is_an_error_naming_it() {
        let bytes = std::fs::read(alex_pth()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for len in [40, 400, bytes.len() - 8] {
            let p = dir.path().join("cut.pth");
            std::fs::write(&p, &bytes[..len]).unwrap();
            let e = format!("{:#}", read(&p).unwrap_err());
            assert!(e.contains("cut.pth"), "{e}");
        }
    }
}
