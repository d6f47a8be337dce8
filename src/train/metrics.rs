//! What a run reports, as the one contract between the trainer, the tasks and the
//! comparison: `metrics.jsonl`, one `EpochMetrics` per epoch, appended (a resumed run
//! continues the file), and `eval.json`, the `EvalReport` of the run. Only the run holding
//! the folder's lock writes them; cutting metrics.jsonl back at a resume replaces the file
//! atomically, so a crash then leaves the old lines or the new ones.

use crate::script::RunConfig;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};
use std::io::Write;
use std::path::{Path, PathBuf};

/// One line of metrics.jsonl. A number that is not finite (an epoch whose every update was
/// skipped) is absent (`null`), as serde_json writes NaN.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    /// Mean and population std of the epoch's sampled trajectories' rewards.
    pub reward_mean: Option<f64>,
    pub reward_std: Option<f64>,
    /// Mean over the epoch's updates of the `kl` the loss hook logged.
    pub kl: Option<f64>,
    pub loss: Option<f64>,
    /// The global gradient norm before clipping, mean over updates.
    pub grad_norm: Option<f64>,
    /// Updates skipped for a non-finite loss.
    pub skipped_steps: usize,
    /// Trajectories in the replay buffer.
    pub buffer: usize,
    pub seconds: f64,
    pub script_generation: u64,
    /// Oracle queries so far (black-box runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queries_used: Option<usize>,
    /// What the hooks logged (the loss's table, `on_epoch_end`; named `hook.<key>` where a
    /// key above has the name) and a black-box round's report.
    #[serde(flatten)]
    pub extra: Map<String, Json>,
}

impl EpochMetrics {
    /// As a JSON object, keys in sorted order (as every line has been written).
    pub fn to_json(&self) -> Json {
        serde_json::to_value(self).unwrap_or(Json::Null)
    }

    /// A key for a hook's number that never shadows the framework's own, nor one already
    /// in `extra`.
    pub fn free_key(&self, k: &str) -> String {
        let field = match k {
            "queries_used" => self.queries_used.is_some(),
            _ => Self::FIELDS.contains(&k),
        };
        let taken = field || self.extra.contains_key(k);
        if taken {
            format!("hook.{k}")
        } else {
            k.to_string()
        }
    }

    /// The keys every line has (`queries_used` only in black-box runs).
    const FIELDS: [&'static str; 10] = [
        "epoch",
        "reward_mean",
        "reward_std",
        "kl",
        "loss",
        "grad_norm",
        "skipped_steps",
        "buffer",
        "seconds",
        "script_generation",
    ];

    /// The lines of a metrics.jsonl; lines that do not parse (a torn last line) are left out.
    pub fn read_all(path: &Path) -> Result<Vec<EpochMetrics>> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }
}

/// eval.json: the task's evaluation before and after training (task-specific metrics, e.g.
/// `reward`, `alignment_acc`), and the run's cost.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalReport {
    pub before: Json,
    pub after: Json,
    pub epochs: usize,
    /// This process's time (a resumed run counts from its resume).
    pub wall_seconds: f64,
    /// This process's peak resident memory; absent where /proc is not available.
    pub peak_rss_mib: Option<f64>,
    pub script: String,
    pub script_generation: u64,
    pub config: RunConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queries_used: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oracle_budget: Option<usize>,
}

impl EvalReport {
    pub fn read(path: &Path) -> Result<EvalReport> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// As a JSON object, keys in sorted order.
    pub fn to_json(&self) -> Json {
        serde_json::to_value(self).unwrap_or(Json::Null)
    }
}

pub struct MetricsWriter {
    path: PathBuf,
}

impl MetricsWriter {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
        }
    }

    /// Appends one JSON line (an `EpochMetrics`, or an evaluation along training).
    pub fn append(&self, line: &Json) -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .with_context(|| format!("opening {}", self.path.display()))?;
        // One write per line, so a line is never split by another writer's.
        f.write_all(format!("{line}\n").as_bytes())
            .with_context(|| format!("writing {}", self.path.display()))?;
        Ok(())
    }

    /// Drops lines of epochs after `epoch` (a resume from an earlier checkpoint), and lines
    /// that are not JSON (the torn end of a crashed write); returns how many lines went.
    pub fn truncate_after(&self, epoch: usize) -> Result<usize> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.path.display())),
        };
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v["epoch"].as_u64())
                    .is_some_and(|e| e as usize <= epoch)
            })
            .collect();
        let mut out = kept.join("\n");
        if !out.is_empty() {
            out.push('\n');
        }
        let dropped = text.lines().filter(|l| !l.trim().is_empty()).count() - kept.len();
        if out != text {
            crate::tensor_io::write_file_atomic(&self.path, out)?;
        }
        Ok(dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::EpochMetrics;

    #[test]
    fn fields_are_the_keys_of_a_line() {
        let json = EpochMetrics::default().to_json();
        let mut keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        let mut fields = EpochMetrics::FIELDS.to_vec();
        keys.sort();
        fields.sort();
        assert_eq!(keys, fields);
    }
}
