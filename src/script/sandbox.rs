//! A fresh, sandboxed Lua state per script version (as wezterm does for its config):
//! only the math, string and table libraries; `require` limited to the script's folder and
//! the framework's `lua/` library; an instruction budget per hook call and a memory limit;
//! `print` writes to the run's log; `math.random` draws from the run's seeded RNG.

use super::library;
use super::tensor::{self, lua_err, TensorEnv};
use crate::run_log::RunLog;
use mlua::prelude::*;
use mlua::{HookTriggers, StdLib, Value, Variadic, VmState};
use rand::Rng as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// How many VM instructions pass between two checks of the budget.
const HOOK_EVERY: u32 = 10_000;

/// What a new state is given by its host.
#[derive(Clone)]
pub struct SandboxOptions {
    pub script_dir: PathBuf,
    /// VM instructions one hook call may run (a runaway loop becomes an error).
    pub instruction_budget: u64,
    /// Bytes of Lua memory (tensors live outside Lua and do not count).
    pub memory_limit: usize,
    pub log: Arc<RunLog>,
    pub tensors: TensorEnv,
}

impl SandboxOptions {
    pub fn new(script_dir: &Path, log: Arc<RunLog>, tensors: TensorEnv) -> Self {
        Self {
            script_dir: script_dir.to_path_buf(),
            instruction_budget: 200_000_000,
            memory_limit: 256 << 20,
            log,
            tensors,
        }
    }
}

/// Counts instructions of the hook call in progress; reset before each call.
#[derive(Clone, Default)]
pub struct Budget(Arc<AtomicU64>);

impl Budget {
    pub fn reset(&self) {
        self.0.store(0, Ordering::Relaxed);
    }
}

/// Files read by `require` from disk (watched for hot reload), with their sources.
#[derive(Clone, Default)]
pub struct Required(pub Arc<Mutex<Vec<(PathBuf, String)>>>);

/// A new sandboxed state, its instruction counter and the list of files it required.
pub fn new_state(opts: &SandboxOptions) -> anyhow::Result<(Lua, Budget, Required)> {
    let lua = Lua::new_with(
        StdLib::MATH | StdLib::STRING | StdLib::TABLE,
        LuaOptions::new(),
    )?;
    let g = lua.globals();
    for name in [
        "dofile",
        "loadfile",
        "load",
        "loadstring",
        "require",
        "collectgarbage",
    ] {
        g.set(name, Value::Nil)?;
    }
    lua.set_app_data(opts.tensors.clone());
    g.set("tensor", tensor::module(&lua)?)?;

    let log = opts.log.clone();
    g.set(
        "print",
        lua.create_function(move |lua, args: Variadic<Value>| {
            let parts: Vec<String> = args
                .iter()
                .map(|v| {
                    lua.coerce_string(v.clone())
                        .ok()
                        .flatten()
                        .map(|s| s.to_string_lossy())
                        .unwrap_or_else(|| format!("{v:?}"))
                })
                .collect();
            log.info(format!("[lua] {}", parts.join("\t")));
            Ok(())
        })?,
    )?;

    // math.random from the run's RNG, so that scripts stay seeded and resumable.
    let math: LuaTable = g.get("math")?;
    math.set(
        "random",
        lua.create_function(|lua, (m, n): (Option<i64>, Option<i64>)| {
            let env = lua
                .app_data_ref::<TensorEnv>()
                .ok_or_else(|| lua_err("no RNG"))?
                .clone();
            let mut rng = env.rng.lock().unwrap();
            Ok(match (m, n) {
                (None, _) => Value::Number(rng.random::<f64>()),
                (Some(m), None) if m >= 1 => Value::Integer(rng.random_range(1..=m)),
                (Some(m), Some(n)) if m <= n => Value::Integer(rng.random_range(m..=n)),
                _ => return Err(lua_err("math.random: empty interval")),
            })
        })?,
    )?;
    math.set(
        "randomseed",
        lua.create_function(|_, _: Variadic<Value>| -> LuaResult<()> {
            Err(lua_err(
                "math.randomseed is disabled: the run's seed is `config.seed`",
            ))
        })?,
    )?;

    let required = Required::default();
    install_require(&lua, &opts.script_dir, required.clone())?;

    let budget = Budget::default();
    let (count, limit) = (budget.0.clone(), opts.instruction_budget);
    lua.set_hook(HookTriggers::new().every_nth_instruction(HOOK_EVERY), move |_, _| {
        if count.fetch_add(HOOK_EVERY as u64, Ordering::Relaxed) > limit {
            return Err(lua_err(format!(
                "instruction budget exceeded ({limit} VM instructions in one call): an endless loop?"
            )));
        }
        Ok(VmState::Continue)
    })?;
    lua.set_memory_limit(opts.memory_limit)?;
    Ok((lua, budget, required))
}

/// `require "name"` (or "dir.name"): `<script dir>/name.lua`, else the built-in library.
fn install_require(lua: &Lua, script_dir: &Path, required: Required) -> LuaResult<()> {
    let dir = script_dir.to_path_buf();
    let loaded = lua.create_table()?;
    let f = lua.create_function(move |lua, name: String| {
        if let Some(v) = loaded.raw_get::<Option<Value>>(name.as_str())? {
            return Ok(v);
        }
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
            && !name.contains("..")
            && !name.starts_with('.')
            && !name.ends_with('.');
        if !valid {
            return Err(lua_err(format!(
                "require \"{name}\": module names are letters, digits, '_' and '.'"
            )));
        }
        let rel = format!("{}.lua", name.replace('.', "/"));
        let path = dir.join(&rel);
        let (chunk_name, src) = if path.is_file() {
            let src = std::fs::read_to_string(&path)
                .map_err(|e| lua_err(format!("{}: {e}", path.display())))?;
            required.0.lock().unwrap().push((path.clone(), src.clone()));
            (format!("@{}", path.display()), src)
        } else if let Some(src) = library::find(&name) {
            (format!("@lua/{rel}"), src.to_string())
        } else {
            return Err(lua_err(format!(
                "module \"{name}\" not found: looked for {} and the built-in library ({})",
                path.display(),
                library::MODULES
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        let v: Value = lua.load(src).set_name(chunk_name).call(())?;
        let v = if v.is_nil() { Value::Boolean(true) } else { v };
        loaded.raw_set(name.as_str(), v.clone())?;
        Ok(v)
    })?;
    lua.globals().set("require", f)
}
