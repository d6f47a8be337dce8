//! The methods compared at an equal target reward rather than an equal step. The paper's
//! Fig. 3 stops each method when it first reaches the target reward ("the point at which
//! each method first reached a target reward of 8.0 ... If not achieved, we report the
//! maximum reward", Appendix D.2), because a method that optimises faster is further along
//! the over-optimisation path after the same number of steps. The table after training
//! compares equal steps; this section reads every run's along-training checkpoints at one
//! reward level: the comparison file's `equal_reward`, or the median of the runs' best
//! rewards (half the runs reach it; the paper's 8.0 is likewise one most methods reach).

use super::summary::{groups, mean_std, metric};
use super::RunResult;
use serde_json::Value as Json;

/// The metrics read at the reward level: key, header, scale (a fraction shown as %),
/// decimals.
const COLUMNS: [(&str, &str, f64, usize); 7] = [
    ("reward", "target reward", 1.0, 3),
    ("alignment_acc", "alignment acc (%)", 100.0, 1),
    ("alignment_prob", "alignment prob", 1.0, 3),
    ("diversity_feature", "diversity (feature)", 1.0, 3),
    ("diversity_lpips", "diversity (LPIPS)", 1.0, 3),
    ("frechet", "Fréchet", 1.0, 1),
    ("gold", "gold", 1.0, 3),
];

/// One run read at the level: the (fractional) epoch, whether its reward reached the level,
/// and the metrics of `COLUMNS` there.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub epoch: f64,
    pub reached: bool,
    pub metrics: Vec<Option<f64>>,
}

/// Along `curve` (epoch, metrics; epoch 0 the pretrained model), the first point where
/// the reward reaches `level`, each metric linearly interpolated between the two
/// checkpoints around it; a run that never reaches it is read at its best checkpoint (the
/// paper's rule). None for a curve without rewards.
pub fn read_at(curve: &[(usize, Json)], level: f64) -> Option<Reading> {
    let mut points: Vec<(usize, f64, &Json)> = curve
        .iter()
        .filter_map(|(e, m)| Some((*e, metric(m, "reward")?, m)))
        .collect();
    points.sort_by_key(|p| p.0);
    let at = |m: &Json| -> Vec<Option<f64>> { COLUMNS.iter().map(|c| metric(m, c.0)).collect() };
    let first = points.first()?;
    if first.1 >= level {
        return Some(Reading {
            epoch: first.0 as f64,
            reached: true,
            metrics: at(first.2),
        });
    }
    for w in points.windows(2) {
        let (a, b) = (w[0], w[1]);
        if b.1 >= level {
            // a's reward < level <= b's, so the weight is in (0, 1].
            let u = (level - a.1) / (b.1 - a.1);
            let lerp = |x: f64, y: f64| x + u * (y - x);
            let metrics = at(a.2)
                .into_iter()
                .zip(at(b.2))
                .map(|(x, y)| Some(lerp(x?, y?)))
                .collect();
            return Some(Reading {
                epoch: lerp(a.0 as f64, b.0 as f64),
                reached: true,
                metrics,
            });
        }
    }
    let best = points.iter().max_by(|a, b| a.1.total_cmp(&b.1))?;
    Some(Reading {
        epoch: best.0 as f64,
        reached: false,
        metrics: at(best.2),
    })
}

/// The median of the plain (non-sweep) runs' best checkpoint rewards; None without plain
/// runs with a curve.
pub fn default_level(results: &[RunResult]) -> Option<f64> {
    let mut best: Vec<f64> = results
        .iter()
        .filter(|r| r.sweep.is_none())
        .map(|r| {
            r.curve
                .iter()
                .filter_map(|c| metric(&c.1, "reward"))
                .fold(f64::NEG_INFINITY, f64::max)
        })
        .filter(|m| m.is_finite())
        .collect();
    if best.is_empty() {
        return None;
    }
    best.sort_by(f64::total_cmp);
    let n = best.len();
    Some(match n % 2 {
        1 => best[n / 2],
        _ => 0.5 * (best[n / 2 - 1] + best[n / 2]),
    })
}

fn cell(values: &[f64], scale: f64, decimals: usize) -> String {
    match mean_std(values) {
        None => "–".into(),
        Some((m, _)) if values.len() == 1 => format!("{:.decimals$}", m * scale),
        Some((m, s)) => format!("{:.decimals$} ± {:.decimals$}", m * scale, s * scale),
    }
}

