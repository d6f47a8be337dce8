//! A fresh, sandboxed Lua state per script version (as wezterm does for its config):
//! only the math, string and table libraries; `require` limited to the script's folder and
//! the framework's `lua/` library; `print` writes to the run's log; `math.random` draws from
//! the run's seeded RNG.
//!
//! Every call into the script (its top level, each hook call) runs under limits that
//! nothing inside Lua can catch or dodge (docs/scripting.md, "The sandbox"): a wall-clock
//! limit on the script's own time (model calls pause it), an instruction budget, a cap on
//! model calls, a memory limit for Lua and one for tensors, cost caps on single tensor ops
//! and string patterns (C code cannot be interrupted, so what it would cost is checked
//! before it starts), and caps on printed output. Once a call exceeds its time, budget or
//! model calls it is "tripped": every later check in that call fails again, `pcall` and
//! `xpcall` re-raise the error instead of returning false, and the host reports the limit.
//! Finalisers (`__gc`) are refused, since Lua runs them with hooks switched off.

use super::library;
use super::tensor::{self, lua_err, TensorEnv};
use crate::run_log::RunLog;
use mlua::prelude::*;
use mlua::{ffi, StdLib, Value, Variadic};
use rand::Rng as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How many VM instructions pass between two checks of the budget.
const HOOK_EVERY: u32 = 10_000;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

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
    /// What the run's scripts printed so far, shared by every version of the script.
    printed: Arc<RunPrint>,
}

#[derive(Default)]
struct RunPrint {
    bytes: AtomicU64,
    noted: AtomicBool,
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
            printed: Arc::default(),
        }
    }
}

/// Wall-clock time spent in the script during the current call.
#[derive(Default)]
struct Clock {
    spent: Duration,
    since: Option<Instant>,
}

impl Clock {
    fn elapsed(&self) -> Duration {
        self.spent + self.since.map(|s| s.elapsed()).unwrap_or_default()
    }
}

struct LimitsInner {
    time_limit: Duration,
    instruction_budget: u64,
    model_call_limit: u64,
    tensor_memory: u64,
    tensor_max_bytes: u64,
    matmul_flops: u64,
    pattern_cost: u64,
    lua_memory: usize,
    print_per_call: u64,
    print_per_run: u64,
    /// What is running: "top-level code", "hook `loss`".
    what: Mutex<String>,
    instructions: AtomicU64,
    model_calls: AtomicU64,
    clock: Mutex<Clock>,
    /// The limit the current call exceeded: every later check fails with it.
    tripped: Mutex<Option<String>>,
    printed_call: AtomicU64,
    call_noted: AtomicBool,
    run_print: Arc<RunPrint>,
    /// Bytes of tensors the script's operations hold alive.
    live: Arc<AtomicU64>,
}

impl LimitsInner {
    fn tripped(&self) -> Option<String> {
        lock(&self.tripped).clone()
    }

    /// Records the limit the call exceeded (the first one stays) and returns its message.
    fn trip(&self, msg: String) -> String {
        lock(&self.tripped).get_or_insert(msg).clone()
    }

    /// The current call's error, if it exceeded a limit or its time.
    fn status(&self) -> Result<(), String> {
        if let Some(m) = self.tripped() {
            return Err(m);
        }
        if lock(&self.clock).elapsed() > self.time_limit {
            return Err(self.trip(format!(
                "time limit of {} exceeded (the script's own time in one call; model calls do not count): an endless loop?",
                show_duration(self.time_limit)
            )));
        }
        Ok(())
    }

    /// Every `HOOK_EVERY` instructions: the budget and the clock. `where_` says where the
    /// script is, for the first report.
    fn on_count(&self, where_: impl Fn() -> String) -> Result<(), String> {
        let n = self
            .instructions
            .fetch_add(HOOK_EVERY as u64, Ordering::Relaxed)
            .saturating_add(HOOK_EVERY as u64);
        if self.tripped().is_none() && n > self.instruction_budget {
            return Err(self.trip(format!(
                "instruction budget of {} VM instructions exceeded in one call{}: an endless loop?",
                self.instruction_budget,
                where_()
            )));
        }
        let fresh = self.tripped().is_none();
        self.status().map_err(|msg| {
            if !fresh {
                return msg;
            }
            // Say where the script was when its time ran out.
            let located = format!("{msg}{}", where_());
            *lock(&self.tripped) = Some(located.clone());
            located
        })
    }
}

