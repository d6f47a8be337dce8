//! The SQDF training loop (paper Algorithm 1), one epoch at a time:
//!   1. sample B trajectories with the current policy (detached) and score x_0 with the
//!      script's `reward`; push them into the replay buffer with `priority`;
//!   2. `updates_per_epoch` times: draw B states from the buffer, call the script's `loss`
//!      (Eq. 16 in `lua/sqdf.lua`), backpropagate, clip, AdamW;
//!   3. log a line of metrics, reload the script if it changed, checkpoint.

use super::along_training::{self, EvalLog};
use super::checkpoint::{self, fingerprint, CheckpointState};
use super::grad_clip::clip_grad_norm;
use super::metrics::{EpochMetrics, EvalReport, MetricsWriter};
use super::smoke_test::smoke_test;
use super::{rollout, run_dir, AdamW};
use crate::eval::training_curve::plot_training_curve;
use crate::replay::{ReplayBuffer, StateRef};
use crate::rng::{self, SharedRng};
use crate::run_log::RunLog;
use crate::script::watcher::ScriptWatcher;
use crate::script::{
    config, Batch, LossContext, Sampling, SandboxOptions, Script, TensorEnv, Trajectories, UpdateOn,
};
use crate::tasks::{self, cond_tensor, Task, TaskModels};
use crate::tensor_io::sorted_vars;
use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor};
use indicatif::ProgressBar;
use serde_json::{json, Value as Json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

mod data_parallel;
mod epoch;
mod reload;
mod run;
mod state;

/// Consecutive non-finite losses after which a run stops (its last checkpoint stays).
pub const MAX_NAN_STREAK: usize = 5;

pub struct RunOptions {
    pub script: PathBuf,
    pub overrides: Vec<(String, Json)>,
    /// The run folder; default `runs/<script name>-<time>`.
    pub out: Option<PathBuf>,
    /// Continue the run in this folder from its checkpoint.
    pub resume: Option<PathBuf>,
    pub device: Device,
    /// Watch the script for edits (hot reload).
    pub watch: bool,
    pub progress: bool,
    pub log: Arc<RunLog>,
    /// The processes training this model: rank 0 of 1, or a rank of an MPI job (data
    /// parallel; `data_parallel.rs`).
    pub job: std::rc::Rc<crate::distributed::Job>,
}

impl RunOptions {
    pub fn new(script: impl Into<PathBuf>) -> Self {
        Self {
            script: script.into(),
            overrides: Vec::new(),
            out: None,
            resume: None,
            device: crate::device::default_device(),
            watch: true,
            progress: true,
            log: RunLog::stderr(),
            job: std::rc::Rc::new(crate::distributed::Job::single()),
        }
    }
}

/// One optimiser step's numbers.
pub struct Update {
    pub loss: f64,
    pub grad_norm: f64,
    /// The numbers the `loss` hook returned to log.
    pub stats: BTreeMap<String, f64>,
}

/// What happened at a reload check between epochs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadOutcome {
    NoChange,
    Reloaded,
    Rejected,
}

pub struct Trainer {
    pub opts: RunOptions,
    pub task: Box<dyn Task>,
    pub models: Arc<TaskModels>,
    pub script: Script,
    pub generation: u64,
    pub buffer: ReplayBuffer,
    pub optim: AdamW,
    pub rng: SharedRng,
    pub epoch: usize,
    pub nan_streak: usize,
    /// Optimiser steps since the last `collect` (`ctx.update` is this + 1).
    pub updates_since_collect: usize,
    /// The black-box state (oracle, labelled set, surrogate) of an Algorithm 2 run.
    pub rounds: Option<crate::blackbox::rounds::Rounds>,
    pub run_dir: PathBuf,
    pub log: Arc<RunLog>,
    sandbox: SandboxOptions,
    discounts: Vec<f64>,
    watcher: Option<ScriptWatcher>,
    metrics: MetricsWriter,
    evals: EvalLog,
    last_rejected: Option<Vec<Option<String>>>,
    /// The files changed while the last reload attempt read them: check again next epoch.
    recheck: bool,
    /// Seconds this epoch spent exchanging with the other ranks, waiting for them included:
    /// gathering trajectories, and summing gradients.
    gather_seconds: std::cell::Cell<f64>,
    grad_sum_seconds: std::cell::Cell<f64>,
    /// The run folder's lock, released when the trainer goes (or the process ends); held
    /// by rank 0, which alone writes the folder.
    _lock: Option<run_dir::FolderLock>,
}