/// The Markdown section: one row per plain method, mean ± std over its seeds of the epoch
/// and the metrics where each run first reaches `level` (or, failing that, at its best
/// checkpoint: the row says how many runs reached the level). `given`: whether the level
/// came from the comparison file.
pub fn section(results: &[RunResult], level: f64, given: bool) -> String {
    let origin = if given {
        "the comparison file's `equal_reward`"
    } else {
        "the median of the runs' best rewards along training; `equal_reward` in the \
         comparison file sets another"
    };
    let mut out = format!(
        "\n## At an equal target reward (Fig. 3's stopping rule)\n\nEvery method read where its \
         target reward first reaches {level:.3} ({origin}), interpolated linearly between the \
         two checkpoints around it (their evaluation: 8 samples per digit); a run that never \
         reaches it is read at its best checkpoint, as the paper does, and `reached` says how \
         many did. The table above compares equal steps.\n\n| method | reached | epoch |"
    );
    let mut rule = String::from("|---|---:|---:|");
    for c in COLUMNS {
        out.push_str(&format!(" {} |", c.1));
        rule.push_str("---:|");
    }
    out.push('\n');
    out.push_str(&rule);
    out.push('\n');
    let plain = results.iter().filter(|r| r.sweep.is_none());
    for g in groups(plain, |r| r.label.clone()) {
        let reads: Vec<Reading> = g.iter().filter_map(|r| read_at(&r.curve, level)).collect();
        let epochs: Vec<f64> = reads.iter().map(|h| h.epoch).collect();
        out.push_str(&format!(
            "| {} | {} of {} | {} |",
            g[0].label.replace('|', "\\|"),
            reads.iter().filter(|h| h.reached).count(),
            g.len(),
            cell(&epochs, 1.0, 1)
        ));
        for (i, c) in COLUMNS.iter().enumerate() {
            let v: Vec<f64> = reads.iter().filter_map(|h| h.metrics[i]).collect();
            out.push_str(&format!(" {} |", cell(&v, c.2, c.3)));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn point(epoch: usize, reward: f64, acc: f64) -> (usize, Json) {
        (epoch, json!({"reward": reward, "alignment_acc": acc}))
    }

    #[test]
    fn the_first_crossing_is_interpolated_between_its_checkpoints() {
        // Rewards 1, 3, 2, 5 (listed out of order): the level 2 is first reached half way
        // from epoch 0 (1) to epoch 5 (3); the later dip and rise do not count.
        let curve = vec![
            point(10, 2.0, 0.0),
            point(0, 1.0, 0.9),
            point(5, 3.0, 0.5),
            point(15, 5.0, 0.1),
        ];
        let r = read_at(&curve, 2.0).unwrap();
        assert_eq!((r.epoch, r.reached), (2.5, true));
        assert!((r.metrics[0].unwrap() - 2.0).abs() < 1e-12);
        assert!((r.metrics[1].unwrap() - 0.7).abs() < 1e-12);
        // A metric a checkpoint lacks is absent, not zero.
        assert_eq!(r.metrics[2], None);
        // Reached at the start.
        assert_eq!(read_at(&curve, 0.5).unwrap().epoch, 0.0);
        // Never reached: read at the best checkpoint, and said so.
        let r = read_at(&curve, 6.0).unwrap();
        assert_eq!((r.epoch, r.reached), (15.0, false));
        assert_eq!(r.metrics[0], Some(5.0));
    }

    #[test]
    fn the_default_level_is_the_median_of_the_runs_best_rewards() {
        let run = |label: &str, rewards: &[f64], sweep: bool| RunResult {
            label: label.into(),
            seed: 0,
            sweep: sweep.then(|| ("alpha".to_string(), 1.0)),
            after: json!({}),
            curve: rewards
                .iter()
                .enumerate()
                .map(|(i, &r)| point(i, r, 0.9))
                .collect(),
            wall_seconds: 1.0,
            peak_rss_mib: 1.0,
        };
        let rs = vec![
            run("A", &[1.0, 4.0, 3.0], false),
            run("B", &[1.0, 2.5], false),
            run("D", &[1.0, 1.5, 2.0], false),
            run("C", &[1.0, 9.5], true), // a sweep run: Fig. 4's, not here
        ];
        assert_eq!(default_level(&rs), Some(2.5));
        let md = section(&rs, 2.5, false);
        assert!(md.contains("| A | 1 of 1 | 0.5 | 2.500 | 90.0 |"), "{md}");
        assert!(md.contains("| B | 1 of 1 | 1.0 | 2.500 |"), "{md}");
        // D never reaches 2.5: its best checkpoint (epoch 2, reward 2.0).
        assert!(md.contains("| D | 0 of 1 | 2.0 | 2.000 |"), "{md}");
        assert!(!md.contains("| C |"), "{md}");
    }
}