/// The registry key of the limits the hook reads.
static LIMITS_KEY: u8 = 0;

/// The instruction and call hook, in C: on a limit it raises the error itself. (mlua's hook
/// errors truncate the running Lua function's stack from inside the hook, which runs its
/// `__close` handlers while Lua has hooks switched off.)
unsafe extern "C-unwind" fn limits_hook(state: *mut ffi::lua_State, ar: *mut ffi::lua_Debug) {
    let msg = {
        ffi::lua_rawgetp(
            state,
            ffi::LUA_REGISTRYINDEX,
            std::ptr::addr_of!(LIMITS_KEY).cast(),
        );
        let p = ffi::lua_touserdata(state, -1) as *const LimitsInner;
        ffi::lua_pop(state, 1);
        if p.is_null() {
            return;
        }
        // The state's app data holds the limits for as long as Lua code can run in it.
        let limits = &*p;
        let count = (*ar).event == ffi::LUA_HOOKCOUNT;
        let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if count {
                limits.on_count(|| location(state, ar))
            } else {
                // Before every function call, C functions included: a loop of calls to
                // slow C functions is stopped between two of them.
                limits.status()
            }
        }));
        match checked {
            Ok(Ok(())) => return,
            Ok(Err(m)) => m,
            Err(_) => "the sandbox's hook failed".to_string(),
        }
    };
    ffi::lua_pushlstring(state, msg.as_ptr().cast(), msg.len());
    drop(msg);
    ffi::lua_error(state)
}

/// " (at file:line)" of the running Lua function, or nothing.
unsafe fn location(state: *mut ffi::lua_State, ar: *mut ffi::lua_Debug) -> String {
    if ffi::lua_getinfo(state, c"Sl".as_ptr(), ar) == 0 || (*ar).currentline <= 0 {
        return String::new();
    }
    let src = std::ffi::CStr::from_ptr((*ar).short_src.as_ptr()).to_string_lossy();
    format!(" (at {src}:{})", (*ar).currentline)
}

/// The limits of one Lua state, and where the current call stands against them.
#[derive(Clone)]
pub struct Limits(Arc<LimitsInner>);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing a script does can panic while these are held; never poison the sandbox.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Bytes as the docs write them: "2 GiB", "64 KiB", "1.5 MiB".
pub fn show_bytes(b: u64) -> String {
    let (v, unit) = if b >= GIB {
        (b as f64 / GIB as f64, "GiB")
    } else if b >= MIB {
        (b as f64 / MIB as f64, "MiB")
    } else if b >= KIB {
        (b as f64 / KIB as f64, "KiB")
    } else {
        return format!("{b} bytes");
    };
    if v.fract() == 0.0 {
        format!("{v} {unit}")
    } else {
        format!("{v:.1} {unit}")
    }
}

fn show_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 && s.fract() == 0.0 {
        format!("{s} s")
    } else if s >= 1.0 {
        format!("{s:.1} s")
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// Releases a tensor's bytes from the live count when the last handle on it (and every
/// tensor whose graph or storage holds it) is gone.
pub struct Charge {
    bytes: u64,
    live: Arc<AtomicU64>,
    /// Charges this tensor keeps alive: the tensor whose storage it views, the inputs its
    /// autograd graph holds.
    _parents: Vec<Arc<Charge>>,
    /// The charge that owns the storage this tensor views (None: its own).
    storage: Option<Arc<Charge>>,
    /// Length of the longest chain of charges below this one.
    pub depth: usize,
}

impl Charge {
    /// The charge that owns this tensor's storage.
    pub fn storage_owner(self: &Arc<Self>) -> Arc<Charge> {
        self.storage.clone().unwrap_or_else(|| self.clone())
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.live.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Charge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Charge({} bytes)", self.bytes)
    }
}

/// Resumes the script's clock when a model call returns.
pub struct Paused<'a> {
    limits: &'a Limits,
    resume: bool,
}

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        if self.resume {
            lock(&self.limits.0.clock).since = Some(Instant::now());
        }
    }
}

