//! The comparison's written part: the Markdown table of the paper (mean ± std over seeds),
//! `report.md` around it, and `results.json`, from which the report can be rebuilt without
//! rerunning anything.

use super::summary::{gold_is_the_oracle, groups, is_black_box, mean_std, metric, row_name};
use super::{plots, RunResult};
use anyhow::{anyhow, Context, Result};
use serde_json::{json, Value as Json};
use std::path::Path;

pub const FIG3: &str = "fig3_tradeoff_along_training.png";
pub const FIG4: &str = "fig4_alpha_tradeoff.png";
pub const ORACLE_FIG: &str = "oracle_reward_vs_queries.png";

/// Where a column's number comes from: most are task metrics, two are the run's cost.
#[derive(Clone, Copy)]
enum Source {
    After(&'static str),
    WallMinutes,
    MemoryMib,
}

/// Header, source, scale (a fraction shown as %), decimals.
#[rustfmt::skip]
const COLUMNS: [(&str, Source, f64, usize); 16] = [
    ("target reward", Source::After("reward"), 1.0, 3),
    ("gold", Source::After("gold"), 1.0, 3),
    ("alignment acc (%)", Source::After("alignment_acc"), 100.0, 1),
    ("alignment prob", Source::After("alignment_prob"), 1.0, 3),
    ("aesthetic", Source::After("aesthetic"), 1.0, 3),
    ("ImageReward", Source::After("image_reward"), 1.0, 3),
    ("HPSv2", Source::After("hps"), 1.0, 4),
    ("PickScore", Source::After("pickscore"), 1.0, 3),
    ("diversity (feature)", Source::After("diversity_feature"), 1.0, 3),
    ("diversity (LPIPS)", Source::After("diversity_lpips"), 1.0, 3),
    ("diversity (DreamSim)", Source::After("diversity_dreamsim"), 1.0, 3),
    ("Fréchet", Source::After("frechet"), 1.0, 1),
    ("KL", Source::After("kl"), 1.0, 3),
    ("training time (min)", Source::WallMinutes, 1.0, 1),
    ("peak memory (MiB)", Source::MemoryMib, 1.0, 0),
    ("queries used", Source::After("queries_used"), 1.0, 0),
];

/// SD-1.5's metrics: a column only where some run reported them.
const SD_ONLY: [&str; 5] = [
    "aesthetic",
    "image_reward",
    "hps",
    "pickscore",
    "diversity_dreamsim",
];

/// The table's columns: "queries used" only in a black-box comparison, SD-1.5's metrics
/// only when some run reports them; every other column always, so a metric no run
/// reported shows as "–". When the gold score is the oracle, its
/// header says "oracle reward (gold)": "target reward" there is each method's own.
fn columns(results: &[RunResult]) -> Vec<(&'static str, Source, f64, usize)> {
    let black_box = is_black_box(results);
    let gold_oracle = gold_is_the_oracle(results);
    COLUMNS
        .into_iter()
        .filter(|(_, source, _, _)| match source {
            Source::After("queries_used") => black_box,
            Source::After(k) if SD_ONLY.contains(k) => {
                results.iter().any(|r| metric(&r.after, k).is_some())
            }
            _ => true,
        })
        .map(|(h, source, scale, decimals)| match (h, gold_oracle) {
            ("gold", true) => ("oracle reward (gold)", source, scale, decimals),
            _ => (h, source, scale, decimals),
        })
        .collect()
}

/// The group key for a row: the label and the sweep value's exact bits.
fn row_key(r: &RunResult) -> String {
    match &r.sweep {
        Some((k, v)) => format!("{}\u{0}{k}\u{0}{:x}", r.label, v.to_bits()),
        None => r.label.clone(),
    }
}

fn method(r: &RunResult) -> String {
    row_name(&r.label, r.sweep.as_ref()).replace('|', "\\|")
}

/// A number with grouped thousands (`12,345.6`), or in scientific notation from 1e5 on:
/// the Fréchet distance of a collapsed model reaches millions.
fn number(v: f64, decimals: usize, sci: bool) -> String {
    if sci {
        return format!("{v:.2e}");
    }
    let s = format!("{v:.decimals$}");
    let (int, frac) = s
        .split_once('.')
        .map_or((s.as_str(), None), |(i, f)| (i, Some(f)));
    let digits = int.trim_start_matches('-');
    let mut out = String::from(&int[..int.len() - digits.len()]);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    match frac {
        Some(f) => format!("{out}.{f}"),
        None => out,
    }
}

fn cell(group: &[&RunResult], (_, source, scale, decimals): (&str, Source, f64, usize)) -> String {
    let values: Vec<f64> = group
        .iter()
        .map(|r| match source {
            Source::After(k) => metric(&r.after, k).unwrap_or(f64::NAN),
            Source::WallMinutes => r.wall_seconds / 60.0,
            Source::MemoryMib => r.peak_rss_mib,
        })
        .filter(|v| v.is_finite())
        .map(|v| v * scale)
        .collect();
    let Some((mean, std)) = mean_std(&values) else {
        return "–".into();
    };
    let sci = mean.abs() >= 1e5;
    let mut s = number(mean, decimals, sci);
    if values.len() > 1 {
        s = format!("{s} ± {}", number(std, decimals, sci));
    }
    // A seed without this metric (diverged, or an older eval.json) is said, not hidden.
    if values.len() < group.len() {
        s = format!("{s} (n={})", values.len());
    }
    s
}

/// The comparison table: one row per method (and sweep value), mean ± population std over
/// its seeds.
pub fn table(results: &[RunResult]) -> String {
    let mut out = String::from("| method | seeds |");
    let mut rule = String::from("|---|---:|");
    let cols = columns(results);
    for c in &cols {
        out.push_str(&format!(" {} |", c.0));
        rule.push_str("---:|");
    }
    out.push('\n');
    out.push_str(&rule);
    out.push('\n');
    for g in groups(results, row_key) {
        out.push_str(&format!("| {} | {} |", method(g[0]), g.len()));
        for c in cols.iter().copied() {
            out.push_str(&format!(" {} |", cell(&g, c)));
        }
        out.push('\n');
    }
    out
}

fn to_json(r: &RunResult) -> Json {
    let curve: Vec<Json> = r
        .curve
        .iter()
        .map(|(epoch, m)| {
            let mut o = m.as_object().cloned().unwrap_or_default();
            o.insert("epoch".into(), json!(epoch));
            Json::Object(o)
        })
        .collect();
    json!({
        "label": r.label,
        "seed": r.seed,
        "sweep": r.sweep.as_ref().map(|(k, v)| json!({"key": k, "value": v})),
        "after": r.after,
        "curve": curve,
        "wall_seconds": r.wall_seconds,
        "peak_rss_mib": r.peak_rss_mib,
    })
}

fn from_json(j: &Json) -> Option<RunResult> {
    let num = |k: &str| j[k].as_f64().unwrap_or(f64::NAN);
    let sweep = match &j["sweep"] {
        Json::Null => None,
        s => Some((s["key"].as_str()?.to_string(), s["value"].as_f64()?)),
    };
    let curve = j["curve"]
        .as_array()?
        .iter()
        .map(|e| {
            let mut m = e.as_object()?.clone();
            let epoch = m.remove("epoch")?.as_u64()? as usize;
            Some((epoch, Json::Object(m)))
        })
        .collect::<Option<Vec<_>>>()?;
    Some(RunResult {
        label: j["label"].as_str()?.to_string(),
        seed: j["seed"].as_u64()?,
        sweep,
        after: j["after"].clone(),
        curve,
        wall_seconds: num("wall_seconds"),
        peak_rss_mib: num("peak_rss_mib"),
    })
}

/// Reads a `results.json` written by [`write_report`], to redraw a report without the runs.
pub fn read_results(path: &Path) -> Result<Vec<RunResult>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let j: Json =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    j.as_array()
        .ok_or_else(|| anyhow!("{}: not an array", path.display()))?
        .iter()
        .enumerate()
        .map(|(i, e)| {
            from_json(e).ok_or_else(|| anyhow!("{}: entry {i} is malformed", path.display()))
        })
        .collect()
}

