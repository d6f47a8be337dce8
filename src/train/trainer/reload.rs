//! Hot reload between epochs: a changed script is loaded, smoke-tested and compared with
//! the running config before it replaces the running one; the last good version stays on
//! any failure. Priorities follow the current `priority` hook.

use super::*;

impl Trainer {
    /// Priorities of every stored state from the current `priority` hook (after a reload
    /// or a resume); nothing to do under uniform sampling.
    pub(super) fn recompute_priorities(&mut self) -> Result<()> {
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
        let event = self
            .watcher
            .as_ref()
            .map(|w| w.take_changed())
            .unwrap_or(true);
        // A save during the last attempt leaves its outcome unsure: look again.
        if !event && !std::mem::take(&mut self.recheck) {
            return ReloadOutcome::NoChange;
        }
        let disk = hot_reload::disk_sources(&self.script);
        if self.last_rejected.as_ref() == Some(&disk) {
            return ReloadOutcome::NoChange;
        }
        let cond0 = self.task.conditions(1, &mut rng::seeded(0))[0];
        let outcome = hot_reload::try_reload(
            &self.script,
            &self.opts.overrides,
            &self.sandbox,
            &self.models,
            cond0,
            self.rounds.as_ref(),
        );
        // The attempt read the files again; if they changed meanwhile, what it read is not
        // `disk`, so neither a rejection nor an acceptance speaks for the files now on disk.
        let settled = hot_reload::disk_sources(&self.script) == disk;
        if !settled {
            self.recheck = true;
        }
        match outcome {
            Reload::Unchanged => ReloadOutcome::NoChange,
            Reload::Rejected(msg) if !settled => {
                self.log.error(format!(
                    "reload of {} failed; training goes on with generation {} and the version saved meanwhile is tried at the next epoch:\n{msg}",
                    self.script.path.display(),
                    self.generation
                ));
                ReloadOutcome::Rejected
            }
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
}
