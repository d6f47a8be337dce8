//! Algorithm 2's outer loop, around the epochs of Algorithm 1: at the start of each round,
//! `queries[n]` samples of the current policy are labelled by the oracle and added to the
//! labelled set, the surrogate is refitted on all of it, the buffer is emptied and the KL
//! reference is moved (script choices). In between, scripts optimise `rewards.surrogate`;
//! `rewards.oracle` is the oracle itself (PPO+KL queries it directly), counted only while
//! the trainer samples, read noise-free and uncounted in evaluations and smoke tests, and
//! refused during updates (`OracleAccess`): a loss that called it would take labels the
//! budget never counted.

use super::{LabelledSet, Oracle, Surrogate, SurrogateConfig};
use crate::script::{RunConfig, TensorFn};
use crate::tasks::TaskModels;
use crate::train::checkpoint::BlackBoxState;
use anyhow::{anyhow, Context, Result};
use candle_core::Tensor;
use serde_json::{json, Value as Json};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, RwLock};

/// The surrogate and the standardisation it was fitted under: features and labels are
/// z-scored over the labelled set at every fit (classifier features reach tens, labels
/// vary by hundredths; an MLP at lr 1e-3 fits neither raw), and the reward is mapped back to
/// the labels' scale.
pub struct Fitted {
    pub surrogate: Surrogate,
    x_mean: Option<Tensor>,
    x_std: Option<Tensor>,
    y_mean: f64,
    y_std: f64,
}

impl Fitted {
    /// The surrogate's reward in label units, differentiable w.r.t. the features. The UCB
    /// bonus is added after the prediction is mapped back: C1 sqrt(φᵀ(Σ + λI)⁻¹φ) is in the
    /// oracle's units, as in the paper, not scaled by the labels' spread.
    pub fn reward(&self, phi: &Tensor) -> Result<Tensor> {
        let (Some(m), Some(sd)) = (&self.x_mean, &self.x_std) else {
            anyhow::bail!("the surrogate has not been fitted yet");
        };
        let z = phi.broadcast_sub(m)?.broadcast_div(sd)?;
        let (pred, bonus) = self.surrogate.prediction_and_bonus(&z)?;
        let pred = pred.affine(self.y_std, self.y_mean)?;
        Ok(match bonus {
            Some(b) => (pred + b)?,
            None => pred,
        })
    }

    fn fit(&mut self, set: &LabelledSet, seed: u64) -> Result<super::SurrogateFitReport> {
        let dev = self.surrogate.ensemble().device().clone();
        let (x, y) = set.tensors(&dev)?;
        let x_mean = x.mean_keepdim(0)?;
        let x_std = (x.broadcast_sub(&x_mean)?.sqr()?.mean_keepdim(0)? + 1e-6)?.sqrt()?;
        let y_mean = y.mean_all()?.to_scalar::<f32>()? as f64;
        let y_std = ((y
            .affine(1.0, -y_mean)?
            .sqr()?
            .mean_all()?
            .to_scalar::<f32>()? as f64)
            + 1e-12)
            .sqrt();
        let xz = x.broadcast_sub(&x_mean)?.broadcast_div(&x_std)?;
        let yz = y.affine(1.0 / y_std, -y_mean / y_std)?;
        let mut z = LabelledSet::new(set.dim());
        z.push(&xz, &yz)?;
        let report = self.surrogate.fit(&z, seed)?;
        (self.x_mean, self.x_std, self.y_mean, self.y_std) =
            (Some(x_mean), Some(x_std), y_mean, y_std);
        Ok(report)
    }
}

/// The surrogate's settings: the defaults (`SurrogateConfig`, the paper's C1, λ, heads),
/// minibatches of 64 (the first rounds hold a few hundred labels; the released code's 512
/// would give one step per epoch), then `config.surrogate`'s keys over them, and
/// `config.uncertainty`.
fn surrogate_config(cfg: &RunConfig) -> Result<SurrogateConfig> {
    if cfg.surrogate.contains_key("uncertainty") {
        anyhow::bail!("config.surrogate.uncertainty: set config.uncertainty instead");
    }
    let mut merged = serde_json::to_value(SurrogateConfig {
        batch: 64,
        ..SurrogateConfig::default()
    })?;
    for (k, v) in &cfg.surrogate {
        // Unknown keys fall through to serde, whose error lists the known ones.
        merged[k] = match merged.get(k) {
            Some(def) => {
                crate::script::config::coerce_to(def, v.clone(), &format!("config.surrogate.{k}"))?
            }
            None => v.clone(),
        };
    }
    let mut scfg: SurrogateConfig =
        serde_json::from_value(merged).map_err(|e| anyhow!("config.surrogate: {e}"))?;
    scfg.uncertainty = cfg.uncertainty;
    scfg.validate().context("config.surrogate")?;
    Ok(scfg)
}

