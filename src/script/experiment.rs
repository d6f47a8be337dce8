//! An experiment script: the table it returns (`config` and the hooks), loaded into its own
//! sandboxed state, with every hook call checked for the type and shape it must return
//! (the table's keys in script_table.rs, what hooks return in hook_results.rs).

use super::config::RunConfig;
use super::context::LossContext;
use super::hook_results::{check_stat, discount_value, loss_output, priority_value, LossOutput};
use super::limits::Limits;
use super::messages::{describe_with, show_bytes};
use super::require::Required;
use super::reward_hook::{a, call_reward, call_reward_hook};
use super::sandbox::{eval_chunk, new_state, top_level, SandboxOptions};
use super::script_table::{check_keys, hook_names};
use super::tensor::{LuaTensor, Op};
use anyhow::{anyhow, bail, Result};
use candle_core::Tensor;
use mlua::prelude::*;
use mlua::Value;
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `describe` as `experiment::describe`, where the CLI names it.
pub use super::messages::describe;
/// The hooks as `experiment::REQUIRED_HOOKS` and `OPTIONAL_HOOKS`, where the tests name them.
pub use super::script_table::{OPTIONAL_HOOKS, REQUIRED_HOOKS};

/// Seed of the RNG a script's top-level code draws from while it loads: every load of the
/// same source (a reload, a resume) builds the same values.
pub const LOAD_SEED: u64 = 0x10ad;

/// A differentiable function of a tensor that a task offers scripts (a reward model, say).
/// A reward the task offers scripts: x0 [B, ...] and, for rewards that read the prompt
/// (a CLIP score), the condition ids [B].
pub type TensorFn =
    std::sync::Arc<dyn Fn(&Tensor, Option<&Tensor>) -> candle_core::Result<Tensor> + Send + Sync>;

pub struct Script {
    pub path: PathBuf,
    pub lua: Lua,
    pub config: RunConfig,
    /// `config` as hooks see it (defaults filled in).
    pub config_table: LuaTable,
    reward: LuaFunction,
    loss: LuaFunction,
    discount: LuaFunction,
    priority: LuaFunction,
    buffer_reward: Option<LuaFunction>,
    on_epoch_end: Option<LuaFunction>,
    /// The script and every file it required from disk, with the source that was loaded.
    pub sources: Vec<(PathBuf, String)>,
    limits: Limits,
    priority_arg: LuaTable,
}

impl Script {
    /// Loads `path` into a fresh sandbox and checks its table: a clear error naming the file
    /// (and line, for Lua errors) if anything is missing or malformed.
    pub fn load(
        path: &Path,
        overrides: &[(String, Json)],
        opts: &SandboxOptions,
    ) -> Result<Script> {
        let given = opts.sources.as_ref().and_then(|s| s.get(path)).cloned();
        let src = match given {
            Some(src) => src,
            None => read_source(path, opts.memory_limit)?,
        };
        let origin = path.display().to_string();
        let (lua, limits, required) = new_state(opts)?;
        // Top-level randomness (`local W = tensor.randn(...)`) is the same at every load.
        lua.set_app_data(super::TensorEnv {
            device: opts.tensors.device.clone(),
            rng: crate::rng::shared(LOAD_SEED),
        });
        // Reading the returned table (its metamethods) counts as top-level code too.
        top_level(&limits, &origin, || {
            Self::load_in(path, &origin, src, overrides, lua, &limits, &required)
        })
    }

