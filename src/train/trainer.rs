//! The SQDF training loop (paper Algorithm 1), one epoch at a time:
//!   1. sample B trajectories with the current policy (detached) and score x_0 with the
//!      script's `reward`; push them into the replay buffer with `priority`;
//!   2. `updates_per_epoch` times: draw B states from the buffer, call the script's `loss`
//!      (Eq. 16 in `lua/sqdf.lua`), backpropagate, clip, AdamW;
//!   3. log a line of metrics, reload the script if it changed, checkpoint.

use super::along_training::{self, EvalLog};
use super::checkpoint::{self, fingerprint, CheckpointState};
use super::grad_clip::clip_grad_norm;
use super::hot_reload::{self, Reload};
use super::metrics::MetricsWriter;
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
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value as Json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

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
}

impl RunOptions {
    pub fn new(script: impl Into<PathBuf>) -> Self {
        Self {
            script: script.into(),
            overrides: Vec::new(),
            out: None,
            resume: None,
            device: Device::Cpu,
            watch: true,
            progress: true,
            log: RunLog::stderr(),
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
    pub run_dir: PathBuf,
    pub log: Arc<RunLog>,
    sandbox: SandboxOptions,
    discounts: Vec<f64>,
    watcher: Option<ScriptWatcher>,
    metrics: MetricsWriter,
    evals: EvalLog,
    last_rejected: Option<Vec<Option<String>>>,
}

impl Trainer {
    /// Loads and checks the script, the task's weights and (with `resume`) the checkpoint.
    /// Everything a user can get wrong fails here, before the first epoch.
    pub fn new(opts: RunOptions) -> Result<Self> {
        crate::keep_freed_memory();
        let log = opts.log.clone();
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
        let script = Script::load(&opts.script, &opts.overrides, &sandbox)?;
        let cfg = script.config.clone();
        let task =
            tasks::by_name(&cfg.task).map_err(|e| anyhow!("{}: {e}", opts.script.display()))?;
        let weights = tasks::weights_dir(&cfg.task, cfg.weights.as_deref());
        let models = Arc::new(task.build(&weights, &cfg, &opts.device)?);
        script.provide_rewards(&models.rewards)?;
        let cond0 = task.conditions(1, &mut rng::seeded(0))[0];
        smoke_test(&script, &models, cond0)?;

        let rng = rng::shared(cfg.seed);
        script.set_tensor_env(TensorEnv {
            device: opts.device.clone(),
            rng: rng.clone(),
        });
        let optim = AdamW::new(sorted_vars(&models.policy_vars))?;
        let buffer = ReplayBuffer::new(cfg.capacity, cfg.steps, &models.state_shape);
        let run_dir = match (&opts.resume, &opts.out) {
            (Some(dir), _) => dir.clone(),
            (None, Some(dir)) => dir.clone(),
            (None, None) => run_dir::default_run_dir(&opts.script),
        };
        std::fs::create_dir_all(&run_dir)
            .with_context(|| format!("creating run folder {}", run_dir.display()))?;
        log.attach_file(&run_dir.join("run.log"))
            .with_context(|| format!("opening {}", run_dir.join("run.log").display()))?;
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
            run_dir,
            log,
            sandbox,
            discounts,
            watcher: None,
            last_rejected: None,
            opts,
        };
        if let Some(dir) = t.opts.resume.clone() {
            t.restore(&dir)?;
        }
        t.recompute_priorities()?;
        if t.opts.watch {
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

    /// Runs to `config.epochs` (a live key), then evaluates; returns eval.json's contents.
    pub fn run(&mut self) -> Result<Json> {
        let cfg = self.script.config.clone();
        self.log.info(format!(
            "run folder {}; task {}, T = {}, batch {}, alpha {}, gamma {}, x0 {:?}, sampling {:?}",
            self.run_dir.display(),
            cfg.task,
            cfg.steps,
            cfg.batch,
            cfg.alpha,
            cfg.gamma,
            cfg.x0,
            cfg.sampling
        ));
        let started = Instant::now();
        let before = self.evaluate_before()?;
        if cfg.evals > 0 && !self.evals.has(0) {
            // The curve's first point: the pretrained model at the along-training size.
            let m = self.evaluate_along_with(self.models.reference.as_ref(), 0)?;
            self.evals.append(0, &m)?;
        }
        let bar = if self.opts.progress {
            ProgressBar::new(cfg.epochs as u64)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30} {pos}/{len} epochs [{elapsed_precise} < {eta_precise}] {msg}",
            )
            .expect("valid template"),
        );
        bar.set_position(self.epoch as u64);
        self.log.set_bar(Some(bar.clone()));
        let result = self.train_epochs(&bar);
        bar.finish_and_clear();
        self.log.set_bar(None);
        result?;
        let curve = self.run_dir.join("training_curve.png");
        plot_training_curve(&self.run_dir.join("metrics.jsonl"), &curve)?;
        self.log.info(format!("wrote {}", curve.display()));
        self.log.info("evaluating the fine-tuned model");
        let after = self.task.evaluate(
            &self.models,
            self.models.policy.as_ref(),
            &self.script,
            &self.run_dir,
            "after",
            &self.log,
            false,
        )?;
        let eval = json!({
            "before": before,
            "after": after,
            "epochs": self.epoch,
            // This process's time (a resumed run counts from its resume) and memory.
            "wall_seconds": started.elapsed().as_secs_f64(),
            "peak_rss_mib": super::memory::peak_rss_mib(),
            "script": self.script.path.display().to_string(),
            "script_generation": self.generation,
            "config": self.script.config,
        });
        std::fs::write(
            self.run_dir.join("eval.json"),
            serde_json::to_string_pretty(&eval)?,
        )?;
        self.log.info(format!(
            "wrote {}",
            self.run_dir.join("eval.json").display()
        ));
        Ok(eval)
    }

    fn train_epochs(&mut self, bar: &ProgressBar) -> Result<()> {
        // A run stopped between its checkpoint and that epoch's evaluation makes it up.
        self.evaluate_along()?;
        while self.epoch < self.script.config.epochs {
            if self.epoch > 0 {
                self.maybe_reload();
            }
            bar.set_length(self.script.config.epochs as u64);
            let m = self.run_epoch()?;
            self.save_checkpoint()?;
            self.evaluate_along()?;
            bar.set_position(self.epoch as u64);
            bar.set_message(format!(
                "reward {:.3} ± {:.3}, kl {}, gen {}",
                m["reward_mean"].as_f64().unwrap_or(f64::NAN),
                m["reward_std"].as_f64().unwrap_or(f64::NAN),
                m["kl"]
                    .as_f64()
                    .map(|k| format!("{k:.4}"))
                    .unwrap_or_else(|| "-".into()),
                self.generation
            ));
        }
        Ok(())
    }

    /// The smaller evaluation after this epoch, if it is one of the `evals` evenly spaced
    /// ones, into evals.jsonl (the points of Fig. 3).
    fn evaluate_along(&self) -> Result<()> {
        let cfg = &self.script.config;
        if !along_training::eval_epochs(cfg.epochs, cfg.evals).contains(&self.epoch)
            || self.evals.has(self.epoch)
        {
            return Ok(());
        }
        let m = self.evaluate_along_with(self.models.policy.as_ref(), self.epoch)?;
        self.evals.append(self.epoch, &m)
    }

    fn evaluate_along_with(
        &self,
        model: &dyn crate::models::Denoiser,
        epoch: usize,
    ) -> Result<Json> {
        let dir = self.run_dir.join("along_training");
        std::fs::create_dir_all(&dir)?;
        self.task.evaluate(
            &self.models,
            model,
            &self.script,
            &dir,
            &format!("epoch_{epoch:03}"),
            &self.log,
            true,
        )
    }

    /// The pretrained model's metrics, computed once per run folder.
    fn evaluate_before(&self) -> Result<Json> {
        let path = self.run_dir.join("eval_before.json");
        if let Ok(text) = std::fs::read_to_string(&path) {
            if let Ok(v) = serde_json::from_str(&text) {
                return Ok(v);
            }
        }
        self.log.info("evaluating the pretrained model");
        let v = self.task.evaluate(
            &self.models,
            self.models.reference.as_ref(),
            &self.script,
            &self.run_dir,
            "before",
            &self.log,
            false,
        )?;
        std::fs::write(&path, serde_json::to_string_pretty(&v)?)?;
        Ok(v)
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
            buffer_rewards: {
                let (c, r) = self.buffer.rewards_by_cond();
                Arc::new((c.to_vec(), r.to_vec()))
            },
        }
    }

