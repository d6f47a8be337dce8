//! What the report, its plots and the equal-reward table share: reading a run's metrics,
//! grouping runs by method, mean and std over seeds, and how a sweep value or key is
//! written.

use super::RunResult;
use serde_json::Value as Json;

/// Some run counted oracle queries: a black-box comparison.
pub fn is_black_box(results: &[RunResult]) -> bool {
    results
        .iter()
        .any(|r| metric(&r.after, "queries_used").is_some())
}

/// Every black-box run's oracle was the gold score (`config.oracle = "gold"`, which the
/// runner copies into `after.oracle`), so the gold column is Table 1's "oracle reward".
/// Any other oracle (the learned reward as a black box), or one not recorded, leaves the
/// column named "gold".
pub fn gold_is_the_oracle(results: &[RunResult]) -> bool {
    is_black_box(results)
        && results
            .iter()
            .filter(|r| metric(&r.after, "queries_used").is_some())
            .all(|r| r.after.get("oracle").and_then(|o| o.as_str()) == Some("gold"))
}

/// A metric as a finite number; a missing key, a null (how serde_json writes NaN) or a
/// non-finite value all read as absent, so one diverged run cannot poison a mean silently.
pub fn metric(j: &Json, key: &str) -> Option<f64> {
    j.get(key)?.as_f64().filter(|v| v.is_finite())
}

pub use crate::eval::stats::mean_std;

/// A sweep value as a person writes it in a config: `2`, `0.5`, `1e-4`.
pub fn compact(v: f64) -> String {
    if v != 0.0 && (v.abs() < 1e-3 || v.abs() >= 1e6) {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

/// The swept key as the paper writes it in a figure (α, γ); other keys stay as named.
pub fn symbol(key: &str) -> &str {
    match key {
        "alpha" => "α",
        "beta" => "β",
        "gamma" => "γ",
        other => other,
    }
}

/// Runs grouped by `key`, groups in order of first appearance: the order in which the
/// comparison script lists its methods is the order the reader expects.
pub fn groups<'a>(
    results: impl IntoIterator<Item = &'a RunResult>,
    key: impl Fn(&RunResult) -> String,
) -> Vec<Vec<&'a RunResult>> {
    let mut out: Vec<(String, Vec<&RunResult>)> = Vec::new();
    for r in results {
        let k = key(r);
        match out.iter_mut().find(|(g, _)| *g == k) {
            Some((_, g)) => g.push(r),
            None => out.push((k, vec![r])),
        }
    }
    out.into_iter().map(|(_, g)| g).collect()
}

/// A method's row name: its label, with the swept value where it has one ("SQDF alpha
/// (alpha = 3)"). The comparison's log names a run the same way, with its seed.
pub fn row_name(label: &str, sweep: Option<&(String, f64)>) -> String {
    match sweep {
        Some((k, v)) => format!("{label} ({k} = {})", compact(*v)),
        None => label.to_string(),
    }
}
