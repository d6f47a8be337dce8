//! One epoch of Algorithm 1: collect B trajectories, then `updates_per_epoch` updates of
//! the script's `loss`, then a line of metrics.

use super::data_parallel::UpdateParts;
use super::*;
use crate::blackbox::rounds::{OracleAccess, OracleAccessGuard};
use crate::rng::StreamSwap;
use std::sync::Mutex;

impl Trainer {
    /// Step 1 of an epoch: B fresh trajectories from the current policy, detached, scored
    /// by the script's `buffer_reward` (its `reward` unless it has one) and stored with their
    /// priorities. Returns the rewards. Trajectory b's noise is stream b of a key drawn from
    /// the run's stream, so it is the same whichever micro-batch or rank samples it.
    pub fn collect(&mut self) -> Result<Vec<f32>> {
        self.check_batch_covers_ranks()?;
        let cfg = self.script.config.clone();
        let m = self.models.clone();
        let steps = m.sampler.steps();
        self.updates_since_collect = 0;
        let micro = cfg.micro_batch_size();
        let (cond, key) = {
            let mut rng = self.rng.lock().unwrap();
            let cond = self.task.conditions(cfg.batch, &mut rng);
            (cond, rand::Rng::random::<u64>(&mut *rng))
        };
        // This rank's share, `micro_batch` trajectories at a time, so that batch 64 at SD-1.5
        // size fits any GPU; states go to host memory as soon as they are sampled.
        let mine = self.opts.job.share(cfg.batch);
        let (mut rewards, mut traj, mut log_probs) = (Vec::new(), Vec::new(), Vec::new());
        for start in mine.clone().step_by(micro) {
            let end = (start + micro).min(mine.end);
            let ct = cond_tensor(&cond[start..end], &m.device)?;
            let mut streams = rng::row_streams(key, start..end);
            let r = rollout::sample_trajectories(
                m.sampling_policy().as_ref(),
                &m.sampler,
                &m.state_shape,
                &ct,
                &mut streams,
                true,
            )?;
            // [B, T]: the behaviour policy's log-probabilities, for PPO-style losses.
            if r.log_probs.len() == steps {
                log_probs.extend(
                    Tensor::stack(&r.log_probs, 1)?
                        .flatten_all()?
                        .to_vec1::<f32>()?,
                );
            }
            // The reward hook's own draws (`math.random`) come from the key's shared stream,
            // started afresh for each micro-batch, as in the loss.
            let stream = StreamSwap::new(&self.rng, rng::row_stream(key, rng::SHARED_STREAM));
            rewards.extend(self.script.buffer_reward(&r.x0, &ct)?.to_vec1::<f32>()?);
            drop(stream);
            traj.extend(
                Tensor::stack(&r.states, 1)?
                    .to_device(&Device::Cpu)?
                    .to_dtype(candle_core::DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?,
            );
        }
        let [traj, log_probs, rewards] = self.gather_trajectories([traj, log_probs, rewards])?;
        let per = traj.len() / cfg.batch;
        let log_probs: Vec<&[f32]> = match log_probs.len() == cfg.batch * steps {
            true => log_probs.chunks(steps).collect(),
            false => Vec::new(),
        };
        for (b, chunk) in traj.chunks(per).enumerate() {
            let slot = self.buffer.push(chunk, cond[b], rewards[b])?;
            if let Some(lp) = log_probs.get(b) {
                self.buffer.set_log_probs(slot, lp)?;
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
        // Gradient accumulation over micro-batches: the loss is a batch mean, so each
        // micro-batch's loss and gradient count with weight len / batch.
        let micro = cfg.micro_batch_size();
        let (mut loss, mut grads, mut stats) = (0.0, Vec::new(), BTreeMap::new());
        let (refs, slots) = match cfg.update_on {
            UpdateOn::States => (self.sample_states(cfg.batch, cfg.sampling)?, Vec::new()),
            UpdateOn::Trajectories => (Vec::new(), self.buffer.latest(cfg.batch)),
        };
        // The hook's noise: row g of the batch draws from stream g of this key, and its other
        // draws (`math.random`, `tensor.randn`) from the key's shared stream, which every
        // micro-batch starts afresh. The loss is then the same however the batch is split.
        let key = rand::Rng::random::<u64>(&mut *self.rng.lock().unwrap());
        let units = refs.len().max(slots.len());
        let mine = self.opts.job.share(units);
        for (k, start) in mine.clone().step_by(micro).enumerate() {
            let len = micro.min(mine.end - start);
            let ctx = LossContext {
                micro_batch: k + 1,
                rows: Some(Arc::new(Mutex::new(rng::row_streams(
                    key,
                    start..start + len,
                )))),
                ..self.context()
            };
            let stream = StreamSwap::new(&self.rng, rng::row_stream(key, rng::SHARED_STREAM));
            let out = match cfg.update_on {
                UpdateOn::States => {
                    let batch = Batch::gather(
                        &self.buffer,
                        &refs[start..start + len],
                        &m.sampler,
                        &self.discounts,
                        &m.device,
                    )?;
                    self.script.loss(batch, ctx)?
                }
                UpdateOn::Trajectories => {
                    let traj = Trajectories::from_buffer(
                        &self.buffer,
                        &slots[start..start + len],
                        &m.sampler,
                        &self.discounts,
                        &m.device,
                    )?;
                    self.script.loss(traj, ctx)?
                }
            };
            drop(stream);
            let w = len as f64 / units as f64;
            let l = out
                .loss
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?;
            loss += w * l;
            for (k, v) in out.stats {
                *stats.entry(k).or_insert(0.0) += w * v;
            }
            if !l.is_finite() {
                grads.clear();
                break;
            }
            let store = out.loss.backward()?;
            let part: Vec<Option<Tensor>> = self
                .optim
                .params
                .iter()
                .map(|(_, v)| store.get(v.as_tensor()).cloned())
                .collect();
            grads = if grads.is_empty() {
                // One micro-batch (the default) leaves the gradient untouched.
                if len == units {
                    part
                } else {
                    scale_grads(part, w)?
                }
            } else {
                add_grads(grads, scale_grads(part, w)?)?
            };
        }
        let UpdateParts {
            loss,
            stats,
            mut grads,
        } = self.sum_over_ranks(UpdateParts { loss, stats, grads })?;
        let norm = if loss.is_finite() && !grads.is_empty() {
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
        self.updates_since_collect += 1;
        self.nan_streak = 0;
        Ok(Some(Update {
            loss,
            grad_norm: norm,
            stats,
        }))
    }

    /// One epoch of Algorithm 1 (collect, then `updates_per_epoch` updates); returns (and
    /// appends to metrics.jsonl) its metrics.
    pub fn run_epoch(&mut self) -> Result<EpochMetrics> {
        let start = Instant::now();
        let cfg = self.script.config.clone();
        let round = match &self.rounds {
            Some(r) if r.due(self.epoch, &cfg) => Some(self.start_round()?),
            _ => None,
        };
        let counting = self.oracle_access(OracleAccess::Count);
        let collected = self.collect();
        drop(counting);
        let rewards = collected?;
        let refusing = self.oracle_access(OracleAccess::Refuse);
        let (mut losses, mut norms, mut skipped) = (Vec::new(), Vec::new(), 0usize);
        let mut stats: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        let updated = (|| -> Result<()> {
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
            Ok(())
        })();
        drop(refusing);
        updated?;
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
        let (r_mean, r_std) = crate::eval::stats::mean_std(&r).unzip();
        let mut line = EpochMetrics {
            epoch: self.epoch,
            reward_mean: r_mean,
            reward_std: r_std,
            kl: stats.get("kl").and_then(|v| mean(v)),
            loss: mean(&losses),
            grad_norm: mean(&norms),
            skipped_steps: skipped,
            buffer: self.buffer.len(),
            seconds: start.elapsed().as_secs_f64(),
            script_generation: self.generation,
            queries_used: self.rounds.as_ref().map(|r| r.oracle.used()),
            extra: Default::default(),
        };
        let (gather, sum) = self.take_exchange_seconds();
        if self.opts.job.size() > 1 {
            // Waiting for slower ranks included.
            line.extra.insert("gather_seconds".into(), json!(gather));
            line.extra.insert("grad_sum_seconds".into(), json!(sum));
        }
        // Numbers from the hooks go beside the framework's, never over them.
        for (k, v) in &stats {
            if k != "kl" {
                let key = line.free_key(k);
                line.extra.insert(key, json!(mean(v)));
            }
        }
        if let Some(Json::Object(fields)) = round {
            line.extra.extend(fields);
        }
        // The hook sees rank 0's line (its times) on every rank, so that it decides alike.
        let shown = match self.opts.job.size() {
            1 => line.to_json(),
            _ => {
                let sent = self
                    .opts
                    .job
                    .broadcast_from_root(serde_json::to_vec(&line.to_json())?);
                serde_json::from_slice(&sent).context("reading rank 0's epoch line")?
            }
        };
        for (k, v) in self.script.on_epoch_end(&shown)? {
            let key = line.free_key(&k);
            line.extra.insert(key, json!(v));
        }
        self.check_ranks_agree("after the epoch")?;
        if self.leads() {
            self.metrics.append(&line.to_json())?;
        }
        Ok(line)
    }

    /// What `rewards.oracle` does while the returned guard lives (black-box runs only).
    fn oracle_access(&self, access: OracleAccess) -> Option<OracleAccessGuard> {
        self.rounds.as_ref().map(|r| r.access(access))
    }

    /// Algorithm 2, lines 3-6: `queries[n]` samples of the current policy labelled by the
    /// oracle, the surrogate refitted on every label so far, the buffer emptied
    /// (`buffer_reset`), AdamW restarted (`optimizer_reset`) and the previous-round reference
    /// moved to the policy.
    pub fn start_round(&mut self) -> Result<Json> {
        let cfg = self.script.config.clone();
        let m = self.models.clone();
        let rounds = self.rounds.as_ref().expect("a black-box run");
        let n = cfg.queries[rounds.round];
        let micro = cfg.micro_batch_size();
        let (cond, key) = {
            let mut rng = self.rng.lock().unwrap();
            let cond = self.task.conditions(n, &mut rng);
            (cond, rand::Rng::random::<u64>(&mut *rng))
        };
        // Every rank samples all of them (the labelled set is the whole run's); each sample's
        // noise is its own stream of `key`, as in `collect`.
        let mut xs = Vec::new();
        for start in (0..n).step_by(micro) {
            let end = (start + micro).min(n);
            let ct = cond_tensor(&cond[start..end], &m.device)?;
            let mut streams = rng::row_streams(key, start..end);
            let r = rollout::sample_trajectories(
                m.sampling_policy().as_ref(),
                &m.sampler,
                &m.state_shape,
                &ct,
                &mut streams,
                false,
            )?;
            xs.push(r.x0);
        }
        let x0 = Tensor::cat(&xs, 0)?;
        let ct = cond_tensor(&cond, &m.device)?;
        let seed = cfg.seed;
        let rounds = self.rounds.as_mut().expect("a black-box run");
        let line = rounds.label_and_fit(&x0, &ct, seed)?;
        if cfg.buffer_reset {
            self.buffer = ReplayBuffer::new(cfg.capacity, cfg.steps, &m.state_shape);
        }
        if cfg.optimizer_reset {
            self.optim.reset()?;
        }
        if let Some((_, previous)) = &m.previous {
            // set_vars copies into the previous model's own variables (Var::set).
            let now: std::collections::HashMap<String, Tensor> = sorted_vars(&m.policy_vars)
                .into_iter()
                .map(|(k, v)| (k, v.as_tensor().clone()))
                .collect();
            crate::tensor_io::set_vars(previous, &now, Path::new("the policy"))?;
        }
        self.log.info(format!(
            "round {}: {n} samples labelled by the oracle ({} queries used of {}), surrogate refitted",
            line["round"],
            self.rounds.as_ref().map_or(0, |r| r.oracle.used()),
            cfg.budget()
        ));
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
}

/// Every gradient times `w`.
fn scale_grads(g: Vec<Option<Tensor>>, w: f64) -> Result<Vec<Option<Tensor>>> {
    g.into_iter()
        .map(|t| t.map(|t| t.affine(w, 0.0)).transpose())
        .collect::<candle_core::Result<_>>()
        .map_err(Into::into)
}

/// a + b, gradient by gradient (a missing one counts as zero).
fn add_grads(a: Vec<Option<Tensor>>, b: Vec<Option<Tensor>>) -> Result<Vec<Option<Tensor>>> {
    a.into_iter()
        .zip(b)
        .map(|(x, y)| match (x, y) {
            (Some(x), Some(y)) => Ok(Some(x.add(&y)?)),
            (x, y) => Ok(x.or(y)),
        })
        .collect()
}
