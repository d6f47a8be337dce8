//! Black-box runs (Algorithm 2) on tiny digits weights: the oracle's counter stops a run
//! that would pass its budget; a round labels its queries, refits the surrogate and empties
//! the buffer; with `kl_reference = "previous"` the KL's reference moves to the policy at a
//! round. (The surrogate's own properties are in tests/blackbox_surrogate.rs.)

use crate::common;

use candle_core::{Device, Tensor};
use sqdf::rng::{randn, seeded};

/// A digits script on tiny weights whose reward is `reward` (Lua) and `extra` config.
fn script(dir: &std::path::Path, reward: &str, extra: &str) -> std::path::PathBuf {
    let w = common::tiny_digits_weights(dir);
    let src = common::digits_script(&w, extra).replace(
        "return rewards.learned(x0) * 10",
        &format!("return {reward}"),
    );
    common::write_script(dir, "bb.lua", &src)
}

/// PPO+KL's way: the reward hook queries the oracle on every sampled batch, and the loss
/// (DDPO's) trains on the rewards stored then, never calling the reward hook.
fn oracle_script(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let s = script(
        dir,
        "rewards.oracle(x0) * 10",
        &format!("update_on = \"trajectories\", {extra}"),
    );
    let src = std::fs::read_to_string(&s).unwrap().replace(
        "loss = sqdf.loss",
        "loss = require(\"baselines.ddpo\").loss",
    );
    std::fs::write(&s, src).unwrap();
    s
}

#[test]
fn the_query_counter_stops_a_run_past_its_budget() {
    let dir = tempfile::tempdir().unwrap();
    // 4 queries per epoch (the batch).
    let s = oracle_script(dir.path(), "oracle_budget = 6");
    let (mut t, _) = common::trainer(&s, &dir.path().join("run"), &[]);
    // Loading ran the hooks (smoke test): that is no query.
    assert_eq!(t.rounds.as_ref().unwrap().oracle.used(), 0);
    t.run_epoch().unwrap();
    assert_eq!(t.rounds.as_ref().unwrap().oracle.used(), 4);
    let e = format!("{:#}", t.run_epoch().unwrap_err());
    assert!(e.contains("oracle budget exceeded: 4 of 6"), "{e}");
    assert_eq!(t.rounds.as_ref().unwrap().oracle.used(), 4);
}

#[test]
fn a_loss_that_queries_the_oracle_is_refused() {
    // SQDF's loss calls the reward hook on its x0 estimate: with the oracle as the reward,
    // every update would take labels the budget never counted. The smoke test runs the
    // loss as an update does, so the script is refused before anything is sampled.
    let dir = tempfile::tempdir().unwrap();
    let s = script(dir.path(), "rewards.oracle(x0) * 10", "oracle_budget = 100");
    let (o, _) = common::quiet_options(&s, &dir.path().join("run"), &[]);
    let e = format!("{:#}", sqdf::train::Trainer::new(o).err().unwrap());
    assert!(
        e.contains("rewards.oracle was called during an update (the loss hook)"),
        "{e}"
    );

    // A loss that queries it only from the second epoch on passes the smoke test and is
    // stopped at that update; the refused call counts nothing.
    let s = script(
        dir.path(),
        "rewards.surrogate(x0) * 10",
        "queries = {5}, round_epochs = 1",
    );
    let src = std::fs::read_to_string(&s).unwrap().replace(
        "loss = sqdf.loss,",
        "loss = function(batch, ctx)\n    if ctx.epoch >= 1 then rewards.oracle(tensor.zeros(1, 1, 28, 28)) end\n    return sqdf.loss(batch, ctx)\n  end,",
    );
    std::fs::write(&s, src).unwrap();
    let (mut t, _) = common::trainer(&s, &dir.path().join("late"), &[]);
    t.run_epoch().unwrap();
    let e = format!("{:#}", t.run_epoch().unwrap_err());
    assert!(
        e.contains("rewards.oracle was called during an update"),
        "{e}"
    );
    let rounds = t.rounds.as_ref().unwrap();
    assert_eq!(rounds.oracle.used(), 5);
    // Once the update is over the oracle reads again (noise-free, uncounted): evaluations.
    let oracle = rounds
        .rewards()
        .into_iter()
        .find(|(k, _)| k == "oracle")
        .unwrap()
        .1;
    oracle(
        &randn(&mut seeded(3), (2, 1, 28, 28), &Device::Cpu).unwrap(),
        None,
    )
    .unwrap();
    assert_eq!(rounds.oracle.used(), 5);
}

