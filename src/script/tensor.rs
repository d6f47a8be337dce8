//! Tensors in Lua: a userdata over a candle `Tensor`. Every operation is a candle op, so
//! autograd runs through expressions a script builds. Dimensions are 1-based as in Lua
//! and torch7 (`t:sum(1)` sums over the first dimension; -1 is the last).
//!
//! Every op that makes a tensor first checks what it will allocate against the sandbox's
//! limits (`Limits::admit`: a cap per tensor and one on the bytes the script's tensors hold
//! alive) and what it will cost (a FLOP cap on matrix products; element counts elsewhere
//! are bounded by the per-tensor cap). The tensor it makes carries a `Charge` on the live
//! count that the last handle releases: a view keeps the charge of the tensor it views, a
//! tensor in an autograd graph those of its inputs (the graph holds them).

use super::limits::Limits;
use super::messages::{lua_err, show_bytes};
use super::tensor_memory::Charge;
use crate::rng::SharedRng;
use candle_core::{DType, Device, Shape, Tensor};
use mlua::prelude::*;
use mlua::{MetaMethod, UserData, UserDataMethods, Value, Variadic};
use std::sync::Arc;

/// A candle tensor owned by Lua, with its charge on the sandbox's tensor memory (None for
/// the framework's tensors a script is handed: `batch.x`, `x0`, ...).
#[derive(Clone, Debug)]
pub struct LuaTensor(pub Tensor, pub Option<Arc<Charge>>);

impl LuaTensor {
    /// A tensor the framework hands a script (its memory is the framework's).
    pub fn new(t: Tensor) -> Self {
        LuaTensor(t, None)
    }
}

impl From<Tensor> for LuaTensor {
    fn from(t: Tensor) -> Self {
        LuaTensor::new(t)
    }
}

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

/// The run's device and RNG, which tensor constructors in Lua use.
#[derive(Clone)]
pub struct TensorEnv {
    pub device: Device,
    pub rng: SharedRng,
}

/// Bytes counted for each tensor besides its data (candle's tensor and layout).
const OVERHEAD: u64 = 256;

/// The longest chain of tensors a script may build, each holding the one before (through
/// its autograd graph or its storage): dropping or differentiating a chain recurses.
pub const MAX_DEPTH: usize = 10_000;

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

fn storage_id(t: &Tensor) -> usize {
    let (s, _) = t.storage_and_layout();
    std::ptr::from_ref(&*s).addr()
}

/// Runs a candle op, turning a panic inside candle into an error.
pub fn run<T>(name: &str, f: impl FnOnce() -> candle_core::Result<T>) -> LuaResult<T> {
    run_lua(name, || f().map_err(lua_err))
}

/// `run` for a function that fails with a Lua error (a model call).
pub fn run_lua<T>(name: &str, f: impl FnOnce() -> LuaResult<T>) -> LuaResult<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            Err(lua_err(format!("{name}: internal error ({msg})")))
        }
    }
}

