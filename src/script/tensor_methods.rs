//! The methods of a tensor in Lua (`t:sum()`, `t:matmul(o)`, `t:reshape(...)`, ...): the
//! `UserData` implementation of `LuaTensor`, with its arithmetic metamethods
//! (tensor_arithmetic.rs). Each method admits what it will allocate and cost under the
//! sandbox's limits (docs/scripting.md, "The sandbox") before candle runs.

use super::messages::lua_err;
use super::tensor::{run, LuaTensor, Op};
use super::tensor_arithmetic::{binary, Bin, Operand};
use super::tensor_checks::{broadcast, dim, elems, float, matmul_shape, reshape_dims, shape_arg};
use super::tensor_tables::{indices, to_table};
use candle_core::{DType, Tensor};
use mlua::prelude::*;
use mlua::{MetaMethod, UserData, UserDataMethods, Value, Variadic};

/// `reduce(t, dim?, keepdim?)` for sum and mean.
fn reduce(
    lua: &Lua,
    t: &LuaTensor,
    d: Option<i64>,
    keep: Option<bool>,
    mean: bool,
) -> LuaResult<LuaTensor> {
    let op = Op::start(lua, if mean { "mean" } else { "sum" })?;
    let x = &t.0;
    let out_elems = match d {
        None => 1,
        Some(d) => x.elem_count() / x.dims()[dim(x, d)?].max(1),
    };
    op.admit(lua, &[out_elems as u128], x.dtype())?;
    let out = run(op.name, || match d {
        None if mean => x.mean_all(),
        None => x.sum_all(),
        Some(d) => {
            let d = dim(x, d).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            match (mean, keep.unwrap_or(false)) {
                (true, true) => x.mean_keepdim(d),
                (true, false) => x.mean(d),
                (false, true) => x.sum_keepdim(d),
                (false, false) => x.sum(d),
            }
        }
    })?;
    op.wrap(out, &[t])
}

/// `max` and `min`, over all elements or along a dimension.
fn extreme(
    lua: &Lua,
    t: &LuaTensor,
    d: Option<i64>,
    keep: Option<bool>,
    max: bool,
) -> LuaResult<LuaTensor> {
    let op = Op::start(lua, if max { "max" } else { "min" })?;
    let x = &t.0;
    let d = d.map(|d| dim(x, d)).transpose()?;
    let out_elems = d.map_or(1, |d| x.elem_count() / x.dims()[d].max(1));
    op.admit(lua, &[out_elems as u128], x.dtype())?;
    let keep = keep.unwrap_or(false);
    let out = run(op.name, || match (d, max) {
        (None, true) => x.max_all(),
        (None, false) => x.min_all(),
        (Some(d), true) if keep => x.max_keepdim(d),
        (Some(d), true) => x.max(d),
        (Some(d), false) if keep => x.min_keepdim(d),
        (Some(d), false) => x.min(d),
    })?;
    op.wrap(out, &[t])
}

impl UserData for LuaTensor {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        for (mm, bin) in [
            (MetaMethod::Add, Bin::Add),
            (MetaMethod::Sub, Bin::Sub),
            (MetaMethod::Mul, Bin::Mul),
            (MetaMethod::Div, Bin::Div),
            (MetaMethod::Pow, Bin::Pow),
        ] {
            m.add_meta_function(mm, move |lua, (a, b): (Operand, Operand)| {
                binary(lua, a, b, bin)
            });
        }
        m.add_meta_method(MetaMethod::Unm, |lua, t, ()| {
            let op = Op::start(lua, "unary -")?;
            float(&t.0, "unary -")?;
            op.same_shape(lua, t, 1, |x| x.neg())
        });
        m.add_meta_method(MetaMethod::ToString, |lua, t, ()| {
            Op::start(lua, "tostring")?;
            let text = run("tostring", || Ok(format!("{}", t.0)))?;
            Ok(format!("Tensor{:?}\n{text}", t.0.dims()))
        });
        m.add_meta_method(MetaMethod::Len, |_, t, ()| t.0.dim(0).map_err(lua_err));

        m.add_method("sum", |lua, t, (d, k): (Option<i64>, Option<bool>)| {
            reduce(lua, t, d, k, false)
        });
        m.add_method("mean", |lua, t, (d, k): (Option<i64>, Option<bool>)| {
            float(&t.0, "mean")?;
            reduce(lua, t, d, k, true)
        });
        m.add_method("max", |lua, t, (d, k): (Option<i64>, Option<bool>)| {
            extreme(lua, t, d, k, true)
        });
        m.add_method("min", |lua, t, (d, k): (Option<i64>, Option<bool>)| {
            extreme(lua, t, d, k, false)
        });

