//! The sandbox's `require` (docs/scripting.md, "The sandbox"): `require "name"` loads
//! `<script dir>/name.lua`, else the framework's built-in library (`lua/`), and refuses a
//! module that resolves, symlinks followed, outside the script's folder. The files it reads
//! from disk are recorded, so that hot reload watches them.

use super::library;
use super::limits::{lock, Limits};
use super::messages::{lua_err, show_bytes};
use mlua::prelude::*;
use mlua::Value;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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

/// `require "name"` (or "dir.name"): `<script dir>/name.lua`, else the built-in library.
/// A module must resolve, symlinks followed, to a file inside the script's folder.
/// A module listed in `sources` is taken from there instead of its file.
pub(super) fn install_require(
    lua: &Lua,
    script_dir: &Path,
    required: Required,
    sources: Option<Arc<std::collections::BTreeMap<PathBuf, String>>>,
) -> LuaResult<()> {
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
        let given = sources.as_ref().and_then(|s| s.get(&path)).cloned();
        let from_file = match given {
            Some(src) => Some(src),
            None if path.is_file() => Some(read_module(&name, &dir, &path, limits.lua_memory())?),
            None => None,
        };
        let (chunk_name, src) = if let Some(src) = from_file {
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