pub struct Rounds {
    pub oracle: Arc<Oracle>,
    pub surrogate: Arc<RwLock<Fitted>>,
    pub set: LabelledSet,
    /// Frozen features of generated samples (the digits: the classifier's penultimate layer).
    pub features: TensorFn,
    /// Rounds started so far.
    pub round: usize,
    access: Arc<AtomicU8>,
    /// The task reward that plays the oracle (`config.oracle`).
    truth_name: String,
}

/// What `rewards.oracle` does at a given moment of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum OracleAccess {
    /// Noise-free and uncounted (`Oracle::peek`): evaluations and smoke tests.
    Peek = 0,
    /// Noisy labels counted against the budget: the trainer's sampling.
    Count = 1,
    /// An error: the updates (the loss hook) must not query the oracle.
    Refuse = 2,
}

impl OracleAccess {
    /// The access stored in `cell` (written only through `Rounds::access`).
    fn load(cell: &AtomicU8) -> Self {
        match cell.load(Ordering::SeqCst) {
            1 => Self::Count,
            2 => Self::Refuse,
            _ => Self::Peek,
        }
    }
}

/// Holds an `OracleAccess` set by `Rounds::access`; dropping it restores `Peek`. It owns its
/// handle, so the trainer can hold it while it borrows itself mutably.
#[must_use = "the access lasts only while the guard lives"]
pub struct OracleAccessGuard(Arc<AtomicU8>);

impl Drop for OracleAccessGuard {
    fn drop(&mut self) {
        self.0.store(OracleAccess::Peek as u8, Ordering::SeqCst);
    }
}

