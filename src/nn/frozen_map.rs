//! A linear map of x with frozen parameters, whose backward returns dL/dx only.
//!
//! Candle's backward computes the gradient of every argument of an op, trainable or not,
//! and keeps the ones it never passes on (a frozen weight's, a broadcast norm scale's,
//! which is the size of the activation) until the whole backward ends. Under LoRA nearly
//! every weight is frozen: one CLIP ViT-L/14 image backward held 6 GB of such gradients.
//! `frozen_map(x, f, vjp)` computes f(x) without a graph and attaches it to x alone
//! (`precomputed::attach`); its backward applies `vjp` (the transpose of f's linear part)
//! to the output gradient.

pub use super::precomputed::Vjp;
use candle_core::{Result, Tensor};

/// f(x) for f affine in x with parameters that carry no graph; only dL/dx flows back.
/// Without a graph on x this is plain f(x).
pub fn frozen_map(
    x: &Tensor,
    f: impl FnOnce(&Tensor) -> Result<Tensor>,
    vjp: Vjp,
) -> Result<Tensor> {
    if !x.track_op() {
        return f(x);
    }
    super::precomputed::attach(x, &f(&x.detach())?, vjp)
}
