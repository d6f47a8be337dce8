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

/// A storage class's element size, and the candle dtype where candle has one.
fn storage_type(class: &str) -> Option<(usize, Option<DType>)> {
    Some(match class {
        "FloatStorage" => (4, Some(DType::F32)),
        "HalfStorage" => (2, Some(DType::F16)),
        "BFloat16Storage" => (2, Some(DType::BF16)),
        "DoubleStorage" => (8, Some(DType::F64)),
        "LongStorage" => (8, Some(DType::I64)),
        "ByteStorage" => (1, Some(DType::U8)),
        "IntStorage" | "ComplexHalfStorage" => (4, None),
        "ShortStorage" => (2, None),
        "CharStorage" | "BoolStorage" | "QInt8Storage" | "QUInt8Storage" => (1, None),
        "ComplexFloatStorage" => (8, None),
        "ComplexDoubleStorage" => (16, None),
        _ => return None,
    })
}

/// ('storage', torch.FloatStorage, key, location, numel, ...): the key and class.
fn storage_of(pid: &Value) -> Option<(&str, &str)> {
    let Value::Tuple(pid) = pid else {
        return None;
    };
    match (pid.get(1)?, pid.get(2)?) {
        (Value::Global(_, class), Value::Str(key)) => Some((key, class)),
        _ => None,
    }
}

/// Every storage the object refers to, by key, with its class: anywhere in it, so that the
/// storages of values that are not tensors of the state dict are still skipped correctly.
fn storages<'a>(v: &'a Value, out: &mut HashMap<&'a str, &'a str>) {
    match v {
        Value::PersistentId(pid) => {
            if let Some((key, class)) = storage_of(pid) {
                out.insert(key, class);
            }
        }
        Value::Tuple(items) | Value::List(items) => items.iter().for_each(|i| storages(i, out)),
        Value::Dict(pairs) => pairs.iter().for_each(|(k, x)| {
            storages(k, out);
            storages(x, out);
        }),
        Value::Reduce(a, b) | Value::Build(a, b) => {
            storages(a, out);
            storages(b, out);
        }
        _ => {}
    }
}

/// The tensor a value rebuilds (a plain tensor or an `nn.Parameter`), None if it is not a
/// tensor, or why it cannot be read.
fn tensor_ref(v: &Value) -> Option<std::result::Result<TensorRef, String>> {
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
    let (key, class) = storage_of(pid)?;
    Some(rebuild(key, class, args))
}

