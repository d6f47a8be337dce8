//! Training one surrogate MLP on (features, oracle labels), as the released code of arXiv
//! 2512.04559 does (Appendix D.2.3): Adam with lr 1e-3 and no weight decay, MSE, minibatches
//! of 512 reshuffled every epoch, and after every epoch the MSE on a held-out part; at the end
//! the weights of the best held-out epoch are put back.
//!
//! The best weights are kept as real copies (`Tensor::copy`). `Tensor::detach` would share
//! the variable's storage, and `Var::set` writes into that storage in place, so a detached
//! "best" would silently follow the training to its last epoch. The released code's best
//! is such a reference rather than a copy, so it ends with the last epoch's weights: a bug
//! not reproduced here.
//!
//! The fit starts from whatever weights the model holds: a warm start from the previous
//! round is the caller keeping the model, a cold start is the caller drawing a fresh one.
//!
//! The training forward is `SurrogateMlp::forward_data` (no gradient for the features,
//! which candle's matmul would otherwise compute and drop at every step).
//!
//! Default epochs: 200, not the released 300. A fit of 4 heads on 2000 labelled 128-d
//! samples (1800 to train on, 4 minibatches an epoch) costs about 4.3 CPU-seconds at 200
//! epochs, about 2.5 s on 2 idle cores (the heads train side by side); the time grows
//! linearly with epochs and samples. On a learnable 128-d function the best epochs were
//! between 60 and 200 (the held-out error still falls slowly at 200 with lr 1e-3): raise
//! `epochs` where the time is there.

use super::surrogate_mlp::SurrogateMlp;
use crate::rng::Rng;
use crate::tensor_io::sorted_vars;
use crate::train::AdamW;
use anyhow::{bail, Result};
use candle_core::{DType, Module, Tensor};
use candle_nn::VarMap;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FitConfig {
    pub epochs: usize,
    pub lr: f64,
    pub batch: usize,
    /// AdamW's decoupled decay; 0 (plain Adam) as released.
    pub weight_decay: f64,
}

impl Default for FitConfig {
    fn default() -> Self {
        Self {
            epochs: 200,
            lr: 1e-3,
            batch: 512,
            weight_decay: 0.0,
        }
    }
}

/// What one fit did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitReport {
    /// Mean minibatch MSE of each epoch (on the training rows, as trained).
    pub train_loss: Vec<f64>,
    /// MSE on the held-out rows after each epoch; empty without held-out rows.
    pub held_out_loss: Vec<f64>,
    /// The epoch whose weights the model holds at the end, as an index into the losses
    /// (0 = after the first epoch): the best held-out epoch, or the last without held-out rows.
    pub best_epoch: usize,
    /// `held_out_loss[best_epoch]` (NaN without held-out rows).
    pub best_held_out: f64,
    /// MSE on the held-out rows before the first epoch (NaN without held-out rows).
    pub initial_held_out: f64,
}

/// Mean squared error of `model` on (features [N, d], labels [N]), as f64.
pub fn mse(model: &SurrogateMlp, features: &Tensor, labels: &Tensor) -> Result<f64> {
    let err = model.forward(features)?.sub(labels)?;
    Ok(err.sqr()?.mean_all()?.to_dtype(DType::F64)?.to_scalar()?)
}

/// Trains `model` (its parameters are the variables of `vars`) from its current weights on
/// `train` and restores the best epoch on `held_out` (none: keeps the last). `rng` draws the
/// minibatch order. The optimiser's moments start from zero at every fit.
pub fn fit_mlp(
    model: &SurrogateMlp,
    vars: &VarMap,
    train: (&Tensor, &Tensor),
    held_out: Option<(&Tensor, &Tensor)>,
    cfg: &FitConfig,
    rng: &mut Rng,
) -> Result<FitReport> {
    let (x, y) = train;
    let n = x.dim(0)?;
    if n == 0 || cfg.epochs == 0 || cfg.batch == 0 {
        bail!(
            "a surrogate fit needs training rows, epochs and a batch size (got {n} rows, {} epochs, batch {})",
            cfg.epochs,
            cfg.batch
        );
    }
    if y.dims() != [n] {
        bail!(
            "surrogate labels must be [{n}] (one per feature row), got {:?}",
            y.dims()
        );
    }
    let held_out = held_out.filter(|(hx, _)| hx.dim(0).is_ok_and(|k| k > 0));
    if let Some((hx, hy)) = held_out {
        if hy.dims() != [hx.dim(0)?] {
            bail!(
                "held-out labels must be [{}], got {:?}",
                hx.dim(0)?,
                hy.dims()
            );
        }
    }
    let params = sorted_vars(vars);
    let mut opt = AdamW::new(params.clone())?;
    let eval = |hx: &Tensor, hy: &Tensor| mse(model, hx, hy);
    let initial_held_out = match held_out {
        Some((hx, hy)) => eval(hx, hy)?,
        None => f64::NAN,
    };

    let mut order: Vec<u32> = (0..n as u32).collect();
    let mut report = FitReport {
        train_loss: Vec::with_capacity(cfg.epochs),
        held_out_loss: Vec::with_capacity(cfg.epochs),
        best_epoch: cfg.epochs - 1,
        best_held_out: f64::NAN,
        initial_held_out,
    };
    let mut best: Option<Vec<Tensor>> = None;
    for epoch in 0..cfg.epochs {
        order.shuffle(rng);
        let mut sum = 0.0;
        for chunk in order.chunks(cfg.batch) {
            let idx = Tensor::from_slice(chunk, chunk.len(), x.device())?;
            let (bx, by) = (x.index_select(&idx, 0)?, y.index_select(&idx, 0)?);
            let loss = model.forward_data(&bx)?.sub(&by)?.sqr()?.mean_all()?;
            sum += opt.minimise(&loss, cfg.lr, cfg.weight_decay)? * chunk.len() as f64;
        }
        report.train_loss.push(sum / n as f64);
        if let Some((hx, hy)) = held_out {
            let l = eval(hx, hy)?;
            report.held_out_loss.push(l);
            // Strict: ties keep the earlier epoch; a non-finite loss never becomes the best.
            if l.is_finite() && (best.is_none() || l < report.best_held_out) {
                report.best_epoch = epoch;
                report.best_held_out = l;
                best = Some(
                    params
                        .iter()
                        .map(|(_, v)| Ok(v.as_tensor().copy()?.detach()))
                        .collect::<candle_core::Result<_>>()?,
                );
            }
        }
    }
    if let Some(best) = best {
        for ((_, v), t) in params.iter().zip(&best) {
            v.set(t)?;
        }
    }
    Ok(report)
}
