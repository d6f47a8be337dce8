//! Config values between their three forms: `--set key=value` text, Lua values and JSON
//! (the form a config is checked, stored in checkpoints and compared in). Lua has one
//! number type, so a value is coerced to its key's type by the key's default.

use anyhow::{anyhow, bail, Result};
use mlua::prelude::*;
use mlua::Value;
use serde_json::{Map, Value as Json};

/// One `--set key=value`: numbers, booleans and strings; `params.x` and `surrogate.x` reach
/// into those tables.
pub fn parse_override(s: &str) -> Result<(String, Json)> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| anyhow!("--set expects key=value, got `{s}`"))?;
    let v = v.trim();
    // A list (`queries=[128,256]`, as `sqdf compare` passes one): JSON.
    if v.starts_with('[') {
        let list: Json = serde_json::from_str(v)
            .map_err(|e| anyhow!("--set {}: `{v}` is not a list of numbers: {e}", k.trim()))?;
        return Ok((k.trim().to_string(), list));
    }
    let val = if let Ok(i) = v.parse::<i64>() {
        Json::from(i)
    } else if let Ok(f) = v.parse::<f64>() {
        if !f.is_finite() {
            bail!(
                "--set {}: config values must be finite numbers, got `{v}`",
                k.trim()
            )
        }
        Json::from(f)
    } else if v == "true" || v == "false" {
        Json::from(v == "true")
    } else {
        Json::from(v.trim_matches('"').to_string())
    };
    Ok((k.trim().to_string(), val))
}

/// A Lua value (numbers, strings, booleans, tables) as JSON.
pub fn lua_to_json(v: &Value, at: &str) -> Result<Json> {
    Ok(match v {
        Value::Nil => Json::Null,
        Value::Boolean(b) => Json::from(*b),
        Value::Integer(i) => Json::from(*i),
        // JSON has no NaN or infinity (serde_json would store null): refused here, by name.
        Value::Number(n) if !n.is_finite() => bail!("{at} must be a finite number, got {n}"),
        Value::Number(n) => Json::from(*n),
        Value::String(s) => Json::from(s.to_str()?.to_string()),
        Value::Table(t) => {
            let mut map = Map::new();
            let mut seq = Vec::new();
            let len = t.raw_len();
            for pair in t.clone().pairs::<Value, Value>() {
                let (k, v) = pair?;
                match k {
                    Value::Integer(i) if i >= 1 && (i as usize) <= len => {
                        seq.push((i, lua_to_json(&v, &format!("{at}[{i}]"))?))
                    }
                    Value::String(s) => {
                        let key = s.to_str()?.to_string();
                        let val = lua_to_json(&v, &format!("{at}.{key}"))?;
                        map.insert(key, val);
                    }
                    other => bail!("{at}: keys must be strings, got {}", other.type_name()),
                }
            }
            if map.is_empty() && !seq.is_empty() {
                seq.sort_by_key(|(i, _)| *i);
                Json::Array(seq.into_iter().map(|(_, v)| v).collect())
            } else if seq.is_empty() {
                Json::Object(map)
            } else {
                bail!("{at}: a table mixes a list and keys")
            }
        }
        other => bail!("{at}: a config value cannot be a {}", other.type_name()),
    })
}

/// JSON as a Lua value.
pub fn json_to_lua(lua: &Lua, v: &Json) -> LuaResult<Value> {
    Ok(match v {
        Json::Null => Value::Nil,
        Json::Bool(b) => Value::Boolean(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Number(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::String(lua.create_string(s)?),
        Json::Array(a) => {
            let t = lua.create_table()?;
            for x in a {
                t.raw_push(json_to_lua(lua, x)?)?;
            }
            Value::Table(t)
        }
        Json::Object(o) => {
            let t = lua.create_table()?;
            for (k, x) in o {
                t.raw_set(k.as_str(), json_to_lua(lua, x)?)?;
            }
            Value::Table(t)
        }
    })
}

/// The default a key's value is coerced against: a list of integers whose default is
/// empty (`queries`) gets a one-element one, so that its elements take the integer rule
/// (Lua's `2^7` and `128 / 1` are floats).
pub(super) fn element_rule(key: &str, def: &Json) -> Json {
    match key {
        "queries" => Json::from(vec![0u64]),
        _ => def.clone(),
    }
}

/// `v` in the type of the default `def`, or an error naming `name` (`config.epochs`).
/// Lua has one number type, so 50.0 where an integer is expected is 50; 50.5 is an error.
pub fn coerce_to(def: &Json, v: Json, name: &str) -> Result<Json> {
    Ok(match (def, v) {
        (Json::Number(d), Json::Number(n)) if d.is_u64() => match n.as_f64() {
            Some(f) if f >= 0.0 && f.fract() == 0.0 => Json::from(f as u64),
            _ => bail!("{name} must be a non-negative integer, got {n}"),
        },
        // A list of integers (the surrogate's `hidden`) takes the same rule per element.
        (Json::Array(d), Json::Array(a)) if d.first().is_some_and(|x| x.is_u64()) => {
            let a: Result<Vec<Json>> = a
                .into_iter()
                .enumerate()
                .map(|(i, x)| coerce_to(&d[0], x, &format!("{name}[{}]", i + 1)))
                .collect();
            Json::Array(a?)
        }
        (Json::Array(_), Json::Object(o)) if o.is_empty() => Json::Array(Vec::new()),
        (Json::Object(_), Json::Array(a)) if a.is_empty() => Json::Object(Map::new()),
        (Json::Null, v @ Json::String(_)) => v,
        (Json::Number(_), v @ Json::Number(_))
        | (Json::String(_), v @ Json::String(_))
        | (Json::Bool(_), v @ Json::Bool(_))
        | (Json::Object(_), v @ Json::Object(_))
        | (Json::Array(_), v @ Json::Array(_)) => v,
        (_, v) => bail!("{name} has the wrong type: expected {}, got {v}", kind(def)),
    })
}

fn kind(v: &Json) -> &'static str {
    match v {
        Json::Number(n) if n.is_u64() => "a non-negative integer",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Bool(_) => "a boolean",
        Json::Object(_) => "a table",
        Json::Null => "a string",
        Json::Array(_) => "a list",
    }
}
