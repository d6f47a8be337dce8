//! A fresh, sandboxed Lua state per script version (as wezterm does for its config):
//! only the math, string and table libraries; `require` limited to the script's folder and
//! the framework's `lua/` library (require.rs); `print` writes to the run's log; `math.random`
//! draws from the run's seeded RNG.
//!
//! Every call into the script (its top level, each hook call) runs under limits that
//! nothing inside Lua can catch or dodge (docs/scripting.md, "The sandbox"): a wall-clock
//! limit on the script's own time (model calls pause it), an instruction budget, a cap on
//! model calls (limits.rs), a memory limit for Lua and one for tensors (tensor_memory.rs),
//! cost caps on single tensor ops and string patterns (patterns.rs; C code cannot be
//! interrupted, so what it would cost is checked before it starts), and caps on printed
//! output (print_caps.rs). This file sets them up: `SandboxOptions`, `new_state` and the
//! prelude it runs, whose `pcall` and `xpcall` re-raise the error of a tripped limit instead
//! of returning false. Finalisers (`__gc`) are refused, since Lua runs them with hooks
//! switched off.

use super::limits::Caps;
/// `Limits` as `sandbox::Limits`, where the integration tests name it.
pub use super::limits::Limits;
use super::messages::{lua_err, GIB, KIB, MIB};
use super::patterns::check_pattern;
use super::print_caps::{PrintCaps, RunPrint};
use super::require::{install_require, Required};
use super::tensor::{lock_rng, TensorEnv};
use super::tensor_memory::TensorMemory;
use super::tensor_module;
use crate::run_log::RunLog;
use mlua::prelude::*;
use mlua::{StdLib, Value, Variadic};
use rand::Rng as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// What a new state is given by its host, with the sandbox's limits (defaults in `new`,
/// documented in docs/scripting.md).
#[derive(Clone)]
pub struct SandboxOptions {
    pub script_dir: PathBuf,
    /// Wall-clock time one call (the top level, a hook call) may spend in the script's own
    /// code: Lua, tensor ops, string functions. Model calls (`ctx:policy_step`,
    /// `rewards.*`, ...) pause the clock.
    pub time_limit: Duration,
    /// VM instructions one call may run (a runaway loop becomes an error).
    pub instruction_budget: u64,
    /// Model calls (`ctx` steps and estimators, `rewards.*`) one call may make.
    pub model_calls: u64,
    /// Bytes of Lua memory (tables, strings, closures).
    pub memory_limit: usize,
    /// Bytes of tensors the script's own operations may hold alive at once.
    pub tensor_memory: u64,
    /// Bytes of one tensor a script makes.
    pub tensor_max_bytes: u64,
    /// Floating-point operations of one matrix product.
    pub matmul_flops: u64,
    /// Steps a string pattern function (`find`, `match`, `gmatch`, `gsub`) may take in the
    /// worst case, estimated before it runs.
    pub pattern_cost: u64,
    /// Bytes `print` may write to the log in one call, and in the whole run.
    pub print_per_call: u64,
    pub print_per_run: u64,
    pub log: Arc<RunLog>,
    pub tensors: TensorEnv,
    /// Sources to load instead of the files at these paths (the script and its modules):
    /// the other ranks of a data-parallel run load the very version rank 0 read and
    /// accepted, not whatever is on disk when they get to it.
    pub sources: Option<Arc<std::collections::BTreeMap<PathBuf, String>>>,
    /// What the run's scripts printed so far, shared by every version of the script.
    printed: Arc<RunPrint>,
}

impl SandboxOptions {
    pub fn new(script_dir: &Path, log: Arc<RunLog>, tensors: TensorEnv) -> Self {
        Self {
            script_dir: script_dir.to_path_buf(),
            time_limit: Duration::from_secs(30),
            instruction_budget: 200_000_000,
            model_calls: 1000,
            memory_limit: 256 << 20,
            tensor_memory: 2 * GIB,
            tensor_max_bytes: GIB,
            matmul_flops: 50_000_000_000,
            pattern_cost: 100_000_000,
            print_per_call: 64 * KIB,
            print_per_run: 16 * MIB,
            log,
            tensors,
            sources: None,
            printed: Arc::default(),
        }
    }
}

/// Lua run once in each new state: `pcall`/`xpcall` that re-raise a tripped limit,
/// `setmetatable` without finalisers, and string pattern functions whose worst case is
/// estimated before the C matcher (which cannot be interrupted) starts.
const PRELUDE: &str = r#"
local check, tripped, pattern, tmove_check, pcall0, xpcall0, setmetatable0, rawget, type, error =
  ...
local find, match, gmatch, gsub, move = string.find, string.match, string.gmatch, string.gsub, table.move
local function after(ok, ...)
  check()
  return ok, ...
end
pcall = function(f, ...) return after(pcall0(f, ...)) end
-- Lua runs a message handler before it unwinds, and with hooks off when the error came
-- from a hook: once a limit is tripped, the script's handler is not called.
xpcall = function(f, h, ...)
  local function handler(m, ...)
    if tripped() then return m end
    return h(m, ...)
  end
  return after(xpcall0(f, handler, ...))
end
setmetatable = function(t, mt)
  if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
    error("setmetatable: a metatable with __gc (a finaliser) is not allowed in the sandbox", 2)
  end
  return setmetatable0(t, mt)
end
string.find = function(s, p, init, plain)
  pattern("find", s, p, plain)
  return find(s, p, init, plain)
