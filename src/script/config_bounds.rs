//! Upper bounds of the config keys that size an allocation. Two layers: fixed caps (declared
//! with each key in `config.rs`) that keep every product of sizes far from overflow
//! (checked when a script is parsed), and
//! the memory a run would take for this task's state shape against the machine's memory
//! (checked once the task is built, before the run and before a reload is accepted), so
//! that a huge `batch` or `capacity` is a message naming the key, not an aborted process.

use super::RunConfig;
use anyhow::{bail, Result};

/// Share of the machine's memory a run may plan to hold in its buffers.
const MEMORY_SHARE: f64 = 0.8;

/// The fixed caps.
pub fn check_caps(cfg: &RunConfig) -> Result<()> {
    for (key, v, cap) in cfg.caps() {
        if v > cap {
            bail!("config.{key} = {v} is above its limit of {cap}")
        }
    }
    for (i, q) in cfg.queries.iter().enumerate() {
        if *q as u64 > 1 << 24 {
            bail!(
                "config.queries[{}] = {q} is above its limit of {}",
                i + 1,
                1u64 << 24
            )
        }
    }
    Ok(())
}

/// Bytes of f32 values: a product of counts (all capped, so the product fits an f64 exactly
/// enough for a comparison).
fn bytes(counts: &[usize]) -> f64 {
    counts.iter().map(|&c| c as f64).product::<f64>() * 4.0
}

/// What each sized key makes the run hold, for a state of `state_len` values: (key, bytes,
/// what). The largest allocations only; networks and activations come on top.
pub fn planned(cfg: &RunConfig, state_len: usize) -> Vec<(&'static str, f64, String)> {
    let states = cfg.steps + 1;
    let eval_n = cfg.eval_samples.max(cfg.eval_per_prompt);
    vec![
        (
            "capacity",
            bytes(&[cfg.capacity, states, state_len]) + bytes(&[cfg.capacity, cfg.steps, 6]),
            format!(
                "the replay buffer holds {} trajectories of {states} states of {state_len} values",
                cfg.capacity
            ),
        ),
        (
            "batch",
            bytes(&[cfg.batch, states, state_len]) * 2.0,
            format!(
                "each epoch samples {} trajectories of {states} states of {state_len} values (kept, and gathered once more for the update)",
                cfg.batch
            ),
        ),
        (
            if cfg.eval_samples >= cfg.eval_per_prompt {
                "eval_samples"
            } else {
                "eval_per_prompt"
            },
            bytes(&[eval_n, state_len]) * 4.0 + bytes(&[eval_n, eval_n]),
            format!("an evaluation draws {eval_n} samples of {state_len} values and compares them pairwise"),
        ),
    ]
}

/// The planned memory against `memory` bytes (the machine's, by default), naming the key
/// that asks for the most and its value.
pub fn check_memory(cfg: &RunConfig, state_shape: &[usize], memory: Option<u64>) -> Result<()> {
    let Some(memory) = memory.or_else(machine_memory) else {
        return Ok(());
    };
    let state_len = state_shape.iter().product::<usize>().max(1);
    let plan = planned(cfg, state_len);
    let total: f64 = plan.iter().map(|(_, b, _)| b).sum();
    let allowed = memory as f64 * MEMORY_SHARE;
    if total > allowed {
        let (key, b, what) = plan
            .iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .expect("the plan has entries");
        bail!(
            "config.{key} = {} needs too much memory: {what}, {}; the run's buffers would take {} in all, more than {:.0}% of this machine's {}",
            cfg.caps().iter().find(|c| c.0 == *key).map_or(0, |c| c.1),
            human(*b),
            human(total),
            MEMORY_SHARE * 100.0,
            human(memory as f64)
        )
    }
    Ok(())
}

/// MemTotal from /proc/meminfo, None where it cannot be read.
pub fn machine_memory() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn human(b: f64) -> String {
    if b >= (1u64 << 30) as f64 {
        format!("{:.1} GiB", b / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", b / (1u64 << 20) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_beyond_memory_names_capacity() {
        let cfg = RunConfig {
            capacity: 1 << 20,
            ..RunConfig::default()
        };
        let e = check_memory(&cfg, &[1, 28, 28], Some(24 << 30)).unwrap_err();
        let m = format!("{e:#}");
        assert!(m.starts_with("config.capacity = 1048576 needs too much memory: the replay buffer holds 1048576 trajectories of 51 states of 784 values"), "{m}");
        // The shipped digits settings fit in 2 GiB.
        let cfg = RunConfig {
            capacity: 1024,
            batch: 64,
            ..RunConfig::default()
        };
        check_memory(&cfg, &[1, 28, 28], Some(2 << 30)).unwrap();
    }

    #[test]
    fn caps_name_the_key_and_the_limit() {
        let cfg = RunConfig {
            batch: 1 << 30,
            ..RunConfig::default()
        };
        let m = format!("{:#}", check_caps(&cfg).unwrap_err());
        assert_eq!(m, "config.batch = 1073741824 is above its limit of 1048576");
        let cfg = RunConfig {
            x0_steps: 1000,
            ..RunConfig::default()
        };
        assert_eq!(
            format!("{:#}", check_caps(&cfg).unwrap_err()),
            "config.x0_steps = 1000 is above its limit of 999"
        );
    }
}
