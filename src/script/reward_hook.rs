//! Calling a reward hook (`reward`, `buffer_reward`, a reward a loss asks for through
//! `ctx:reward`) and checking what it returned: one float per sample.

use super::messages::lua_err;
use super::tensor::LuaTensor;
use candle_core::Tensor;
use mlua::prelude::*;
use mlua::Value;

/// Calls a reward hook and checks that it returned one value per sample.
pub fn call_reward(
    f: &LuaFunction,
    cfg: &LuaTable,
    x0: &Tensor,
    cond: &Tensor,
) -> LuaResult<Tensor> {
    call_reward_hook("reward", f, cfg, x0, cond)
}

/// `call_reward` for the hook named `name`.
pub(super) fn call_reward_hook(
    name: &str,
    f: &LuaFunction,
    cfg: &LuaTable,
    x0: &Tensor,
    cond: &Tensor,
) -> LuaResult<Tensor> {
    let b = x0.dim(0).map_err(lua_err)?;
    let r: Value = f.call((
        LuaTensor::new(x0.clone()),
        LuaTensor::new(cond.clone()),
        cfg.clone(),
    ))?;
    let t = match r {
        Value::UserData(u) if u.is::<LuaTensor>() => u.borrow::<LuaTensor>()?.0.clone(),
        other => {
            return Err(lua_err(format!(
                "hook `{name}` returned {}, expected a tensor of shape [{b}]",
                a(other.type_name())
            )))
        }
    };
    let ok = t.dims() == [b] || t.dims() == [b, 1];
    if !ok {
        return Err(lua_err(format!(
            "hook `{name}` returned a tensor of shape {:?}, expected [{b}] (one reward per sample)",
            t.dims()
        )));
    }
    if !t.dtype().is_float() {
        return Err(lua_err(format!(
            "hook `{name}` returned a tensor of dtype {}, expected a float tensor of shape [{b}] (rewards are real numbers)",
            format!("{:?}", t.dtype()).to_lowercase()
        )));
    }
    t.reshape(b)
        .and_then(|t| t.to_dtype(crate::DTYPE))
        .map_err(lua_err)
}

/// A Lua type name with its article: "a number", "an integer".
pub(super) fn a(type_name: &str) -> String {
    let vowel = type_name.starts_with(['a', 'e', 'i', 'o', 'u']);
    format!("{} {type_name}", if vowel { "an" } else { "a" })
}
