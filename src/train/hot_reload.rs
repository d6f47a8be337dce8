//! Hot reload between epochs (wezterm-style): a changed script is loaded into a fresh
//! state, smoke-tested, checked against the running config, and only then swapped in.
//! On any failure the running version stays and the error says file, line and hook.

use super::smoke_test::smoke_test;
use crate::blackbox::rounds::Rounds;
use crate::script::{config, SandboxOptions, Script};
use crate::tasks::TaskModels;
use anyhow::{bail, Result};
use serde_json::Value as Json;
use std::sync::Arc;

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
pub fn disk_sources(script: &Script) -> Vec<Option<String>> {
    script
        .sources
        .iter()
        .map(|(p, _)| std::fs::read_to_string(p).ok())
        .collect()
}

pub fn differs(script: &Script) -> bool {
    script
        .sources
        .iter()
        .zip(disk_sources(script))
        .any(|((_, old), new)| new.as_deref() != Some(old.as_str()))
}

/// Loads and checks the script on disk against the running one.
pub fn try_reload(
    running: &Script,
    overrides: &[(String, Json)],
    sandbox: &SandboxOptions,
    models: &Arc<TaskModels>,
    cond: u32,
    oracle: Option<&Rounds>,
) -> Reload {
    if !differs(running) {
        return Reload::Unchanged;
    }
    match load_checked(running, overrides, sandbox, models, cond, oracle) {
        Ok((s, d)) => Reload::Accepted(Box::new(s), d),
        Err(e) => Reload::Rejected(format!("{e:#}")),
    }
}

fn load_checked(
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