impl Limits {
    fn new(opts: &SandboxOptions) -> Self {
        Limits(Arc::new(LimitsInner {
            time_limit: opts.time_limit,
            instruction_budget: opts.instruction_budget,
            model_call_limit: opts.model_calls,
            tensor_memory: opts.tensor_memory,
            tensor_max_bytes: opts.tensor_max_bytes,
            matmul_flops: opts.matmul_flops,
            pattern_cost: opts.pattern_cost,
            lua_memory: opts.memory_limit,
            print_per_call: opts.print_per_call,
            print_per_run: opts.print_per_run,
            what: Mutex::new("top-level code".into()),
            instructions: AtomicU64::new(0),
            model_calls: AtomicU64::new(0),
            clock: Mutex::new(Clock {
                spent: Duration::ZERO,
                since: Some(Instant::now()),
            }),
            tripped: Mutex::new(None),
            printed_call: AtomicU64::new(0),
            call_noted: AtomicBool::new(false),
            run_print: opts.printed.clone(),
            live: Arc::new(AtomicU64::new(0)),
        }))
    }

    /// The limits of the state `lua` (every state made by `new_state` has them).
    pub fn of(lua: &Lua) -> LuaResult<Limits> {
        lua.app_data_ref::<Limits>()
            .map(|l| l.clone())
            .ok_or_else(|| lua_err("this Lua state has no sandbox limits"))
    }

    /// Starts a new call (`what`: "top-level code", "hook `loss`"): a fresh clock, budget,
    /// model-call count and print allowance; a limit tripped in an earlier call is cleared.
    pub fn begin(&self, what: &str) {
        let l = &self.0;
        *lock(&l.what) = what.to_string();
        l.instructions.store(0, Ordering::Relaxed);
        l.model_calls.store(0, Ordering::Relaxed);
        *lock(&l.clock) = Clock {
            spent: Duration::ZERO,
            since: Some(Instant::now()),
        };
        *lock(&l.tripped) = None;
        l.printed_call.store(0, Ordering::Relaxed);
        l.call_noted.store(false, Ordering::Relaxed);
    }

    /// Continues the series of calls of `what` (the framework calls `priority` once per
    /// buffer state and `discount` once per step, in a row): they share one clock, budget and
    /// model-call count, so that a slow hook cannot multiply its limit by the buffer's size.
    /// Anything else in between, or a tripped limit, starts afresh.
    pub fn continue_series(&self, what: &str) {
        let l = &self.0;
        if *lock(&l.what) != what || self.tripped().is_some() {
            return self.begin(what);
        }
        lock(&l.clock).since = Some(Instant::now());
        l.printed_call.store(0, Ordering::Relaxed);
        l.call_noted.store(false, Ordering::Relaxed);
    }

    /// Stops the clock between calls (the framework's time is not the script's).
    pub fn pause(&self) {
        let mut c = lock(&self.0.clock);
        if let Some(s) = c.since.take() {
            c.spent += s.elapsed();
        }
    }

    /// The call in progress, as `begin` named it.
    pub fn what(&self) -> String {
        lock(&self.0.what).clone()
    }

    /// The limit the current call exceeded, if any.
    pub fn tripped(&self) -> Option<String> {
        self.0.tripped()
    }

    /// Records that the current call exceeded a limit; the error every later check raises.
    fn trip(&self, msg: String) -> LuaError {
        lua_err(self.0.trip(msg))
    }

    /// Fails if the call has exceeded a limit or its time.
    pub fn check(&self) -> LuaResult<()> {
        self.0.status().map_err(lua_err)
    }

