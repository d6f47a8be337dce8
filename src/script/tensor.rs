//! Tensors in Lua: a userdata over a candle `Tensor`. Every operation is a candle op, so
//! autograd runs through expressions a script builds. Dimensions are 1-based as in Lua
//! and torch7 (`t:sum(1)` sums over the first dimension; -1 is the last).
//!
//! This file holds the userdata type and its accounting under the sandbox's limits
//! (docs/scripting.md, "The sandbox"); its methods are in tensor_methods.rs and
//! tensor_arithmetic.rs, the global `tensor` table in tensor_module.rs, the checks of shapes
//! and costs in tensor_checks.rs, conversions to and from Lua tables in tensor_tables.rs.
//!
//! Every op that makes a tensor first checks what it will allocate against the sandbox's
//! limits (`Limits::admit`: a cap per tensor and one on the bytes the script's tensors hold
//! alive) and what it will cost (a FLOP cap on matrix products; element counts elsewhere
//! are bounded by the per-tensor cap). The tensor it makes carries a `Charge` on the live
//! count that the last handle releases: a view keeps the charge of the tensor it views, a
//! tensor in an autograd graph those of its inputs (the graph holds them).

use super::limits::Limits;
use super::messages::lua_err;
use super::tensor_checks::elems;
use super::tensor_memory::Charge;
use crate::rng::SharedRng;
use candle_core::{DType, Device, Tensor};
use mlua::prelude::*;
use mlua::Value;
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

pub(super) fn conv_err(from: &'static str, to: &str) -> LuaError {
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

/// One tensor operation under the sandbox's limits.
pub struct Op {
    limits: Limits,
    /// What the op is called in its errors: "matmul", "tensor.randn".
    pub(super) name: &'static str,
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
    pub(super) fn same_shape(
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
    pub(super) fn view(
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

    pub(super) fn limits(&self) -> &Limits {
        &self.limits
    }
}

pub(super) fn env(lua: &Lua) -> LuaResult<TensorEnv> {
    lua.app_data_ref::<TensorEnv>()
        .map(|e| e.clone())
        .ok_or_else(|| lua_err("no tensor environment in this Lua state"))
}

/// The RNG, even if a panic elsewhere poisoned its lock (its state stays valid).
pub fn lock_rng(rng: &SharedRng) -> std::sync::MutexGuard<'_, crate::rng::Rng> {
    rng.lock().unwrap_or_else(|e| e.into_inner())
}
