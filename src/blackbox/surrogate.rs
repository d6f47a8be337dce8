//! The learned surrogate of the online black-box loop (arXiv 2512.04559 Algorithm 2, §5.2,
//! Appendix D.1.2 / D.2.3), as one object: each outer round it is refit on every labelled
//! sample, and the policy is then fine-tuned on `reward`, its prediction plus an
//! optimism term, since the oracle itself can only be queried a limited number of times.
//!
//! Three kinds of uncertainty:
//! - "bootstrap" (default): 4 MLPs on bootstrap resamples, reward = max over heads (the
//!   released code) or their mean;
//! - "ucb": one MLP, reward = prediction + min(C1 sqrt(phi^T (Sigma + lambda I)^-1 phi), clip)
//!   with phi its last hidden layer and Sigma over all labelled samples (`ucb.rs`);
//! - "none": one MLP, reward = its prediction.
//!
//! Every fit holds out about 10% (at least one row) to pick the best epoch, each row in the
//! same part at every fit. By default each round continues from the previous round's
//! weights (warm start, as released); `warm_start = false` redraws the weights from the
//! fit's seed first.

use super::bootstrap::{Bootstrap, Combine, DEFAULT_HEADS};
use super::dataset::{LabelledSet, Split, DEFAULT_HOLDOUT};
use super::fit::{FitConfig, FitReport};
use super::surrogate_mlp::DEFAULT_HIDDEN;
use super::ucb::{SigmaKind, UcbBonus, DEFAULT_C1, DEFAULT_CLIP, DEFAULT_LAMBDA};
use anyhow::{bail, Result};
use candle_core::{DType, Device, Module, Tensor};
use serde::{Deserialize, Serialize};

/// Where the optimism comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Uncertainty {
    #[default]
    Bootstrap,
    Ucb,
    None,
}

impl std::str::FromStr for Uncertainty {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "bootstrap" => Ok(Self::Bootstrap),
            "ucb" => Ok(Self::Ucb),
            "none" => Ok(Self::None),
            _ => bail!("unknown uncertainty {s:?}: expected \"bootstrap\", \"ucb\" or \"none\""),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SurrogateConfig {
    pub uncertainty: Uncertainty,
    /// Bootstrap heads ("ucb" and "none" use one MLP).
    pub heads: usize,
    pub hidden: Vec<usize>,
    pub epochs: usize,
    pub lr: f64,
    pub batch: usize,
    pub weight_decay: f64,
    /// Fraction of the labelled rows held out to pick the best epoch.
    pub holdout: f64,
    pub c1: f64,
    pub lambda: f64,
    pub sigma: SigmaKind,
    /// Upper bound of the UCB bonus.
    pub clip: f64,
    pub combine: Combine,
    /// Continue from the previous round's weights (true) or redraw them at every fit.
    pub warm_start: bool,
}

impl Default for SurrogateConfig {
    fn default() -> Self {
        let fit = FitConfig::default();
        Self {
            uncertainty: Uncertainty::Bootstrap,
            heads: DEFAULT_HEADS,
            hidden: DEFAULT_HIDDEN.to_vec(),
            epochs: fit.epochs,
            lr: fit.lr,
            batch: fit.batch,
            weight_decay: fit.weight_decay,
            holdout: DEFAULT_HOLDOUT,
            c1: DEFAULT_C1,
            lambda: DEFAULT_LAMBDA,
            sigma: SigmaKind::Gram,
            clip: DEFAULT_CLIP,
            combine: Combine::Max,
            warm_start: true,
        }
    }
}

impl SurrogateConfig {
    pub fn fit_config(&self) -> FitConfig {
        FitConfig {
            epochs: self.epochs,
            lr: self.lr,
            batch: self.batch,
            weight_decay: self.weight_decay,
        }
    }