    /// Step 1 of an epoch: B fresh trajectories from the current policy, detached, scored
    /// by the script's `reward` and stored with their priorities. Returns the rewards.
    pub fn collect(&mut self) -> Result<Vec<f32>> {
        let cfg = self.script.config.clone();
        let m = self.models.clone();
        let steps = m.sampler.steps();
        let (cond, x0, states, log_probs) = {
            let mut rng = self.rng.lock().unwrap();
            let cond = self.task.conditions(cfg.batch, &mut rng);
            let ct = cond_tensor(&cond, &m.device)?;
            let r = rollout::sample_trajectories(
                m.policy.as_ref(),
                &m.sampler,
                &m.state_shape,
                &ct,
                &mut rng,
            )?;
            // [B, T]: the behaviour policy's log-probabilities, for PPO-style losses.
            let lp = if r.log_probs.len() == steps {
                Some(Tensor::stack(&r.log_probs, 1)?.to_vec2::<f32>()?)
            } else {
                None
            };
            (cond, r.x0, r.states, lp)
        };
        let rewards = self
            .script
            .reward(&x0, &cond_tensor(&cond, &m.device)?)?
            .to_vec1::<f32>()?;
        let traj = Tensor::stack(&states, 1)?
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let per = traj.len() / cfg.batch;
        for (b, chunk) in traj.chunks(per).enumerate() {
            let slot = self.buffer.push(chunk, cond[b], rewards[b])?;
            if let Some(lp) = &log_probs {
                self.buffer.set_log_probs(slot, &lp[b])?;
            }
            if cfg.sampling == Sampling::Priority {
                for i in 0..steps {
                    let p = self.script.priority(
                        rewards[b],
                        steps - 1 - i,
                        m.sampler.timestep(i),
                        cond[b],
                    )?;
                    self.buffer.set_priority(StateRef { slot, i }, p);
                }
            }
        }
        Ok(rewards)
    }