impl Trainer {
    /// Loads and checks the script, the task's weights and (with `resume`) the checkpoint.
    /// Everything a user can get wrong fails here, before the first epoch.
    pub fn new(opts: RunOptions) -> Result<Self> {
        let log = opts.log.clone();
        let lead = opts.job.rank() == 0;
        if opts.job.size() > 1 {
            log.info(format!(
                "data parallel on {} ranks: each samples and differentiates its share of every batch",
                opts.job.size()
            ));
        }
        // A folder another run holds is refused before anything else; a new folder is
        // created (and locked) only once the script and the models have passed their checks.
        let run_dir = run_folder(&opts)?;
        let fresh_default = opts.out.is_none() && opts.resume.is_none();
        let held = match lead && run_dir.is_dir() && !fresh_default {
            true => Some(run_dir::lock(&run_dir)?),
            false => None,
        };
        let script_dir = opts
            .script
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let sandbox = SandboxOptions::new(
            &script_dir,
            log.clone(),
            TensorEnv {
                device: opts.device.clone(),
                rng: rng::shared(crate::script::experiment::LOAD_SEED),
            },
        );
        let script = data_parallel::load_as_rank_0_did(&opts, &sandbox)?;
        let cfg = script.config.clone();
        let task =
            tasks::by_name(&cfg.task).map_err(|e| anyhow!("{}: {e}", opts.script.display()))?;
        let weights = tasks::weights_dir(&cfg.task, cfg.weights.as_deref());
        let mut models = task.build(&weights, &cfg, &opts.device)?;
        // Black-box runs (Algorithm 2): the oracle and the surrogate join the task's rewards.
        let rounds = crate::blackbox::rounds::Rounds::new(&cfg, &models)
            .map_err(|e| anyhow!("{}: {e:#}", opts.script.display()))?;
        if let Some(r) = &rounds {
            r.install_rewards(&mut models.rewards);
        }
        let models = Arc::new(models);
        if let Some(init) = &cfg.lora_init {
            crate::train::lora_export::load(Path::new(init), &models, &cfg)
                .map_err(|e| anyhow!("{}: config.lora_init: {e:#}", opts.script.display()))?;
        }
        script.provide_rewards(&models.rewards)?;
        let cond0 = task.conditions(1, &mut rng::seeded(0))[0];
        smoke_test(&script, &models, cond0, rounds.as_ref())?;

        let rng = rng::shared(cfg.seed);
        script.set_tensor_env(TensorEnv {
            device: opts.device.clone(),
            rng: rng.clone(),
        });
        let optim = AdamW::new(sorted_vars(&models.policy_vars))?;
        let buffer = ReplayBuffer::new(cfg.capacity, cfg.steps, &models.state_shape);
        let lock = match held {
            _ if !lead => None,
            Some(l) => Some(l),
            // A default folder is always a new one (never another run's of the same second).
            None if fresh_default => Some(run_dir::lock_new(&run_dir)?),
            None => Some(run_dir::lock(&run_dir)?),
        };
        // The other ranks learn the folder from rank 0 (a default folder's name has the time).
        let run_dir = match &lock {
            Some(l) => l.dir().to_path_buf(),
            None => run_dir,
        };
        let named = opts
            .job
            .broadcast_from_root(run_dir.to_string_lossy().into_owned().into_bytes());
        let run_dir = match lead {
            true => run_dir,
            // Only named in the other ranks' messages: they write nothing there.
            false => PathBuf::from(String::from_utf8_lossy(&named).into_owned()),
        };
        if lead {
            log.attach_file(&run_dir.join("run.log"))
                .with_context(|| format!("opening {}", run_dir.join("run.log").display()))?;
        }
        let discounts = script.discounts(cfg.steps)?;
        let mut t = Self {
            metrics: MetricsWriter::new(&run_dir.join("metrics.jsonl")),
            evals: EvalLog::new(&run_dir),
            task,
            models,
            script,
            generation: 1,
            buffer,
            optim,
            rng,
            epoch: 0,
            nan_streak: 0,
            updates_since_collect: 0,
            rounds,
            run_dir,
            log,
            sandbox,
            discounts,
            watcher: None,
            last_rejected: None,
            recheck: false,
            gather_seconds: Default::default(),
            grad_sum_seconds: Default::default(),
            _lock: lock,
            opts,
        };
        if let Some(dir) = t.opts.resume.clone() {
            t.restore(&dir)?;
        } else if lead {
            t.start_fresh_in_folder()?;
        }
        t.recompute_priorities()?;
        if let Some(w) = unstarted_rounds(&t.script.config) {
            t.log.warn(w);
        }
        t.check_batch_covers_ranks()?;
        t.check_ranks_agree("at the start")?;
        // Rank 0 watches the script and sends the others what it reloads.
        if t.opts.watch && lead {
            match ScriptWatcher::new().and_then(|mut w| w.watch(&t.source_paths()).map(|_| w)) {
                Ok(w) => t.watcher = Some(w),
                Err(e) => t.log.warn(format!(
                    "cannot watch the script for edits ({e}); it will be checked every epoch"
                )),
            }
        }
        Ok(t)
    }

