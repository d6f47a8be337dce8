//! The cost check of Lua's string pattern functions (`find`, `match`, `gmatch`, `gsub`):
//! their C matcher cannot be interrupted, so the sandbox estimates the worst case of a
//! pattern on its subject before it runs and refuses it over the cap (docs/scripting.md,
//! "The sandbox"). The prelude in sandbox.rs calls `check_pattern` first.

use super::limits::Limits;
use super::messages::lua_err;
use mlua::prelude::*;
use mlua::Value;

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

/// Refuses a call of `string.<kind>` whose worst case on its subject is over the cap.
pub(super) fn check_pattern(
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
    let cap = limits.pattern_cost() as f64;
    if cost > cap {
        let shown: String = String::from_utf8_lossy(&p).chars().take(40).collect();
        return Err(lua_err(format!(
            "string.{kind}: the pattern \"{shown}\" on a string of {} bytes could take about {cost:.1e} steps, over the sandbox's cap of {cap:.0e} (a string pattern cannot be interrupted); use a simpler pattern, or a plain find: string.find(s, text, 1, true)",
            s.len()
        )));
    }
    Ok(())
}
