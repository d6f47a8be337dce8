//! AdamW (Loshchilov & Hutter 2019) with torch's update rule. Its moments are plain
//! tensors the caller can save and restore, so a resumed run continues exactly; the
//! learning rate and weight decay are arguments of each step, so live edits apply at once.

use anyhow::Result;
use candle_core::{Tensor, Var};

pub struct AdamW {
    pub params: Vec<(String, Var)>,
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
    pub step: u64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl AdamW {
    /// β = (0.9, 0.999), ε = 1e-8: the paper's (Appendix D.1.1) and torch's defaults.
    pub fn new(params: Vec<(String, Var)>) -> Result<Self> {
        let zeros = |p: &Var| p.as_tensor().zeros_like();
        Ok(Self {
            m: params
                .iter()
                .map(|(_, p)| zeros(p))
                .collect::<candle_core::Result<_>>()?,
            v: params
                .iter()
                .map(|(_, p)| zeros(p))
                .collect::<candle_core::Result<_>>()?,
            params,
            step: 0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        })
    }

    /// Zeroes the moments and the step count, as a newly built optimiser over the same
    /// parameters (the released black-box code builds one per round).
    pub fn reset(&mut self) -> Result<()> {
        for t in self.m.iter_mut().chain(self.v.iter_mut()) {
            *t = t.zeros_like()?;
        }
        self.step = 0;
        Ok(())
    }

    /// Backpropagates `loss` and takes one step; returns the loss value.
    pub fn minimise(&mut self, loss: &Tensor, lr: f64, weight_decay: f64) -> Result<f64> {
        let g = loss.backward()?;
        let grads: Vec<_> = self
            .params
            .iter()
            .map(|(_, v)| g.get(v.as_tensor()).cloned())
            .collect();
        self.step(&grads, lr, weight_decay)?;
        Ok(loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?)
    }

    /// One update with gradients in parameter order (None: the parameter got no gradient).
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f64, weight_decay: f64) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let (c1, c2) = (1.0 - self.beta1.powi(t), 1.0 - self.beta2.powi(t));
        for (j, (_, p)) in self.params.iter().enumerate() {
            let Some(g) = &grads[j] else { continue };
            // A gradient may carry a graph; the moments must not chain one step to the next.
            let g = &g.detach();
            self.m[j] = self.m[j]
                .affine(self.beta1, 0.0)?
                .add(&g.affine(1.0 - self.beta1, 0.0)?)?;
            self.v[j] = self.v[j]
                .affine(self.beta2, 0.0)?
                .add(&g.sqr()?.affine(1.0 - self.beta2, 0.0)?)?;
            let m_hat = self.m[j].affine(1.0 / c1, 0.0)?;
            let v_hat = self.v[j].affine(1.0 / c2, 0.0)?;
            let update = m_hat.div(&v_hat.sqrt()?.affine(1.0, self.eps)?)?;
            let decayed = p.as_tensor().affine(1.0 - lr * weight_decay, 0.0)?;
            p.set(&decayed.sub(&update.affine(lr, 0.0)?)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn a_reset_optimiser_steps_as_a_new_one() {
        let dev = Device::Cpu;
        let g = |s: f32| Some(Tensor::new(&[s, 2.0 * s, -s], &dev).unwrap());
        let p = Var::new(&[1.0f32, -2.0, 0.5], &dev).unwrap();
        let mut used = AdamW::new(vec![("p".into(), p.clone())]).unwrap();
        used.step(&[g(1.0)], 0.1, 0.1).unwrap();
        used.step(&[g(3.0)], 0.1, 0.1).unwrap();
        let q = Var::from_tensor(&p.as_tensor().copy().unwrap()).unwrap();
        let mut fresh = AdamW::new(vec![("q".into(), q.clone())]).unwrap();
        used.reset().unwrap();
        used.step(&[g(-2.0)], 0.1, 0.1).unwrap();
        fresh.step(&[g(-2.0)], 0.1, 0.1).unwrap();
        let v = |x: &Var| x.as_tensor().to_vec1::<f32>().unwrap();
        assert_eq!(v(&p), v(&q));
    }
}
