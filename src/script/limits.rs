//! The limits every call into a script runs under (docs/scripting.md, "The sandbox"): a
//! wall-clock limit on the script's own time (model calls pause it), an instruction budget,
//! a cap on model calls, checked by a hook in C that nothing inside Lua can catch or dodge;
//! the caps on tensor memory (tensor_memory.rs), on op costs and on printed output
//! (print_caps.rs) are reached through `Limits` too. Once a call exceeds its time, budget
//! or model calls it is "tripped": every later check in that call fails again with the
//! same message, and the host reports the limit.

use super::messages::{lua_err, show_duration};
use super::print_caps::PrintCaps;
use super::tensor_memory::{Charge, TensorMemory};
use crate::run_log::RunLog;
use mlua::ffi;
use mlua::prelude::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How many VM instructions pass between two checks of the budget.
const HOOK_EVERY: u32 = 10_000;

/// The caps of one call, and those of single ops, as `SandboxOptions` sets them.
pub(super) struct Caps {
    pub time_limit: Duration,
    pub instruction_budget: u64,
    pub model_calls: u64,
    pub lua_memory: usize,
    pub matmul_flops: u64,
    pub pattern_cost: u64,
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
    caps: Caps,
    /// What is running: "top-level code", "hook `loss`".
    what: Mutex<String>,
    instructions: AtomicU64,
    model_calls: AtomicU64,
    clock: Mutex<Clock>,
    /// The limit the current call exceeded: every later check fails with it.
    tripped: Mutex<Option<String>>,
    print: PrintCaps,
    tensors: TensorMemory,
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
        if lock(&self.clock).elapsed() > self.caps.time_limit {
            return Err(self.trip(format!(
                "time limit of {} exceeded (the script's own time in one call; model calls do not count): an endless loop?",
                show_duration(self.caps.time_limit)
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
        if self.tripped().is_none() && n > self.caps.instruction_budget {
            return Err(self.trip(format!(
                "instruction budget of {} VM instructions exceeded in one call{}: an endless loop?",
                self.caps.instruction_budget,
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

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing a script does can panic while these are held; never poison the sandbox.
    m.lock().unwrap_or_else(|e| e.into_inner())
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
    pub(super) fn new(caps: Caps, tensors: TensorMemory, print: PrintCaps) -> Self {
        Limits(Arc::new(LimitsInner {
            caps,
            what: Mutex::new("top-level code".into()),
            instructions: AtomicU64::new(0),
            model_calls: AtomicU64::new(0),
            clock: Mutex::new(Clock {
                spent: Duration::ZERO,
                since: Some(Instant::now()),
            }),
            tripped: Mutex::new(None),
            print,
            tensors,
        }))
    }

    /// Sets the hook that checks these limits in `lua` (whose app data must hold them).
    pub(super) fn install_hook(&self, lua: &Lua) -> LuaResult<()> {
        let inner = Arc::as_ptr(&self.0) as *mut std::ffi::c_void;
        // SAFETY: the pointer stays valid while the state lives (its app data holds the
        // Arc); the hook is plain C (see `limits_hook`).
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
            })
        }
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
        l.print.new_call();
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
        l.print.new_call();
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
        if n > self.0.caps.model_calls {
            return Err(self.trip(format!(
                "more than {} model calls in one call (the last: {name}): an endless loop?",
                self.0.caps.model_calls
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
        self.0.tensors.bytes()
    }

    /// Checks, before an op runs, the call's time and that `bytes` more of tensors fit
    /// (`TensorMemory::admit`; `one` is the largest single new tensor).
    pub fn admit(&self, lua: &Lua, bytes: u64, one: u64, what: &str) -> LuaResult<()> {
        self.check()?;
        self.0.tensors.admit(lua, bytes, one, what)
    }

    /// A charge of `bytes` on the live count, keeping `parents` (and `storage`) alive.
    pub fn charge(
        &self,
        bytes: u64,
        parents: Vec<Arc<Charge>>,
        storage: Option<Arc<Charge>>,
    ) -> Arc<Charge> {
        self.0.tensors.charge(bytes, parents, storage)
    }

    /// Refuses a matrix product of more than the FLOP cap.
    pub fn check_flops(&self, flops: u128, what: &str) -> LuaResult<()> {
        if flops > self.0.caps.matmul_flops as u128 {
            return Err(lua_err(format!(
                "{what}: {flops:.3e} floating-point operations are over the sandbox's cap of {:.3e} per op",
                self.0.caps.matmul_flops as f64,
                flops = flops as f64
            )));
        }
        Ok(())
    }

    /// Steps a string pattern function may take in the worst case.
    pub(super) fn pattern_cost(&self) -> u64 {
        self.0.caps.pattern_cost
    }

    pub fn lua_memory(&self) -> usize {
        self.0.caps.lua_memory
    }

    /// Writes a printed line to the log within the print caps (print_caps.rs).
    pub(super) fn print(&self, log: &RunLog, line: String) {
        self.0.print.print(log, line, || self.what());
    }
}
