//! A linear map of x with frozen parameters, whose backward returns dL/dx only.
//!
//! Candle's backward computes the gradient of every argument of an op, trainable or not,
//! and keeps the ones it never passes on (a frozen weight's, a broadcast norm scale's,
//! which is the size of the activation) until the whole backward ends. Under LoRA nearly
//! every weight is frozen: one CLIP ViT-L/14 image backward held 6 GB of such gradients.
//! `frozen_map(x, f, vjp)` computes f(x) without a graph and attaches it to x alone; its
//! backward applies `vjp` (the transpose of f's linear part) to the output gradient.

use super::precomputed::Precomputed;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use std::sync::Arc;

/// dL/dy -> dL/dx for a map that is affine in x.
pub type Vjp = Arc<dyn Fn(&Tensor) -> Result<Tensor> + Send + Sync>;

struct FrozenMap {
    out: Precomputed,
    vjp: Vjp,
}

impl CustomOp1 for FrozenMap {
    fn name(&self) -> &'static str {
        "frozen-map"
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
    let out = f(&x.detach())?;
    x.apply_op1(FrozenMap {
        out: Precomputed::new(&out)?,
        vjp,
    })
}