    /// Step 2, once: B states from the buffer, the script's `loss` (Eq. 16 in lua/sqdf.lua),
    /// backward, clip, AdamW. None when the loss or its gradient was not finite (skipped;
    /// five in a row stop the run).
    pub fn update(&mut self) -> Result<Option<Update>> {
        let cfg = self.script.config.clone();
        let m = self.models.clone();
        let out = match cfg.update_on {
            UpdateOn::States => {
                let refs = self.sample_states(cfg.batch, cfg.sampling)?;
                let batch =
                    Batch::gather(&self.buffer, &refs, &m.sampler, &self.discounts, &m.device)?;
                self.script.loss(batch, self.context())?
            }
            UpdateOn::Trajectories => {
                let slots = self.buffer.latest(cfg.batch);
                let traj = Trajectories::from_buffer(
                    &self.buffer,
                    &slots,
                    &m.sampler,
                    &self.discounts,
                    &m.device,
                )?;
                self.script.loss(traj, self.context())?
            }
        };
        let loss = out
            .loss
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
        let mut grads = if loss.is_finite() {
            let store = out.loss.backward()?;
            self.optim
                .params
                .iter()
                .map(|(_, v)| store.get(v.as_tensor()).cloned())
                .collect()
        } else {
            Vec::new()
        };
        let norm = if loss.is_finite() {
            clip_grad_norm(&mut grads, cfg.grad_clip)?
        } else {
            f64::NAN
        };
        if !norm.is_finite() {
            self.nan_streak += 1;
            self.log.warn(format!(
                "epoch {}: non-finite loss ({loss}) or gradient norm ({norm}); step skipped ({} in a row)",
                self.epoch + 1,
                self.nan_streak
            ));
            if self.nan_streak >= MAX_NAN_STREAK {
                bail!(
                    "{MAX_NAN_STREAK} non-finite losses in a row: the run stops. The last checkpoint ({}, epoch {}) is intact; check the `loss` and `reward` hooks of {}",
                    self.run_dir.join(checkpoint::FILE).display(),
                    self.epoch,
                    self.script.path.display()
                );
            }
            return Ok(None);
        }
        self.optim.step(&grads, cfg.lr, cfg.weight_decay)?;
        self.nan_streak = 0;
        Ok(Some(Update {
            loss,
            grad_norm: norm,
            stats: out.stats,
        }))
    }

