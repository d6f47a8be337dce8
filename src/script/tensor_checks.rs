//! The checks a tensor op makes on its arguments before candle runs: dimensions and shapes
//! given in Lua (1-based, at most 32 dimensions, at most `MAX_ELEMENTS` elements), the shape
//! two operands broadcast to, the output and FLOPs of a matrix product, float-only ops.
//! With them an op knows what it will allocate and cost, which the sandbox's limits then
//! admit or refuse (docs/scripting.md, "The sandbox").

use super::messages::lua_err;
use candle_core::{Shape, Tensor};
use mlua::prelude::*;
use mlua::{Value, Variadic};

/// Elements a shape given in Lua may have before the sandbox's byte caps apply (2^40):
/// anything larger is a typo.
pub const MAX_ELEMENTS: usize = 1 << 40;

/// Elements of a shape, None if the product overflows.
pub fn elems(dims: &[usize]) -> Option<u128> {
    dims.iter()
        .try_fold(1u128, |a, &d| a.checked_mul(d as u128))
}

/// Whether candle can lay out a shape: its non-zero sizes multiply (as its strides do,
/// even for an empty tensor) to at most `MAX_ELEMENTS`.
pub fn layable(dims: &[usize]) -> bool {
    dims.len() <= 32
        && dims
            .iter()
            .filter(|&&d| d > 0)
            .try_fold(1u128, |a, &d| a.checked_mul(d as u128))
            .is_some_and(|n| n <= MAX_ELEMENTS as u128)
}

/// A 1-based (or negative, from the end) Lua dimension as a 0-based candle one.
pub fn dim(t: &Tensor, d: i64) -> LuaResult<usize> {
    let r = t.rank() as i64;
    let z = if d > 0 { d - 1 } else { r.saturating_add(d) };
    if d == 0 || z < 0 || z >= r {
        return Err(lua_err(format!(
            "dimension {d} is out of range for a tensor of shape {:?} (dimensions are 1-based; -1 is the last)",
            t.dims()
        )));
    }
    Ok(z as usize)
}

/// A shape given as numbers or as one table of numbers.
pub fn shape_arg(args: &Variadic<Value>) -> LuaResult<Vec<usize>> {
    let shape = shape_numbers(args)?;
    if !layable(&shape) {
        return Err(lua_err(format!(
            "a tensor of shape {shape:?} is larger than {MAX_ELEMENTS} elements"
        )));
    }
    Ok(shape)
}

fn shape_numbers(args: &Variadic<Value>) -> LuaResult<Vec<usize>> {
    let nums: Vec<Value> = match args.first() {
        Some(Value::Table(t)) => t
            .clone()
            .sequence_values::<Value>()
            .take(64)
            .collect::<LuaResult<_>>()?,
        _ => args.iter().cloned().collect(),
    };
    if nums.len() > 32 {
        return Err(lua_err(format!(
            "a shape has at most 32 dimensions, got {}",
            nums.len()
        )));
    }
    nums.iter()
        .map(|v| match v {
            Value::Integer(i) if *i >= 0 => Ok(*i as usize),
            Value::Number(n) if *n >= 0.0 && n.fract() == 0.0 && *n < 1.8e19 => Ok(*n as usize),
            other => Err(lua_err(format!(
                "a shape needs non-negative integers, got {other:?}"
            ))),
        })
        .collect()
}

/// The sizes `reshape` asks for: one may be -1 (inferred), the product must be the
/// tensor's element count.
pub(super) fn reshape_dims(args: &Variadic<Value>, n: usize) -> LuaResult<Vec<usize>> {
    let raw: Vec<i64> = match args.first() {
        Some(Value::Table(tb)) => tb
            .clone()
            .sequence_values::<i64>()
            .take(64)
            .collect::<LuaResult<_>>()?,
        _ => args
            .iter()
            .map(|v| match v {
                Value::Integer(i) => Ok(*i),
                Value::Number(n) if n.fract() == 0.0 && n.abs() < 9.2e18 => Ok(*n as i64),
                other => Err(lua_err(format!(
                    "reshape: sizes are integers, got {other:?}"
                ))),
            })
            .collect::<LuaResult<_>>()?,
    };
    if raw.len() > 32 {
        return Err(lua_err("reshape: at most 32 dimensions"));
    }
    if let Some(bad) = raw.iter().find(|&&d| d < -1) {
        return Err(lua_err(format!(
            "reshape: size {bad} is negative (only one -1, inferred, is allowed)"
        )));
    }
    if raw.iter().filter(|&&d| d == -1).count() > 1 {
        return Err(lua_err("reshape: only one size may be -1"));
    }
    let known: Vec<usize> = raw
        .iter()
        .filter(|&&d| d != -1)
        .map(|&d| d as usize)
        .collect();
    let overflow = || {
        lua_err(format!(
            "reshape: the shape {raw:?} has more elements than a number can hold"
        ))
    };
    let k = elems(&known).ok_or_else(overflow)?;
    let shape: Vec<usize> = raw
        .iter()
        .map(|&d| {
            if d != -1 {
                Ok(d as usize)
            } else if k == 0 || !(n as u128).is_multiple_of(k) {
                Err(lua_err(format!(
                    "reshape: cannot infer -1 in {raw:?} for {n} elements"
                )))
            } else {
                Ok((n as u128 / k) as usize)
            }
        })
        .collect::<LuaResult<_>>()?;
    if elems(&shape) != Some(n as u128) || !layable(&shape) {
        return Err(lua_err(format!(
            "reshape: a tensor of {n} elements cannot take the shape {raw:?}"
        )));
    }
    Ok(shape)
}

/// Output shape, and the elements of its broadcast operands, of a batched matrix product.
pub(super) fn matmul_shape(a: &Tensor, b: &Tensor) -> LuaResult<Option<(Vec<usize>, u128, u128)>> {
    let (ad, bd) = (a.dims(), b.dims());
    if ad.len() < 2 || bd.len() < 2 {
        return Ok(None); // candle explains the error
    }
    let (m, k) = (ad[ad.len() - 2], ad[ad.len() - 1]);
    let n = bd[bd.len() - 1];
    let batch = Shape::from(ad[..ad.len() - 2].to_vec())
        .broadcast_shape_binary_op(&Shape::from(bd[..bd.len() - 2].to_vec()), "matmul")
        .map_err(lua_err)?;
    let mut out = batch.dims().to_vec();
    out.extend([m, n]);
    let nb = elems(batch.dims()).unwrap_or(u128::MAX);
    let flops = nb
        .saturating_mul(2)
        .saturating_mul(m as u128)
        .saturating_mul(n as u128)
        .saturating_mul(k as u128);
    // Broadcast operands may be made contiguous first.
    let operands = nb
        .saturating_mul(m as u128)
        .saturating_mul(k as u128)
        .saturating_add(nb.saturating_mul(k as u128).saturating_mul(n as u128));
    Ok(Some((out, flops, operands)))
}

/// The shape two tensors broadcast to.
pub(super) fn broadcast(a: &Tensor, b: &Tensor, name: &'static str) -> LuaResult<Shape> {
    a.shape()
        .broadcast_shape_binary_op(b.shape(), name)
        .map_err(lua_err)
}

/// Refuses integer tensors where candle has only float kernels.
pub(super) fn float(t: &Tensor, name: &str) -> LuaResult<()> {
    if t.dtype().is_float() {
        Ok(())
    } else {
        Err(lua_err(format!(
            "{name} needs a float tensor, got {:?} (shape {:?})",
            t.dtype(),
            t.dims()
        )))
    }
}
