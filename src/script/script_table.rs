//! The table an experiment script returns: the hooks it must and may define, and the only
//! keys it may hold besides them (`config`, `name`, `description`), so that a misspelt hook
//! is an error rather than a hook that never runs.

use super::messages::clip;
use anyhow::{bail, Result};
use mlua::prelude::*;
use mlua::Value;

/// Hooks every script must define, with what they receive and return.
pub const REQUIRED_HOOKS: &[(&str, &str)] = &[
    ("reward", "function(x0, cond, config) -> tensor [B]"),
    (
        "loss",
        "function(batch, ctx) -> scalar tensor[, table of numbers to log]",
    ),
];
/// Hooks a script may define: `discount(k, config)` and `priority(state, config)` (default:
/// lua/sqdf.lua's, γ^k and max(r, 0) γ^k, Eq. 15 and Appendix E.1; methods that neither
/// discount nor prioritise need not say so), `buffer_reward(x0, cond, config)`, the reward
/// stored with each sampled trajectory (default: `reward`; a black-box script may store
/// oracle labels), and `on_epoch_end(metrics, config)`.
pub const OPTIONAL_HOOKS: &[&str] = &["discount", "priority", "buffer_reward", "on_epoch_end"];
const OTHER_KEYS: &[&str] = &["config", "name", "description"];

/// Fails, naming the script (`origin`), if `table` holds a key that is not a hook or one
/// of `OTHER_KEYS`.
pub(super) fn check_keys(origin: &str, table: &LuaTable) -> Result<()> {
    for pair in table.clone().pairs::<Value, Value>() {
        let (k, _) = pair?;
        let key = match &k {
            Value::String(s) => s.to_str()?.to_string(),
            other => bail!(
                "{origin}: the returned table has a non-string key ({})",
                other.type_name()
            ),
        };
        let key = clip(key);
        let known = REQUIRED_HOOKS.iter().any(|(h, _)| *h == key)
            || OPTIONAL_HOOKS.contains(&key.as_str())
            || OTHER_KEYS.contains(&key.as_str());
        if !known {
            bail!(
                "{origin}: unknown key `{key}` in the returned table; expected config, {}, {}",
                hook_names(),
                OPTIONAL_HOOKS.join(", ")
            );
        }
    }
    Ok(())
}

/// The required hooks, as a message lists them: "reward, loss".
pub(super) fn hook_names() -> String {
    REQUIRED_HOOKS
        .iter()
        .map(|(h, _)| *h)
        .collect::<Vec<_>>()
        .join(", ")
}