    /// discount(k) for k = 0..T-1 from the running script.
    pub fn discounts(&self) -> &[f64] {
        &self.discounts
    }

    fn source_paths(&self) -> Vec<PathBuf> {
        self.script.sources.iter().map(|(p, _)| p.clone()).collect()
    }

    fn fingerprint(&self) -> String {
        let srcs: Vec<&str> = self
            .script
            .sources
            .iter()
            .map(|(_, s)| s.as_str())
            .collect();
        fingerprint(&srcs)
    }

    /// The `ctx` the `loss` hook receives this epoch.
    pub fn context(&self) -> LossContext {
        LossContext {
            models: self.models.clone(),
            reward: self.script.reward_fn(),
            config: self.script.config_table.clone(),
            x0: self.script.config.x0,
            rng: self.rng.clone(),
            epoch: self.epoch,
            origin: self.script.path.display().to_string(),
            x0_steps: self.script.config.x0_steps,
            update: self.updates_since_collect + 1,
            micro_batch: 1,
            buffer_rewards: { Arc::new(self.buffer.rewards_in_push_order()) },
            rows: None,
            rank: self.opts.job.rank(),
            ranks: self.opts.job.size(),
        }
    }
}

/// The run folder: `--resume`'s (which must hold a checkpoint; `--out` may only name the
/// same folder), else `--out`, else a new `runs/<script name>-<time>`. Nothing is created.
fn run_folder(opts: &RunOptions) -> Result<PathBuf> {
    let Some(dir) = &opts.resume else {
        return Ok(match &opts.out {
            Some(out) => out.clone(),
            None => run_dir::default_run_dir(&opts.script),
        });
    };
    if dir.is_file() {
        let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
        bail!(
            "cannot resume {}: it is a file; --resume takes the run folder that holds the checkpoint ({})",
            dir.display(),
            parent.unwrap_or(Path::new(".")).display()
        );
    }
    if !dir.is_dir() {
        bail!(
            "cannot resume {}: no such folder (--resume takes the folder of an earlier run)",
            dir.display()
        );
    }
    if !dir.join(checkpoint::FILE).is_file() {
        bail!(
            "cannot resume {}: it holds no {} (a run writes it after its first epoch); start it again with --out {}",
            dir.display(),
            checkpoint::FILE,
            dir.display()
        );
    }
    match &opts.out {
        Some(out) if out != dir => bail!(
            "cannot resume {} with --out {}: a resumed run goes on in its own folder; drop --out",
            dir.display(),
            out.display()
        ),
        _ => Ok(dir.clone()),
    }
}

/// A warning when black-box rounds would start after the last epoch: their queries would
/// go unused (a run may be resumed with more epochs, so not an error).
fn unstarted_rounds(cfg: &config::RunConfig) -> Option<String> {
    let started = cfg.epochs.div_ceil(cfg.round_epochs.max(1));
    let left = cfg.queries.get(started..).filter(|q| !q.is_empty())?;
    let which = match left.len() {
        1 => format!("round {} never starts and its", started + 1),
        _ => format!(
            "rounds {}..{} never start and their",
            started + 1,
            cfg.queries.len()
        ),
    };
    Some(format!(
        "config.queries has {} rounds of {} epochs, but epochs = {}: {which} {} queries go unused",
        cfg.queries.len(),
        cfg.round_epochs,
        cfg.epochs,
        left.iter().sum::<usize>()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_past_the_last_epoch_are_named() {
        let cfg = |epochs| config::RunConfig {
            queries: vec![128, 256, 512, 1024],
            round_epochs: 5,
            epochs,
            ..config::RunConfig::default()
        };
        assert_eq!(unstarted_rounds(&cfg(20)), None);
        let w = unstarted_rounds(&cfg(15)).unwrap();
        assert!(
            w.contains("round 4 never starts and its 1024 queries"),
            "{w}"
        );
        assert_eq!(
            unstarted_rounds(&cfg(16)),
            None,
            "round 4 starts at epoch 15"
        );
        let w = unstarted_rounds(&cfg(10)).unwrap();
        assert!(
            w.contains("rounds 3..4 never start and their 1536 queries"),
            "{w}"
        );
        assert_eq!(unstarted_rounds(&config::RunConfig::default()), None);
    }
}
