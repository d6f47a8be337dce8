//! Evaluations along training (`config.evals`): the task's smaller evaluation at evenly
//! spaced epochs, one JSON line each in `evals.jsonl`, as the paper plots its methods at
//! six points of training (Fig. 3). A resumed run keeps the lines up to its epoch.

use super::metrics::MetricsWriter;
use anyhow::Result;
use serde_json::Value as Json;
use std::path::{Path, PathBuf};

pub const FILE: &str = "evals.jsonl";

/// The epochs, out of `total`, after which to evaluate: j * total / n rounded up, j = 1..n
/// (every epoch when there are fewer epochs than evaluations).
pub fn eval_epochs(total: usize, n: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (1..=n).map(|j| (j * total).div_ceil(n)).collect();
    v.dedup();
    v.retain(|&e| e >= 1);
    v
}

/// evals.jsonl: the same append-and-truncate file as metrics.jsonl, read back by epoch.
pub struct EvalLog {
    path: PathBuf,
    file: MetricsWriter,
}

impl EvalLog {
    pub fn new(run_dir: &Path) -> Self {
        let path = run_dir.join(FILE);
        Self {
            file: MetricsWriter::new(&path),
            path,
        }
    }

    pub fn lines(&self) -> Vec<Json> {
        std::fs::read_to_string(&self.path)
            .map(|t| {
                t.lines()
                    .filter_map(|l| serde_json::from_str(l).ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn has(&self, epoch: usize) -> bool {
        self.lines()
            .iter()
            .any(|l| l["epoch"].as_u64() == Some(epoch as u64))
    }

    /// Appends the metrics of the policy after `epoch` (0: the pretrained model).
    pub fn append(&self, epoch: usize, metrics: &Json) -> Result<()> {
        let mut line = serde_json::json!({ "epoch": epoch });
        if let Json::Object(m) = metrics {
            for (k, v) in m {
                line[k.as_str()] = v.clone();
            }
        }
        self.file.append(&line)
    }

    /// Drops the lines after `epoch` (a resume continues from there).
    pub fn truncate_after(&self, epoch: usize) -> Result<usize> {
        self.file.truncate_after(epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evenly_spaced_and_ending_at_the_last_epoch() {
        assert_eq!(eval_epochs(12, 6), vec![2, 4, 6, 8, 10, 12]);
        assert_eq!(eval_epochs(14, 6), vec![3, 5, 7, 10, 12, 14]);
        assert_eq!(eval_epochs(3, 6), vec![1, 2, 3]);
        assert!(eval_epochs(5, 0).is_empty());
    }
}
