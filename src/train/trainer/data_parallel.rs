//! Training on several ranks (`mpirun -n N sqdf run`, docs/scale-out.md). Every rank holds
//! the whole run state: the same weights, AdamW moments, replay buffer and RNG. Each rank
//! draws everything the run's stream decides (conditions, buffer indices, the keys of the
//! noise streams) exactly as one process would, then computes only its share of the work:
//! its share of the epoch's trajectories, which every rank then gathers, and its share of
//! each update's batch, whose gradients every rank sums in rank order before AdamW. Noise is
//! drawn per trajectory and per batch row (`rng::row_stream`), so N ranks compute what one
//! process computes, up to the order of the gradient sum's additions. Rank 0 alone writes
//! the run folder and evaluates; it decides hot reloads and sends the accepted sources.

use super::*;
use crate::script::SandboxOptions;

impl Trainer {
    /// Whether this process writes the run folder, evaluates and watches the script: rank 0.
    pub fn leads(&self) -> bool {
        self.opts.job.rank() == 0
    }

    /// Seconds spent gathering trajectories and summing gradients since the last call.
    pub(super) fn take_exchange_seconds(&self) -> (f64, f64) {
        (self.gather_seconds.take(), self.grad_sum_seconds.take())
    }

    /// Every rank holds the same run state: config, script generation, RNG, buffer rewards
    /// and weights (CRC-32s). Ranks that drifted apart (weight files that differ between
    /// machines, a reward that is not deterministic on the GPU) stop with an error naming
    /// what differs, rather than training on with different buffers.
    pub(super) fn check_ranks_agree(&self, when: &str) -> Result<()> {
        let job = &self.opts.job;
        if job.size() == 1 {
            return Ok(());
        }
        let mut weights = crc32fast::Hasher::new();
        for (_, v) in &self.optim.params {
            let t = v.as_tensor().to_dtype(candle_core::DType::F32)?;
            for x in t.flatten_all()?.to_vec1::<f32>()? {
                weights.update(&x.to_le_bytes());
            }
        }
        let rewards: Vec<u8> = self
            .buffer
            .rewards_in_push_order()
            .1
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .collect();
        let mine = json!({
            "config": serde_json::to_string(&self.script.config)?,
            "script generation": self.generation,
            "RNG": serde_json::to_string(&*self.rng.lock().unwrap())?,
            "buffer rewards": crc32fast::hash(&rewards),
            "weights": weights.finalize(),
        });
        let all = job.all_gather_bytes(&serde_json::to_vec(&mine)?)?;
        let mut parts = all.parts();
        let root: Json = serde_json::from_slice(parts.next().unwrap_or_default())?;
        for (r, bytes) in parts.enumerate().map(|(i, b)| (i + 1, b)) {
            let theirs: Json = serde_json::from_slice(bytes)?;
            let differ: Vec<&str> = [
                "config",
                "script generation",
                "RNG",
                "buffer rewards",
                "weights",
            ]
            .into_iter()
            .filter(|k| theirs[*k] != root[*k])
            .collect();
            if !differ.is_empty() {
                bail!(
                    "rank {r}'s {} differ from rank 0's {when} (epoch {}): the ranks no longer train one model. Check that every machine has the same weight files and build",
                    differ.join(", "),
                    self.epoch
                );
            }
        }
        Ok(())
    }

    /// Every rank samples at least one trajectory of each batch.
    pub(super) fn check_batch_covers_ranks(&self) -> Result<()> {
        let (batch, ranks) = (self.script.config.batch, self.opts.job.size());
        if batch < ranks {
            bail!(
                "{}: config.batch = {batch} is smaller than the {ranks} ranks; each rank needs a trajectory of every batch",
                self.script.path.display()
            );
        }
        Ok(())
    }

    /// Every rank's states ([n, T+1, state] flattened), log-probabilities ([n, T], absent
    /// when the sampler is deterministic) and rewards ([n]) of the epoch, in batch order (the
    /// shares are contiguous and in rank order).
    pub(super) fn gather_trajectories(&self, mine: [Vec<f32>; 3]) -> Result<[Vec<f32>; 3]> {
        let job = &self.opts.job;
        if job.size() == 1 {
            return Ok(mine);
        }
        let start = Instant::now();
        let mut all: [Vec<f32>; 3] = Default::default();
        for (a, m) in all.iter_mut().zip(&mine) {
            *a = job.all_gather_f32(m)?.all;
        }
        add_seconds(&self.gather_seconds, start);
        Ok(all)
    }