    /// The number of MLPs this configuration trains.
    pub fn n_models(&self) -> usize {
        match self.uncertainty {
            Uncertainty::Bootstrap => self.heads,
            Uncertainty::Ucb | Uncertainty::None => 1,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.uncertainty == Uncertainty::Bootstrap && self.heads == 0 {
            bail!("surrogate: bootstrap needs heads >= 1");
        }
        if self.epochs == 0 || self.batch == 0 {
            bail!("surrogate: epochs and batch must be positive");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            bail!("surrogate: lr must be positive, got {}", self.lr);
        }
        if !(0.0..1.0).contains(&self.holdout) {
            bail!("surrogate: holdout must be in [0, 1), got {}", self.holdout);
        }
        if self.uncertainty == Uncertainty::Ucb
            && !(self.lambda > 0.0 && self.clip >= 0.0 && self.c1 >= 0.0 && self.c1.is_finite())
        {
            bail!(
                "surrogate: ucb needs lambda > 0, clip >= 0 and a finite c1 >= 0, got {}, {} and {}",
                self.lambda,
                self.clip,
                self.c1
            );
        }
        Ok(())
    }
}

/// What one `Surrogate::fit` did.
#[derive(Debug, Clone)]
pub struct SurrogateFitReport {
    /// One report per trained MLP.
    pub heads: Vec<FitReport>,
    /// The rows of the labelled set each part was drawn from.
    pub split: Split,
    pub seconds: f64,
}

/// Per-sample statistics for logging, [N] each, detached.
#[derive(Debug, Clone)]
pub struct SurrogateStats {
    /// What `reward` returns.
    pub reward: Tensor,
    /// Mean over heads (the single prediction outside "bootstrap").
    pub mean: Tensor,
    /// Std over heads (zeros outside "bootstrap").
    pub std: Tensor,
    /// Max over heads.
    pub max: Tensor,
    /// The UCB bonus ("ucb" only).
    pub bonus: Option<Tensor>,
}

pub struct Surrogate {
    cfg: SurrogateConfig,
    ensemble: Bootstrap,
    ucb: Option<UcbBonus>,
    fitted: bool,
    /// The held-out split's seed, fixed for the surrogate's life: a row keeps its part
    /// from fit to fit (`LabelledSet::split`).
    split_seed: u64,
}

impl Surrogate {
    /// An unfitted surrogate on `in_dim`-wide features, weights drawn from `seed`.
    pub fn new(cfg: SurrogateConfig, in_dim: usize, seed: u64, device: &Device) -> Result<Self> {
        cfg.validate()?;
        let ensemble = Bootstrap::new(in_dim, &cfg.hidden, cfg.n_models(), seed, device)?;
        Ok(Self {
            cfg,
            ensemble,
            ucb: None,
            fitted: false,
            split_seed: seed,
        })
    }

    pub fn config(&self) -> &SurrogateConfig {
        &self.cfg
    }

    pub fn in_dim(&self) -> usize {
        self.ensemble.in_dim()
    }

    pub fn is_fitted(&self) -> bool {
        self.fitted
    }

    /// The trained MLPs (one outside "bootstrap") and their parameters.
    pub fn ensemble(&self) -> &Bootstrap {
        &self.ensemble
    }

    /// The UCB bonus of the last fit ("ucb" only).
    pub fn ucb(&self) -> Option<&UcbBonus> {
        self.ucb.as_ref()
    }

