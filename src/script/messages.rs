//! How the sandbox words what it reports: a Rust error as a Lua error, sizes and durations
//! as the docs write them, a Lua error as one readable, bounded message. It imports nothing
//! else from `script/`, so that every other file may use it without an import circle.

use mlua::prelude::*;
use std::time::Duration;

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// A candle error as a Lua error (Lua adds the script's file:line).
pub fn lua_err(e: impl std::fmt::Display) -> LuaError {
    LuaError::RuntimeError(e.to_string())
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

pub(super) fn show_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 && s.fract() == 0.0 {
        format!("{s} s")
    } else if s >= 1.0 {
        format!("{s:.1} s")
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// Bytes of an error message kept in the log (a script's error can be any string).
const MAX_MESSAGE: usize = 8 << 10;

pub(super) fn clip(mut msg: String) -> String {
    if msg.len() > MAX_MESSAGE {
        let total = msg.len();
        let mut cut = MAX_MESSAGE;
        while !msg.is_char_boundary(cut) {
            cut -= 1;
        }
        msg.truncate(cut);
        msg.push_str(&format!("... ({} more bytes cut)", total - cut));
    }
    msg
}

/// `describe`, clipped, with a Lua memory error said as the sandbox's limit of
/// `lua_memory` bytes.
pub(super) fn describe_with(e: &LuaError, lua_memory: usize) -> String {
    let msg = clip(describe(e));
    if is_memory_error(e) {
        format!(
            "Lua memory limit of {} exceeded ({msg})",
            show_bytes(lua_memory as u64)
        )
    } else {
        msg
    }
}

fn is_memory_error(e: &LuaError) -> bool {
    match e {
        LuaError::MemoryError(_) => true,
        LuaError::CallbackError { cause, .. } | LuaError::WithContext { cause, .. } => {
            is_memory_error(cause)
        }
        _ => false,
    }
}

/// A Lua error as one readable message: `file:line: message`, then the Lua traceback.
pub fn describe(e: &LuaError) -> String {
    match e {
        LuaError::CallbackError { traceback, cause } => {
            let inner = describe(cause);
            if inner.contains("stack traceback") {
                inner
            } else {
                format!("{inner}\n{traceback}")
            }
        }
        LuaError::RuntimeError(m) | LuaError::SyntaxError { message: m, .. } => m.clone(),
        LuaError::WithContext { context, cause } => format!("{context}: {}", describe(cause)),
        other => other.to_string(),
    }
}