    /// Pauses the script's clock while the framework works (a model call); counts the call.
    pub fn model_call(&self, name: &str) -> LuaResult<Paused<'_>> {
        self.model_calls(name, 1)
    }

    /// `model_call` for a call that runs a model `k` times (`ctx:ddim` with k steps).
    pub fn model_calls(&self, name: &str, k: u64) -> LuaResult<Paused<'_>> {
        self.check()?;
        let n = self
            .0
            .model_calls
            .fetch_add(k, Ordering::Relaxed)
            .saturating_add(k);
        if n > self.0.model_call_limit {
            return Err(self.trip(format!(
                "more than {} model calls in one call (the last: {name}): an endless loop?",
                self.0.model_call_limit
            )));
        }
        let mut c = lock(&self.0.clock);
        let resume = match c.since.take() {
            Some(s) => {
                c.spent += s.elapsed();
                true
            }
            None => false,
        };
        Ok(Paused {
            limits: self,
            resume,
        })
    }

    /// Bytes of tensors the script's operations hold alive.
    pub fn tensor_bytes(&self) -> u64 {
        self.0.live.load(Ordering::Relaxed)
    }

    /// Checks, before an op runs, that `bytes` more of tensors fit: under the per-tensor
    /// cap (`one` is the largest single new tensor) and, after a full collection of Lua's
    /// garbage if needed (Lua does not see tensor memory), under the live limit.
    pub fn admit(&self, lua: &Lua, bytes: u64, one: u64, what: &str) -> LuaResult<()> {
        self.check()?;
        if one > self.0.tensor_max_bytes {
            return Err(lua_err(format!(
                "{what}: a tensor of {} is over the sandbox's cap of {} per tensor",
                show_bytes(one),
                show_bytes(self.0.tensor_max_bytes)
            )));
        }
        let fits = |l: &Self| {
            l.tensor_bytes()
                .checked_add(bytes)
                .is_some_and(|t| t <= l.0.tensor_memory)
        };
        if fits(self) {
            return Ok(());
        }
        lua.gc_collect()?;
        if fits(self) {
            return Ok(());
        }
        Err(lua_err(format!(
            "{what}: {} more of tensors would exceed the sandbox's tensor memory limit of {} ({} held by the script's tensors)",
            show_bytes(bytes),
            show_bytes(self.0.tensor_memory),
            show_bytes(self.tensor_bytes())
        )))
    }

    /// A charge of `bytes` on the live count, keeping `parents` (and `storage`) alive.
    pub fn charge(
        &self,
        bytes: u64,
        parents: Vec<Arc<Charge>>,
        storage: Option<Arc<Charge>>,
    ) -> Arc<Charge> {
        self.0.live.fetch_add(bytes, Ordering::Relaxed);
        let depth = 1 + parents
            .iter()
            .chain(storage.iter())
            .map(|p| p.depth)
            .max()
            .unwrap_or(0);
        Arc::new(Charge {
            bytes,
            live: self.0.live.clone(),
            _parents: parents,
            storage,
            depth,
        })
    }

    /// Refuses a matrix product of more than the FLOP cap.
    pub fn check_flops(&self, flops: u128, what: &str) -> LuaResult<()> {
        if flops > self.0.matmul_flops as u128 {
            return Err(lua_err(format!(
                "{what}: {flops:.3e} floating-point operations are over the sandbox's cap of {:.3e} per op",
                self.0.matmul_flops as f64,
                flops = flops as f64
            )));
        }
        Ok(())
    }

    pub fn lua_memory(&self) -> usize {
        self.0.lua_memory
    }

    /// Writes a printed line to the log within the per-call and per-run caps; a note says
    /// once when output was cut.
    fn print(&self, log: &RunLog, line: String) {
        let l = &self.0;
        let n = line.len() as u64 + 1;
        let used_call = l.printed_call.load(Ordering::Relaxed);
        let used_run = l.run_print.bytes.load(Ordering::Relaxed);
        let room = l
            .print_per_call
            .saturating_sub(used_call)
            .min(l.print_per_run.saturating_sub(used_run));
        let take = n.min(room);
        if take > 0 {
            let mut text = line;
            if take < n {
                let mut cut = (take.saturating_sub(1)) as usize;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
            }
            log.info(format!("[lua] {text}"));
            l.printed_call.fetch_add(take, Ordering::Relaxed);
            l.run_print.bytes.fetch_add(take, Ordering::Relaxed);
        }
        if take == n {
            return;
        }
        let run_full = l.run_print.bytes.load(Ordering::Relaxed) >= l.print_per_run;
        if run_full {
            if !l.run_print.noted.swap(true, Ordering::Relaxed) {
                log.warn(format!(
                    "the script's output reached the sandbox's cap of {} for the run; later prints are dropped",
                    show_bytes(l.print_per_run)
                ));
            }
        } else if !l.call_noted.swap(true, Ordering::Relaxed) {
            log.warn(format!(
                "{}: output cut at the sandbox's cap of {} per call; later prints in this call are dropped",
                self.what(),
                show_bytes(l.print_per_call)
            ));
        }
    }
}

