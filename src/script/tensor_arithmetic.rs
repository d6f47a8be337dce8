//! Arithmetic on tensors in Lua: `+ - * / ^` between two tensors (broadcast) or a tensor
//! and a number, each admitted under the sandbox's limits before it runs.

use super::messages::lua_err;
use super::tensor::{run, LuaTensor, Op};
use super::tensor_checks::{broadcast, float};
use mlua::prelude::*;
use mlua::Value;

/// Either operand of an arithmetic metamethod.
pub(super) enum Operand {
    T(LuaTensor),
    N(f64),
}

impl FromLua for Operand {
    fn from_lua(v: Value, lua: &Lua) -> LuaResult<Self> {
        match v {
            Value::Integer(i) => Ok(Operand::N(i as f64)),
            Value::Number(n) => Ok(Operand::N(n)),
            other => Ok(Operand::T(LuaTensor::from_lua(other, lua)?)),
        }
    }
}

#[derive(Clone, Copy)]
pub(super) enum Bin {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
}

impl Bin {
    pub(super) fn name(self) -> &'static str {
        match self {
            Bin::Add => "tensor +",
            Bin::Sub => "tensor -",
            Bin::Mul => "tensor *",
            Bin::Div => "tensor /",
            Bin::Pow => "tensor ^",
        }
    }
}

pub(super) fn binary(lua: &Lua, a: Operand, b: Operand, bin: Bin) -> LuaResult<LuaTensor> {
    use Operand::*;
    let op = Op::start(lua, bin.name())?;
    match (a, b) {
        (T(a), T(b)) => {
            let shape = broadcast(&a.0, &b.0, bin.name())?;
            if matches!(bin, Bin::Pow) {
                float(&a.0, bin.name())?;
            }
            op.admit_dims(lua, shape.dims(), a.0.dtype())?;
            let (x, y) = (&a.0, &b.0);
            let out = run(bin.name(), || match bin {
                Bin::Add => x.broadcast_add(y),
                Bin::Sub => x.broadcast_sub(y),
                Bin::Mul => x.broadcast_mul(y),
                Bin::Div => x.broadcast_div(y),
                Bin::Pow => x.broadcast_pow(y),
            })?;
            op.wrap(out, &[&a, &b])
        }
        (T(a), N(n)) => {
            if matches!(bin, Bin::Pow) {
                float(&a.0, bin.name())?;
            }
            op.same_shape(lua, &a, 1, |a| match bin {
                Bin::Add => a.affine(1.0, n),
                Bin::Sub => a.affine(1.0, -n),
                Bin::Mul => a.affine(n, 0.0),
                Bin::Div => a.affine(1.0 / n, 0.0),
                Bin::Pow if n == 2.0 => a.sqr(),
                Bin::Pow => a.powf(n),
            })
        }
        (N(n), T(b)) => {
            if matches!(bin, Bin::Div | Bin::Pow) {
                float(&b.0, bin.name())?;
            }
            if matches!(bin, Bin::Pow) && n <= 0.0 {
                return Err(lua_err(format!("{n} ^ tensor needs a positive base")));
            }
            op.same_shape(lua, &b, 2, |b| match bin {
                Bin::Add => b.affine(1.0, n),
                Bin::Sub => b.affine(-1.0, n),
                Bin::Mul => b.affine(n, 0.0),
                Bin::Div => b.recip().and_then(|r| r.affine(n, 0.0)),
                Bin::Pow => b.affine(n.ln(), 0.0).and_then(|x| x.exp()),
            })
        }
        (N(_), N(_)) => Err(lua_err("tensor arithmetic needs at least one tensor")),
    }
}
