//! The output of a custom op computed beforehand, without a graph.
//!
//! candle's custom ops write their forward on raw storage; the ops of this crate that
//! recompute activations in the backward (`attention_recompute`, `checkpoint`) or pass back
//! only dL/dx (`frozen_map`) instead compute their output with ordinary tensor ops on
//! detached inputs and hand its storage to candle through the op's forward, which attaches
//! the result to the inputs.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Storage, Tensor};
use std::sync::{Arc, Mutex};

/// An output's own storage waiting for its custom op's forward; taken once.
pub struct Precomputed(Mutex<Option<(Storage, Shape)>>);

impl Precomputed {
    /// Copies `out`'s storage now, before the op runs: the op's forward then takes no lock
    /// on any tensor (`out` might be a view of the op's own input, whose storage candle
    /// holds locked while the forward runs).
    pub fn new(out: &Tensor) -> Result<Self> {
        Ok(Self(Mutex::new(Some((
            owned_storage(out)?,
            out.shape().clone(),
        )))))
    }

    fn take(&self) -> Result<(Storage, Shape)> {
        self.0
            .lock()
            .map_err(|_| candle_core::Error::Msg("precomputed output: lock poisoned".into()))?
            .take()
            .ok_or_else(|| candle_core::Error::Msg("precomputed output already taken".into()))
    }

    /// For `cpu_fwd`.
    pub fn cpu(&self) -> Result<(CpuStorage, Shape)> {
        match self.take()? {
            (Storage::Cpu(s), shape) => Ok((s, shape)),
            _ => candle_core::bail!("a CPU op was given a precomputed output on another device"),
        }
    }

    /// For `cuda_fwd`.
    #[cfg(feature = "cuda")]
    pub fn cuda(&self) -> Result<(candle_core::CudaStorage, Shape)> {
        match self.take()? {
            (Storage::Cuda(s), shape) => Ok((s, shape)),
            _ => candle_core::bail!("a CUDA op was given a precomputed output on another device"),
        }
    }
}

/// Elements in a storage buffer, where known (float dtypes on the CPU and CUDA).
fn buffer_len(s: &Storage) -> Option<usize> {
    match s {
        Storage::Cpu(CpuStorage::F32(v)) => Some(v.len()),
        Storage::Cpu(CpuStorage::F64(v)) => Some(v.len()),
        Storage::Cpu(CpuStorage::F16(v)) => Some(v.len()),
        Storage::Cpu(CpuStorage::BF16(v)) => Some(v.len()),
        #[cfg(feature = "cuda")]
        Storage::Cuda(c) => {
            use candle_core::cuda_backend::CudaStorageSlice as S;
            match &c.slice {
                S::F32(v) => Some(v.len()),
                S::F64(v) => Some(v.len()),
                S::F16(v) => Some(v.len()),
                S::BF16(v) => Some(v.len()),
                _ => None,
            }
        }
        _ => None,
    }
}

/// A copy of the tensor's storage holding exactly its elements.
fn owned_storage(t: &Tensor) -> Result<Storage> {
    use candle_core::backend::BackendStorage;
    // `try_clone` copies the whole buffer whatever the layout: only a contiguous tensor
    // that starts at 0 and spans its buffer is cloned as it is; anything else (a narrow,
    // a view into a larger buffer) is compacted first.
    let exact = t.is_contiguous() && t.layout().start_offset() == 0 && {
        let (storage, _) = t.storage_and_layout();
        buffer_len(&storage) == Some(t.elem_count())
    };
    let t = if exact { t.clone() } else { t.copy()? };
    let (storage, layout) = t.storage_and_layout();
    Ok(match &*storage {
        Storage::Cpu(s) => Storage::Cpu(s.try_clone(layout)?),
        Storage::Cuda(s) => Storage::Cuda(s.try_clone(layout)?),
        Storage::Metal(s) => Storage::Metal(s.try_clone(layout)?),
    })
}

/// dL/d(output) -> dL/dx: the backward of an attached output.
pub type Vjp = Arc<dyn Fn(&Tensor) -> Result<Tensor> + Send + Sync>;

struct Attached {
    out: Precomputed,
    vjp: Vjp,
}

impl CustomOp1 for Attached {
    fn name(&self) -> &'static str {
        "attached"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        self.out.cpu()
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        self.out.cuda()
    }

    fn bwd(&self, _x: &Tensor, _out: &Tensor, d_out: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some((self.vjp)(&d_out.detach())?))
    }
}

/// `out`, computed from `x` without a graph, as a node of x's graph whose backward is
/// `vjp` (`frozen_map`: a hand-written product; `checkpoint`: a recomputation).
pub fn attach(x: &Tensor, out: &Tensor, vjp: Vjp) -> Result<Tensor> {
    x.apply_op1(Attached {
        out: Precomputed::new(out)?,
        vjp,
    })
}
