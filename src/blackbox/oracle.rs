//! The oracle of the black-box setting (§5.2, Algorithm 2): a reward the policy never
//! differentiates, queried a counted number of times under a budget. Every query is one
//! sample; asking past the budget is an error, never a silent truncation. Labels may be
//! noisy: the released code adds N(0, 0.1²) to every oracle label.

use crate::rng::{randn, seeded, Rng};
use crate::script::TensorFn;
use anyhow::{bail, Result};
use candle_core::Tensor;
use std::sync::Mutex;

pub struct Oracle {
    /// The true reward (for the digits: the gold score), called on detached samples.
    reward: TensorFn,
    noise_std: f64,
    budget: usize,
    state: Mutex<(usize, Rng)>,
}

impl Oracle {
    pub fn new(reward: TensorFn, budget: usize, noise_std: f64, seed: u64) -> Self {
        Self {
            reward,
            noise_std,
            budget,
            state: Mutex::new((0, seeded(seed ^ 0x0_5ac1e))),
        }
    }

    /// Noisy labels [B] of `x0` (detached: no gradient ever reaches the oracle); counts B
    /// queries, or fails without counting any when they would pass the budget.
    pub fn query(&self, x0: &Tensor, cond: Option<&Tensor>) -> Result<Tensor> {
        let n = x0.dim(0)?;
        let mut st = self.state.lock().unwrap();
        if st.0 + n > self.budget {
            bail!(
                "oracle budget exceeded: {} of {} queries used, {n} more asked (config.queries / config.oracle_budget)",
                st.0,
                self.budget
            );
        }
        let r = self.label(x0, cond, &mut st.1)?;
        st.0 += n;
        Ok(r)
    }

    /// The noise-free reward, not counted: evaluations and smoke tests measure the oracle,
    /// they do not query it. No noise is drawn, so the labels a run's queries get do not
    /// depend on how often it is evaluated, and a run resumed from a checkpoint (saved before
    /// its evaluation) draws the same noise as one that never stopped.
    pub fn peek(&self, x0: &Tensor, cond: Option<&Tensor>) -> Result<Tensor> {
        Ok((self.reward)(&x0.detach(), cond)?.detach())
    }

    /// The reward of detached samples plus the label noise.
    fn label(&self, x0: &Tensor, cond: Option<&Tensor>, rng: &mut Rng) -> Result<Tensor> {
        let r = self.peek(x0, cond)?;
        if self.noise_std == 0.0 {
            return Ok(r);
        }
        let z = randn(rng, r.shape(), r.device())?.to_dtype(r.dtype())?;
        Ok((r + (z * self.noise_std)?)?)
    }

    /// Queries used so far.
    pub fn used(&self) -> usize {
        self.state.lock().unwrap().0
    }

    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Sets the count and the noise generator's state (a resumed run).
    pub fn restore(&self, used: usize, rng: Rng) {
        *self.state.lock().unwrap() = (used, rng);
    }

    /// The count and the noise generator's state (for checkpoints).
    pub fn snapshot(&self) -> (usize, Rng) {
        let st = self.state.lock().unwrap();
        (st.0, st.1.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use std::sync::Arc;

    #[test]
    fn the_counter_stops_at_the_budget() {
        let f: TensorFn = Arc::new(|x: &Tensor, _: Option<&Tensor>| x.sum(1));
        let o = Oracle::new(f, 5, 0.0, 0);
        let x = Tensor::ones((3, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert_eq!(
            o.query(&x, None).unwrap().to_vec1::<f32>().unwrap(),
            [2.0; 3]
        );
        assert_eq!(o.used(), 3);
        let e = o.query(&x, None).unwrap_err().to_string();
        assert!(e.contains("budget exceeded: 3 of 5"), "{e}");
        assert_eq!(o.used(), 3, "a refused query counts nothing");
        o.query(&x.narrow(0, 0, 2).unwrap(), None).unwrap();
        assert_eq!(o.used(), 5);
    }

    #[test]
    fn peeking_is_noise_free_and_leaves_the_query_noise_alone() {
        let f: TensorFn = Arc::new(|x: &Tensor, _: Option<&Tensor>| x.sum(1));
        let x = Tensor::ones((4, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        let (peeked, straight) = (Oracle::new(f.clone(), 8, 0.1, 3), Oracle::new(f, 8, 0.1, 3));
        let p = peeked.peek(&x, None).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(p, [2.0; 4], "peek returns the reward itself");
        assert_eq!(peeked.used(), 0);
        let a = peeked.query(&x, None).unwrap().to_vec1::<f32>().unwrap();
        let b = straight.query(&x, None).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a, b, "a peek must not move the noise stream");
        assert!(a.iter().any(|v| *v != 2.0), "queries are noisy: {a:?}");
    }
}