    /// One epoch of Algorithm 1 (collect, then `updates_per_epoch` updates); returns (and
    /// appends to metrics.jsonl) its metrics.
    pub fn run_epoch(&mut self) -> Result<Json> {
        let start = Instant::now();
        let cfg = self.script.config.clone();
        let rewards = self.collect()?;
        let (mut losses, mut norms, mut skipped) = (Vec::new(), Vec::new(), 0usize);
        let mut stats: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for _ in 0..cfg.updates_per_epoch {
            let Some(u) = self.update()? else {
                skipped += 1;
                continue;
            };
            losses.push(u.loss);
            norms.push(u.grad_norm);
            for (k, v) in u.stats {
                stats.entry(k).or_default().push(v);
            }
        }
        self.epoch += 1;

        // 3. Metrics.
        let mean = |v: &[f64]| {
            if v.is_empty() {
                None
            } else {
                Some(v.iter().sum::<f64>() / v.len() as f64)
            }
        };
        let r: Vec<f64> = rewards.iter().map(|&x| x as f64).collect();
        let r_mean = mean(&r).unwrap_or(f64::NAN);
        let r_std = (r.iter().map(|x| (x - r_mean).powi(2)).sum::<f64>() / r.len() as f64).sqrt();
        let mut line = json!({
            "epoch": self.epoch,
            "reward_mean": r_mean,
            "reward_std": r_std,
            "kl": stats.get("kl").and_then(|v| mean(v)),
            "loss": mean(&losses),
            "grad_norm": mean(&norms),
            "skipped_steps": skipped,
            "buffer": self.buffer.len(),
            "seconds": start.elapsed().as_secs_f64(),
            "script_generation": self.generation,
        });
        // Numbers from the hooks go beside the framework's, never over them.
        let free = |line: &Json, k: &str| {
            if line.get(k).is_some() {
                format!("hook.{k}")
            } else {
                k.to_string()
            }
        };
        for (k, v) in &stats {
            if k != "kl" {
                let key = free(&line, k);
                line[key.as_str()] = json!(mean(v));
            }
        }
        for (k, v) in self.script.on_epoch_end(&line)? {
            let key = free(&line, &k);
            line[key.as_str()] = json!(v);
        }
        self.metrics.append(&line)?;
        Ok(line)
    }

    fn sample_states(&mut self, n: usize, sampling: Sampling) -> Result<Vec<StateRef>> {
        let mut rng = self.rng.lock().unwrap();
        if sampling == Sampling::Priority {
            if let Some(refs) = self.buffer.sample_prioritised(n, &mut rng) {
                return Ok(refs);
            }
            self.log
                .warn("every buffer priority is zero; drawing this batch uniformly");
        }
        self.buffer.sample_uniform(n, &mut rng)
    }

    /// Priorities of every stored state from the current `priority` hook (after a reload
    /// or a resume); nothing to do under uniform sampling.
    fn recompute_priorities(&mut self) -> Result<()> {
        if self.script.config.sampling != Sampling::Priority {
            return Ok(());
        }
        let steps = self.models.sampler.steps();
        let refs: Vec<StateRef> = self.buffer.all_states().collect();
        for r in refs {
            let p = self.script.priority(
                self.buffer.reward(r.slot),
                steps - 1 - r.i,
                self.models.sampler.timestep(r.i),
                self.buffer.cond(r.slot),
            )?;
            self.buffer.set_priority(r, p);
        }
        Ok(())
    }

