//! `mpirun -n 2 sqdf run`: one model trained on two ranks. Each rank computes half of every
//! batch with the noise streams of those rows, and the gradients are summed in rank order,
//! which is exactly the sum one process makes over two micro-batches of half the batch: the
//! run state after any number of epochs is bitwise that process's. Against one process
//! taking the whole batch at once only the order of float additions differs.

use super::{finish_within, mpirun, sqdf};
use crate::common::*;
use safetensors::SafeTensors;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(300);

/// The tiny toy run's batch is 6: one process with micro-batches of 3 computes what each of
/// two ranks computes.
const HALF_BATCH: &str = "micro_batch=3";

/// `sqdf run SCRIPT --out OUT --no-watch` with `--set`s, on `ranks` processes (0: without
/// mpirun).
fn run(ranks: usize, script: &Path, out: &Path, sets: &[&str], resume: bool) -> Output {
    let mut cmd = match ranks {
        0 => sqdf(),
        n => mpirun(n),
    };
    cmd.args(["--quiet", "run"]).arg(script).arg("--no-watch");
    cmd.arg(if resume { "--resume" } else { "--out" }).arg(out);
    for s in sets {
        cmd.args(["--set", s]);
    }
    finish_within(cmd, LIMIT)
}

fn ok(o: &Output) {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Every tensor of a run's checkpoint (weights, AdamW moments, replay buffer) as bytes, and
/// the RNG state.
fn run_state(dir: &Path) -> (Vec<(String, Vec<u8>)>, serde_json::Value) {
    let bytes = std::fs::read(dir.join("checkpoint.safetensors")).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, v.data().to_vec()))
        .collect();
    tensors.sort();
    let state: serde_json::Value =
        serde_json::from_str(&meta.metadata().as_ref().unwrap()["sqdf"]).unwrap();
    (tensors, state["rng"].clone())
}

/// The largest |a - b| over the policy's weights, relative to the largest |a|.
fn policy_difference(a: &Path, b: &Path) -> f64 {
    let (ta, _) = run_state(a);
    let (tb, _) = run_state(b);
    let floats = |v: &[u8]| -> Vec<f32> {
        v.chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let (mut diff, mut scale) = (0f64, 0f64);
    for ((ka, va), (kb, vb)) in ta.iter().zip(&tb) {
        assert_eq!(ka, kb);
        if !ka.starts_with("policy.") {
            continue;
        }
        for (x, y) in floats(va).iter().zip(floats(vb)) {
            diff = diff.max((x - y).abs() as f64);
            scale = scale.max(x.abs() as f64);
        }
    }
    diff / scale
}

fn toy_script(dir: &Path, extra: &str) -> PathBuf {
    let w = tiny_weights(dir);
    write_script(dir, "toy.lua", &standard_script(&w, extra))
}

/// DRaFT-1 (an on-policy baseline: each update takes the epoch's trajectories) on the toy.
fn draft_script(dir: &Path) -> PathBuf {
    let w = tiny_weights(dir);
    let src = format!(
        r#"local draft = require("baselines.draft")
local W = tensor.from({{ {{ 1.0 }}, {{ 0.5 }} }})
return {{
  config = {{ {base}, update_on = "trajectories", alpha = 0, params = {{ K = 1 }} }},
  reward = function(x0, cond, cfg) return x0:matmul(W):squeeze(2) end,
  loss = draft.loss,
  discount = draft.discount,
  priority = draft.priority,
}}
"#,
        base = tiny_config_lua(&w).replace(", alpha = 1.0", "")
    );
    write_script(dir, "draft.lua", &src)
}

/// Two ranks against one process: bitwise equal to half-batch micro-batches, and within
/// float rounding of the whole batch at once.
fn two_ranks_train_as_one_process(script: &Path, dir: &Path) {
    let (two, half, whole) = (dir.join("two"), dir.join("half"), dir.join("whole"));
    ok(&run(2, script, &two, &[], false));
    ok(&run(0, script, &half, &[HALF_BATCH], false));
    ok(&run(0, script, &whole, &[], false));
    assert!(
        run_state(&two) == run_state(&half),
        "2 ranks differ from 1 process"
    );
    let d = policy_difference(&two, &whole);
    assert!(d < 1e-3, "2 ranks vs the whole batch at once: {d:e}");
    // Rank 0 alone wrote the folder: one line per epoch, one evaluation.
    let metrics = std::fs::read_to_string(two.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 3, "{metrics}");
    for line in metrics.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        for k in ["gather_seconds", "grad_sum_seconds"] {
            assert!(v[k].as_f64().is_some_and(|s| s >= 0.0), "{k}: {line}");
        }
    }
    assert!(two.join("eval.json").is_file());
}

#[test]
fn sqdf_on_two_ranks_trains_what_one_process_trains() {
    let dir = tempfile::tempdir().unwrap();
    let script = toy_script(dir.path(), "");
    two_ranks_train_as_one_process(&script, dir.path());
}