    /// The sums over ranks of an update's loss, logged numbers and gradients (each rank's
    /// already weighted by its share of the batch). Every rank gets the same bits. A rank
    /// with a non-finite loss sends no gradient; the sum's loss is then not finite either,
    /// so every rank skips the step.
    pub(super) fn sum_over_ranks(&self, mine: UpdateParts) -> Result<UpdateParts> {
        let job = &self.opts.job;
        if job.size() == 1 {
            return Ok(mine);
        }
        let UpdateParts { loss, stats, grads } = mine;
        let start = Instant::now();
        let numbers = serde_json::to_vec(&(loss, &stats))?;
        let (mut loss, mut stats) = (0.0, BTreeMap::new());
        for (r, bytes) in job.all_gather_bytes(&numbers)?.parts().enumerate() {
            // JSON has no NaN: serde writes a non-finite loss as null.
            let (l, s): (Option<f64>, BTreeMap<String, Option<f64>>) =
                serde_json::from_slice(bytes)
                    .with_context(|| format!("reading rank {r}'s loss and logged numbers"))?;
            loss += l.unwrap_or(f64::NAN);
            for (k, v) in s {
                *stats.entry(k).or_insert(0.0) += v.unwrap_or(f64::NAN);
            }
        }
        let params: Vec<Tensor> = self
            .optim
            .params
            .iter()
            .map(|(_, v)| v.as_tensor().clone())
            .collect();
        let flat = flatten_grads(&params, &grads)?;
        let summed = job.sum_in_rank_order(flat)?;
        let grads = if loss.is_finite() {
            unflatten_grads(&params, &summed)?
        } else {
            Vec::new()
        };
        add_seconds(&self.grad_sum_seconds, start);
        Ok(UpdateParts { loss, stats, grads })
    }

    /// Between epochs on every rank: rank 0 checks the script for edits (`maybe_reload`)
    /// and sends the sources of a version it accepted; the others load that very version.
    /// A version rank 0 rejected is rejected everywhere, since no other rank sees it.
    pub(super) fn reload_on_every_rank(&mut self) -> Result<ReloadOutcome> {
        let job = self.opts.job.clone();
        if job.size() == 1 {
            return Ok(self.maybe_reload());
        }
        if job.rank() == 0 {
            let outcome = self.maybe_reload();
            let message = match outcome {
                ReloadOutcome::Reloaded => serde_json::to_vec(&self.script.sources)?,
                _ => Vec::new(),
            };
            job.broadcast_from_root(message);
            return Ok(outcome);
        }
        let message = job.broadcast_from_root(Vec::new());
        if message.is_empty() {
            return Ok(ReloadOutcome::NoChange);
        }
        let sandbox = with_sources(&self.sandbox, &message)?;
        let cond0 = self.task.conditions(1, &mut rng::seeded(0))[0];
        let (new, diffs) = reload::load_checked(
            &self.script,
            &self.opts.overrides,
            &sandbox,
            &self.models,
            cond0,
            self.rounds.as_ref(),
        )
        .with_context(|| {
            format!(
                "rank {}: the version of {} that rank 0 accepted does not load here",
                job.rank(),
                self.script.path.display()
            )
        })?;
        match self.install(Box::new(new), diffs, Vec::new()) {
            ReloadOutcome::Reloaded => Ok(ReloadOutcome::Reloaded),
            _ => bail!(
                "rank {}: the version of {} that rank 0 accepted was refused here",
                job.rank(),
                self.script.path.display()
            ),
        }
    }
}

