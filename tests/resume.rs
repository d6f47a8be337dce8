//! A resumed run continues where it stopped: 2 epochs, resume, 2 more epochs give the same
//! weights, buffer and metrics as 4 epochs straight.

mod common;

use sqdf::train::checkpoint;
use sqdf::train::Trainer;

fn metrics(dir: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("seconds");
            v
        })
        .collect()
}

#[test]
fn resume_equals_a_straight_run() {
    let dir = tempfile::tempdir().unwrap();
    let w = common::tiny_weights(dir.path());
    // Prioritised sampling: the resumed buffer must rebuild the same sum-tree.
    let script = common::write_script(
        dir.path(),
        "exp.lua",
        &common::standard_script(&w, "sampling = \"priority\""),
    );
    let straight = dir.path().join("straight");
    let split = dir.path().join("split");

    let (mut a, _) = common::trainer(&script, &straight, &["epochs=4"]);
    a.run().unwrap();
    drop(a);

    let (mut b, _) = common::trainer(&script, &split, &["epochs=2"]);
    b.run().unwrap();
    drop(b);
    let (mut o, _) = common::quiet_options(&script, &split, &["epochs=4"]);
    o.resume = Some(split.clone());
    o.out = None;
    let mut c = Trainer::new(o).unwrap();
    assert_eq!(c.epoch, 2);
    c.run().unwrap();

    let x = checkpoint::load(&straight.join(checkpoint::FILE)).unwrap();
    let y = checkpoint::load(&split.join(checkpoint::FILE)).unwrap();
    assert_eq!(x.state.epoch, 4);
    assert_eq!(y.state.epoch, 4);
    assert_eq!(x.tensors.len(), y.tensors.len());
    for (k, t) in &x.tensors {
        let u = &y.tensors[k];
        assert_eq!(common::max_abs_diff(t, u), 0.0, "{k} differs after resume");
    }
    assert_eq!(metrics(&straight), metrics(&split));
    let e1: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(straight.join("eval.json")).unwrap())
            .unwrap();
    let e2: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(split.join("eval.json")).unwrap()).unwrap();
    assert_eq!(e1["after"], e2["after"]);
    assert_eq!(e1["before"], e2["before"]);
}

#[test]
fn resume_refuses_a_changed_unsafe_key() {
    let dir = tempfile::tempdir().unwrap();
    let w = common::tiny_weights(dir.path());
    let script = common::write_script(dir.path(), "exp.lua", &common::standard_script(&w, ""));
    let out = dir.path().join("run");
    let (mut a, _) = common::trainer(&script, &out, &["epochs=1"]);
    a.run().unwrap();
    let (mut o, _) = common::quiet_options(&script, &out, &["epochs=2", "seed=5"]);
    o.resume = Some(out.clone());
    let e = format!(
        "{:#}",
        Trainer::new(o)
            .err()
            .expect("resume with another seed must fail")
    );
    assert!(
        e.contains("config.seed was 0 in the checkpoint and is 5 now"),
        "{e}"
    );
}

/// A run started again (not resumed) in a folder whose first start was killed before its
/// checkpoint: the earlier start's epochs leave metrics.jsonl, so the comparison's training
/// time (the sum of the epochs' seconds) counts this start alone.
#[test]
fn a_fresh_start_in_an_old_folder_drops_the_old_epochs() {
    let dir = tempfile::tempdir().unwrap();
    let w = common::tiny_weights(dir.path());
    let script = common::write_script(dir.path(), "exp.lua", &common::standard_script(&w, ""));
    let out = dir.path().join("run");
    let (mut a, _) = common::trainer(&script, &out, &["epochs=3"]);
    a.run().unwrap();
    drop(a);
    assert_eq!(metrics(&out).len(), 3);
    std::fs::remove_file(out.join(checkpoint::FILE)).unwrap();
    std::fs::remove_file(out.join("eval.json")).unwrap();
    let (mut b, _) = common::trainer(&script, &out, &["epochs=2"]);
    b.run().unwrap();
    let epochs: Vec<u64> = metrics(&out)
        .iter()
        .map(|m| m["epoch"].as_u64().unwrap())
        .collect();
    assert_eq!(epochs, vec![1, 2]);
}
