//! A comparison file (`scripts/compare/*.lua`): a Lua table naming the runs, read into the
//! list of (script, overrides, seed) to execute. It is data, not an experiment: it returns
//!
//!   { title = "...", seeds = {0, 1, 2}, evals = 6, set = {...}, equal_reward = 2.3,
//!     quick = { seeds = {0}, evals = 3, set = { epochs = 6, eval_per_prompt = 8 } },
//!     (a run may add its own `quick_set = { ... }`, applied after the shared one)
//!     runs = { { label = "SQDF", script = "../digits_sqdf.lua", set = {...},
//!                sweep = { alpha = {2, 3, 4} } }, ... } }
//!
//! `set` at the top applies to every run, a run's own `set` on top of it; `sweep` makes one
//! run per value (the Fig. 4 trade-off curves), and `base = "<label>"` adds that label's
//! runs to the curve at their own value of the key; script paths are relative to the file.
//! `equal_reward` (optional) is the reward level of the report's equal-reward table.

use super::summary::row_name;
use crate::run_log::RunLog;
use crate::script::config::lua_to_json;
use crate::script::sandbox::{eval_chunk, new_state, top_level};
use crate::script::{SandboxOptions, TensorEnv};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{Map, Value as Json};
use std::path::{Path, PathBuf};

/// One process to run.
#[derive(Debug, Clone)]
pub struct PlannedRun {
    pub label: String,
    pub script: PathBuf,
    pub seed: u64,
    pub sweep: Option<(String, f64)>,
    /// Every `--set`, in order (the sweep value and the seed last).
    pub overrides: Vec<(String, Json)>,
    /// The run's folder name under the comparison's `runs/`.
    pub dir_name: String,
    /// For a sweep: the label of the runs that are this curve's point at their own value
    /// (`base = "SQDF"`: the SQDF runs at alpha 2 join the alpha curve without rerunning).
    pub base: Option<String>,
}

impl PlannedRun {
    /// How logs name the run: the report's row name (the label with the swept value, so
    /// two points of one sweep read apart) and the seed: "DRaFT+KL (alpha = 0.03) seed 1".
    pub fn name(&self) -> String {
        format!(
            "{} seed {}",
            row_name(&self.label, self.sweep.as_ref()),
            self.seed
        )
    }
}

pub struct Plan {
    pub title: String,
    pub runs: Vec<PlannedRun>,
    /// The reward level at which the report reads every method (`equal_reward`; None: the
    /// median of the runs' best rewards).
    pub equal_reward: Option<f64>,
}

fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() || c == '.' {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_string()
}

fn table<'a>(j: &'a Json, key: &str, at: &str) -> Result<Option<&'a Map<String, Json>>> {
    match j.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Object(m)) => Ok(Some(m)),
        Some(Json::Array(a)) if a.is_empty() => Ok(None),
        Some(_) => bail!("{at}: `{key}` must be a table of key = value"),
    }
}

fn seeds(j: &Json, at: &str) -> Result<Option<Vec<u64>>> {
    match j.get("seeds") {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Array(a)) => a
            .iter()
            .map(|s| {
                s.as_u64()
                    .ok_or_else(|| anyhow!("{at}: `seeds` must be a list of non-negative integers"))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some),
        Some(_) => bail!("{at}: `seeds` must be a list, e.g. {{0, 1, 2}}"),
    }
}

/// The table a comparison file returns, as JSON. The file runs in the experiment scripts'
/// sandbox, under their limits: a comparison file cannot hang or exhaust `sqdf compare`.
fn read_table(src: &str, at: &str, dir: &Path) -> Result<Json> {
    let opts = SandboxOptions::new(
        dir,
        RunLog::stderr(),
        TensorEnv {
            device: candle_core::Device::Cpu,
            rng: crate::rng::shared(crate::script::experiment::LOAD_SEED),
        },
    );
    let (lua, limits, _) = new_state(&opts)?;
    top_level(&limits, at, || {
        let v = eval_chunk(&lua, &limits, at, src)?;
        lua_to_json(&v, at)
    })
}