#[test]
fn the_reward_that_plays_the_oracle_is_hidden_from_a_black_box_script() {
    let dir = tempfile::tempdir().unwrap();
    let s = script(
        dir.path(),
        "rewards.gold(x0) * 10",
        "queries = {5}, round_epochs = 1",
    );
    let (o, _) = common::quiet_options(&s, &dir.path().join("run"), &[]);
    let e = format!("{:#}", sqdf::train::Trainer::new(o).err().unwrap());
    assert!(
        e.contains("rewards.gold plays the oracle in this run (config.oracle)"),
        "{e}"
    );
    // With another oracle the gold score is an ordinary (known) reward.
    let (o, _) = common::quiet_options(&s, &dir.path().join("run2"), &["oracle=learned"]);
    sqdf::train::Trainer::new(o).unwrap_or_else(|e| panic!("{e:#}"));
}

#[test]
fn a_round_past_the_budget_stops_the_run_and_counts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = script(
        dir.path(),
        "rewards.surrogate(x0) * 10",
        "queries = {5, 7}, round_epochs = 1, oracle_budget = 8",
    );
    let (mut t, _) = common::trainer(&s, &dir.path().join("run"), &[]);
    t.run_epoch().unwrap();
    let e = format!("{:#}", t.run_epoch().unwrap_err());
    assert!(
        e.contains("oracle budget exceeded: 5 of 8 queries used, 7 more asked"),
        "{e}"
    );
    assert_eq!(t.rounds.as_ref().unwrap().oracle.used(), 5);
}

#[test]
fn buffer_reward_decides_what_the_buffer_stores_and_oracle_labels_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let s = script(
        dir.path(),
        "rewards.surrogate(x0) * 10",
        "queries = {5}, round_epochs = 1, oracle_budget = 9",
    );
    // The oracle's labels (times 0, plus 7: a value the surrogate never gives) go to the
    // buffer; the loss still optimises the surrogate.
    let src = std::fs::read_to_string(&s).unwrap().replacen(
        "reward = function",
        "buffer_reward = function(x0, cond, cfg)\n    return rewards.oracle(x0) * 0 + 7\n  end,\n  reward = function",
        1,
    );
    std::fs::write(&s, src).unwrap();
    let (mut t, _) = common::trainer(&s, &dir.path().join("run"), &[]);
    t.run_epoch().unwrap();
    // 5 for the round, 4 for the epoch's batch of 4 stored trajectories.
    assert_eq!(t.rounds.as_ref().unwrap().oracle.used(), 9);
    let (_, stored) = t.buffer.rewards_in_push_order();
    assert_eq!(stored, [7.0; 4]);
    // A second epoch would store 4 more: past the budget of 9.
    let e = format!("{:#}", t.run_epoch().unwrap_err());
    assert!(e.contains("oracle budget exceeded: 9 of 9"), "{e}");

    let bad = std::fs::read_to_string(&s)
        .unwrap()
        .replace("return rewards.oracle(x0) * 0 + 7", "return 7");
    std::fs::write(&s, bad).unwrap();
    let (o, _) = common::quiet_options(&s, &dir.path().join("bad"), &[]);
    let e = format!("{:#}", sqdf::train::Trainer::new(o).err().unwrap());
    assert!(
        e.contains("hook `buffer_reward` returned an integer, expected a tensor of shape"),
        "{e}"
    );
}

