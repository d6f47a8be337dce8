//! Reading and writing weight files (safetensors) with errors that name the file, the
//! key and the shape at fault, and writes that are atomic (write, sync, rename).

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{VarBuilder, VarMap};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The tensors of a safetensors file and its string metadata.
pub struct WeightFile {
    pub tensors: HashMap<String, Tensor>,
    pub metadata: HashMap<String, String>,
}

/// Reads a whole safetensors file; a missing or corrupt file is an error naming it.
pub fn read(path: &Path, device: &Device) -> Result<WeightFile> {
    let bytes = read_bytes(path)?;
    parse(path, &bytes, device)
}

/// A weight file's bytes; a missing or unreadable file is an error naming it.
pub fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow!("weight file {} not found", path.display()),
        _ => anyhow!("cannot read weight file {}: {e}", path.display()),
    })
}

/// The tensors and metadata of a safetensors file's `bytes` (read from `path`).
pub fn parse(path: &Path, bytes: &[u8], device: &Device) -> Result<WeightFile> {
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| anyhow!("{} is not a valid safetensors file: {e}", path.display()))?;
    let tensors = candle_core::safetensors::load_buffer(bytes, device)
        .map_err(|e| anyhow!("{} is not a valid safetensors file: {e}", path.display()))?;
    let metadata = meta.metadata().clone().unwrap_or_default();
    Ok(WeightFile { tensors, metadata })
}

/// CRC-32 of one tensor as a safetensors file stores it: its name, dtype, shape and bytes
/// (a checkpoint keeps one per tensor, so a corrupt file names the key at fault).
pub fn tensor_crc(name: &str, dtype: safetensors::Dtype, shape: &[usize], data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(name.as_bytes());
    h.update(&[0]);
    h.update(dtype.to_string().as_bytes());
    h.update(&[0]);
    for d in shape {
        h.update(&(*d as u64).to_le_bytes());
    }
    h.update(data);
    h.finalize()
}

/// The CRC-32 (`tensor_crc`) of each tensor as `write_atomic` would store it.
pub fn tensor_crcs(tensors: &BTreeMap<String, Tensor>) -> Result<BTreeMap<String, u32>> {
    tensors
        .iter()
        .map(|(k, t)| {
            let t = t.contiguous()?;
            let data = <Tensor as safetensors::View>::data(&t);
            let dtype = <Tensor as safetensors::View>::dtype(&t);
            Ok((k.clone(), tensor_crc(k, dtype, t.dims(), &data)))
        })
        .collect()
}

/// A temporary name beside `path` that no other writer uses: the process id and a counter,
/// so two processes (or two threads) writing the same file never share a temporary file.
pub fn temp_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "file".into());
    path.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()))
}

/// Replaces `path` atomically: `write` fills a temporary file beside it (`temp_path`), which
/// is synced and renamed over `path`. A crash at any point leaves the old file or the new
/// one, never a mix; a failed write removes the temporary file.
pub fn replace_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => Some(d),
        _ => None,
    };
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = temp_path(path);
    let done = write(&tmp)
        .with_context(|| format!("writing {}", path.display()))
        .and_then(|_| {
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("syncing {}", tmp.display()))
        })
        .and_then(|_| {
            std::fs::rename(&tmp, path)
                .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
        });
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return done;
    }
    // The rename itself reaches the disk with the folder's entry (best effort: not every
    // file system can sync a folder).
    if let Some(f) = dir.and_then(|d| std::fs::File::open(d).ok()) {
        let _ = f.sync_all();
    }
    Ok(())
}

/// Writes `contents` to `path` atomically (`replace_atomic`).
pub fn write_file_atomic(path: &Path, contents: impl AsRef<[u8]>) -> Result<()> {
    replace_atomic(path, |tmp| {
        std::fs::write(tmp, contents.as_ref()).with_context(|| format!("writing {}", tmp.display()))
    })
}

/// Writes an 8-bit image as a PNG at `path` atomically (`replace_atomic`).
pub fn write_png_atomic(
    path: &Path,
    pixels: &[u8],
    width: u32,
    height: u32,
    color: image::ColorType,
) -> Result<()> {
    replace_atomic(path, |tmp| {
        image::save_buffer_with_format(tmp, pixels, width, height, color, image::ImageFormat::Png)
            .map_err(|e| anyhow!("writing {}: {e}", tmp.display()))
    })
}

/// Writes tensors (and metadata) to `path` atomically: a crash leaves the old file intact.
pub fn write_atomic(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    metadata: HashMap<String, String>,
) -> Result<()> {
    let contiguous: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.contiguous()?)))
        .collect::<candle_core::Result<_>>()?;
    replace_atomic(path, |tmp| {
        safetensors::serialize_to_file(contiguous, Some(metadata), tmp)
            .map_err(|e| anyhow!("writing {}: {e}", tmp.display()))
    })
}