    /// Refits on every labelled sample: the stable split (the same seed at every fit), then each MLP (on its bootstrap
    /// resample in "bootstrap"), best held-out epoch restored; in "ucb" the bonus's Sigma is
    /// rebuilt from the new phi of all labelled rows.
    pub fn fit(&mut self, set: &LabelledSet, seed: u64) -> Result<SurrogateFitReport> {
        let start = std::time::Instant::now();
        if set.dim() != self.in_dim() {
            bail!(
                "the surrogate expects features of width {}, the labelled set has width {}",
                self.in_dim(),
                set.dim()
            );
        }
        if !self.cfg.warm_start {
            self.ensemble.reinit(seed)?;
        }
        let split = set.split(self.cfg.holdout, self.split_seed)?;
        let resample = self.cfg.uncertainty == Uncertainty::Bootstrap;
        let heads = self
            .ensemble
            .fit(set, &split, &self.cfg.fit_config(), resample, seed)?;
        self.ucb = None;
        if self.cfg.uncertainty == Uncertainty::Ucb {
            let (x, _) = set.tensors(self.ensemble.device())?;
            let phi = self.ensemble.heads[0].hidden(&x)?.detach();
            self.ucb = Some(UcbBonus::from_phi(
                &phi,
                self.cfg.sigma,
                self.cfg.lambda,
                self.cfg.c1,
                self.cfg.clip,
            )?);
        }
        self.fitted = true;
        Ok(SurrogateFitReport {
            heads,
            split,
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// The reward the policy is fine-tuned on, features [N, in_dim] -> [N] (f32),
    /// differentiable w.r.t. the features: the prediction plus the UCB bonus, if any.
    pub fn reward(&self, features: &Tensor) -> Result<Tensor> {
        let (pred, bonus) = self.prediction_and_bonus(features)?;
        Ok(match bonus {
            Some(b) => pred.add(&b)?,
            None => pred,
        })
    }

    /// The reward's two parts, both differentiable: the prediction (in "bootstrap" the
    /// heads' max or mean), in the units of the labels it was fitted on, and the UCB bonus
    /// ("ucb" only), in the units of C1. A caller that fitted on standardised labels maps
    /// the prediction back and adds the bonus as it is, so that C1 is in reward units
    /// as in the paper's formula.
    pub fn prediction_and_bonus(&self, features: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        let x = self.check(features)?;
        Ok(match self.cfg.uncertainty {
            Uncertainty::Bootstrap => (self.ensemble.reward(&x, self.cfg.combine)?, None),
            Uncertainty::Ucb => {
                let (pred, phi) = self.ensemble.heads[0].forward_with_hidden(&x)?;
                (pred, Some(self.bonus(&phi)?))
            }
            Uncertainty::None => (self.ensemble.heads[0].forward(&x)?, None),
        })
    }

    /// The reward and its parts, detached, for logging.
    pub fn predict_stats(&self, features: &Tensor) -> Result<SurrogateStats> {
        let x = self.check(features)?.detach();
        let p = self.ensemble.predict(&x)?;
        let bonus = match self.cfg.uncertainty {
            Uncertainty::Ucb => Some(self.bonus(&self.ensemble.heads[0].hidden(&x)?)?),
            _ => None,
        };
        let reward = match (&self.cfg.uncertainty, &bonus) {
            (Uncertainty::Bootstrap, _) => match self.cfg.combine {
                Combine::Max => p.max.clone(),
                Combine::Mean => p.mean.clone(),
            },
            (_, Some(b)) => p.mean.add(b)?,
            _ => p.mean.clone(),
        };
        Ok(SurrogateStats {
            reward: reward.detach(),
            mean: p.mean.detach(),
            std: p.std.detach(),
            max: p.max.detach(),
            bonus: bonus.map(|b| b.detach()),
        })
    }

    fn bonus(&self, phi: &Tensor) -> Result<Tensor> {
        match &self.ucb {
            Some(u) => u.bonus(phi),
            None => bail!("the UCB bonus is built by fit: fit the surrogate first"),
        }
    }

    /// Features as f32 [N, in_dim], or an error naming the expected width.
    fn check(&self, features: &Tensor) -> Result<Tensor> {
        if !self.fitted {
            bail!("the surrogate has not been fitted yet: call fit on the labelled set first");
        }
        match features.dims() {
            [_, d] if *d == self.in_dim() => {}
            dims => bail!(
                "the surrogate expects features [N, {}] (the feature extractor's width), got {dims:?}",
                self.in_dim()
            ),
        }
        Ok(features.to_dtype(DType::F32)?)
    }
}
