//! Tensors in Lua: a userdata over a candle `Tensor`. Every operation is a candle op, so
//! autograd runs through expressions a script builds. Dimensions are 1-based as in Lua
//! and torch7 (`t:sum(1)` sums over the first dimension; -1 is the last).

use crate::rng::SharedRng;
use candle_core::{DType, Device, Tensor};
use mlua::prelude::*;
use mlua::{MetaMethod, UserData, UserDataMethods, Value, Variadic};

/// A candle tensor owned by Lua.
#[derive(Clone, Debug)]
pub struct LuaTensor(pub Tensor);

impl FromLua for LuaTensor {
    fn from_lua(v: Value, _: &Lua) -> LuaResult<Self> {
        match v {
            Value::UserData(ud) => match ud.borrow::<LuaTensor>() {
                Ok(t) => Ok(t.clone()),
                Err(_) => Err(conv_err("userdata", "a tensor")),
            },
            other => Err(conv_err(other.type_name(), "a tensor")),
        }
    }
}

fn conv_err(from: &'static str, to: &str) -> LuaError {
    LuaError::FromLuaConversionError {
        from,
        to: "Tensor".into(),
        message: Some(format!("expected {to}, got {from}")),
    }
}

/// A candle error as a Lua error (Lua adds the script's file:line).
pub fn lua_err(e: impl std::fmt::Display) -> LuaError {
    LuaError::RuntimeError(e.to_string())
}

/// The run's device and RNG, which tensor constructors in Lua use.
#[derive(Clone)]
pub struct TensorEnv {
    pub device: Device,
    pub rng: SharedRng,
}

/// Either operand of an arithmetic metamethod.
enum Operand {
    T(Tensor),
    N(f64),
}

impl FromLua for Operand {
    fn from_lua(v: Value, lua: &Lua) -> LuaResult<Self> {
        match v {
            Value::Integer(i) => Ok(Operand::N(i as f64)),
            Value::Number(n) => Ok(Operand::N(n)),
            other => Ok(Operand::T(LuaTensor::from_lua(other, lua)?.0)),
        }
    }
}

#[derive(Clone, Copy)]
enum Bin {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
}

fn binary(a: Operand, b: Operand, op: Bin) -> LuaResult<LuaTensor> {
    use Operand::*;
    let r = match (a, b, op) {
        (T(a), T(b), Bin::Add) => a.broadcast_add(&b),
        (T(a), T(b), Bin::Sub) => a.broadcast_sub(&b),
        (T(a), T(b), Bin::Mul) => a.broadcast_mul(&b),
        (T(a), T(b), Bin::Div) => a.broadcast_div(&b),
        (T(a), T(b), Bin::Pow) => a.broadcast_pow(&b),
        (T(a), N(n), Bin::Add) => a.affine(1.0, n),
        (T(a), N(n), Bin::Sub) => a.affine(1.0, -n),
        (T(a), N(n), Bin::Mul) => a.affine(n, 0.0),
        (T(a), N(n), Bin::Div) => a.affine(1.0 / n, 0.0),
        (T(a), N(2.0), Bin::Pow) => a.sqr(),
        (T(a), N(n), Bin::Pow) => a.powf(n),
        (N(n), T(b), Bin::Add) => b.affine(1.0, n),
        (N(n), T(b), Bin::Sub) => b.affine(-1.0, n),
        (N(n), T(b), Bin::Mul) => b.affine(n, 0.0),
        (N(n), T(b), Bin::Div) => b.recip().and_then(|r| r.affine(n, 0.0)),
        (N(n), T(_), Bin::Pow) if n <= 0.0 => {
            return Err(lua_err(format!("{n} ^ tensor needs a positive base")))
        }
        (N(n), T(b), Bin::Pow) => b.affine(n.ln(), 0.0).and_then(|x| x.exp()),
        (N(_), N(_), _) => return Err(lua_err("tensor arithmetic needs at least one tensor")),
    };
    r.map(LuaTensor).map_err(lua_err)
}

/// A 1-based (or negative, from the end) Lua dimension as a 0-based candle one.
pub fn dim(t: &Tensor, d: i64) -> LuaResult<usize> {
    let r = t.rank() as i64;
    let z = if d > 0 { d - 1 } else { r + d };
    if d == 0 || z < 0 || z >= r {
        return Err(lua_err(format!(
            "dimension {d} is out of range for a tensor of shape {:?} (dimensions are 1-based; -1 is the last)",
            t.dims()
        )));
    }
    Ok(z as usize)
}