end
string.match = function(s, p, init)
  pattern("match", s, p)
  return match(s, p, init)
end
string.gmatch = function(s, p, init)
  pattern("gmatch", s, p)
  return gmatch(s, p, init)
end
string.gsub = function(s, p, repl, n)
  pattern("gsub", s, p)
  return gsub(s, p, repl, n)
end
table.move = function(a1, f, e, t, a2)
  tmove_check(f, e)
  return move(a1, f, e, t, a2)
end
"#;

/// A new sandboxed state, its limits and the list of files it required.
pub fn new_state(opts: &SandboxOptions) -> anyhow::Result<(Lua, Limits, Required)> {
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
        // Writes to stderr, past the print caps.
        "warn",
    ] {
        g.set(name, Value::Nil)?;
    }
    let limits = Limits::new(
        Caps {
            time_limit: opts.time_limit,
            instruction_budget: opts.instruction_budget,
            model_calls: opts.model_calls,
            lua_memory: opts.memory_limit,
            matmul_flops: opts.matmul_flops,
            pattern_cost: opts.pattern_cost,
        },
        TensorMemory::new(opts.tensor_memory, opts.tensor_max_bytes),
        PrintCaps::new(
            opts.print_per_call,
            opts.print_per_run,
            opts.printed.clone(),
        ),
    );
    lua.set_app_data(limits.clone());
    lua.set_app_data(opts.tensors.clone());
    g.set("tensor", tensor_module::module(&lua)?)?;

    let log = opts.log.clone();
    g.set(
        "print",
        lua.create_function(move |lua, args: Variadic<Value>| {
            let limits = Limits::of(lua)?;
            limits.check()?;
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
            limits.print(&log, parts.join("\t"));
            Ok(())
        })?,
    )?;

    // math.random from the run's RNG, so that scripts stay seeded and resumable.
    let math: LuaTable = g.get("math")?;
    math.set(
        "random",
        lua.create_function(|lua, (m, n): (Option<i64>, Option<i64>)| {
            Limits::of(lua)?.check()?;
            let env = lua
                .app_data_ref::<TensorEnv>()
                .ok_or_else(|| lua_err("no RNG"))?
                .clone();
            let mut rng = lock_rng(&env.rng);
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

    let check = lua.create_function(|lua, ()| Limits::of(lua)?.check())?;
    let tripped = lua.create_function(|lua, ()| Ok(Limits::of(lua)?.tripped().is_some()))?;
    let pattern = lua.create_function(
        |lua, (kind, s, p, plain): (String, Value, Value, Option<Value>)| {
            let limits = Limits::of(lua)?;
            limits.check()?;
            let plain = plain.is_some_and(|v| !matches!(v, Value::Nil | Value::Boolean(false)));
            check_pattern(lua, &limits, &kind, &s, &p, plain)
        },
    )?;
    let max_move = (opts.memory_limit / 16).max(1 << 16) as i64;
    let tmove_check = lua.create_function(move |lua, (f, e): (Value, Value)| {
        Limits::of(lua)?.check()?;
        if let (Some(f), Some(e)) = (as_int(&f), as_int(&e)) {
            if e >= f && e.saturating_sub(f) >= max_move {
                return Err(lua_err(format!(
                    "table.move: {} elements are more than a table in the sandbox can hold ({max_move})",
                    e as i128 - f as i128 + 1
                )));
            }
        }
        Ok(())
    })?;
    lua.load(PRELUDE).set_name("=sandbox").call::<()>((
        check,
        tripped,
        pattern,
        tmove_check,
        g.get::<LuaFunction>("pcall")?,
        g.get::<LuaFunction>("xpcall")?,
        g.get::<LuaFunction>("setmetatable")?,
        g.get::<LuaFunction>("rawget")?,
        g.get::<LuaFunction>("type")?,
        g.get::<LuaFunction>("error")?,
    ))?;

    let required = Required::default();
    install_require(
        &lua,
        &opts.script_dir,
        required.clone(),
        opts.sources.clone(),
    )?;

    limits.install_hook(&lua)?;
    lua.set_memory_limit(opts.memory_limit)?;
    Ok((lua, limits, required))
}

fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Integer(i) => Some(*i),
        Value::Number(n) if n.fract() == 0.0 && n.abs() < 9.2e18 => Some(*n as i64),
        _ => None,
    }
}

/// Runs `f`, a state's top-level code (a script's or a comparison file's), under fresh
/// limits, paused after. An error whose cause was a tripped limit is reported as that
/// limit, whatever error it surfaced as (`origin: top-level code: ...`).
pub fn top_level<T>(
    limits: &Limits,
    origin: &str,
    f: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    limits.begin("top-level code");
    let done = f();
    limits.pause();
    done.map_err(|e| match limits.tripped() {
        Some(m) => anyhow::anyhow!("{origin}: top-level code: {m}"),
        None => e,
    })
}

/// Evaluates `src` (a byte order mark skipped) as the chunk `@origin`; its error names
/// `origin` once, a Lua memory error as the sandbox's limit.
pub fn eval_chunk(lua: &Lua, limits: &Limits, origin: &str, src: &str) -> anyhow::Result<Value> {
    lua.load(super::require::strip_bom(src))
        .set_name(format!("@{origin}"))
        .eval()
        .map_err(|e| {
            let msg = super::messages::describe_with(&e, limits.lua_memory());
            if msg.starts_with(origin) {
                anyhow::anyhow!("{msg}")
            } else {
                anyhow::anyhow!("{origin}: {msg}")
            }
        })
}
