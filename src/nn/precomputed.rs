//! The output of a custom op computed beforehand, without a graph.
//!
//! candle's custom ops write their forward on raw storage; the ops of this crate that
//! recompute activations in the backward (`attention_recompute`, `checkpoint`) instead
//! compute their output with ordinary tensor ops on detached inputs and hand a copy of its
//! storage to candle through the op's forward, which attaches the result to the inputs.

use candle_core::{CpuStorage, Result, Shape, Storage, Tensor};
use std::sync::Mutex;

/// An output waiting for its custom op's forward; taken once.
pub struct Precomputed(Mutex<Option<Tensor>>);

impl Precomputed {
    pub fn new(out: Tensor) -> Self {
        Self(Mutex::new(Some(out)))
    }

    fn take(&self) -> Result<Tensor> {
        self.0
            .lock()
            .map_err(|_| candle_core::Error::Msg("precomputed output: lock poisoned".into()))?
            .take()
            .ok_or_else(|| candle_core::Error::Msg("precomputed output already taken".into()))
    }

    /// For `cpu_fwd`.
    pub fn cpu(&self) -> Result<(CpuStorage, Shape)> {
        let out = self.take()?;
        match owned_storage(&out)? {
            Storage::Cpu(s) => Ok((s, out.shape().clone())),
            _ => candle_core::bail!("a CPU op was given a precomputed output on another device"),
        }
    }

    /// For `cuda_fwd`.
    #[cfg(feature = "cuda")]
    pub fn cuda(&self) -> Result<(candle_core::CudaStorage, Shape)> {
        let out = self.take()?;
        match owned_storage(&out)? {
            Storage::Cuda(s) => Ok((s, out.shape().clone())),
            _ => candle_core::bail!("a CUDA op was given a precomputed output on another device"),
        }
    }
}

/// A copy of the tensor's storage: the op's result must own its own.
fn owned_storage(t: &Tensor) -> Result<Storage> {
    // A fresh contiguous tensor starts at offset 0 and spans its whole buffer, which
    // `try_clone` copies entire.
    let t = if t.is_contiguous() && t.layout().start_offset() == 0 {
        t.clone()
    } else {
        t.copy()?
    };
    let (storage, layout) = t.storage_and_layout();
    use candle_core::backend::BackendStorage;
    Ok(match &*storage {
        Storage::Cpu(s) => Storage::Cpu(s.try_clone(layout)?),
        Storage::Cuda(s) => Storage::Cuda(s.try_clone(layout)?),
        Storage::Metal(s) => Storage::Metal(s.try_clone(layout)?),
    })
}
