//! Global gradient-norm clipping (torch's clip_grad_norm_; the released code clips at 1.0).

use anyhow::Result;
use candle_core::Tensor;

/// Scales `grads` so that their joint L2 norm is at most `max_norm`; returns the norm
/// before clipping. `max_norm = 0` only measures.
pub fn clip_grad_norm(grads: &mut [Option<Tensor>], max_norm: f64) -> Result<f64> {
    let mut total = 0.0;
    for g in grads.iter().flatten() {
        total += g
            .sqr()?
            .sum_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
    }
    let norm = total.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for g in grads.iter_mut().flatten() {
            *g = g.affine(scale, 0.0)?;
        }
    }
    Ok(norm)
}