/// Refuses integer tensors where candle has only float kernels.
fn float(t: &Tensor, name: &str) -> LuaResult<()> {
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

/// One tensor operation under the sandbox's limits.
pub struct Op {
    limits: Limits,
    name: &'static str,
}

impl Op {
    /// Checks the call's time before the op.
    pub fn start(lua: &Lua, name: &'static str) -> LuaResult<Op> {
        let limits = Limits::of(lua)?;
        limits.check()?;
        Ok(Op { limits, name })
    }

    /// Admits new tensors of `counts` elements of `dtype` (the first is the output, the
    /// others temporaries): refused over the per-tensor cap or the live limit.
    pub fn admit(&self, lua: &Lua, counts: &[u128], dtype: DType) -> LuaResult<()> {
        let size = dtype.size_in_bytes() as u128;
        let bytes: Vec<u64> = counts
            .iter()
            .map(|&n| u64::try_from(n.saturating_mul(size)).unwrap_or(u64::MAX))
            .collect();
        let total = bytes.iter().fold(0u64, |a, &b| a.saturating_add(b));
        let one = bytes.iter().copied().max().unwrap_or(0);
        self.limits.admit(lua, total, one, self.name)
    }

    /// Admits a new tensor of shape `dims`.
    pub fn admit_dims(&self, lua: &Lua, dims: &[usize], dtype: DType) -> LuaResult<()> {
        let n = elems(dims).ok_or_else(|| {
            lua_err(format!(
                "{}: the shape {dims:?} has more elements than a number can hold",
                self.name
            ))
        })?;
        self.admit(lua, &[n], dtype)
    }

    /// Admits `k` new tensors shaped like `t`.
    pub fn admit_like(&self, lua: &Lua, t: &Tensor, k: usize) -> LuaResult<()> {
        self.admit(lua, &vec![t.elem_count() as u128; k], t.dtype())
    }

    /// The op's result as a Lua tensor with its charge.
    pub fn made(
        &self,
        out: candle_core::Result<Tensor>,
        inputs: &[&LuaTensor],
    ) -> LuaResult<LuaTensor> {
        let out = out.map_err(lua_err)?;
        self.wrap(out, inputs)
    }

    pub fn wrap(&self, out: Tensor, inputs: &[&LuaTensor]) -> LuaResult<LuaTensor> {
        let id = storage_id(&out);
        let viewed = inputs.iter().find(|i| storage_id(&i.0) == id);
        let storage = viewed.and_then(|i| i.1.as_ref().map(|c| c.storage_owner()));
        let bytes = if viewed.is_some() {
            OVERHEAD
        } else {
            (out.elem_count() as u64)
                .saturating_mul(out.dtype().size_in_bytes() as u64)
                .saturating_add(OVERHEAD)
        };
        let parents: Vec<Arc<Charge>> = if out.track_op() {
            inputs.iter().filter_map(|i| i.1.clone()).collect()
        } else {
            Vec::new()
        };
        let charge = self.limits.charge(bytes, parents, storage);
        if charge.depth > MAX_DEPTH {
            return Err(lua_err(format!(
                "{}: a chain of more than {MAX_DEPTH} tensors, each holding the one before (an autograd graph built in a loop?); detach() what need not be differentiated",
                self.name
            )));
        }
        Ok(LuaTensor(out, Some(charge)))
    }

    /// `made` for an op that makes a tensor shaped like its input `t` (checked before).
    fn same_shape(
        &self,
        lua: &Lua,
        t: &LuaTensor,
        k: usize,
        f: impl FnOnce(&Tensor) -> candle_core::Result<Tensor>,
    ) -> LuaResult<LuaTensor> {
        self.admit_like(lua, &t.0, k)?;
        let out = run(self.name, || f(&t.0))?;
        self.wrap(out, &[t])
    }

    /// An op that makes no new storage (a view).
    fn view(
        &self,
        t: &LuaTensor,
        f: impl FnOnce(&Tensor) -> candle_core::Result<Tensor>,
    ) -> LuaResult<LuaTensor> {
        let out = run(self.name, || f(&t.0))?;
        self.wrap(out, &[t])
    }

    /// A charge of `bytes` for something the op made that is not a tensor (a batch).
    pub fn charge_bytes(&self, bytes: u64) -> Arc<Charge> {
        self.limits.charge(bytes, Vec::new(), None)
    }

    fn limits(&self) -> &Limits {
        &self.limits
    }
}

/// Either operand of an arithmetic metamethod.
enum Operand {
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
enum Bin {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
}

impl Bin {
    fn name(self) -> &'static str {
        match self {
            Bin::Add => "tensor +",
            Bin::Sub => "tensor -",
            Bin::Mul => "tensor *",
            Bin::Div => "tensor /",
            Bin::Pow => "tensor ^",
        }
    }
}

/// The shape two tensors broadcast to.
fn broadcast(a: &Tensor, b: &Tensor, name: &'static str) -> LuaResult<Shape> {
    a.shape()
        .broadcast_shape_binary_op(b.shape(), name)
        .map_err(lua_err)
}

fn binary(lua: &Lua, a: Operand, b: Operand, bin: Bin) -> LuaResult<LuaTensor> {
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

/// Elements a shape given in Lua may have before the sandbox's byte caps apply (2^40):
/// anything larger is a typo.
pub const MAX_ELEMENTS: usize = 1 << 40;

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

fn env(lua: &Lua) -> LuaResult<TensorEnv> {
    lua.app_data_ref::<TensorEnv>()
        .map(|e| e.clone())
        .ok_or_else(|| lua_err("no tensor environment in this Lua state"))
}

/// The RNG, even if a panic elsewhere poisoned its lock (its state stays valid).
pub fn lock_rng(rng: &SharedRng) -> std::sync::MutexGuard<'_, crate::rng::Rng> {
    rng.lock().unwrap_or_else(|e| e.into_inner())
}

/// Indices from a Lua table of 1-based integers or from a tensor of 1-based indices.
fn indices(lua: &Lua, op: &Op, v: Value, len: usize, device: &Device) -> LuaResult<Tensor> {
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
fn from_table(lua: &Lua, op: &Op, t: &LuaTable, device: &Device) -> LuaResult<Tensor> {
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
fn to_table(lua: &Lua, t: &Tensor) -> LuaResult<Value> {
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

/// The sizes `reshape` asks for: one may be -1 (inferred), the product must be the
/// tensor's element count.
fn reshape_dims(args: &Variadic<Value>, n: usize) -> LuaResult<Vec<usize>> {
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
fn matmul_shape(a: &Tensor, b: &Tensor) -> LuaResult<Option<(Vec<usize>, u128, u128)>> {
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
