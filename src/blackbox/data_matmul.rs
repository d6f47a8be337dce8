//! x W^T for a data matrix x that needs no gradient, whose backward computes W's gradient
//! only. candle's matmul backward always computes both operands' gradients: fitting the
//! surrogate, the first layer's input gradient (a [B, out] x [out, in] product, as costly
//! as the forward, plus a zero-filled [B, in] buffer to add it to) is thrown away at every
//! step, about a fifth of a step for 128-d features. The reward path keeps the plain
//! matmul, since there the gradient must reach the features.

use candle_core::{CpuStorage, CustomOp1, Device, Layout, Result, Shape, Tensor};

struct DataTimesWeightT {
    x: Tensor,
}

impl CustomOp1 for DataTimesWeightT {
    fn name(&self) -> &'static str {
        "surrogate-data-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let w = match layout.contiguous_offsets() {
            Some((a, b)) => &storage.as_slice::<f32>()?[a..b],
            None => candle_core::bail!("data_matmul: the weight must be contiguous"),
        };
        let w = Tensor::from_slice(w, layout.shape(), &Device::Cpu)?;
        let y = self.x.matmul(&w.t()?)?;
        let shape = y.shape().clone();
        Ok((CpuStorage::F32(y.flatten_all()?.to_vec1()?), shape))
    }

    fn bwd(&self, _w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.t()?.matmul(&self.x)?))
    }
}

/// x [B, in] @ w [out, in]^T -> [B, out], differentiable w.r.t. `w` only (f32 on the CPU;
/// elsewhere the plain matmul, which differentiates both).
pub fn data_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == candle_core::DType::F32;
    if !(cpu_f32(x) && cpu_f32(w)) {
        return x.matmul(&w.t()?);
    }
    w.apply_op1(DataTimesWeightT { x: x.detach() })
}