        type Unary = fn(&Tensor) -> candle_core::Result<Tensor>;
        // (name, function, temporaries besides the output)
        let unary: [(&'static str, Unary, usize); 11] = [
            ("sqr", |t| t.sqr(), 0),
            ("sqrt", |t| t.sqrt(), 0),
            ("exp", |t| t.exp(), 0),
            ("log", |t| t.log(), 0),
            ("abs", |t| t.abs(), 0),
            ("neg", |t| t.neg(), 0),
            ("recip", |t| t.recip(), 0),
            ("tanh", |t| t.tanh(), 0),
            ("relu", |t| t.relu(), 0),
            ("silu", |t| t.silu(), 0),
            // 1 / (1 + e^-x), from primitives so that it has a backward pass.
            ("sigmoid", |t| t.neg()?.exp()?.affine(1.0, 1.0)?.recip(), 2),
        ];
        for (name, f, temps) in unary {
            m.add_method(name, move |lua, t, ()| {
                let op = Op::start(lua, name)?;
                float(&t.0, name)?;
                op.same_shape(lua, t, 1 + temps, f)
            });
        }
        m.add_method("detach", |lua, t, ()| {
            Op::start(lua, "detach")?.view(t, |x| Ok(x.detach()))
        });
        m.add_method("clamp", |lua, t, (lo, hi): (Option<f64>, Option<f64>)| {
            let op = Op::start(lua, "clamp")?;
            op.same_shape(lua, t, 2, |x| {
                let mut x = x.clone();
                if let Some(lo) = lo {
                    x = x.maximum(lo)?;
                }
                if let Some(hi) = hi {
                    x = x.minimum(hi)?;
                }
                Ok(x)
            })
        });
        // Elementwise max / min with a tensor (broadcast) or a number (PPO's clipped ratio).
        for (name, is_max) in [("maximum", true), ("minimum", false)] {
            m.add_method(name, move |lua, t, o: Operand| {
                let op = Op::start(lua, name)?;
                match o {
                    Operand::T(o) => {
                        let shape = broadcast(&t.0, &o.0, name)?;
                        op.admit_dims(lua, shape.dims(), t.0.dtype())?;
                        let out = run(name, || {
                            if is_max {
                                t.0.broadcast_maximum(&o.0)
                            } else {
                                t.0.broadcast_minimum(&o.0)
                            }
                        })?;
                        op.wrap(out, &[t, &o])
                    }
                    Operand::N(n) => {
                        op.same_shape(
                            lua,
                            t,
                            2,
                            |x| {
                                if is_max {
                                    x.maximum(n)
                                } else {
                                    x.minimum(n)
                                }
                            },
                        )
                    }
                }
            });
        }
        m.add_method("pow", |lua, t, e: f64| {
            let op = Op::start(lua, "pow")?;
            float(&t.0, "pow")?;
            op.same_shape(lua, t, 1, |x| x.powf(e))
        });
        m.add_method("softmax", |lua, t, d: Option<i64>| {
            let op = Op::start(lua, "softmax")?;
            float(&t.0, "softmax")?;
            let d = dim(&t.0, d.unwrap_or(-1))?;
            op.same_shape(lua, t, 3, |x| candle_nn::ops::softmax(x, d))
        });
        m.add_method("log_softmax", |lua, t, d: Option<i64>| {
            let op = Op::start(lua, "log_softmax")?;
            float(&t.0, "log_softmax")?;
            let d = dim(&t.0, d.unwrap_or(-1))?;
            // x - logsumexp(x), from primitives (differentiable).
            op.same_shape(lua, t, 3, |x| {
                let max = x.max_keepdim(d)?.detach();
                let shifted = x.broadcast_sub(&max)?;
                let lse = shifted.exp()?.sum_keepdim(d)?.log()?;
                shifted.broadcast_sub(&lse)
            })
        });
        type Cmp = fn(&Tensor, f64) -> candle_core::Result<Tensor>;
        let cmps: [(&'static str, Cmp); 4] = [
            ("gt", |t, v| t.gt(v)),
            ("ge", |t, v| t.ge(v)),
            ("lt", |t, v| t.lt(v)),
            ("le", |t, v| t.le(v)),
        ];
        for (name, f) in cmps {
            m.add_method(name, move |lua, t, v: f64| {
                let op = Op::start(lua, name)?;
                op.admit(lua, &[t.0.elem_count() as u128; 2], crate::DTYPE)?;
                let out = run(name, || f(&t.0, v).and_then(|m| m.to_dtype(crate::DTYPE)))?;
                op.wrap(out, &[t])
            });
        }

        m.add_method("matmul", |lua, t, o: LuaTensor| {
            let op = Op::start(lua, "matmul")?;
            if let Some((shape, flops, operands)) = matmul_shape(&t.0, &o.0)? {
                op.limits().check_flops(flops, "matmul")?;
                let out = elems(&shape).unwrap_or(u128::MAX);
                op.admit(lua, &[out, operands], t.0.dtype())?;
            }
            let out = run("matmul", || t.0.broadcast_matmul(&o.0))?;
            op.wrap(out, &[t, &o])
        });
        m.add_method("reshape", |lua, t, args: Variadic<Value>| {
            let op = Op::start(lua, "reshape")?;
            let shape = reshape_dims(&args, t.0.elem_count())?;
            if !t.0.is_contiguous() {
                op.admit_like(lua, &t.0, 1)?;
            }
            op.view(t, |x| x.reshape(shape))
        });
        m.add_method("narrow", |lua, t, (d, start, len): (i64, i64, i64)| {
            let op = Op::start(lua, "narrow")?;
            let d = dim(&t.0, d)?;
            let size = t.0.dims()[d];
            let ok = start >= 1
                && len >= 0
                && (start as u128 - 1) + len as u128 <= size as u128;
            if !ok {
                return Err(lua_err(format!(
                    "narrow: start {start} (1-based) and length {len} do not fit dimension {} of size {size}",
                    d + 1
                )));
            }
            op.view(t, |x| x.narrow(d, start as usize - 1, len as usize))
        });
        m.add_method("select", |lua, t, (d, i): (i64, i64)| {
            let op = Op::start(lua, "select")?;
            let d = dim(&t.0, d)?;
            let size = t.0.dims()[d];
            if i < 1 || i as u128 > size as u128 {
                return Err(lua_err(format!(
                    "select: index {i} is out of range 1..{size} (1-based)"
                )));
            }
            op.view(t, |x| x.narrow(d, i as usize - 1, 1)?.squeeze(d))
        });
        m.add_method("index", |lua, t, (d, idx): (i64, Value)| {
            let op = Op::start(lua, "index")?;
            let d = dim(&t.0, d)?;
            let ix = indices(lua, &op, idx, t.0.dims()[d], t.0.device())?;
            let row = t.0.elem_count() / t.0.dims()[d].max(1);
            op.admit(
                lua,
                &[(ix.elem_count() as u128).saturating_mul(row as u128)],
                t.0.dtype(),
            )?;
            let out = run("index", || t.0.index_select(&ix, d))?;
            op.wrap(out, &[t])
        });
        m.add_method("unsqueeze", |lua, t, d: i64| {
            let op = Op::start(lua, "unsqueeze")?;
            // A new axis may go after the last one: allow rank + 1.
            let r = t.0.rank() as i64;
            let z = if d > 0 { d - 1 } else { r + 1 + d };
            if d == 0 || z < 0 || z > r || r >= 32 {
                return Err(lua_err(format!(
                    "unsqueeze: dimension {d} out of range for shape {:?}",
                    t.0.dims()
                )));
            }
            op.view(t, |x| x.unsqueeze(z as usize))
        });
        m.add_method("squeeze", |lua, t, d: i64| {
            let op = Op::start(lua, "squeeze")?;
            let d = dim(&t.0, d)?;
            op.view(t, |x| x.squeeze(d))
        });
        m.add_method("transpose", |lua, t, (a, b): (i64, i64)| {
            let op = Op::start(lua, "transpose")?;
            let (a, b) = (dim(&t.0, a)?, dim(&t.0, b)?);
            op.view(t, |x| x.transpose(a, b))
        });
        m.add_method("t", |lua, t, ()| Op::start(lua, "t")?.view(t, |x| x.t()));
        m.add_method("expand", |lua, t, args: Variadic<Value>| {
            let op = Op::start(lua, "expand")?;
            let shape = shape_arg(&args)?;
            // A view, but every op on it reads all its elements: the per-tensor cap.
            let bytes = elems(&shape)
                .unwrap_or(u128::MAX)
                .saturating_mul(t.0.dtype().size_in_bytes() as u128);
            op.limits()
                .admit(lua, 0, u64::try_from(bytes).unwrap_or(u64::MAX), "expand")?;
            op.view(t, |x| x.broadcast_as(shape))
        });
        m.add_method("shape", |lua, t, ()| {
            lua.create_sequence_from(t.0.dims().iter().copied())
        });
        m.add_method("size", |_, t, d: i64| Ok(t.0.dims()[dim(&t.0, d)?]));
        m.add_method("dim", |_, t, ()| Ok(t.0.rank()));
        m.add_method("numel", |_, t, ()| Ok(t.0.elem_count()));
        m.add_method("item", |lua, t, ()| {
            Op::start(lua, "item")?;
            if t.0.elem_count() != 1 {
                return Err(lua_err(format!(
                    "item() needs a tensor with one element, this one has shape {:?}",
                    t.0.dims()
                )));
            }
            run("item", || {
                t.0.flatten_all()
                    .and_then(|x| x.to_dtype(DType::F64))
                    .and_then(|x| x.to_vec1::<f64>())
            })?
            .first()
            .copied()
            .ok_or_else(|| lua_err("item(): empty tensor"))
        });
        m.add_method("totable", |lua, t, ()| to_table(lua, &t.0));
    }
}
