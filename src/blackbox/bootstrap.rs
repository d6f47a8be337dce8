//! The bootstrap ensemble of the online black-box loop (arXiv 2512.04559 §5.2, Appendix
//! D.1.2): K surrogate MLPs (4 by default), each a full network fit on its own resample of
//! the training rows (with replacement, as many rows), so their disagreement measures how
//! little data supports a prediction. The released code optimises the MAX over heads, an
//! optimistic estimate that rewards exploring where heads disagree; the mean is the
//! risk-neutral alternative. Both are differentiable w.r.t. the features.
//!
//! The resamples are redrawn at every fit (the labelled set has grown), from seeds derived
//! from the fit's seed and the head's index. With `resample` off the heads see the training
//! rows themselves: a single head is then the plain surrogate of the "ucb" and "none" modes.

use super::dataset::{bootstrap_resample, LabelledSet, Split};
use super::fit::{fit_mlp, FitConfig, FitReport};
use super::surrogate_mlp::SurrogateMlp;
use crate::rng::{seeded, Rng};
use anyhow::{bail, Result};
use candle_core::{Device, Module, Tensor};
use candle_nn::VarMap;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// The default number of heads, the released code's.
pub const DEFAULT_HEADS: usize = 4;

/// How the heads' predictions become the optimised reward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Combine {
    /// Max over heads (released code: optimistic).
    #[default]
    Max,
    /// Mean over heads.
    Mean,
}

impl std::str::FromStr for Combine {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "max" => Ok(Self::Max),
            "mean" => Ok(Self::Mean),
            _ => bail!("unknown combine {s:?}: expected \"max\" or \"mean\""),
        }
    }
}

/// Per-sample statistics over heads, all [N] and differentiable w.r.t. the features
/// (`std` is the population std over heads, ddof 0; 0 for one head, where its gradient is
/// not finite, so keep it for logging).
#[derive(Debug, Clone)]
pub struct EnsemblePrediction {
    /// Every head's prediction, [K, N].
    pub per_head: Tensor,
    pub mean: Tensor,
    pub std: Tensor,
    pub max: Tensor,
}

/// Weights are drawn from `head_seed(seed, k) ^ INIT_SALT`, resamples from `head_seed(seed, k)`.
const INIT_SALT: u64 = 0x1417_5eed;

/// A seed per (fit seed, head): heads never share a stream.
pub fn head_seed(seed: u64, head: usize) -> u64 {
    seed ^ (head as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

pub struct Bootstrap {
    pub heads: Vec<SurrogateMlp>,
    /// Head k's parameters.
    pub vars: Vec<VarMap>,
    in_dim: usize,
    hidden: Vec<usize>,
    device: Device,
}

impl Bootstrap {
    /// `n_heads` freshly initialised MLPs, head k drawn from `head_seed(seed, k) ^ INIT_SALT`.
    pub fn new(
        in_dim: usize,
        hidden: &[usize],
        n_heads: usize,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        if n_heads == 0 {
            bail!("a bootstrap ensemble needs at least one head");
        }
        let mut heads = Vec::with_capacity(n_heads);
        let mut vars = Vec::with_capacity(n_heads);
        for k in 0..n_heads {
            // Salted: a fit with the same seed draws its resamples from head_seed(seed, k).
            let mut rng = seeded(head_seed(seed, k) ^ INIT_SALT);
            let (v, h) = SurrogateMlp::fresh(in_dim, hidden, &mut rng, device)?;
            heads.push(h);
            vars.push(v);
        }
        Ok(Self {
            heads,
            vars,
            in_dim,
            hidden: hidden.to_vec(),
            device: device.clone(),
        })
    }

    pub fn len(&self) -> usize {
        self.heads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heads.is_empty()
    }

    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    /// Redraws every head's weights (a cold start), as `new` with this seed.
    pub fn reinit(&mut self, seed: u64) -> Result<()> {
        *self = Self::new(self.in_dim, &self.hidden, self.len(), seed, &self.device)?;
        Ok(())
    }

    /// Fits every head from its current weights: on a fresh resample of `split.train`
    /// (`resample`) or on `split.train` itself, with the best epoch picked on
    /// `split.held_out`. Head k's resample and minibatch order come from `head_seed(seed, k)`.
    pub fn fit(
        &mut self,
        set: &LabelledSet,
        split: &Split,
        cfg: &FitConfig,
        resample: bool,
        seed: u64,
    ) -> Result<Vec<FitReport>> {
        if set.dim() != self.in_dim {
            bail!(
                "the surrogate expects features of width {}, the labelled set has width {}",
                self.in_dim,
                set.dim()
            );
        }
        let device = self.device.clone();
        let held_out = set.gather(&split.held_out, &device)?;
        let plain = if resample {
            None
        } else {
            Some(set.gather(&split.train, &device)?)
        };
        let h = (!split.held_out.is_empty()).then_some((&held_out.0, &held_out.1));
        // Resamples drawn in head order, then the heads trained side by side (they share
        // nothing; each has its own generator, so the result does not depend on scheduling).
        let jobs = (0..self.len())
            .map(|k| {
                let mut rng: Rng = seeded(head_seed(seed, k));
                let data = match &plain {
                    Some(xy) => xy.clone(),
                    None => set.gather(&bootstrap_resample(&split.train, &mut rng), &device)?,
                };
                Ok((k, data, rng))
            })
            .collect::<Result<Vec<_>>>()?;
        jobs.into_par_iter()
            .map(|(k, (x, y), mut rng)| {
                fit_mlp(&self.heads[k], &self.vars[k], (&x, &y), h, cfg, &mut rng)
            })
            .collect()
    }

    /// Every head's prediction and their mean, std and max over heads.
    pub fn predict(&self, features: &Tensor) -> Result<EnsemblePrediction> {
        let preds = self
            .heads
            .iter()
            .map(|h| h.forward(features))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let per_head = Tensor::stack(&preds, 0)?;
        let mean = per_head.mean(0)?;
        let std = per_head
            .broadcast_sub(&mean.unsqueeze(0)?)?
            .sqr()?
            .mean(0)?
            .sqrt()?;
        let max = per_head.max(0)?;
        Ok(EnsemblePrediction {
            per_head,
            mean,
            std,
            max,
        })
    }

    /// The optimised reward [N]: max or mean over heads.
    pub fn reward(&self, features: &Tensor, combine: Combine) -> Result<Tensor> {
        let preds = self
            .heads
            .iter()
            .map(|h| h.forward(features))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let per_head = Tensor::stack(&preds, 0)?;
        Ok(match combine {
            Combine::Max => per_head.max(0)?,
            Combine::Mean => per_head.mean(0)?,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }
}
