//! Borrowing the f32 data of CPU tensors and storages, for the project's own CPU kernels.

use candle_core::{CpuStorage, Layout, Result, Storage, Tensor};

/// The f32 data `(s, l)` describes, which must be contiguous.
pub fn contiguous<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("expected a contiguous operand".into()))?;
    Ok(&s.as_slice::<f32>()?[start..end])
}

/// The contiguous f32 data of a CPU tensor (copied first only if it is not contiguous),
/// handed to `f`.
pub fn with_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(s) => f(contiguous(s, layout)?),
        _ => candle_core::bail!("expected a CPU tensor"),
    }
}