#[test]
fn a_round_labels_its_queries_refits_and_empties_the_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let s = script(
        dir.path(),
        "rewards.surrogate(x0) * 10",
        "queries = {5, 7}, round_epochs = 1, oracle_noise = 0.01",
    );
    let (mut t, _) = common::trainer(&s, &dir.path().join("run"), &[]);
    let m1 = t.run_epoch().unwrap().to_json();
    assert_eq!(
        (m1["round"].as_u64(), m1["queries_used"].as_u64()),
        (Some(1), Some(5))
    );
    assert_eq!(t.optim.step, 2, "2 updates a round");
    assert!(t
        .rounds
        .as_ref()
        .unwrap()
        .surrogate
        .read()
        .unwrap()
        .surrogate
        .is_fitted());
    let m2 = t.run_epoch().unwrap().to_json();
    assert_eq!(
        (m2["round"].as_u64(), m2["labelled"].as_u64()),
        (Some(2), Some(12))
    );
    assert_eq!(m2["queries_used"].as_u64(), Some(12));
    // buffer_reset (default): only this epoch's batch is left.
    assert_eq!(t.buffer.len(), 4);
    // optimizer_reset (default): AdamW restarted at the round (bias correction included).
    assert_eq!(t.optim.step, 2);
    assert!(m2["surrogate_held_out_mse"].as_f64().unwrap().is_finite());
    // A third epoch has no round left and queries nothing.
    let m3 = t.run_epoch().unwrap().to_json();
    assert!(m3.get("round").is_none());
    assert_eq!(m3["queries_used"].as_u64(), Some(12));
    assert_eq!(t.optim.step, 4, "no round, no restart");
}

#[test]
fn without_optimizer_reset_adamw_runs_on_across_rounds() {
    let dir = tempfile::tempdir().unwrap();
    let s = script(
        dir.path(),
        "rewards.surrogate(x0) * 10",
        "queries = {5, 7}, round_epochs = 1, optimizer_reset = false",
    );
    let (mut t, _) = common::trainer(&s, &dir.path().join("run"), &[]);
    t.run_epoch().unwrap();
    t.run_epoch().unwrap();
    assert_eq!(t.optim.step, 4);
}

#[test]
fn the_previous_round_reference_moves_to_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let s = script(
        dir.path(),
        "rewards.surrogate(x0) * 10",
        "queries = {4, 4}, round_epochs = 1, kl_reference = \"previous\", weight_decay = 0",
    );
    let (mut t, _) = common::trainer(&s, &dir.path().join("run"), &[]);
    let dev = Device::Cpu;
    let x = randn(&mut seeded(1), (2, 1, 28, 28), &dev).unwrap();
    let tt = Tensor::new(&[300f32, 700.], &dev).unwrap();
    let c = Tensor::new(&[1u32, 2], &dev).unwrap();
    let eps = |net: &std::sync::Arc<dyn sqdf::models::Denoiser>| net.eps(&x, &tt, &c).unwrap();
    let models = t.models.clone();
    let previous = || models.previous.as_ref().unwrap().0.clone();
    t.run_epoch().unwrap();
    // After a round's epoch the policy has moved away from the reference it started from.
    assert!(common::max_abs_diff(&eps(&models.policy), &eps(&previous())) > 0.0);
    t.start_round().unwrap();
    assert_eq!(
        common::max_abs_diff(&eps(&models.policy), &eps(&previous())),
        0.0,
        "at a round the reference becomes the policy"
    );
    assert!(common::max_abs_diff(&eps(&models.reference), &eps(&previous())) > 0.0);
}