fn rebuild(key: &str, class: &str, args: &[Value]) -> std::result::Result<TensorRef, String> {
    let dtype = match storage_type(class) {
        Some((_, Some(d))) => d,
        _ => return Err(format!("its storage type {class} is not supported")),
    };
    let (offset, shape, stride) = match (
        args.get(1),
        args.get(2).and_then(ints),
        args.get(3).and_then(ints),
    ) {
        (Some(Value::Int(o)), Some(shape), Some(stride))
            if *o >= 0 && shape.len() == stride.len() =>
        {
            (*o as usize, shape, stride)
        }
        _ => return Err("its offset, size or stride is malformed".into()),
    };
    // Contiguous: each stride the product of the later sizes (sizes of 1 take any stride).
    let mut expect = 1usize;
    for (&n, &st) in shape.iter().zip(&stride).rev() {
        if n != 1 && st != expect {
            return Err(format!(
                "it is not contiguous (size {shape:?}, stride {stride:?})"
            ));
        }
        expect = expect
            .checked_mul(n)
            .ok_or_else(|| format!("its size {shape:?} overflows"))?;
    }
    Ok(TensorRef {
        storage: key.to_string(),
        dtype,
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

/// What a legacy file holds: its tensors by state-dict key, and the keys of the tensors it
/// holds that cannot be read here, with the reason.
pub struct LegacyFile {
    pub tensors: HashMap<String, Tensor>,
    pub unreadable: HashMap<String, String>,
}

/// The tensors of a legacy file, by state-dict key (nested under `state_dict` or not).
pub fn read(path: &Path) -> Result<LegacyFile> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    read_bytes(&bytes).with_context(|| format!("{} (a legacy PyTorch file)", path.display()))
}

fn read_bytes(bytes: &[u8]) -> Result<LegacyFile> {
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
    let mut classes = HashMap::new();
    storages(&object, &mut classes);
    let mut top = entries(&object);
    if let Some((_, nested)) = top.iter().find(|(k, _)| k == "state_dict") {
        top = entries(nested);
    }
    let (mut refs, mut unreadable) = (Vec::new(), HashMap::new());
    for (name, v) in top {
        match tensor_ref(v) {
            Some(Ok(t)) => refs.push((name, t)),
            Some(Err(why)) => {
                unreadable.insert(name, why);
            }
            None => {}
        }
    }
    let mut data = HashMap::new();
    for key in keys {
        let Value::Str(key) = key else {
            bail!("a storage key is not a string");
        };
        let class = classes
            .get(key.as_str())
            .ok_or_else(|| anyhow!("storage {key} is referred to by nothing in the file"))?;
        let (size, _) = storage_type(class)
            .ok_or_else(|| anyhow!("storage {key}: unknown storage type {class}"))?;
        let mut count = [0u8; 8];
        r.read_exact(&mut count)
            .map_err(|_| anyhow!("storage {key} is cut short"))?;
        let len = (u64::from_le_bytes(count) as usize).saturating_mul(size);
        if r.len() < len {
            bail!("storage {key} is cut short");
        }
        let (bytes, rest) = r.split_at(len);
        r = rest;
        data.insert(key, bytes);
    }
    let mut tensors = HashMap::new();
    for (name, t) in refs {
        let bytes = data
            .get(&t.storage)
            .ok_or_else(|| anyhow!("`{name}`: storage {} is missing", t.storage))?;
        let size = t.dtype.size_in_bytes();
        let n = t.shape.iter().product::<usize>();
        let start = t.offset.saturating_mul(size);
        let end = t.offset.saturating_add(n).saturating_mul(size);
        if end > bytes.len() {
            bail!(
                "`{name}`: {n} values at offset {} overrun storage {}",
                t.offset,
                t.storage
            );
        }
        let v = Tensor::from_raw_buffer(&bytes[start..end], t.dtype, &t.shape, &Device::Cpu)?;
        tensors.insert(name, v);
    }
    Ok(LegacyFile {
        tensors,
        unreadable,
    })
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
        let t = read(&path).unwrap().tensors;
        let mut keys: Vec<_> = t.keys().cloned().collect();
        keys.sort();
        assert_eq!(keys.len(), 5);
        assert_eq!(keys[0], "lin0.model.1.weight");
        assert_eq!(t["lin1.model.1.weight"].dims(), &[1, 192, 1, 1]);
        assert_eq!(t["lin4.model.1.weight"].dtype(), DType::F32);
    }

    #[test]
    fn a_file_python_3s_torch_wrote_reads_and_names_what_it_cannot() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity/legacy_py3.pth");
        let f = read(&path).unwrap();
        let v = |k: &str| {
            f.tensors[k]
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(v("weight"), [0.0, 0.25, 0.5, 0.75, 1.0, 1.25]);
        assert_eq!(f.tensors["view"].dims(), &[3, 2]);
        assert_eq!(v("view"), [4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
        assert_eq!(v("half"), [0.5, -2.0]);
        assert!(f.unreadable["transposed"].contains("not contiguous"));
        assert!(f.unreadable["ints"].contains("IntStorage"));
        let e = crate::models::clip::weights::read_tensors(&path, &["transposed"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("legacy_py3.pth") && e.contains("`transposed`"),
            "{e}"
        );
    }

    #[test]
    fn a_cut_file_is_an_error_naming_it() {
        let bytes = std::fs::read(alex_pth()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for len in [40, 400, bytes.len() - 8] {
            let p = dir.path().join("cut.pth");
            std::fs::write(&p, &bytes[..len]).unwrap();
            let e = format!("{:#}", read(&p).err().expect("a cut file fails"));
            assert!(e.contains("cut.pth"), "{e}");
        }
    }
}
