//! The global `tensor` table a script sees: constructors (`tensor.randn`, `zeros`, `ones`,
//! `full`, `from`) and functions of several tensors (`tensor.cat`, `tensor.stack`), each
//! admitted under the sandbox's limits before it allocates.

use super::messages::lua_err;
use super::tensor::{env, lock_rng, run, LuaTensor, Op};
use super::tensor_checks::{dim, shape_arg};
use super::tensor_tables::from_table;
use candle_core::{Device, Tensor};
use mlua::prelude::*;
use mlua::{Value, Variadic};

/// `tensor.cat` and `tensor.stack`: the 0-based dimension and the checked output size.
fn join(lua: &Lua, op: &Op, list: &[LuaTensor], d: Option<i64>, stack: bool) -> LuaResult<usize> {
    let first = list
        .first()
        .ok_or_else(|| lua_err(format!("tensor.{} needs at least one tensor", op.name)))?;
    let d = if stack {
        let r = first.0.rank() as i64;
        let d = d.unwrap_or(1);
        let z = if d > 0 { d - 1 } else { r + 1 + d };
        if d == 0 || z < 0 || z > r {
            return Err(lua_err(format!(
                "tensor.stack: dimension {d} out of range for tensors of shape {:?}",
                first.0.dims()
            )));
        }
        z as usize
    } else {
        dim(&first.0, d.unwrap_or(1))?
    };
    let total = list
        .iter()
        .try_fold(0u128, |a, t| a.checked_add(t.0.elem_count() as u128))
        .unwrap_or(u128::MAX);
    op.admit(lua, &[total], first.0.dtype())?;
    Ok(d)
}

/// The global `tensor` table: constructors and functions of several tensors.
pub fn module(lua: &Lua) -> LuaResult<LuaTable> {
    let m = lua.create_table()?;
    m.set(
        "randn",
        lua.create_function(|lua, args: Variadic<Value>| {
            let op = Op::start(lua, "tensor.randn")?;
            let e = env(lua)?;
            let shape = shape_arg(&args)?;
            op.admit_dims(lua, &shape, crate::DTYPE)?;
            let mut rng = lock_rng(&e.rng);
            let out = run(op.name, || crate::rng::randn(&mut rng, shape, &e.device))?;
            op.wrap(out, &[])
        })?,
    )?;
    type Fill = fn(Vec<usize>, &Device) -> candle_core::Result<Tensor>;
    let fills: [(&'static str, Fill); 2] = [
        ("zeros", |s, d| Tensor::zeros(s, crate::DTYPE, d)),
        ("ones", |s, d| Tensor::ones(s, crate::DTYPE, d)),
    ];
    for (name, f) in fills {
        m.set(
            name,
            lua.create_function(move |lua, args: Variadic<Value>| {
                let op = Op::start(lua, name)?;
                let shape = shape_arg(&args)?;
                op.admit_dims(lua, &shape, crate::DTYPE)?;
                let device = env(lua)?.device;
                let out = run(name, || f(shape, &device))?;
                op.wrap(out, &[])
            })?,
        )?;
    }
    m.set(
        "full",
        lua.create_function(|lua, (shape, v): (LuaTable, f64)| {
            let op = Op::start(lua, "tensor.full")?;
            let shape = shape_arg(&Variadic::from_iter([Value::Table(shape)]))?;
            op.admit_dims(lua, &shape, crate::DTYPE)?;
            let device = env(lua)?.device;
            let out = run(op.name, || Tensor::full(v as f32, shape, &device))?;
            op.wrap(out, &[])
        })?,
    )?;
    m.set(
        "from",
        lua.create_function(|lua, t: LuaTable| {
            let op = Op::start(lua, "tensor.from")?;
            let out = from_table(lua, &op, &t, &env(lua)?.device)?;
            op.wrap(out, &[])
        })?,
    )?;
    m.set(
        "cat",
        lua.create_function(|lua, (list, d): (Vec<LuaTensor>, Option<i64>)| {
            let op = Op::start(lua, "cat")?;
            let d = join(lua, &op, &list, d, false)?;
            let ts: Vec<&Tensor> = list.iter().map(|t| &t.0).collect();
            let out = run("tensor.cat", || Tensor::cat(&ts, d))?;
            op.wrap(out, &list.iter().collect::<Vec<_>>())
        })?,
    )?;
    m.set(
        "stack",
        lua.create_function(|lua, (list, d): (Vec<LuaTensor>, Option<i64>)| {
            let op = Op::start(lua, "stack")?;
            let d = join(lua, &op, &list, d, true)?;
            let ts: Vec<&Tensor> = list.iter().map(|t| &t.0).collect();
            let out = run("tensor.stack", || Tensor::stack(&ts, d))?;
            op.wrap(out, &list.iter().collect::<Vec<_>>())
        })?,
    )?;
    m.set(
        "is_tensor",
        lua.create_function(|_, v: Value| {
            Ok(matches!(&v, Value::UserData(u) if u.is::<LuaTensor>()))
        })?,
    )?;
    Ok(m)
}
