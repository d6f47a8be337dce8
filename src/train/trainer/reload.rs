//! Hot reload between epochs (wezterm-style): a changed script is loaded into a fresh
//! state, smoke-tested and compared with the running config before it replaces the running
//! one; on any failure the last good version stays and the error says file, line and hook.
//! Priorities follow the current `priority` hook.

use super::*;
use crate::blackbox::rounds::Rounds;
use crate::script::{config, SandboxOptions};

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

    /// Between epochs: if the watcher saw an edit, try the new version (see `try_reload`).
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
        let disk = disk_sources(&self.script);
        if self.last_rejected.as_ref() == Some(&disk) {
            return ReloadOutcome::NoChange;
        }
        let cond0 = self.task.conditions(1, &mut rng::seeded(0))[0];
        let outcome = try_reload(
            &self.script,
            &disk,
            &self.opts.overrides,
            &self.sandbox,
            &self.models,
            cond0,
            self.rounds.as_ref(),
        );
        // The attempt read the files again; if they changed meanwhile, what it read is not
        // `disk`, so neither a rejection nor an acceptance speaks for the files now on disk.
        let settled = disk_sources(&self.script) == disk;
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
            Reload::Accepted(new, diffs) => self.install(new, diffs, disk),
        }
    }

    /// Makes an accepted version the running one (its discounts and priorities computed
    /// first: should they fail, the old version stays and `disk` is remembered as rejected).
    pub(super) fn install(
        &mut self,
        new: Box<Script>,
        diffs: ConfigChanges,
        disk: Vec<Option<String>>,
    ) -> ReloadOutcome {
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

/// Config keys a new version changed: (key, old value, new value).
pub type ConfigChanges = Vec<(String, Json, Json)>;

/// What a reload attempt came to.
pub enum Reload {
    /// Nothing on disk differs from the running sources.
    Unchanged,
    /// The new version, and the config keys it changed (key, old, new).
    Accepted(Box<Script>, ConfigChanges),
    /// The new version was rejected; the message says why.
    Rejected(String),
}

/// Current contents of the files a script was loaded from, None if one cannot be read.
/// A file larger than this is not read to be compared: it differs from any script that ran
/// (a script's whole source lives in its Lua state, whose memory is bounded), and the load
/// that follows refuses it by its size.
const MAX_COMPARED: u64 = 1 << 30;

pub fn disk_sources(script: &Script) -> Vec<Option<String>> {
    script
        .sources
        .iter()
        .map(|(p, _)| match std::fs::metadata(p) {
            Ok(m) if m.len() > MAX_COMPARED => Some(format!("\0{} bytes", m.len())),
            Ok(_) => std::fs::read_to_string(p).ok(),
            Err(_) => None,
        })
        .collect()
}

/// Loads and checks the script on disk against the running one; `disk` is what
/// `disk_sources` read of its files just before (unchanged: nothing to load).
pub fn try_reload(
    running: &Script,
    disk: &[Option<String>],
    overrides: &[(String, Json)],
    sandbox: &SandboxOptions,
    models: &Arc<TaskModels>,
    cond: u32,
    oracle: Option<&Rounds>,
) -> Reload {
    let same = |(_, old): &(std::path::PathBuf, String), new: &Option<String>| {
        new.as_deref() == Some(old.as_str())
    };
    if running.sources.iter().zip(disk).all(|(o, n)| same(o, n)) {
        return Reload::Unchanged;
    }
    match load_checked(running, overrides, sandbox, models, cond, oracle) {
        Ok((s, d)) => Reload::Accepted(Box::new(s), d),
        Err(e) => Reload::Rejected(format!("{e:#}")),
    }
}

pub(super) fn load_checked(
    running: &Script,
    overrides: &[(String, Json)],
    sandbox: &SandboxOptions,
    models: &Arc<TaskModels>,
    cond: u32,
    oracle: Option<&Rounds>,
) -> Result<(Script, ConfigChanges)> {
    let new = Script::load(&running.path, overrides, sandbox)?;
    new.provide_rewards(&models.rewards)?;
    let diffs = running.config.diff(&new.config);
    refuse_unsafe(&diffs)?;
    smoke_test(&new, models, cond, oracle)?;
    Ok((new, diffs))
}

fn refuse_unsafe(diffs: &ConfigChanges) -> Result<()> {
    for (k, a, b) in diffs {
        if !config::is_live(k) {
            bail!(
                "config.{k} cannot change during a run ({a} -> {b}); restart the run to change it"
            )
        }
    }
    Ok(())
}