/// Runs the script `make` writes straight for `epochs`, and split (stopped after `split_at`
/// epochs, then resumed); every checkpoint tensor, the round and the oracle's count must be
/// equal, and the count `used_at_split` at the split and `used` at the end.
fn resume_matches_a_straight_run(
    make: &dyn Fn(&std::path::Path) -> std::path::PathBuf,
    epochs: usize,
    split_at: usize,
    used_at_split: usize,
    used: usize,
) {
    let dir = tempfile::tempdir().unwrap();
    let s = make(dir.path());
    let (straight, split) = (dir.path().join("straight"), dir.path().join("split"));
    let total = format!("epochs={epochs}");
    let (mut a, _) = common::trainer(&s, &straight, &[&total]);
    a.run().unwrap();
    assert_eq!(a.rounds.as_ref().unwrap().oracle.used(), used);
    drop(a);
    let (mut b, _) = common::trainer(&s, &split, &[&format!("epochs={split_at}")]);
    b.run().unwrap();
    drop(b);
    let (mut o, _) = common::quiet_options(&s, &split, &[&total]);
    o.resume = Some(split.clone());
    o.out = None;
    let mut c = sqdf::train::Trainer::new(o).unwrap();
    assert_eq!(c.epoch, split_at);
    assert_eq!(c.rounds.as_ref().unwrap().oracle.used(), used_at_split);
    c.run().unwrap();
    assert_eq!(c.rounds.as_ref().unwrap().oracle.used(), used);

    use sqdf::train::checkpoint;
    let x = checkpoint::load(&straight.join(checkpoint::FILE)).unwrap();
    let y = checkpoint::load(&split.join(checkpoint::FILE)).unwrap();
    assert_eq!(x.tensors.len(), y.tensors.len());
    // Runs with rounds (all of them with kl_reference = "previous") keep their labels and
    // the previous round's policy.
    if x.state.blackbox.as_ref().unwrap().round > 0 {
        assert!(
            x.tensors.contains_key("blackbox.labels")
                && x.tensors.keys().any(|k| k.starts_with("previous."))
        );
    }
    for (k, t) in &x.tensors {
        assert_eq!(
            common::max_abs_diff(t, &y.tensors[k]),
            0.0,
            "{k} differs after resume"
        );
    }
    let (p, q) = (x.state.blackbox.unwrap(), y.state.blackbox.unwrap());
    assert_eq!((p.round, p.oracle_used), (q.round, q.oracle_used));
}

#[test]
fn a_resumed_black_box_run_continues_where_it_stopped() {
    // Rounds at epochs 0 and 2; the split run stops after epoch 1 and resumes mid-round
    // (epoch 1 trains on the restored surrogate against the restored previous policy),
    // then starts round 2 (the restored labelled set, the oracle's count and noise).
    resume_matches_a_straight_run(
        &|d| {
            script(d, "rewards.surrogate(x0) * 10", "queries = {5, 7}, round_epochs = 2, oracle_noise = 0.01, kl_reference = \"previous\", eval_per_prompt = 2")
        },
        3,
        1,
        5,
        12,
    );
}

#[test]
fn a_black_box_run_resumed_after_two_rounds_restores_the_warm_started_surrogate() {
    // The surrogate's fits warm-start from the round before, so after two rounds the
    // restored surrogate is right only if every round's fit is replayed on the labels that
    // round had (a single refit on all labels gives another surrogate).
    resume_matches_a_straight_run(
        &|d| {
            script(d, "rewards.surrogate(x0) * 10", "queries = {5, 7, 6}, round_epochs = 1, oracle_noise = 0.01, kl_reference = \"previous\", eval_per_prompt = 2")
        },
        3,
        2,
        12,
        18,
    );
}

#[test]
fn a_resumed_oracle_run_with_evaluations_continues_where_it_stopped() {
    // PPO+KL's way (the reward hook queries the oracle), evaluated after every epoch: an
    // evaluation measures the oracle without drawing its label noise, so the run stopped
    // after epoch 1 (checkpoint, then evaluation) and resumed labels epoch 2 as a straight
    // run does.
    resume_matches_a_straight_run(
        &|d| {
            oracle_script(
                d,
                "oracle_budget = 100, oracle_noise = 0.01, evals = 3, eval_per_prompt = 2",
            )
        },
        3,
        1,
        4,
        12,
    );
}