/// The script as rank 0 read it: rank 0 loads it from its files and sends the sources it
/// read, from which the other ranks load theirs, so that a file saved while the ranks start,
/// or a different copy on another machine, cannot give them different scripts.
pub(super) fn load_as_rank_0_did(opts: &RunOptions, sandbox: &SandboxOptions) -> Result<Script> {
    let job = &opts.job;
    if job.size() == 1 {
        return Script::load(&opts.script, &opts.overrides, sandbox);
    }
    if job.rank() == 0 {
        let script = Script::load(&opts.script, &opts.overrides, sandbox)?;
        job.broadcast_from_root(serde_json::to_vec(&script.sources)?);
        return Ok(script);
    }
    let message = job.broadcast_from_root(Vec::new());
    Script::load(
        &opts.script,
        &opts.overrides,
        &with_sources(sandbox, &message)?,
    )
}

/// `sandbox` loading the script sources rank 0 sent (`script.sources` as JSON) instead of
/// the files.
fn with_sources(sandbox: &SandboxOptions, message: &[u8]) -> Result<SandboxOptions> {
    let sources: Vec<(PathBuf, String)> =
        serde_json::from_slice(message).context("reading the script sources rank 0 sent")?;
    let mut given = sandbox.clone();
    given.sources = Some(Arc::new(sources.into_iter().collect()));
    Ok(given)
}

/// Adds the time since `start` to `seconds`.
fn add_seconds(seconds: &std::cell::Cell<f64>, start: Instant) {
    seconds.set(seconds.get() + start.elapsed().as_secs_f64());
}

/// An update's loss, logged numbers and gradients (one per parameter, None where it has
/// none), as a rank's share or as their sum over the ranks.
pub(super) struct UpdateParts {
    pub loss: f64,
    pub stats: BTreeMap<String, f64>,
    pub grads: Vec<Option<Tensor>>,
}

/// Every gradient in f32, one after the other in the parameters' order (zeros where a
/// parameter has none), then one presence flag per parameter.
fn flatten_grads(params: &[Tensor], grads: &[Option<Tensor>]) -> Result<Vec<f32>> {
    let total: usize = params.iter().map(Tensor::elem_count).sum();
    let mut flat = Vec::with_capacity(total + params.len());
    for (j, p) in params.iter().enumerate() {
        match grads.get(j).and_then(Option::as_ref) {
            Some(g) => flat.extend(
                g.to_dtype(candle_core::DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?,
            ),
            None => flat.extend(std::iter::repeat_n(0.0, p.elem_count())),
        }
    }
    flat.extend(params.iter().enumerate().map(|(j, _)| {
        let present = matches!(grads.get(j), Some(Some(_)));
        f32::from(u8::from(present))
    }));
    Ok(flat)
}

/// `flatten_grads`' inverse: a parameter no rank had a gradient for gets none.
fn unflatten_grads(params: &[Tensor], flat: &[f32]) -> Result<Vec<Option<Tensor>>> {
    let total: usize = params.iter().map(Tensor::elem_count).sum();
    anyhow::ensure!(
        flat.len() == total + params.len(),
        "the summed gradients have {} numbers where the parameters need {}",
        flat.len(),
        total + params.len()
    );
    let (values, present) = flat.split_at(total);
    let mut at = 0;
    let mut out = Vec::with_capacity(params.len());
    for (p, &flag) in params.iter().zip(present) {
        let n = p.elem_count();
        out.push(if flag > 0.0 {
            Some(
                Tensor::from_slice(&values[at..at + n], p.shape(), &Device::Cpu)?
                    .to_dtype(p.dtype())?
                    .to_device(p.device())?,
            )
        } else {
            None
        });
        at += n;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gradients_survive_flattening_and_missing_ones_stay_missing() {
        let dev = Device::Cpu;
        let params = vec![
            Tensor::zeros((2, 3), candle_core::DType::F32, &dev).unwrap(),
            Tensor::zeros(4, candle_core::DType::F32, &dev).unwrap(),
        ];
        let g0 = Tensor::arange(0f32, 6.0, &dev)
            .unwrap()
            .reshape((2, 3))
            .unwrap();
        let flat = flatten_grads(&params, &[Some(g0.clone()), None]).unwrap();
        assert_eq!(flat.len(), 6 + 4 + 2);
        let back = unflatten_grads(&params, &flat).unwrap();
        assert_eq!(
            back[0].as_ref().unwrap().to_vec2::<f32>().unwrap(),
            g0.to_vec2::<f32>().unwrap()
        );
        assert!(back[1].is_none());
        assert!(unflatten_grads(&params, &flat[1..]).is_err());
    }
}