/// Writes `report.md`, its figures and `results.json` into `dir`. A figure with nothing to
/// show (no sweep runs for Fig. 4, only sweep runs for Fig. 3) is left out with its link.
/// `equal_reward`: the level of the equal-reward table (None: the runs' median best).
pub fn write_report(
    results: &[RunResult],
    dir: &Path,
    title: &str,
    notes: &str,
    equal_reward: Option<f64>,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut md = format!("# {title}\n\n");
    if !notes.trim().is_empty() {
        md.push_str(&format!("{}\n\n", notes.trim()));
    }
    md.push_str("Each cell is the mean ± population std over the method's seeds; `(n=k)` marks a ");
    md.push_str("metric that only k seeds reported, `–` one that none did.\n\n");
    md.push_str(&table(results));
    // Each black-box method's target reward is its own (a surrogate's or the oracle's), so
    // an equal level means nothing across its rows.
    if !is_black_box(results) {
        let level = equal_reward.or_else(|| super::equal_reward::default_level(results));
        if let Some(level) = level {
            md.push_str(&super::equal_reward::section(
                results,
                level,
                equal_reward.is_some(),
            ));
        }
    }
    if results.iter().any(|r| r.sweep.is_none()) {
        plots::plot_along_training(results, &dir.join(FIG3))?;
        md.push_str(&format!(
            "\n## Trade-off along training (Fig. 3)\n\n![alignment and diversity against the \
             target reward, checkpoint by checkpoint]({FIG3})\n"
        ));
    }
    if results.iter().any(|r| r.sweep.is_some()) {
        plots::plot_alpha_tradeoff(results, &dir.join(FIG4))?;
        md.push_str(&format!(
            "\n## Trade-off across the swept value (Fig. 4)\n\n![alignment and diversity against \
             the target reward after training, one point per swept value]({FIG4})\n"
        ));
    }
    let has_queries = |r: &RunResult| {
        r.curve
            .iter()
            .any(|c| metric(&c.1, "queries_used").is_some())
    };
    if results.iter().any(has_queries) {
        let with: Vec<RunResult> = results.iter().filter(|r| has_queries(r)).cloned().collect();
        plots::plot_oracle_vs_queries(&with, &dir.join(ORACLE_FIG))?;
        let what = match gold_is_the_oracle(&with) {
            true => ("Oracle reward", "the noise-free oracle reward"),
            false => ("Gold score", "the gold score"),
        };
        md.push_str(&format!(
            "\n## {} against queries (black box)\n\n![{}, alignment and diversity against the \
             oracle queries used]({ORACLE_FIG})\n",
            what.0, what.1
        ));
    }
    let report = dir.join("report.md");
    crate::tensor_io::write_file_atomic(&report, md)?;
    let all: Vec<Json> = results.iter().map(to_json).collect();
    let path = dir.join("results.json");
    crate::tensor_io::write_file_atomic(&path, serde_json::to_string_pretty(&all)?)
}

#[cfg(test)]
#[path = "report_tests.rs"]
pub(super) mod tests;