/// A VarBuilder backend that records which parameters a model asks for, so a weight file
/// can be checked against the model before anything is loaded.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<(String, Vec<usize>)>>,
}

impl SimpleBackend for Recorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.seen
            .lock()
            .unwrap()
            .push((name.to_string(), s.dims().to_vec()));
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }
    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("parameter {name} was requested without a shape")
    }
    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// The (name, shape) of every parameter `build` asks its VarBuilder for.
pub fn expected_params<M>(
    build: impl FnOnce(VarBuilder) -> candle_core::Result<M>,
) -> Result<Vec<(String, Vec<usize>)>> {
    let rec = std::sync::Arc::new(Recorder::default());
    struct Shared(std::sync::Arc<Recorder>);
    impl SimpleBackend for Shared {
        fn get(
            &self,
            s: Shape,
            n: &str,
            h: candle_nn::Init,
            d: DType,
            dev: &Device,
        ) -> candle_core::Result<Tensor> {
            self.0.get(s, n, h, d, dev)
        }
        fn get_unchecked(&self, n: &str, d: DType, dev: &Device) -> candle_core::Result<Tensor> {
            self.0.get_unchecked(n, d, dev)
        }
        fn contains_tensor(&self, n: &str) -> bool {
            self.0.contains_tensor(n)
        }
    }
    let vb = VarBuilder::from_backend(Box::new(Shared(rec.clone())), crate::DTYPE, Device::Cpu);
    build(vb)?;
    let seen = rec.seen.lock().unwrap().clone();
    Ok(seen)
}

/// Checks that `file` holds every expected parameter with the expected shape.
pub fn check_params(
    path: &Path,
    file: &WeightFile,
    expected: &[(String, Vec<usize>)],
) -> Result<()> {
    for (name, shape) in expected {
        match file.tensors.get(name) {
            None => bail!(
                "{}: missing key `{name}` (expected shape {shape:?})",
                path.display()
            ),
            Some(t) if t.dims() != shape.as_slice() => bail!(
                "{}: key `{name}` has shape {:?}, the model expects {shape:?}",
                path.display(),
                t.dims()
            ),
            Some(_) => {}
        }
    }
    Ok(())
}

/// Builds a frozen model from a checked weight file.
pub fn build_frozen<M>(
    path: &Path,
    file: &WeightFile,
    device: &Device,
    build: impl Fn(VarBuilder) -> candle_core::Result<M>,
) -> Result<M> {
    check_params(path, file, &expected_params(&build)?)?;
    let tensors = file
        .tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.to_dtype(crate::DTYPE)?.to_device(device)?)))
        .collect::<candle_core::Result<HashMap<_, _>>>()?;
    Ok(build(VarBuilder::from_tensors(
        tensors,
        crate::DTYPE,
        device,
    ))?)
}

/// Builds a trainable model whose variables start from a checked weight file.
pub fn build_trainable<M>(
    path: &Path,
    file: &WeightFile,
    device: &Device,
    build: impl Fn(VarBuilder) -> candle_core::Result<M>,
) -> Result<(M, VarMap)> {
    check_params(path, file, &expected_params(&build)?)?;
    let varmap = VarMap::new();
    let model = build(VarBuilder::from_varmap(&varmap, crate::DTYPE, device))?;
    set_vars(&varmap, &file.tensors, path)?;
    Ok((model, varmap))
}

/// Sets every variable of `varmap` from `tensors`, checking names and shapes.
pub fn set_vars(varmap: &VarMap, tensors: &HashMap<String, Tensor>, source: &Path) -> Result<()> {
    let data = varmap.data().lock().unwrap();
    for (name, var) in data.iter() {
        let t = tensors
            .get(name)
            .ok_or_else(|| anyhow!("{}: missing key `{name}`", source.display()))?;
        if t.dims() != var.dims() {
            bail!(
                "{}: key `{name}` has shape {:?}, the model expects {:?}",
                source.display(),
                t.dims(),
                var.dims()
            );
        }
        var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
    }
    Ok(())
}

/// Saves every variable of `varmap` (atomically) with `metadata`.
pub fn save_varmap(path: &Path, varmap: &VarMap, metadata: HashMap<String, String>) -> Result<()> {
    let tensors: BTreeMap<String, Tensor> = sorted_vars(varmap)
        .into_iter()
        .map(|(k, v)| (k, v.as_tensor().clone()))
        .collect();
    write_atomic(path, &tensors, metadata)
}

/// The variables of a VarMap sorted by name (a stable order for optimiser state and checkpoints).
pub fn sorted_vars(varmap: &VarMap) -> Vec<(String, candle_core::Var)> {
    let data = varmap.data().lock().unwrap();
    let mut v: Vec<_> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}
