//! Per-feature scale and shift (x * w + b, w and b indexed by one dimension of x) whose
//! backward is fast on the CPU.
//!
//! The gradient of a parameter broadcast over x is a sum over every other dimension.
//! candle 0.11's CPU sum is fast only over trailing dimensions; over leading ones (the
//! batch, the tokens) it runs an index computation per element: summing [16, 32, 28, 28]
//! over (0, 2, 3) takes 5.2 ms against 0.1 ms over (2, 3). Biases, norm affines and
//! linear biases made 17% of a digits UNet step. Here the parameter is first expanded
//! over the leading dimensions by a rank-1 matmul, ones [lead, 1] @ p [1, C], whose
//! backward is a gemm, and broadcast over the trailing ones only.

use super::frozen_map::frozen_map;
use candle_core::{Result, Tensor};
use std::sync::Arc;

/// x * w + b, with w and b (either optional) of shape [x.dim(dim)].
pub fn scale_shift(
    x: &Tensor,
    w: Option<&Tensor>,
    b: Option<&Tensor>,
    dim: usize,
) -> Result<Tensor> {
    let frozen = |p: Option<&Tensor>| p.is_none_or(|p| !p.track_op());
    if x.track_op() && frozen(w) && frozen(b) {
        // Frozen parameters: only dL/dx = dL/dy * w flows back (nn::frozen_map), and
        // candle keeps no activation-sized gradient for the broadcast w and b.
        let w_vjp = w.cloned();
        let vjp = move |dy: &Tensor| match &w_vjp {
            Some(w) => scale_shift(dy, Some(w), None, dim),
            None => Ok(dy.clone()),
        };
        return frozen_map(x, |x| affine(x, w, b, dim), Arc::new(vjp));
    }
    affine(x, w, b, dim)
}

fn affine(x: &Tensor, w: Option<&Tensor>, b: Option<&Tensor>, dim: usize) -> Result<Tensor> {
    let dims = x.dims();
    let c = dims[dim];
    let lead: usize = dims[..dim].iter().product();
    let trail: usize = dims[dim + 1..].iter().product();
    let ones = Tensor::ones((lead, 1), x.dtype(), x.device())?;
    let expand = |p: &Tensor| ones.matmul(&p.reshape((1, c))?)?.reshape((lead, c, 1));
    let mut y = x.reshape((lead, c, trail))?;
    if let Some(w) = w {
        y = y.broadcast_mul(&expand(w)?)?;
    }
    if let Some(b) = b {
        y = y.broadcast_add(&expand(b)?)?;
    }
    y.reshape(dims)
}
