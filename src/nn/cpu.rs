//! Borrowing the f32 data of CPU tensors and storages, and what the CPU can run, for the
//! project's own CPU kernels.

use candle_core::{CpuStorage, Layout, Result, Storage, Tensor};

/// The f32 data `(s, l)` describes, which must be contiguous.
pub fn contiguous<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("expected a contiguous operand".into()))?;
    Ok(&s.as_slice::<f32>()?[start..end])
}

/// Whether this CPU has AVX2 and FMA, which every vector kernel of the project needs
/// (without them the callers keep candle's ops or im2col; std caches the answer).
pub fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this CPU has AVX-512F, for the wider kernels (`conv_avx512.rs`,
/// `simd_avx512.rs`).
pub fn has_avx512f() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether `t` is an f32 tensor on the CPU: what this project's CPU kernels take (other
/// devices and dtypes keep candle's ops).
pub fn is_f32_cpu(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == candle_core::DType::F32
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

/// The gradient `grad` (data in `t`'s shape) for `t` if it is part of a graph, else None:
/// what a custom op's `bwd` returns for each operand.
pub fn grad_for(t: &Tensor, grad: Vec<f32>) -> Result<Option<Tensor>> {
    t.track_op()
        .then(|| Tensor::from_vec(grad, t.shape(), t.device()))
        .transpose()
}

/// Test support: `y` (the op) and `reference` (the plain formula) agree within `tol`
/// times the reference's largest magnitude, and so do the gradients of Σ y · probe with
/// respect to each named variable.
#[cfg(test)]
pub fn assert_same_values_and_gradients(
    y: &Tensor,
    reference: &Tensor,
    probe: &Tensor,
    vars: &[(&str, &candle_core::Var)],
    tol: f32,
    case: &str,
) {
    let scale = |t: &Tensor| -> f32 {
        let m = t
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        m.max(1.0)
    };
    let diff = super::conv::diff;
    let err = diff(y, reference);
    assert!(
        err < tol * scale(reference),
        "{case}: values differ by {err}"
    );
    let g = (y * probe).unwrap().sum_all().unwrap().backward().unwrap();
    let gr = (reference * probe)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    for (name, v) in vars {
        let (p, q) = (g.get(v).unwrap(), gr.get(v).unwrap());
        let err = diff(p, q);
        assert!(
            err < tol * scale(q),
            "{case}: the {name} gradient differs by {err}"
        );
    }
}
