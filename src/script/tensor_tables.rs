//! Tensors to and from Lua tables: `tensor.from` (nested tables of numbers), `t:totable()`,
//! and the indices `t:index` takes (a table or a tensor of 1-based indices). Each checks
//! what it will allocate, in tensors or in Lua's memory, before it converts.

use super::limits::Limits;
use super::messages::{lua_err, show_bytes};
use super::tensor::{conv_err, run, LuaTensor, Op};
use super::tensor_checks::elems;
use candle_core::{DType, Device, Tensor};
use mlua::prelude::*;
use mlua::Value;

/// Indices from a Lua table of 1-based integers or from a tensor of 1-based indices.
pub(super) fn indices(
    lua: &Lua,
    op: &Op,
    v: Value,
    len: usize,
    device: &Device,
) -> LuaResult<Tensor> {
    let idx: Vec<i64> = match v {
        Value::Table(t) => t.sequence_values::<i64>().collect::<LuaResult<_>>()?,
        other => {
            let t = match other {
                Value::UserData(u) if u.is::<LuaTensor>() => u.borrow::<LuaTensor>()?.0.clone(),
                other => return Err(conv_err(other.type_name(), "indices (a table or a tensor)")),
            };
            // The conversion's temporaries: f64 copies and the index vectors.
            op.admit(lua, &[t.elem_count() as u128 * 4], DType::F32)?;
            run(op.name, || {
                t.to_dtype(DType::F64)
                    .and_then(|t| t.flatten_all())
                    .and_then(|t| t.to_vec1::<f64>())
            })?
            .into_iter()
            .map(|x| x as i64)
            .collect()
        }
    };
    let zero: Vec<u32> = idx
        .iter()
        .map(|&i| {
            if i >= 1 && (i as u128) <= len as u128 && i <= u32::MAX as i64 {
                Ok((i - 1) as u32)
            } else {
                Err(lua_err(format!("index {i} is out of range 1..{len}")))
            }
        })
        .collect::<LuaResult<_>>()?;
    let n = zero.len();
    Tensor::from_vec(zero, n, device).map_err(lua_err)
}

/// Nested Lua tables of numbers as a tensor.
pub(super) fn from_table(lua: &Lua, op: &Op, t: &LuaTable, device: &Device) -> LuaResult<Tensor> {
    fn walk(
        op: &Op,
        v: &Value,
        depth: usize,
        shape: &mut Vec<usize>,
        out: &mut Vec<f32>,
    ) -> LuaResult<()> {
        match v {
            Value::Integer(i) => out.push(*i as f32),
            Value::Number(n) => out.push(*n as f32),
            Value::Table(t) => {
                if depth >= 32 {
                    return Err(lua_err(
                        "tensor.from: tables nested more than 32 deep (a table inside itself?)",
                    ));
                }
                op.limits().check()?;
                let items: Vec<Value> = t.clone().sequence_values().collect::<LuaResult<_>>()?;
                if shape.len() == depth {
                    shape.push(items.len());
                } else if shape[depth] != items.len() {
                    return Err(lua_err("tensor.from: rows of different lengths"));
                }
                for it in &items {
                    walk(op, it, depth + 1, shape, out)?;
                }
            }
            other => {
                return Err(lua_err(format!(
                    "tensor.from: expected numbers, got {}",
                    other.type_name()
                )))
            }
        }
        Ok(())
    }
    let (mut shape, mut out) = (Vec::new(), Vec::new());
    walk(op, &Value::Table(t.clone()), 0, &mut shape, &mut out)?;
    if elems(&shape) != Some(out.len() as u128) {
        return Err(lua_err("tensor.from: ragged nested tables"));
    }
    op.admit_dims(lua, &shape, crate::DTYPE)?;
    Tensor::from_vec(out, shape, device).map_err(lua_err)
}

/// A tensor as nested Lua tables of numbers (a number for a scalar).
pub(super) fn to_table(lua: &Lua, t: &Tensor) -> LuaResult<Value> {
    let limits = Limits::of(lua)?;
    limits.check()?;
    // Each number (or nested table, for empty dimensions) takes 16 bytes or more in Lua.
    let values = t
        .dims()
        .iter()
        .filter(|&&d| d > 0)
        .fold(1u128, |a, &d| a.saturating_mul(d as u128));
    if values.saturating_mul(16) > limits.lua_memory() as u128 {
        return Err(lua_err(format!(
            "totable: {} numbers do not fit the sandbox's Lua memory of {}",
            t.elem_count(),
            show_bytes(limits.lua_memory() as u64)
        )));
    }
    let flat = run("totable", || {
        t.to_dtype(DType::F64)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f64>())
    })?;
    if t.rank() == 0 {
        return Ok(Value::Number(flat.first().copied().unwrap_or(f64::NAN)));
    }
    fn build(lua: &Lua, dims: &[usize], flat: &[f64]) -> LuaResult<Value> {
        let out = lua.create_table_with_capacity(dims[0].min(1 << 20), 0)?;
        if dims.len() == 1 {
            for &x in flat.iter().take(dims[0]) {
                out.raw_push(x)?;
            }
        } else {
            let step = flat.len() / dims[0].max(1);
            for i in 0..dims[0] {
                out.raw_push(build(lua, &dims[1..], &flat[i * step..(i + 1) * step])?)?;
            }
        }
        Ok(Value::Table(out))
    }
    build(lua, t.dims(), &flat)
}
