//! Tests of `report.rs`.
use super::*;

/// A run whose metrics follow from its final `reward`; along the curve the reward grows
/// linearly from 0 at epoch 0 to `reward` at epoch 3.
pub fn run(label: &str, seed: u64, sweep: Option<f64>, reward: f64) -> RunResult {
    let m = |r: f64| {
        json!({"reward": r, "gold": r, "alignment_prob": 0.9 - 0.1 * r, "alignment_acc": 0.95,
               "diversity_feature": 1.0 / (1.0 + r), "diversity_lpips": 0.3, "frechet": 123456.0 * r,
               "kl": 0.1 * r})
    };
    RunResult {
        label: label.into(),
        seed,
        sweep: sweep.map(|v| ("alpha".into(), v)),
        after: m(reward),
        curve: (0..4).map(|e| (e, m(reward * e as f64 / 3.0))).collect(),
        wall_seconds: 120.0,
        peak_rss_mib: 512.0,
    }
}

fn cells(line: &str) -> Vec<String> {
    line.trim_matches('|')
        .split('|')
        .map(|c| c.trim().to_string())
        .collect()
}

#[test]
fn mean_and_population_std_over_seeds() {
    let t = table(&[run("SQDF", 0, None, 1.0), run("SQDF", 1, None, 3.0)]);
    let rows: Vec<&str> = t.lines().collect();
    assert_eq!(rows.len(), 3, "{t}");
    let c = cells(rows[2]);
    assert_eq!(c[0], "SQDF");
    assert_eq!(c[1], "2");
    assert_eq!(c[2], "2.000 ± 1.000");
    assert_eq!(c[4], "95.0 ± 0.0");
    assert_eq!(c[8], "2.47e5 ± 1.23e5");
    assert_eq!(c[10], "2.0 ± 0.0");
    assert_eq!(c[11], "512 ± 0");
    let one = table(&[run("DRaFT-1", 0, None, 0.01)]);
    let c = cells(one.lines().nth(2).unwrap());
    assert_eq!(c[2], "0.010");
    assert_eq!(c[8], "1,234.6");
    assert_eq!(number(-1234567.0, 0, false), "-1,234,567");
    assert_eq!(number(-999.96, 1, false), "-1,000.0");
}

#[test]
fn rows_grouped_by_label_and_sweep_in_first_appearance_order() {
    let rs = [
        run("SQDF", 0, Some(2.0), 1.0),
        run("DRaFT-1", 0, None, 1.0),
        run("SQDF", 0, Some(0.5), 1.0),
        run("SQDF", 1, Some(2.0), 1.0),
        run("DRaFT-1", 1, None, 1.0),
    ];
    let t = table(&rs);
    let rows: Vec<Vec<String>> = t.lines().skip(2).map(cells).collect();
    let names: Vec<String> = rows.iter().map(|c| format!("{}/{}", c[0], c[1])).collect();
    assert_eq!(
        names,
        ["SQDF (alpha = 2)/2", "DRaFT-1/2", "SQDF (alpha = 0.5)/1"]
    );
}

#[test]
fn missing_and_nan_metrics_show_as_dash_or_count() {
    let mut a = run("SQDF", 0, None, 1.0);
    let mut b = run("SQDF", 1, None, 3.0);
    for r in [&mut a, &mut b] {
        r.after["gold"] = Json::Null;
        r.after.as_object_mut().unwrap().remove("kl");
    }
    a.after["reward"] = json!(f64::NAN);
    b.wall_seconds = f64::NAN;
    let c = cells(table(&[a, b]).lines().nth(2).unwrap());
    assert_eq!(c[2], "3.000 (n=1)");
    assert_eq!(c[3], "–");
    assert_eq!(c[9], "–");
    assert_eq!(c[10], "2.0 (n=1)");
}

#[test]
fn a_black_box_table_counts_queries_and_names_gold_the_oracle_reward() {
    let header = |t: String| cells(t.lines().next().unwrap());
    let plain = header(table(&[run("SQDF", 0, None, 1.0)]));
    assert_eq!(plain[3], "gold");
    assert!(!plain.contains(&"queries used".to_string()));
    let mut bb = run("SQDF-UCB", 0, None, 1.0);
    bb.after["queries_used"] = json!(1920);
    bb.after["oracle"] = json!("gold");
    let t = table(&[bb.clone()]);
    let h = header(t.clone());
    assert_eq!(h[3], "oracle reward (gold)");
    assert_eq!(h.last().unwrap(), "queries used");
    assert_eq!(cells(t.lines().nth(2).unwrap()).last().unwrap(), "1,920");
    // The learned reward as the oracle: the gold column is not the oracle's reward.
    let mut learned = bb.clone();
    learned.after["oracle"] = json!("learned");
    let h = header(table(&[bb.clone(), learned]));
    assert_eq!(
        (h[3].as_str(), h.last().unwrap().as_str()),
        ("gold", "queries used")
    );
    bb.after.as_object_mut().unwrap().remove("oracle");
    assert_eq!(header(table(&[bb]))[3], "gold");
}

#[test]
fn report_and_results_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let rs = vec![run("SQDF", 0, None, 1.0), run("SQDF", 0, Some(2.0), 2.0)];
    write_report(&rs, dir.path(), "digits", "Two methods.", None).unwrap();
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(md.starts_with("# digits\n\nTwo methods.\n"));
    assert!(md.contains(FIG3) && md.contains(FIG4));
    assert!(dir.path().join(FIG3).exists() && dir.path().join(FIG4).exists());
    let back = read_results(&dir.path().join("results.json")).unwrap();
    assert_eq!(table(&back), table(&rs));
    assert_eq!(back[1].sweep, Some(("alpha".to_string(), 2.0)));
    assert_eq!(back[0].curve, rs[0].curve);
    write_report(&rs[..1], dir.path(), "t", "", Some(1.0)).unwrap();
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(!md.contains(FIG4));
}