/// Reads `path`; `quick` applies its `quick` table (fewer seeds, shorter runs).
pub fn load(path: &Path, quick: bool) -> Result<Plan> {
    let at = path.display().to_string();
    let src = std::fs::read_to_string(path).with_context(|| format!("reading {at}"))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let j = read_table(&src, &at, dir)?;
    let q = if quick {
        j.get("quick")
            .cloned()
            .ok_or_else(|| anyhow!("{at}: --quick needs a `quick` table"))?
    } else {
        Json::Object(Map::new())
    };
    let seed_list = match (quick, seeds(&q, &at)?) {
        (_, Some(s)) => s,
        // --quick is a smoke check: one seed unless its table names others.
        (true, None) => vec![0],
        // The paper's three seeds unless the file names others.
        (false, None) => seeds(&j, &at)?.unwrap_or_else(|| vec![0, 1, 2]),
    };
    let evals = q
        .get("evals")
        .or(j.get("evals"))
        .and_then(Json::as_u64)
        .unwrap_or(6);
    let mut common: Vec<(String, Json)> = vec![("evals".into(), Json::from(evals))];
    for t in [table(&j, "set", &at)?, table(&q, "set", &at)?]
        .into_iter()
        .flatten()
    {
        common.extend(t.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    let Some(Json::Array(runs)) = j.get("runs") else {
        bail!("{at}: `runs` must be a list of {{ label = ..., script = ... }}")
    };
    let mut out = Vec::new();
    for (n, r) in runs.iter().enumerate() {
        let rat = format!("{at}: runs[{}]", n + 1);
        let label = r
            .get("label")
            .and_then(Json::as_str)
            .ok_or_else(|| anyhow!("{rat}: needs a `label` string"))?;
        let script = r
            .get("script")
            .and_then(Json::as_str)
            .ok_or_else(|| anyhow!("{rat} ({label}): needs a `script` path"))?;
        let script = dir.join(script);
        if !script.is_file() {
            bail!("{rat} ({label}): script {} not found", script.display());
        }
        let mut base = common.clone();
        if let Some(t) = table(r, "set", &rat)? {
            base.extend(t.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        // A run's own quick settings (e.g. a budget that the shared quick table cannot say).
        if quick {
            if let Some(t) = table(r, "quick_set", &rat)? {
                base.extend(t.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
        }
        let sweeps: Vec<Option<(String, f64)>> = match table(r, "sweep", &rat)? {
            None => vec![None],
            Some(m) if m.len() == 1 => {
                let (k, vals) = m.iter().next().expect("one entry");
                let vals = vals
                    .as_array()
                    .ok_or_else(|| anyhow!("{rat}: sweep.{k} must be a list of numbers"))?;
                vals.iter()
                    .map(|v| {
                        v.as_f64()
                            .map(|x| Some((k.clone(), x)))
                            .ok_or_else(|| anyhow!("{rat}: sweep.{k} must be a list of numbers"))
                    })
                    .collect::<Result<_>>()?
            }
            Some(_) => {
                bail!("{rat}: `sweep` takes one key, e.g. sweep = {{ alpha = {{2, 3, 4}} }}")
            }
        };
        let sweep_base = r.get("base").and_then(Json::as_str).map(str::to_string);
        for sweep in &sweeps {
            for &seed in &seed_list {
                let mut overrides = base.clone();
                let mut name = slug(label);
                if let Some((k, x)) = sweep {
                    overrides.push((k.clone(), Json::from(*x)));
                    name = format!("{name}-{k}-{x}");
                }
                overrides.push(("seed".into(), Json::from(seed)));
                out.push(PlannedRun {
                    label: label.to_string(),
                    script: script.clone(),
                    seed,
                    sweep: sweep.clone(),
                    overrides,
                    dir_name: format!("{name}-seed{seed}"),
                    base: sweep_base.clone(),
                });
            }
        }
    }
    // Seed-major: every method's first seed before any second seed, so that an interrupted
    // comparison (8 hours here) already has a one-seed table of every method.
    out.sort_by_key(|r| seed_list.iter().position(|&s| s == r.seed));
    let mut names: Vec<&str> = out.iter().map(|r| r.dir_name.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        bail!(
            "{at}: two runs would share the folder `{}`; give them different labels",
            w[0]
        );
    }
    let equal_reward = match j.get("equal_reward") {
        None | Some(Json::Null) => None,
        Some(v) => Some(
            v.as_f64()
                .filter(|x| x.is_finite())
                .ok_or_else(|| anyhow!("{at}: `equal_reward` must be a number, got {v}"))?,
        ),
    };
    Ok(Plan {
        equal_reward,
        title: j
            .get("title")
            .and_then(Json::as_str)
            .unwrap_or("Comparison")
            .to_string(),
        runs: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_default_to_three_and_quick_to_one() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.lua"), "return {}").unwrap();
        let file = dir.path().join("cmp.lua");
        let write = |extra: &str| {
            std::fs::write(
                &file,
                format!(
                    "return {{ {extra} quick = {{ evals = 1 }}, runs = {{ {{ label = \"A\", script = \"a.lua\" }} }} }}"
                ),
            )
            .unwrap()
        };
        let seeds = |quick| -> Vec<u64> {
            load(&file, quick)
                .unwrap()
                .runs
                .iter()
                .map(|r| r.seed)
                .collect()
        };
        write("");
        assert_eq!(seeds(false), [0, 1, 2]);
        assert_eq!(seeds(true), [0]);
        write("seeds = { 4, 5 },");
        assert_eq!(seeds(false), [4, 5]);
        assert_eq!(seeds(true), [0], "--quick keeps to one seed");
        assert_eq!(load(&file, false).unwrap().equal_reward, None);
        write("equal_reward = 2.5,");
        assert_eq!(load(&file, false).unwrap().equal_reward, Some(2.5));
        write("equal_reward = \"high\",");
        let e = format!("{:#}", load(&file, false).err().unwrap());
        assert!(
            e.contains("`equal_reward` must be a number, got \"high\""),
            "{e}"
        );
    }

    #[test]
    fn sweep_points_are_named_with_their_value() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.lua"), "return {}").unwrap();
        let file = dir.path().join("cmp.lua");
        std::fs::write(
            &file,
            "return { seeds = { 1 }, runs = { { label = \"A\", script = \"a.lua\" },\
             { label = \"A gamma\", script = \"a.lua\", sweep = { gamma = { 0.85, 0.95 } } } } }",
        )
        .unwrap();
        let plan = load(&file, false).unwrap();
        let names: Vec<String> = plan.runs.iter().map(PlannedRun::name).collect();
        assert_eq!(
            names,
            [
                "A seed 1",
                "A gamma (gamma = 0.85) seed 1",
                "A gamma (gamma = 0.95) seed 1"
            ]
        );
    }
}