impl Rounds {
    /// The black-box state of a run, or None for a run whose reward is known.
    pub fn new(cfg: &RunConfig, models: &TaskModels) -> Result<Option<Self>> {
        if !cfg.is_black_box() {
            return Ok(None);
        }
        let find = |name: &str| {
            models
                .rewards
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, f)| f.clone())
        };
        let truth = find(&cfg.oracle).ok_or_else(|| {
            anyhow!(
                "config.oracle = \"{}\": the task has no such reward (it has: {})",
                cfg.oracle,
                models
                    .rewards
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        let features = models.features.clone().context(
            "this task offers no frozen features for a surrogate (black-box runs need them)",
        )?;
        let probe = Tensor::zeros(
            [vec![1], models.state_shape.clone()].concat(),
            crate::DTYPE,
            &models.device,
        )?;
        let dim = features(&probe, None)?.dim(1)?;
        let scfg = surrogate_config(cfg)?;
        Ok(Some(Self {
            oracle: Arc::new(Oracle::new(truth, cfg.budget(), cfg.oracle_noise, cfg.seed)),
            surrogate: Arc::new(RwLock::new(Fitted {
                surrogate: Surrogate::new(scfg, dim, cfg.seed, &models.device)?,
                x_mean: None,
                x_std: None,
                y_mean: 0.0,
                y_std: 1.0,
            })),
            set: LabelledSet::new(dim),
            features,
            round: 0,
            access: Arc::new(AtomicU8::new(OracleAccess::Peek as u8)),
            truth_name: cfg.oracle.clone(),
        }))
    }

    /// `rewards.surrogate(x0)` (the surrogate's optimistic reward, differentiable; 0 before
    /// the first fit) and `rewards.oracle(x0)` (detached; as `OracleAccess` says).
    pub fn rewards(&self) -> Vec<(String, TensorFn)> {
        let (s, f) = (self.surrogate.clone(), self.features.clone());
        let (o, access) = (self.oracle.clone(), self.access.clone());
        vec![
            (
                "surrogate".into(),
                Arc::new(move |x: &Tensor, _: Option<&Tensor>| {
                    let phi = f(x, None)?;
                    let s = s.read().unwrap();
                    if !s.surrogate.is_fitted() {
                        // Only the smoke test calls it before round 1: zero, still on x's graph.
                        return phi.sum(1)? * 0.0;
                    }
                    s.reward(&phi)
                        .map_err(|e| candle_core::Error::Msg(format!("{e:#}")))
                }),
            ),
            (
                "oracle".into(),
                Arc::new(move |x: &Tensor, cond: Option<&Tensor>| {
                    let r =
                        match OracleAccess::load(&access) {
                            OracleAccess::Count => o.query(x, cond),
                            OracleAccess::Peek => o.peek(x, cond),
                            OracleAccess::Refuse => return Err(candle_core::Error::Msg(
                                "rewards.oracle was called during an update (the loss hook): the \
                                 oracle answers only while the trainer samples, where every \
                                 query counts against the budget; a loss optimises \
                                 rewards.surrogate or the rewards stored at sampling"
                                    .into(),
                            )),
                        };
                    r.map_err(|e| candle_core::Error::Msg(format!("{e:#}")))
                }),
            ),
        ]
    }

    /// The rewards a black-box script sees: the task's, with `rewards.surrogate` and
    /// `rewards.oracle` added, and the task reward that plays the oracle made an error: a
    /// script reaches the oracle only through the counted `rewards.oracle`.
    pub fn install_rewards(&self, rewards: &mut Vec<(String, TensorFn)>) {
        let name = self.truth_name.clone();
        for (k, f) in rewards.iter_mut() {
            if *k == name {
                let name = name.clone();
                *f = Arc::new(move |_: &Tensor, _: Option<&Tensor>| {
                    Err(candle_core::Error::Msg(format!(
                        "rewards.{name} plays the oracle in this run (config.oracle): scripts \
                         query it as rewards.oracle, which counts every query against the budget"
                    )))
                });
            }
        }
        rewards.extend(self.rewards());
    }

    /// What oracle calls do until the guard drops (the trainer counts while it samples and
    /// refuses while it updates); then `Peek` again, on an error or a panic too.
    pub fn access(&self, access: OracleAccess) -> OracleAccessGuard {
        self.access.store(access as u8, Ordering::SeqCst);
        OracleAccessGuard(self.access.clone())
    }

    /// Whether round `self.round` starts at `epoch`.
    pub fn due(&self, epoch: usize, cfg: &RunConfig) -> bool {
        self.round < cfg.queries.len() && epoch == self.round * cfg.round_epochs
    }

    /// The seed of the fit that round `round` (0-based) makes.
    fn fit_seed(seed: u64, round: usize) -> u64 {
        seed ^ (round as u64).wrapping_mul(0x9e37)
    }

    /// The rounds' state for a checkpoint: the count, the oracle's count and noise state,
    /// and the labelled set as tensors (`blackbox.features`, `blackbox.labels`).
    pub fn snapshot(&self) -> Result<(BlackBoxState, Vec<(String, Tensor)>)> {
        let (oracle_used, oracle_rng) = self.oracle.snapshot();
        let (x, y) = self.set.tensors(&candle_core::Device::Cpu)?;
        Ok((
            BlackBoxState {
                round: self.round,
                oracle_used,
                oracle_rng,
            },
            vec![
                ("blackbox.features".into(), x),
                ("blackbox.labels".into(), y),
            ],
        ))
    }

    /// Puts a checkpoint's rounds back: the labelled set, the counts, and the surrogate.
    /// Each round's fit is replayed on the labels that round had (`queries` per round,
    /// appended in order) with that round's seed: the fits are deterministic, and with the
    /// warm start (the default) each continues from the one before, so only the whole
    /// sequence gives the same surrogate.
    pub fn restore(
        &mut self,
        state: &BlackBoxState,
        features: &Tensor,
        labels: &Tensor,
        queries: &[usize],
        seed: u64,
    ) -> Result<()> {
        let expected: usize = queries.iter().take(state.round).sum();
        if expected != labels.dim(0)? {
            anyhow::bail!(
                "the checkpoint holds {} labels; config.queries gives {expected} for its {} rounds",
                labels.dim(0)?,
                state.round
            );
        }
        self.set = LabelledSet::new(self.set.dim());
        let mut seen = 0;
        for (r, &n) in queries.iter().take(state.round).enumerate() {
            self.set
                .push(&features.narrow(0, seen, n)?, &labels.narrow(0, seen, n)?)?;
            seen += n;
            self.surrogate
                .write()
                .unwrap()
                .fit(&self.set, Self::fit_seed(seed, r))?;
        }
        self.round = state.round;
        self.oracle
            .restore(state.oracle_used, state.oracle_rng.clone());
        Ok(())
    }

    /// Labels `x0` with the oracle (counted), adds them to the set, refits the surrogate;
    /// returns the round's numbers for the metrics line.
    pub fn label_and_fit(&mut self, x0: &Tensor, cond: &Tensor, seed: u64) -> Result<Json> {
        let labels = self.oracle.query(x0, Some(cond))?;
        let phi = (self.features)(x0, None)?.detach();
        self.set.push(&phi, &labels)?;
        let report = self
            .surrogate
            .write()
            .unwrap()
            .fit(&self.set, Self::fit_seed(seed, self.round))?;
        self.round += 1;
        let held: Vec<f64> = report.heads.iter().map(|h| h.best_held_out).collect();
        Ok(json!({
            "round": self.round,
            "labelled": self.set.len(),
            "oracle_label_mean": labels.mean_all()?.to_scalar::<f32>()?,
            "surrogate_held_out_mse": held.iter().sum::<f64>() / held.len().max(1) as f64,
            "surrogate_fit_seconds": report.seconds,
        }))
    }
}

#[cfg(test)]
#[path = "rounds_tests.rs"]
mod tests;