    /// Between epochs: if the watcher saw an edit, try the new version (see `hot_reload`).
    pub fn maybe_reload(&mut self) -> ReloadOutcome {
        let triggered = self
            .watcher
            .as_ref()
            .map(|w| w.take_changed())
            .unwrap_or(true);
        if !triggered {
            return ReloadOutcome::NoChange;
        }
        let disk = hot_reload::disk_sources(&self.script);
        if self.last_rejected.as_ref() == Some(&disk) {
            return ReloadOutcome::NoChange;
        }
        let cond0 = self.task.conditions(1, &mut rng::seeded(0))[0];
        match hot_reload::try_reload(
            &self.script,
            &self.opts.overrides,
            &self.sandbox,
            &self.models,
            cond0,
        ) {
            Reload::Unchanged => ReloadOutcome::NoChange,
            Reload::Rejected(msg) => self.reject(disk, msg),
            Reload::Accepted(new, diffs) => {
                new.set_tensor_env(TensorEnv {
                    device: self.opts.device.clone(),
                    rng: self.rng.clone(),
                });
                let old = std::mem::replace(&mut self.script, *new);
                let applied = self
                    .script
                    .discounts(self.models.sampler.steps())
                    .and_then(|d| {
                        self.discounts = d;
                        self.recompute_priorities()
                    });
                if let Err(e) = applied {
                    self.script = old;
                    self.discounts = self
                        .script
                        .discounts(self.models.sampler.steps())
                        .unwrap_or_default();
                    let _ = self.recompute_priorities();
                    return self.reject(disk, format!("{e:#}"));
                }
                self.generation += 1;
                self.last_rejected = None;
                let changes: Vec<String> = diffs
                    .iter()
                    .map(|(k, a, b)| format!("{k} {a} -> {b}"))
                    .collect();
                self.log.info(format!(
                    "reloaded {} (generation {}){}",
                    self.script.path.display(),
                    self.generation,
                    if changes.is_empty() {
                        String::new()
                    } else {
                        format!("; config: {}", changes.join(", "))
                    }
                ));
                if let Some(w) = self.watcher.as_mut() {
                    if let Err(e) = w.watch(
                        &self
                            .script
                            .sources
                            .iter()
                            .map(|(p, _)| p.clone())
                            .collect::<Vec<_>>(),
                    ) {
                        self.log
                            .warn(format!("cannot watch the new script's modules: {e}"));
                    }
                }
                ReloadOutcome::Reloaded
            }
        }
    }

    fn reject(&mut self, disk: Vec<Option<String>>, msg: String) -> ReloadOutcome {
        self.log.error(format!(
            "reload of {} failed; training goes on with generation {}:\n{msg}",
            self.script.path.display(),
            self.generation
        ));
        self.last_rejected = Some(disk);
        ReloadOutcome::Rejected
    }

    pub fn checkpoint_path(&self) -> PathBuf {
        self.run_dir.join(checkpoint::FILE)
    }

    pub fn save_checkpoint(&self) -> Result<()> {
        let state = CheckpointState {
            epoch: self.epoch,
            generation: self.generation,
            script: self.script.path.display().to_string(),
            script_hash: self.fingerprint(),
            config: self.script.config.clone(),
            optim_step: self.optim.step,
            rng: self.rng.lock().unwrap().clone(),
            buffer_next: self.buffer.next_slot(),
            buffer_pushed: self.buffer.pushed(),
            nan_streak: self.nan_streak,
        };
        checkpoint::save(
            &self.checkpoint_path(),
            &state,
            &self.optim.params,
            &self.optim,
            &self.buffer,
        )
    }

    fn restore(&mut self, dir: &Path) -> Result<()> {
        let path = dir.join(checkpoint::FILE);
        let loaded = checkpoint::load(&path)
            .with_context(|| format!("cannot resume from {}", dir.display()))?;
        for (k, a, b) in loaded.state.config.diff(&self.script.config) {
            if !config::is_live(&k) {
                bail!(
                    "cannot resume {}: config.{k} was {a} in the checkpoint and is {b} now; it cannot change within a run",
                    dir.display()
                );
            }
        }
        let params = self.optim.params.clone();
        loaded.restore(&path, &params, &mut self.optim, &mut self.buffer)?;
        *self.rng.lock().unwrap() = loaded.state.rng.clone();
        self.epoch = loaded.state.epoch;
        self.generation = loaded.state.generation;
        self.nan_streak = loaded.state.nan_streak;
        if self.fingerprint() != loaded.state.script_hash {
            self.generation += 1;
            self.log.info(format!(
                "{} changed since the checkpoint: generation {}",
                self.script.path.display(),
                self.generation
            ));
        }
        self.metrics.truncate_after(self.epoch)?;
        self.evals.truncate_after(self.epoch)?;
        self.log
            .info(format!("resumed {} at epoch {}", dir.display(), self.epoch));
        Ok(())
    }
}