#[test]
fn sqdf_eval_of_a_black_box_checkpoint_scores_under_the_runs_own_surrogate() {
    let dir = tempfile::tempdir().unwrap();
    let s = script(
        dir.path(),
        "rewards.surrogate(x0) * 10",
        "queries = {5, 7}, round_epochs = 1, oracle_noise = 0.01, eval_per_prompt = 2",
    );
    let run = dir.path().join("run");
    // The run's surrogate is a UCB one; the script's default is bootstrap.
    let (mut t, _) = common::trainer(&s, &run, &["uncertainty=ucb"]);
    t.run().unwrap();
    drop(t);
    let after: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("eval.json")).unwrap()).unwrap();
    let ck = run.join(sqdf::train::checkpoint::FILE);
    let log = sqdf::run_log::RunLog::captured();
    let v = sqdf::cli::eval::evaluate(&s, Some(&ck), &[], &dir.path().join("e"), log)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let r = v["reward"].as_f64().unwrap();
    assert_ne!(r, 0.0, "scored under an unfitted surrogate");
    assert_eq!(r, after["after"]["reward"].as_f64().unwrap());
    assert_eq!(v["gold"], after["after"]["gold"]);
    // A checkpoint of a run with a known reward has no surrogate to score under.
    let other = tempfile::tempdir().unwrap();
    let plain = other.path().join("plain");
    let p = script(
        other.path(),
        "rewards.learned(x0) * 10",
        "eval_per_prompt = 2",
    );
    let (mut t, _) = common::trainer(&p, &plain, &["epochs=1"]);
    t.run().unwrap();
    drop(t);
    // The black-box checkpoint under a script with a known reward: its policy, scored by
    // that reward (no surrogate involved).
    let v = sqdf::cli::eval::evaluate(
        &p,
        Some(&run.join(sqdf::train::checkpoint::FILE)),
        &[],
        &dir.path().join("e1"),
        sqdf::run_log::RunLog::captured(),
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(v["gold"], after["after"]["gold"]);
    let ck = plain.join(sqdf::train::checkpoint::FILE);
    let e = sqdf::cli::eval::evaluate(
        &s,
        Some(&ck),
        &[],
        &dir.path().join("e2"),
        sqdf::run_log::RunLog::captured(),
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("has no black-box state"), "{e:#}");
}

#[test]
fn a_reload_whose_loss_queries_the_oracle_is_rejected_and_training_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let s = script(
        dir.path(),
        "rewards.surrogate(x0) * 10",
        "queries = {5}, round_epochs = 1, epochs = 3",
    );
    let good = std::fs::read_to_string(&s).unwrap();
    let (mut o, log) = common::quiet_options(&s, &dir.path().join("run"), &[]);
    o.watch = true;
    let mut t = sqdf::train::Trainer::new(o).unwrap();
    t.run_epoch().unwrap();
    let bad = good.replace(
        "loss = sqdf.loss,",
        "loss = function(batch, ctx)\n    rewards.oracle(tensor.zeros(1, 1, 28, 28))\n    return sqdf.loss(batch, ctx)\n  end,",
    );
    std::fs::write(&s, bad).unwrap();
    let start = std::time::Instant::now();
    let outcome = loop {
        match t.maybe_reload() {
            sqdf::train::trainer::ReloadOutcome::NoChange
                if start.elapsed() < std::time::Duration::from_secs(20) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50))
            }
            other => break other,
        }
    };
    assert_eq!(outcome, sqdf::train::trainer::ReloadOutcome::Rejected);
    let lines = log.lines().join("\n");
    assert!(
        lines.contains("rewards.oracle was called during an update"),
        "{lines}"
    );
    // The last good version trains on, and the smoke test counted no query.
    let m = t.run_epoch().unwrap();
    assert_eq!(m.script_generation, 1);
    assert_eq!(t.rounds.as_ref().unwrap().oracle.used(), 5);
}
