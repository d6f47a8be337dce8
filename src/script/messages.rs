//! How the sandbox words what it reports: a Rust error as a Lua error, sizes and durations
//! as the docs write them. It imports nothing else from `script/`, so that every other file
//! may use it without an import circle.

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

pub fn show_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 && s.fract() == 0.0 {
        format!("{s} s")
    } else if s >= 1.0 {
        format!("{s:.1} s")
    } else {
        format!("{} ms", d.as_millis())
    }
}
