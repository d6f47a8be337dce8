//! The run's state on disk: the atomic checkpoint after every epoch, and resuming from it.

use super::*;

impl Trainer {
    pub fn checkpoint_path(&self) -> PathBuf {
        self.run_dir.join(checkpoint::FILE)
    }

    pub fn save_checkpoint(&self) -> Result<()> {
        let (blackbox, mut extra) = match &self.rounds {
            Some(r) => {
                let (state, tensors) = r.snapshot()?;
                (Some(state), tensors)
            }
            None => (None, Vec::new()),
        };
        // The previous round's policy (config.kl_reference = "previous").
        if let Some((_, previous)) = &self.models.previous {
            for (name, var) in sorted_vars(previous) {
                extra.push((format!("previous.{name}"), var.as_tensor().clone()));
            }
        }
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
            blackbox,
        };
        checkpoint::save(
            &self.checkpoint_path(),
            &state,
            &self.optim.params,
            &self.optim,
            &self.buffer,
            extra,
        )?;
        crate::train::lora_export::save(&self.run_dir, &self.models, &self.script.config)
    }

    pub(super) fn restore(&mut self, dir: &Path) -> Result<()> {
        let path = dir.join(checkpoint::FILE);
        let loaded = checkpoint::load(&path)
            .with_context(|| format!("cannot resume from {}", dir.display()))?;
        if !loaded.checked {
            self.log.warn(format!(
                "{} has no checksums (written by an sqdf before checkpoints carried them): resuming without verifying it",
                path.display()
            ));
        }
        for (k, a, b) in loaded.state.config.diff(&self.script.config) {
            if !config::is_live(&k) {
                bail!(
                    "cannot resume {}: config.{k} was {a} in the checkpoint and is {b} now; it cannot change within a run",
                    dir.display()
                );
            }
        }
        let params = self.optim.params.clone();
        loaded
            .restore(&path, &params, &mut self.optim, &mut self.buffer)
            .with_context(|| format!("cannot resume from {}", dir.display()))?;
        *self.rng.lock().unwrap() = loaded.state.rng.clone();
        let seed = self.script.config.seed;
        match (&mut self.rounds, &loaded.state.blackbox) {
            (Some(rounds), Some(bb)) => rounds
                .restore(
                    bb,
                    loaded.get("blackbox.features", &path)?,
                    loaded.get("blackbox.labels", &path)?,
                    &self.script.config.queries,
                    seed,
                )
                .with_context(|| {
                    format!(
                        "{}: the black-box state (`blackbox.features`, `blackbox.labels`) does not fit this run",
                        path.display()
                    )
                })?,
            (Some(_), None) => bail!(
                "cannot resume {}: its checkpoint has no black-box state (written before black-box runs resumed); start it again",
                dir.display()
            ),
            // Not black-box now and then: queries and oracle_budget cannot change within a
            // run (the config check above refuses that first).
            (None, _) => {}
        }
        if let Some((_, previous)) = &self.models.previous {
            crate::tensor_io::set_vars(previous, &loaded.prefixed("previous."), &path)
                .map_err(|e| anyhow!("{e:#} (a `previous.` key)"))?;
        }
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
        if self.leads() {
            self.metrics.truncate_after(self.epoch)?;
            self.evals.truncate_after(self.epoch)?;
        }
        self.log
            .info(format!("resumed {} at epoch {}", dir.display(), self.epoch));
        Ok(())
    }

    /// A run started (not resumed) in a folder that holds an earlier start's epochs, such
    /// as a comparison run killed before its first checkpoint: those epochs' lines go, so
    /// the training time summed from metrics.jsonl is this run's alone. The pretrained
    /// model's evaluations (epoch 0, eval_before.json) stay: they do not depend on training.
    pub(super) fn start_fresh_in_folder(&self) -> Result<()> {
        let stale = self.metrics.truncate_after(0)?;
        if stale > 0 {
            self.log.warn(format!(
                "{} holds {stale} epoch(s) of an earlier start and no checkpoint was resumed: starting again from epoch 0 (pass --resume to continue a run)",
                self.run_dir.display()
            ));
        }
        self.evals.truncate_after(0)?;
        Ok(())
    }
}
