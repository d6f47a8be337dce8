//! `sqdf compare`: runs a list of experiment scripts (a Lua table of runs, each with its
//! overrides and seeds), each in its own process, and writes the paper's comparison: a
//! Markdown table (mean ± std over seeds) and the plots of Fig. 3 and Fig. 4.

pub mod axis;
pub mod equal_reward;
pub mod plan;
pub mod plots;
pub mod report;
pub mod runner;
pub mod summary;

use serde_json::Value as Json;

/// One finished run of a comparison, as the report reads it.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// The method's name in the table and the legends ("SQDF", "DRaFT-1", "SQDF γ=1").
    pub label: String,
    pub seed: u64,
    /// For Fig. 4: the swept config key and its value in this run (`("alpha", 2.0)`); runs
    /// of one label with different values form one trade-off curve.
    pub sweep: Option<(String, f64)>,
    /// The task's metrics after training (eval.json's `after`): reward, gold,
    /// alignment_prob, alignment_acc, diversity_feature, diversity_lpips, frechet, kl.
    pub after: Json,
    /// The same metrics along training, (epoch, metrics), epoch 0 being the pretrained
    /// model; the checkpoints are evenly spaced.
    pub curve: Vec<(usize, Json)>,
    /// Training wall time: the sum of the epochs' `seconds` in metrics.jsonl (sampling and
    /// updates; the evaluations, the same for every method, are left out).
    pub wall_seconds: f64,
    /// Peak resident memory of the run's process (VmHWM), MiB.
    pub peak_rss_mib: f64,
}