/// Files read by `require` from disk (watched for hot reload), with their sources.
#[derive(Clone, Default)]
pub struct Required(pub Arc<Mutex<Vec<(PathBuf, String)>>>);

impl Required {
    /// The files required so far.
    pub fn files(&self) -> Vec<(PathBuf, String)> {
        lock(&self.0).clone()
    }
}

/// A source without its UTF-8 byte order mark (editors on Windows write one).
pub fn strip_bom(src: &str) -> &str {
    src.strip_prefix('\u{feff}').unwrap_or(src)
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
    let limits = Limits::new(opts);
    lua.set_app_data(limits.clone());
    lua.set_app_data(opts.tensors.clone());
    g.set("tensor", tensor::module(&lua)?)?;

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
            let mut rng = lock(&env.rng);
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
    install_require(&lua, &opts.script_dir, required.clone())?;

    let inner = Arc::as_ptr(&limits.0) as *mut std::ffi::c_void;
    // SAFETY: the pointer stays valid while the state lives (its app data holds the Arc);
    // the hook is plain C (see `limits_hook`).
    unsafe {
        lua.exec_raw::<()>((), |state| {
            ffi::lua_pushlightuserdata(state, inner);
            ffi::lua_rawsetp(
                state,
                ffi::LUA_REGISTRYINDEX,
                std::ptr::addr_of!(LIMITS_KEY).cast(),
            );
            ffi::lua_sethook(
                state,
                Some(limits_hook),
                ffi::LUA_MASKCALL | ffi::LUA_MASKCOUNT,
                HOOK_EVERY as std::ffi::c_int,
            );
        })?;
    }
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

/// The bytes of a string argument (numbers are converted as Lua would).
fn string_arg(lua: &Lua, v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::String(s) => Some(s.as_bytes().to_vec()),
        Value::Integer(_) | Value::Number(_) => lua
            .coerce_string(v.clone())
            .ok()
            .flatten()
            .map(|s| s.as_bytes().to_vec()),
        _ => None,
    }
}

/// Repetition items of a Lua pattern (`*`, `+`, `-`, `?` after a single-character class),
/// with `%b` and back-references, which scan the subject: the exponent of the matcher's
/// worst case.
pub fn pattern_items(p: &[u8]) -> u32 {
    let mut i = usize::from(p.first() == Some(&b'^'));
    let mut items = 0u32;
    while i < p.len() {
        // One single-character class, then maybe a quantifier.
        let start = i;
        match p[i] {
            b'%' if i + 1 < p.len() => match p[i + 1] {
                b'b' => {
                    items += 1;
                    i += 4;
                    continue;
                }
                b'f' => {
                    i += 2;
                    i = skip_set(p, i);
                    continue;
                }
                b'1'..=b'9' => {
                    items += 1;
                    i += 2;
                    continue;
                }
                _ => i += 2,
            },
            b'[' => i = skip_set(p, i),
            b'(' | b')' => {
                i += 1;
                continue;
            }
            _ => i += 1,
        }
        if i > start && i < p.len() && matches!(p[i], b'*' | b'+' | b'-' | b'?') {
            items += 1;
            i += 1;
        }
    }
    items
}

