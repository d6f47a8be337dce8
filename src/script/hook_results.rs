//! What hooks return, checked before the framework uses it: `loss`'s scalar tensor and its
//! table of numbers to log (so many entries, names so long: they go into every metrics
//! line), `discount`'s and `priority`'s numbers; and a Lua value as an error message says
//! what a hook returned instead.

use super::tensor::LuaTensor;
use anyhow::{bail, Result};
use candle_core::Tensor;
use mlua::prelude::*;
use mlua::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// What `loss` returned: the scalar to minimise and the numbers it asked to log.
pub struct LossOutput {
    pub loss: Tensor,
    pub stats: BTreeMap<String, f64>,
}

/// `loss`'s return values (`out`) as a `LossOutput`, or an error naming the script
/// (`origin`) and saying what the hook returned.
pub(super) fn loss_output(origin: &str, out: LuaMultiValue) -> Result<LossOutput> {
    let mut it = out.into_iter();
    let loss = match it.next() {
        Some(Value::UserData(u)) if u.is::<LuaTensor>() => u.borrow::<LuaTensor>()?.0.clone(),
        other => bail!(
            "{}: hook `loss` returned {}, expected a scalar tensor",
            origin,
            other.as_ref().map(show).unwrap_or_else(|| "nothing".into())
        ),
    };
    if loss.elem_count() != 1 {
        bail!(
            "{}: hook `loss` returned a tensor of shape {:?}, expected a scalar (reduce it with :mean())",
            origin,
            loss.dims()
        );
    }
    let loss = loss.reshape(())?;
    let mut stats = BTreeMap::new();
    match it.next() {
        None | Some(Value::Nil) => {}
        Some(Value::Table(t)) => {
            for pair in t.pairs::<String, Value>() {
                let (k, v) = pair?;
                check_stat(origin, "loss", stats.len() + 1, &k)?;
                let x = match v {
                    Value::Integer(i) => i as f64,
                    Value::Number(n) => n,
                    Value::UserData(u) if u.is::<LuaTensor>() => {
                        let t = u.borrow::<LuaTensor>()?.0.clone();
                        t.to_dtype(candle_core::DType::F64)?
                            .mean_all()?
                            .to_scalar::<f64>()?
                    }
                    other => bail!(
                        "{}: hook `loss`: stat `{k}` is {}, expected a number",
                        origin,
                        show(&other)
                    ),
                };
                stats.insert(k, x);
            }
        }
        Some(other) => bail!(
            "{}: hook `loss` returned {} as its second value, expected a table of numbers",
            origin,
            show(&other)
        ),
    }
    Ok(LossOutput { loss, stats })
}

/// What `discount` returned for step `k` of the script at `path`: a finite number.
pub(super) fn discount_value(path: &Path, k: usize, v: Value) -> Result<f64> {
    match v {
        Value::Integer(i) => Ok(i as f64),
        Value::Number(n) if n.is_finite() => Ok(n),
        other => bail!(
            "{}: hook `discount` returned {} for k = {k}, expected a finite number",
            path.display(),
            show(&other)
        ),
    }
}

/// What `priority` returned for a buffer state (its reward, its step k): a finite number
/// >= 0.
pub(super) fn priority_value(path: &Path, reward: f32, k: usize, v: Value) -> Result<f64> {
    match v {
        Value::Integer(i) if i >= 0 => Ok(i as f64),
        Value::Number(n) if n.is_finite() && n >= 0.0 => Ok(n),
        other => bail!(
            "{}: hook `priority` returned {} (reward {reward}, k {k}), expected a finite number >= 0",
            path.display(),
            show(&other)
        ),
    }
}

/// Entries a hook may return in a table of numbers to log (`loss`'s stats,
/// `on_epoch_end`), and the length of their names: they go into every metrics line.
const MAX_STATS: usize = 256;
const MAX_STAT_NAME: usize = 100;

pub(super) fn check_stat(origin: &str, hook: &str, n: usize, key: &str) -> Result<()> {
    if n > MAX_STATS {
        bail!("{origin}: hook `{hook}` returned more than {MAX_STATS} numbers to log");
    }
    if key.len() > MAX_STAT_NAME {
        bail!(
            "{origin}: hook `{hook}`: the name of a number to log is longer than {MAX_STAT_NAME} bytes"
        );
    }
    Ok(())
}

/// A Lua value as a message says it: "the string \"abc\"", "a tensor of shape [4]".
pub(super) fn show(v: &Value) -> String {
    match v {
        Value::Nil => "nil".into(),
        Value::Boolean(b) => format!("{b}"),
        Value::Integer(i) => format!("{i}"),
        Value::Number(n) => format!("{n}"),
        Value::String(s) => {
            let text = s.to_string_lossy();
            if text.chars().count() > 80 {
                let head: String = text.chars().take(80).collect();
                format!("the string {head:?}... ({} bytes)", text.len())
            } else {
                format!("the string {text:?}")
            }
        }
        Value::UserData(u) if u.is::<LuaTensor>() => match u.borrow::<LuaTensor>() {
            Ok(t) => format!("a tensor of shape {:?}", t.0.dims()),
            Err(_) => "a tensor".into(),
        },
        other => format!("a {}", other.type_name()),
    }
}
