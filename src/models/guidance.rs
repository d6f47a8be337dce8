//! Classifier-free guidance (Ho & Salimans 2022) as a denoiser: ε = ε(x, ∅) + w (ε(x, c) - ε(x, ∅)),
//! with the conditional and unconditional passes in one batch. The paper runs the policy and
//! the reference with guidance 5.0 (7.5 in the black-box setting); the consistency model runs
//! without (w = 1).

use super::Denoiser;
use candle_core::{Result, Tensor};
use std::sync::Arc;

pub struct Guided {
    pub inner: Arc<dyn Denoiser>,
    /// w; 1.0 is the conditional model alone (no second pass).
    pub scale: f64,
    /// The condition id of the null prompt.
    pub null: u32,
}

impl Denoiser for Guided {
    fn eps(&self, x: &Tensor, t: &Tensor, cond: &Tensor) -> Result<Tensor> {
        if self.scale == 1.0 {
            return self.inner.eps(x, t, cond);
        }
        let b = x.dim(0)?;
        let null = Tensor::full(self.null, b, cond.device())?;
        let both = self.inner.eps(
            &Tensor::cat(&[x, x], 0)?,
            &Tensor::cat(&[t, t], 0)?,
            &Tensor::cat(&[cond, &null], 0)?,
        )?;
        let (c, u) = (both.narrow(0, 0, b)?, both.narrow(0, b, b)?);
        u.add(&c.sub(&u)?.affine(self.scale, 0.0)?)
    }
}