/// Elements a tensor made in Lua may have (2^28 f32 = 1 GiB): a typo in a shape is an
/// error, not an abort of the whole process.
pub const MAX_ELEMENTS: usize = 1 << 28;

/// A shape given as numbers or as one table of numbers.
pub fn shape_arg(args: &Variadic<Value>) -> LuaResult<Vec<usize>> {
    let shape = shape_numbers(args)?;
    if shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .is_none_or(|n| n > MAX_ELEMENTS)
    {
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
            .collect::<LuaResult<_>>()?,
        _ => args.iter().cloned().collect(),
    };
    nums.iter()
        .map(|v| match v {
            Value::Integer(i) if *i >= 0 => Ok(*i as usize),
            Value::Number(n) if *n >= 0.0 && n.fract() == 0.0 => Ok(*n as usize),
            other => Err(lua_err(format!(
                "a shape needs non-negative integers, got {other:?}"
            ))),
        })
        .collect()
}

fn env(lua: &Lua) -> LuaResult<TensorEnv> {
    lua.app_data_ref::<TensorEnv>()
        .map(|e| e.clone())
        .ok_or_else(|| lua_err("no tensor environment in this Lua state"))
}

/// Indices from a Lua table of 1-based integers or from a tensor of 1-based indices.
fn indices(v: Value, len: usize, device: &Device) -> LuaResult<Tensor> {
    let idx: Vec<i64> = match v {
        Value::Table(t) => t.sequence_values::<i64>().collect::<LuaResult<_>>()?,
        other => {
            let t = match other {
                Value::UserData(u) if u.is::<LuaTensor>() => u.borrow::<LuaTensor>()?.0.clone(),
                other => return Err(conv_err(other.type_name(), "indices (a table or a tensor)")),
            };
            t.to_dtype(DType::F64)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f64>())
                .map_err(lua_err)?
                .into_iter()
                .map(|x| x as i64)
                .collect()
        }
    };
    let zero: Vec<u32> = idx
        .iter()
        .map(|&i| {
            if i >= 1 && (i as usize) <= len {
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
fn from_table(t: &LuaTable, device: &Device) -> LuaResult<Tensor> {
    fn walk(v: &Value, depth: usize, shape: &mut Vec<usize>, out: &mut Vec<f32>) -> LuaResult<()> {
        match v {
            Value::Integer(i) => out.push(*i as f32),
            Value::Number(n) => out.push(*n as f32),
            Value::Table(t) => {
                let items: Vec<Value> = t.clone().sequence_values().collect::<LuaResult<_>>()?;
                if shape.len() == depth {
                    shape.push(items.len());
                } else if shape[depth] != items.len() {
                    return Err(lua_err("tensor.from: rows of different lengths"));
                }
                for it in &items {
                    walk(it, depth + 1, shape, out)?;
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
    walk(&Value::Table(t.clone()), 0, &mut shape, &mut out)?;
    if out.len() != shape.iter().product::<usize>() {
        return Err(lua_err("tensor.from: ragged nested tables"));
    }
    Tensor::from_vec(out, shape, device).map_err(lua_err)
}

fn to_table(lua: &Lua, t: &Tensor) -> LuaResult<Value> {
    if t.rank() == 0 {
        return Ok(Value::Number(
            t.to_dtype(DType::F64)
                .and_then(|t| t.to_scalar::<f64>())
                .map_err(lua_err)?,
        ));
    }
    let out = lua.create_table()?;
    for i in 0..t.dim(0).map_err(lua_err)? {
        out.raw_push(to_table(lua, &t.get(i).map_err(lua_err)?)?)?;
    }
    Ok(Value::Table(out))
}

fn mask(t: candle_core::Result<Tensor>) -> LuaResult<LuaTensor> {
    t.and_then(|m| m.to_dtype(crate::DTYPE))
        .map(LuaTensor)
        .map_err(lua_err)
}

/// `reduce(t, dim?, keepdim?)` for sum and mean.
fn reduce(t: &Tensor, d: Option<i64>, keep: Option<bool>, mean: bool) -> LuaResult<LuaTensor> {
    let r = match d {
        None if mean => t.mean_all(),
        None => t.sum_all(),
        Some(d) => {
            let d = dim(t, d)?;
            match (mean, keep.unwrap_or(false)) {
                (true, true) => t.mean_keepdim(d),
                (true, false) => t.mean(d),
                (false, true) => t.sum_keepdim(d),
                (false, false) => t.sum(d),
            }
        }
    };
    r.map(LuaTensor).map_err(lua_err)
}

impl UserData for LuaTensor {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        for (mm, op) in [
            (MetaMethod::Add, Bin::Add),
            (MetaMethod::Sub, Bin::Sub),
            (MetaMethod::Mul, Bin::Mul),
            (MetaMethod::Div, Bin::Div),
            (MetaMethod::Pow, Bin::Pow),
        ] {
            m.add_meta_function(mm, move |_, (a, b): (Operand, Operand)| binary(a, b, op));
        }
        m.add_meta_method(MetaMethod::Unm, |_, t, ()| {
            t.0.neg().map(LuaTensor).map_err(lua_err)
        });
        m.add_meta_method(MetaMethod::ToString, |_, t, ()| {
            Ok(format!("Tensor{:?}\n{}", t.0.dims(), t.0))
        });
        m.add_meta_method(MetaMethod::Len, |_, t, ()| t.0.dim(0).map_err(lua_err));

        m.add_method("sum", |_, t, (d, k): (Option<i64>, Option<bool>)| {
            reduce(&t.0, d, k, false)
        });
        m.add_method("mean", |_, t, (d, k): (Option<i64>, Option<bool>)| {
            reduce(&t.0, d, k, true)
        });
        m.add_method("max", |_, t, (d, k): (Option<i64>, Option<bool>)| {
            let r = match d {
                None => t.0.max_all(),
                Some(d) if k.unwrap_or(false) => t.0.max_keepdim(dim(&t.0, d)?),
                Some(d) => t.0.max(dim(&t.0, d)?),
            };
            r.map(LuaTensor).map_err(lua_err)
        });
        m.add_method("min", |_, t, (d, k): (Option<i64>, Option<bool>)| {
            let r = match d {
                None => t.0.min_all(),
                Some(d) if k.unwrap_or(false) => t.0.min_keepdim(dim(&t.0, d)?),
                Some(d) => t.0.min(dim(&t.0, d)?),
            };
            r.map(LuaTensor).map_err(lua_err)
        });

        type Unary = fn(&Tensor) -> candle_core::Result<Tensor>;
        let unary: [(&str, Unary); 12] = [
            ("sqr", |t| t.sqr()),
            ("sqrt", |t| t.sqrt()),
            ("exp", |t| t.exp()),
            ("log", |t| t.log()),
            ("abs", |t| t.abs()),
            ("neg", |t| t.neg()),
            ("recip", |t| t.recip()),
            ("tanh", |t| t.tanh()),
            ("relu", |t| t.relu()),
            ("silu", |t| t.silu()),
            // 1 / (1 + e^-x), from primitives so that it has a backward pass.
            ("sigmoid", |t| t.neg()?.exp()?.affine(1.0, 1.0)?.recip()),
            ("detach", |t| Ok(t.detach())),
        ];
        for (name, f) in unary {
            m.add_method(name, move |_, t, ()| {
                f(&t.0).map(LuaTensor).map_err(lua_err)
            });
        }
        m.add_method("clamp", |_, t, (lo, hi): (Option<f64>, Option<f64>)| {
            let mut x = t.0.clone();
            if let Some(lo) = lo {
                x = x.maximum(lo).map_err(lua_err)?;
            }
            if let Some(hi) = hi {
                x = x.minimum(hi).map_err(lua_err)?;
            }
            Ok(LuaTensor(x))
        });
        // Elementwise max / min with a tensor (broadcast) or a number (PPO's clipped ratio).
        type Pair = fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>;
        type WithNumber = fn(&Tensor, f64) -> candle_core::Result<Tensor>;
        let pairs: [(&str, Pair, WithNumber); 2] = [
            (
                "maximum",
                |a, b| a.broadcast_maximum(b),
                |a, n| a.maximum(n),
            ),
            (
                "minimum",
                |a, b| a.broadcast_minimum(b),
                |a, n| a.minimum(n),
            ),
        ];
        for (name, with_tensor, with_number) in pairs {
            m.add_method(name, move |_, t, o: Operand| {
                match o {
                    Operand::T(o) => with_tensor(&t.0, &o),
                    Operand::N(n) => with_number(&t.0, n),
                }
                .map(LuaTensor)
                .map_err(lua_err)
            });
        }
        m.add_method("pow", |_, t, e: f64| {
            t.0.powf(e).map(LuaTensor).map_err(lua_err)
        });
        m.add_method("softmax", |_, t, d: Option<i64>| {
            let d = dim(&t.0, d.unwrap_or(-1))?;
            candle_nn::ops::softmax(&t.0, d)
                .map(LuaTensor)
                .map_err(lua_err)
        });
        m.add_method("log_softmax", |_, t, d: Option<i64>| {
            let d = dim(&t.0, d.unwrap_or(-1))?;
            // x - logsumexp(x), from primitives (differentiable).
            let max = t.0.max_keepdim(d).map_err(lua_err)?.detach();
            let shifted = t.0.broadcast_sub(&max).map_err(lua_err)?;
            let lse = shifted
                .exp()
                .and_then(|e| e.sum_keepdim(d))
                .and_then(|s| s.log())
                .map_err(lua_err)?;
            shifted.broadcast_sub(&lse).map(LuaTensor).map_err(lua_err)
        });
        m.add_method("gt", |_, t, v: f64| mask(t.0.gt(v)));
        m.add_method("ge", |_, t, v: f64| mask(t.0.ge(v)));
        m.add_method("lt", |_, t, v: f64| mask(t.0.lt(v)));
        m.add_method("le", |_, t, v: f64| mask(t.0.le(v)));

        m.add_method("matmul", |_, t, o: LuaTensor| {
            t.0.broadcast_matmul(&o.0).map(LuaTensor).map_err(lua_err)
        });
        m.add_method("reshape", |_, t, args: Variadic<Value>| {
            // One entry may be -1: inferred from the others.
            let raw: Vec<i64> = match args.first() {
                Some(Value::Table(tb)) => tb
                    .clone()
                    .sequence_values::<i64>()
                    .collect::<LuaResult<_>>()?,
                _ => args
                    .iter()
                    .map(|v| match v {
                        Value::Integer(i) => Ok(*i),
                        Value::Number(n) if n.fract() == 0.0 => Ok(*n as i64),
                        other => Err(lua_err(format!(
                            "reshape: sizes are integers, got {other:?}"
                        ))),
                    })
                    .collect::<LuaResult<_>>()?,
            };
            let known: i64 = raw.iter().filter(|&&d| d != -1).product();
            let n = t.0.elem_count() as i64;
            let shape: Vec<usize> = raw
                .iter()
                .map(|&d| {
                    if d == -1 && known > 0 {
                        (n / known) as usize
                    } else {
                        d.max(0) as usize
                    }
                })
                .collect();
            t.0.reshape(shape).map(LuaTensor).map_err(lua_err)
        });
        m.add_method("narrow", |_, t, (d, start, len): (i64, i64, usize)| {
            let d = dim(&t.0, d)?;
            if start < 1 {
                return Err(lua_err("narrow: start is 1-based"));
            }
            t.0.narrow(d, start as usize - 1, len)
                .map(LuaTensor)
                .map_err(lua_err)
        });
        m.add_method("select", |_, t, (d, i): (i64, i64)| {
            let d = dim(&t.0, d)?;
            if i < 1 {
                return Err(lua_err("select: the index is 1-based"));
            }
            t.0.narrow(d, i as usize - 1, 1)
                .and_then(|x| x.squeeze(d))
                .map(LuaTensor)
                .map_err(lua_err)
        });
        m.add_method("index", |_, t, (d, idx): (i64, Value)| {
            let d = dim(&t.0, d)?;
            let ix = indices(idx, t.0.dim(d).map_err(lua_err)?, t.0.device())?;
            t.0.index_select(&ix, d).map(LuaTensor).map_err(lua_err)
        });
        m.add_method("unsqueeze", |_, t, d: i64| {
            // A new axis may go after the last one: allow rank + 1.
            let r = t.0.rank() as i64;
            let z = if d > 0 { d - 1 } else { r + 1 + d };
            if d == 0 || z < 0 || z > r {
                return Err(lua_err(format!(
                    "unsqueeze: dimension {d} out of range for shape {:?}",
                    t.0.dims()
                )));
            }
            t.0.unsqueeze(z as usize).map(LuaTensor).map_err(lua_err)
        });
        m.add_method("squeeze", |_, t, d: i64| {
            t.0.squeeze(dim(&t.0, d)?).map(LuaTensor).map_err(lua_err)
        });
        m.add_method("transpose", |_, t, (a, b): (i64, i64)| {
            t.0.transpose(dim(&t.0, a)?, dim(&t.0, b)?)
                .map(LuaTensor)
                .map_err(lua_err)
        });
        m.add_method("t", |_, t, ()| t.0.t().map(LuaTensor).map_err(lua_err));
        m.add_method("expand", |_, t, args: Variadic<Value>| {
            t.0.broadcast_as(shape_arg(&args)?)
                .map(LuaTensor)
                .map_err(lua_err)
        });
        m.add_method("shape", |lua, t, ()| {
            lua.create_sequence_from(t.0.dims().iter().copied())
        });
        m.add_method("size", |_, t, d: i64| Ok(t.0.dims()[dim(&t.0, d)?]));
        m.add_method("dim", |_, t, ()| Ok(t.0.rank()));
        m.add_method("numel", |_, t, ()| Ok(t.0.elem_count()));
        m.add_method("item", |_, t, ()| {
            if t.0.elem_count() != 1 {
                return Err(lua_err(format!(
                    "item() needs a tensor with one element, this one has shape {:?}",
                    t.0.dims()
                )));
            }
            t.0.flatten_all()
                .and_then(|x| x.to_dtype(DType::F64))
                .and_then(|x| x.to_vec1::<f64>())
                .map(|v| v[0])
                .map_err(lua_err)
        });
        m.add_method("totable", |lua, t, ()| to_table(lua, &t.0));
    }
}

/// The global `tensor` table: constructors and functions of several tensors.
pub fn module(lua: &Lua) -> LuaResult<LuaTable> {
    let m = lua.create_table()?;
    m.set(
        "randn",
        lua.create_function(|lua, args: Variadic<Value>| {
            let e = env(lua)?;
            let shape = shape_arg(&args)?;
            let mut rng = e.rng.lock().unwrap();
            crate::rng::randn(&mut rng, shape, &e.device)
                .map(LuaTensor)
                .map_err(lua_err)
        })?,
    )?;
    m.set(
        "zeros",
        lua.create_function(|lua, args: Variadic<Value>| {
            Tensor::zeros(shape_arg(&args)?, crate::DTYPE, &env(lua)?.device)
                .map(LuaTensor)
                .map_err(lua_err)
        })?,
    )?;
    m.set(
        "ones",
        lua.create_function(|lua, args: Variadic<Value>| {
            Tensor::ones(shape_arg(&args)?, crate::DTYPE, &env(lua)?.device)
                .map(LuaTensor)
                .map_err(lua_err)
        })?,
    )?;
    m.set(
        "full",
        lua.create_function(|lua, (shape, v): (LuaTable, f64)| {
            let shape = shape_arg(&Variadic::from_iter([Value::Table(shape)]))?;
            Tensor::full(v as f32, shape, &env(lua)?.device)
                .map(LuaTensor)
                .map_err(lua_err)
        })?,
    )?;
    m.set(
        "from",
        lua.create_function(|lua, t: LuaTable| from_table(&t, &env(lua)?.device).map(LuaTensor))?,
    )?;
    m.set(
        "cat",
        lua.create_function(|_, (list, d): (Vec<LuaTensor>, Option<i64>)| {
            let first = list
                .first()
                .ok_or_else(|| lua_err("tensor.cat needs at least one tensor"))?;
            let d = dim(&first.0, d.unwrap_or(1))?;
            let ts: Vec<Tensor> = list.iter().map(|t| t.0.clone()).collect();
            Tensor::cat(&ts, d).map(LuaTensor).map_err(lua_err)
        })?,
    )?;
    m.set(
        "stack",
        lua.create_function(|_, (list, d): (Vec<LuaTensor>, Option<i64>)| {
            let first = list
                .first()
                .ok_or_else(|| lua_err("tensor.stack needs at least one tensor"))?;
            let r = first.0.rank() as i64;
            let d = d.unwrap_or(1);
            let z = if d > 0 { d - 1 } else { r + 1 + d };
            let ts: Vec<Tensor> = list.iter().map(|t| t.0.clone()).collect();
            Tensor::stack(&ts, z.max(0) as usize)
                .map(LuaTensor)
                .map_err(lua_err)
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