    fn load_in(
        path: &Path,
        origin: &str,
        src: String,
        overrides: &[(String, Json)],
        lua: Lua,
        limits: &Limits,
        required: &Required,
    ) -> Result<Script> {
        let value = eval_chunk(&lua, limits, origin, &src)?;
        let Value::Table(table) = value else {
            bail!(
                "{origin} must return a table with `config` and the hooks {}, it returned {}",
                hook_names(),
                a(value.type_name())
            )
        };
        check_keys(origin, &table)?;
        let cfg_table: Option<LuaTable> = match table.get::<Value>("config")? {
            Value::Nil => None,
            Value::Table(t) => Some(t),
            other => bail!(
                "{origin}: `config` must be a table, got {}",
                a(other.type_name())
            ),
        };
        let config = RunConfig::from_lua(cfg_table.as_ref(), overrides, origin)?;
        let hook = |name: &str, what: &str| -> Result<LuaFunction> {
            match table.get::<Value>(name)? {
                Value::Function(f) => Ok(f),
                Value::Nil => bail!("{origin}: missing hook `{name}`: {what}"),
                other => bail!(
                    "{origin}: hook `{name}` must be a function ({what}), got {}",
                    a(other.type_name())
                ),
            }
        };
        let hooks: Vec<LuaFunction> = REQUIRED_HOOKS
            .iter()
            .map(|(n, what)| hook(n, what))
            .collect::<Result<_>>()?;
        let optional = |name: &str| -> Result<Option<LuaFunction>> {
            match table.get::<Value>(name)? {
                Value::Nil => Ok(None),
                Value::Function(f) => Ok(Some(f)),
                other => bail!(
                    "{origin}: hook `{name}` must be a function, got {}",
                    a(other.type_name())
                ),
            }
        };
        let (buffer_reward, on_epoch_end) = (optional("buffer_reward")?, optional("on_epoch_end")?);
        // An absent discount or priority is the built-in library's (lua/sqdf.lua), through
        // the state's own `require`: loaded once, shared with a script that requires it too.
        let default = |name: &str| -> Result<LuaFunction> {
            let require: LuaFunction = lua.globals().get("require")?;
            let m: LuaTable = require.call("sqdf")?;
            Ok(m.get(name)?)
        };
        let discount = match optional("discount")? {
            Some(f) => f,
            None => default("discount")?,
        };
        let priority = match optional("priority")? {
            Some(f) => f,
            None => default("priority")?,
        };
        let config_table = config.to_lua(&lua)?;
        let mut sources = vec![(path.to_path_buf(), src)];
        sources.extend(required.files());
        let priority_arg = lua.create_table()?;
        Ok(Script {
            path: path.to_path_buf(),
            config,
            config_table,
            reward: hooks[0].clone(),
            loss: hooks[1].clone(),
            discount,
            priority,
            buffer_reward,
            on_epoch_end,
            sources,
            limits: limits.clone(),
            priority_arg,
            lua,
        })
    }

    fn origin(&self) -> String {
        self.path.display().to_string()
    }

