//! A short SQDF run on the shipped toy model raises the mean reward, and writes the outputs
//! a run promises (metrics.jsonl, eval.json, plots, checkpoint).

use crate::common;

#[test]
fn a_short_toy_run_raises_the_mean_reward() {
    let root = &common::repo_root();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let (mut t, _) = common::trainer(
        &root.join("scripts/toy_gmm.lua"),
        &out,
        &[
            "epochs=12",
            "eval_samples=500",
            &format!("weights={}", root.join("models/gmm2d").display()),
        ],
    );
    let eval = t.run().unwrap();
    let before = eval.before["reward_mean"].as_f64().unwrap();
    let after = eval.after["reward_mean"].as_f64().unwrap();
    assert!(
        after > before + 0.2,
        "reward before {before}, after {after}"
    );
    for f in [
        "metrics.jsonl",
        "eval.json",
        "samples_before.png",
        "samples_after.png",
        "training_curve.png",
        "checkpoint.safetensors",
        "run.log",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let lines = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    for k in [
        "epoch",
        "reward_mean",
        "reward_std",
        "kl",
        "loss",
        "seconds",
        "script_generation",
    ] {
        assert!(!first[k].is_null(), "metrics.jsonl lacks {k}");
    }
    for k in [
        "reward_mean",
        "loglik_mean",
        "mode_coverage",
        "tv_to_optimum",
    ] {
        assert!(!eval.after[k].is_null(), "eval.json lacks after.{k}");
    }
}