/// The index after a set `[...]` starting at `i` (or the end of the pattern).
fn skip_set(p: &[u8], mut i: usize) -> usize {
    if p.get(i) != Some(&b'[') {
        return i + 1;
    }
    i += 1;
    if p.get(i) == Some(&b'^') {
        i += 1;
    }
    // A ']' right after '[' or '[^' is a member.
    if p.get(i) == Some(&b']') {
        i += 1;
    }
    while i < p.len() && p[i] != b']' {
        i += if p[i] == b'%' { 2 } else { 1 };
    }
    i + 1
}

fn check_pattern(
    lua: &Lua,
    limits: &Limits,
    kind: &str,
    s: &Value,
    p: &Value,
    plain: bool,
) -> LuaResult<()> {
    // Anything else is an error the original function reports.
    let (Some(s), Some(p)) = (string_arg(lua, s), string_arg(lua, p)) else {
        return Ok(());
    };
    let n = s.len() as f64 + 1.0;
    let plain = plain || (kind == "find" && !p.iter().any(|c| b"^$*+?.([%-".contains(c)));
    let cost = if plain {
        n * (p.len() as f64).max(1.0)
    } else {
        let anchored = p.first() == Some(&b'^') && kind != "gmatch";
        let exp = pattern_items(&p) + u32::from(!anchored);
        n.powi(exp as i32) * (p.len() as f64).max(1.0)
    };
    let cap = limits.0.pattern_cost as f64;
    if cost > cap {
        let shown: String = String::from_utf8_lossy(&p).chars().take(40).collect();
        return Err(lua_err(format!(
            "string.{kind}: the pattern \"{shown}\" on a string of {} bytes could take about {cost:.1e} steps, over the sandbox's cap of {cap:.0e} (a string pattern cannot be interrupted); use a simpler pattern, or a plain find: string.find(s, text, 1, true)",
            s.len()
        )));
    }
    Ok(())
}

/// `require "name"` (or "dir.name"): `<script dir>/name.lua`, else the built-in library.
/// A module must resolve, symlinks followed, to a file inside the script's folder.
fn install_require(lua: &Lua, script_dir: &Path, required: Required) -> LuaResult<()> {
    let dir = script_dir.to_path_buf();
    let loaded = lua.create_table()?;
    let f = lua.create_function(move |lua, name: String| {
        let limits = Limits::of(lua)?;
        limits.check()?;
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
            let src = read_module(&name, &dir, &path, limits.lua_memory())?;
            lock(&required.0).push((path.clone(), src.clone()));
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
        let v: Value = lua.load(strip_bom(&src)).set_name(chunk_name).call(())?;
        let v = if v.is_nil() { Value::Boolean(true) } else { v };
        loaded.raw_set(name.as_str(), v.clone())?;
        Ok(v)
    })?;
    lua.globals().set("require", f)
}

/// The source of a module file, refused if it resolves outside the script's folder.
fn read_module(name: &str, dir: &Path, path: &Path, max: usize) -> LuaResult<String> {
    let real_dir = dir
        .canonicalize()
        .map_err(|e| lua_err(format!("require \"{name}\": {}: {e}", dir.display())))?;
    let real = path
        .canonicalize()
        .map_err(|e| lua_err(format!("require \"{name}\": {}: {e}", path.display())))?;
    if !real.starts_with(&real_dir) {
        return Err(lua_err(format!(
            "require \"{name}\": {} resolves to {}, outside the script's folder {}; the sandbox reads modules only from there and from the built-in library",
            path.display(),
            real.display(),
            real_dir.display()
        )));
    }
    let len = std::fs::metadata(&real)
        .map_err(|e| lua_err(format!("{}: {e}", path.display())))?
        .len();
    if len > max as u64 {
        return Err(lua_err(format!(
            "require \"{name}\": {} is {}, more than the sandbox's Lua memory",
            path.display(),
            show_bytes(len)
        )));
    }
    std::fs::read_to_string(&real).map_err(|e| lua_err(format!("{}: {e}", path.display())))
}