    /// Starts a call of hook `hook` under fresh limits; the clock stops when it ends.
    fn begin(&self, hook: &str) -> Call<'_> {
        self.limits.begin(&format!("hook `{hook}`"));
        Call(&self.limits)
    }

    /// `begin` for a hook the framework calls many times in a row (`priority`,
    /// `discount`): the calls of one series share their limits.
    fn begin_series(&self, hook: &str) -> Call<'_> {
        self.limits.continue_series(&format!("hook `{hook}`"));
        Call(&self.limits)
    }

    /// A hook's error naming the file and the hook; a limit the call exceeded is reported
    /// as such, whatever error it surfaced as (a script may have caught and replaced it).
    fn fail(&self, hook: &str, e: LuaError) -> anyhow::Error {
        match self.limits.tripped() {
            Some(m) => anyhow!("{}: hook `{hook}`: {m}", self.origin()),
            None => anyhow!(
                "{}: hook `{hook}` failed: {}",
                self.origin(),
                describe_with(&e, self.limits.lua_memory())
            ),
        }
    }

    /// The sandbox's limits of this script's state.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// discount(k) for k = 0..steps-1, each a finite number.
    pub fn discounts(&self, steps: usize) -> Result<Vec<f64>> {
        (0..steps)
            .map(|k| {
                let _call = self.begin_series("discount");
                let v: Value = self
                    .discount
                    .call((k, self.config_table.clone()))
                    .map_err(|e| self.fail("discount", e))?;
                discount_value(&self.path, k, v)
            })
            .collect()
    }

    /// priority(state) for one buffer state: a finite number >= 0.
    pub fn priority(&self, reward: f32, k: usize, t: usize, cond: u32) -> Result<f64> {
        let _call = self.begin_series("priority");
        let s = &self.priority_arg;
        // Raw: a metamethod the script set on `state` never runs here.
        s.raw_set("reward", reward)?;
        s.raw_set("k", k)?;
        s.raw_set("t", t)?;
        s.raw_set("cond", cond)?;
        let v: Value = self
            .priority
            .call((s.clone(), self.config_table.clone()))
            .map_err(|e| self.fail("priority", e))?;
        priority_value(&self.path, reward, k, v)
    }

    /// reward(x0, cond): one reward per sample.
    pub fn reward(&self, x0: &Tensor, cond: &Tensor) -> Result<Tensor> {
        let _call = self.begin("reward");
        call_reward(&self.reward, &self.config_table, x0, cond).map_err(|e| self.fail("reward", e))
    }

    /// buffer_reward(x0, cond) if the script defines it, else reward(x0, cond): the reward
    /// stored with each sampled trajectory (its priority's and DDPO's advantages' input).
    pub fn buffer_reward(&self, x0: &Tensor, cond: &Tensor) -> Result<Tensor> {
        let Some(f) = &self.buffer_reward else {
            return self.reward(x0, cond);
        };
        let _call = self.begin("buffer_reward");
        call_reward_hook("buffer_reward", f, &self.config_table, x0, cond)
            .map_err(|e| self.fail("buffer_reward", e))
    }

    /// The reward hook itself, for a loss context.
    pub fn reward_fn(&self) -> LuaFunction {
        self.reward.clone()
    }

    /// loss(batch, ctx): a scalar tensor and an optional table of numbers to log.
    /// `batch` is a `Batch` of states or, with `update_on = "trajectories"`, `Trajectories`.
    pub fn loss(&self, batch: impl IntoLua, ctx: LossContext) -> Result<LossOutput> {
        let _call = self.begin("loss");
        let out: LuaMultiValue = self
            .loss
            .call((batch, ctx))
            .map_err(|e| self.fail("loss", e))?;
        let output = loss_output(&self.origin(), out)?;
        // The userdata Lua holds (step means, x0, rewards...) keep the whole autograd graph of
        // this update alive; Lua sees only their few bytes, so its collector would wait tens
        // of updates. Collect now: the Lua heap is small, the graphs are not.
        self.lua.gc_collect()?;
        Ok(output)
    }

    /// on_epoch_end(metrics, config): extra numbers to log, if the hook exists.
    pub fn on_epoch_end(&self, metrics: &Json) -> Result<BTreeMap<String, f64>> {
        let Some(f) = &self.on_epoch_end else {
            return Ok(BTreeMap::new());
        };
        let _call = self.begin("on_epoch_end");
        let m = super::config::json_to_lua(&self.lua, metrics)?;
        let v: Value = f
            .call((m, self.config_table.clone()))
            .map_err(|e| self.fail("on_epoch_end", e))?;
        let mut out = BTreeMap::new();
        if let Value::Table(t) = v {
            for pair in t.pairs::<String, f64>() {
                let (k, x) = pair.map_err(|e| self.fail("on_epoch_end", e))?;
                check_stat(&self.origin(), "on_epoch_end", out.len() + 1, &k)?;
                out.insert(k, x);
            }
        }
        Ok(out)
    }

    /// Offers the task's reward functions to the hooks as the global table `rewards`
    /// (`rewards.learned(x0)`, `rewards.clip_score(x0, cond)`, ...): each takes a tensor (and
    /// the condition ids where the reward reads the prompt) and returns a tensor,
    /// differentiably.
    pub fn provide_rewards(&self, fns: &[(String, TensorFn)]) -> Result<()> {
        let t = self.lua.create_table()?;
        for (name, f) in fns {
            let f = f.clone();
            let call = format!("rewards.{name}");
            let lf =
                self.lua
                    .create_function(move |lua, (x, c): (LuaTensor, Option<LuaTensor>)| {
                        let op = Op::start(lua, "rewards")?;
                        let limits = Limits::of(lua)?;
                        // The model's time is not the script's.
                        let out = {
                            let _paused = limits.model_call(&call)?;
                            super::tensor::run(&call, || f(&x.0, c.as_ref().map(|c| &c.0)))?
                        };
                        let inputs: Vec<&LuaTensor> =
                            std::iter::once(&x).chain(c.as_ref()).collect();
                        op.wrap(out, &inputs)
                    })?;
            t.set(name.as_str(), lf)?;
        }
        self.lua.globals().set("rewards", t)?;
        Ok(())
    }

    /// Lends the state a device and an RNG for `tensor.randn`, `math.random` and `ctx:randn_like`.
    pub fn set_tensor_env(&self, env: super::TensorEnv) {
        self.lua.set_app_data(env);
    }

    pub fn has_buffer_reward(&self) -> bool {
        self.buffer_reward.is_some()
    }

    pub fn has_on_epoch_end(&self) -> bool {
        self.on_epoch_end.is_some()
    }
}

/// A script's source, refused before it is read when it is larger than the state's memory
/// (it could never load).
fn read_source(path: &Path, memory_limit: usize) -> Result<String> {
    if let Ok(m) = std::fs::metadata(path) {
        if m.len() > memory_limit as u64 {
            bail!(
                "{}: the script is {}, more than the sandbox's Lua memory of {}",
                path.display(),
                show_bytes(m.len()),
                show_bytes(memory_limit as u64)
            );
        }
    }
    std::fs::read_to_string(path).map_err(|e| anyhow!("cannot read script {}: {e}", path.display()))
}

/// Stops the script's clock when a hook call returns.
struct Call<'a>(&'a Limits);

impl Drop for Call<'_> {
    fn drop(&mut self) {
        self.0.pause();
    }
}
