//! A linear layer (torch's `nn.Linear`: `weight` [out, in], optional `bias` [out]) for
//! inputs of any rank. On the CPU in f32 it is one op (`linear_cpu.rs`: the bias added
//! inside the matmul); elsewhere the bias is added by `scale_shift`, so that its gradient, a
//! sum over batch and tokens, is a gemm rather than candle's slow leading-dimension sum.

use super::channel::scale_shift;
use super::frozen_map::frozen_map;
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
}

/// As `candle_nn::linear` (same names, shapes and init).
pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let l = candle_nn::linear(in_dim, out_dim, vb)?;
    Ok(Linear::new(l.weight().clone(), l.bias().cloned()))
}

/// As `candle_nn::linear_no_bias`.
pub fn linear_no_bias(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let l = candle_nn::linear_no_bias(in_dim, out_dim, vb)?;
    Ok(Linear::new(l.weight().clone(), None))
}

impl Module for Linear {
    /// x [..., in] -> [..., out], as one 2-D matmul over all leading dimensions.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.track_op()
            && !self.weight.track_op()
            && !self.bias.as_ref().is_some_and(Tensor::track_op)
        {
            // Frozen: only dL/dx = dL/dy W flows back (nn::frozen_map).
            let (w, dims) = (self.weight.clone(), x.dims().to_vec());
            let vjp = move |dy: &Tensor| {
                let out = w.dim(0)?;
                super::flops::add(2 * dy.elem_count() * w.dim(1)?);
                dy.reshape(((), out))?.matmul(&w)?.reshape(dims.as_slice())
            };
            return frozen_map(x, |x| self.affine(x), Arc::new(vjp));
        }
        self.affine(x)
    }
}

impl Linear {
    fn affine(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let in_dim = dims[dims.len() - 1];
        let lead: usize = dims[..dims.len() - 1].iter().product();
        super::flops::add(2 * lead * in_dim * self.weight.dim(0)?);
        let x2 = x.reshape((lead, in_dim))?;
        let y = match super::linear_cpu::linear(&x2, &self.weight, self.bias.as_ref())? {
            Some(y) => y,
            None => {
                let y = x2.matmul(&self.weight.t()?)?;
                match &self.bias {
                    Some(b) => scale_shift(&y, None, Some(b), 1)?,
                    None => y,
                }
            }
        };
        let mut out = dims.to_vec();
        *out.last_mut().unwrap() = y.dim(1)?;
        y.reshape(out)
    }
}