#[test]
fn uneven_shares_and_prioritised_replay_train_what_one_process_trains() {
    // Batch 5 on 2 ranks: shares of 3 and 2, one process's micro-batches of 3.
    let dir = tempfile::tempdir().unwrap();
    let script = toy_script(dir.path(), "batch = 5, sampling = \"priority\"");
    let (two, half) = (dir.path().join("two"), dir.path().join("half"));
    ok(&run(2, &script, &two, &[], false));
    ok(&run(0, &script, &half, &[HALF_BATCH], false));
    assert!(
        run_state(&two) == run_state(&half),
        "2 ranks differ from 1 process"
    );
}

#[test]
fn draft_on_two_ranks_trains_what_one_process_trains() {
    let dir = tempfile::tempdir().unwrap();
    let script = draft_script(dir.path());
    two_ranks_train_as_one_process(&script, dir.path());
}

#[test]
fn a_run_resumed_on_two_ranks_or_on_one_continues_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let script = toy_script(dir.path(), "");
    let (straight, resumed) = (dir.path().join("straight"), dir.path().join("resumed"));
    ok(&run(2, &script, &straight, &["epochs=4"], false));
    ok(&run(2, &script, &resumed, &["epochs=2"], false));
    ok(&run(2, &script, &resumed, &["epochs=4"], true));
    assert!(run_state(&straight) == run_state(&resumed));
    // The checkpoint is the whole state whatever the number of ranks: one process with
    // half-batch micro-batches goes on from a 2-rank checkpoint.
    let on_one = dir.path().join("on_one");
    ok(&run(2, &script, &on_one, &["epochs=2"], false));
    ok(&run(0, &script, &on_one, &["epochs=4", HALF_BATCH], true));
    assert!(run_state(&straight).0 == run_state(&on_one).0);
}

#[test]
fn a_rank_that_fails_stops_every_rank_and_the_checkpoint_stays() {
    let dir = tempfile::tempdir().unwrap();
    let w = tiny_weights(dir.path());
    // Rank 1's loss fails in the second epoch, after the first epoch's checkpoint.
    let src = standard_script(&w, "").replace(
        "loss = sqdf.loss,",
        r#"loss = function(batch, ctx)
    if ctx.rank == 1 and ctx.epoch == 1 then error("boom on rank 1") end
    return sqdf.loss(batch, ctx)
  end,"#,
    );
    let script = write_script(dir.path(), "fails.lua", &src);
    let out = dir.path().join("out");
    let o = run(2, &script, &out, &[], false);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("error (rank 1)") && err.contains("boom on rank 1"),
        "{err}"
    );
    let state = run_state(&out);
    assert!(!state.0.is_empty());
    let meta = std::fs::read(out.join("checkpoint.safetensors")).unwrap();
    let (_, m) = SafeTensors::read_metadata(&meta).unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&m.metadata().as_ref().unwrap()["sqdf"]).unwrap();
    assert_eq!(v["epoch"], 1, "the last checkpoint is the first epoch's");
}

#[test]
fn a_reload_reaches_every_rank_at_the_same_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let w = tiny_weights(dir.path());
    let extra = "epochs = 400, eval_samples = 8";
    let version = |tag: &str| {
        standard_script(&w, extra).replace(
            "loss = sqdf.loss,",
            &format!(
                r#"loss = function(batch, ctx)
    local loss, stats = sqdf.loss(batch, ctx)
    stats.{tag} = 1
    return loss, stats
  end,"#
            ),
        )
    };
    let script = write_script(dir.path(), "live.lua", &version("old"));
    let out = dir.path().join("out");
    let mut cmd = mpirun(2);
    cmd.args(["--quiet", "run"])
        .arg(&script)
        .arg("--out")
        .arg(&out);
    let child = std::thread::spawn(move || finish_within(cmd, LIMIT));
    // Edit the script once the run is under way.
    let metrics = out.join("metrics.jsonl");
    let start = std::time::Instant::now();
    while std::fs::read_to_string(&metrics).map_or(0, |m| m.lines().count()) < 2 {
        assert!(
            !child.is_finished(),
            "the run ended before its second epoch"
        );
        assert!(start.elapsed() < LIMIT, "no second epoch after {LIMIT:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::write(&script, version("new")).unwrap();
    ok(&child.join().unwrap());
    // A logged number is the sum of the ranks' shares (each half of the batch): 1 where
    // both ranks ran that version, 0.5 had rank 1 kept the old one.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&metrics)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let first_new = lines
        .iter()
        .position(|l| l.get("new").is_some())
        .expect("the edit was reloaded before the run ended");
    for l in &lines[first_new..] {
        assert_eq!(l["new"], 1.0, "{l}");
        assert!(l.get("old").is_none(), "{l}");
        assert_eq!(l["script_generation"], 2, "{l}");
    }
    for l in &lines[..first_new] {
        assert_eq!(l["old"], 1.0, "{l}");
    }
}
