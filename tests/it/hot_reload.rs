//! Editing the script during a run: a broken version is rejected with file:line and the
//! run goes on with the last good one; a good version bumps the generation, its live config
//! takes effect and the buffer's priorities follow the new hook; unsafe keys are refused.

use crate::common;

use sqdf::replay::StateRef;
use sqdf::train::trainer::ReloadOutcome;
use sqdf::train::Trainer;
use std::time::{Duration, Instant};

/// Calls maybe_reload until the watcher's event arrives and the reload is decided.
fn wait_reload(t: &mut Trainer) -> ReloadOutcome {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        match t.maybe_reload() {
            ReloadOutcome::NoChange => std::thread::sleep(Duration::from_millis(50)),
            other => return other,
        }
    }
    ReloadOutcome::NoChange
}

#[test]
fn broken_reload_keeps_training_and_good_reload_bumps_generation() {
    let dir = tempfile::tempdir().unwrap();
    let w = common::tiny_weights(dir.path());
    let good = common::standard_script(&w, "sampling = \"priority\"");
    let path = common::write_script(dir.path(), "exp.lua", &good);
    let (mut o, log) = common::quiet_options(&path, &dir.path().join("run"), &[]);
    o.watch = true;
    let mut t = Trainer::new(o).unwrap();
    let m1 = t.run_epoch().unwrap();
    assert_eq!(m1.script_generation, 1);

    // 1. A syntax error on line 3: rejected, the error names file and line, training goes on.
    let broken = good.replacen("return {", "local x = = 1\nreturn {", 1);
    std::fs::write(&path, &broken).unwrap();
    assert_eq!(wait_reload(&mut t), ReloadOutcome::Rejected);
    let lines = log.lines().join("\n");
    assert!(
        lines.contains("reload of") && lines.contains("exp.lua:3:"),
        "{lines}"
    );
    let m2 = t.run_epoch().unwrap();
    assert_eq!(m2.script_generation, 1);
    assert_eq!(t.generation, 1);

    // 2. A runtime error inside a hook: caught by the smoke test, with the hook's name.
    let bad_hook = good.replace(
        "priority = sqdf.priority,",
        "priority = function(s, cfg) return s.nope.x end,",
    );
    std::fs::write(&path, &bad_hook).unwrap();
    assert_eq!(wait_reload(&mut t), ReloadOutcome::Rejected);
    let lines = log.lines().join("\n");
    assert!(
        lines.contains("hook `priority` failed") && lines.contains("exp.lua:"),
        "{lines}"
    );
    t.run_epoch().unwrap();

    // 3. A good edit: new alpha and a new priority function. Generation 2, both in effect.
    let edited = good.replace("alpha = 1.0", "alpha = 0.25").replace(
        "priority = sqdf.priority,",
        "priority = function(s, cfg) return 1 + s.k end,",
    );
    std::fs::write(&path, &edited).unwrap();
    assert_eq!(wait_reload(&mut t), ReloadOutcome::Reloaded);
    assert_eq!(t.generation, 2);
    assert_eq!(t.script.config.alpha, 0.25);
    let steps = t.models.sampler.steps();
    for r in t.buffer.all_states().collect::<Vec<StateRef>>() {
        assert_eq!(
            t.buffer.priority(r),
            (1 + steps - 1 - r.i) as f64,
            "priorities follow the new hook"
        );
    }
    let lines = log.lines().join("\n");
    assert!(
        lines.contains("reloaded") && lines.contains("alpha 1.0 -> 0.25"),
        "{lines}"
    );
    let m = t.run_epoch().unwrap();
    assert_eq!(m.script_generation, 2);

    // 4. An unsafe key (steps) is refused; the run keeps generation 2.
    std::fs::write(&path, edited.replace("steps = 8", "steps = 10")).unwrap();
    assert_eq!(wait_reload(&mut t), ReloadOutcome::Rejected);
    assert!(log
        .lines()
        .join("\n")
        .contains("config.steps cannot change during a run"));
    assert_eq!(t.generation, 2);
    t.run_epoch().unwrap();
}

#[test]
fn modules_the_script_requires_are_watched_too() {
    let dir = tempfile::tempdir().unwrap();
    let w = common::tiny_weights(dir.path());
    std::fs::write(dir.path().join("myreward.lua"), "return { scale = 1.0 }\n").unwrap();
    let src = common::standard_script(&w, "")
        .replace(
            "local sqdf = require(\"sqdf\")",
            "local sqdf = require(\"sqdf\")\nlocal my = require(\"myreward\")",
        )
        .replace(
            "return x0:matmul(W):squeeze(2)",
            "return x0:matmul(W):squeeze(2) * my.scale",
        );
    let path = common::write_script(dir.path(), "exp.lua", &src);
    let (mut o, _) = common::quiet_options(&path, &dir.path().join("run"), &[]);
    o.watch = true;
    let mut t = Trainer::new(o).unwrap();
    t.run_epoch().unwrap();
    std::fs::write(dir.path().join("myreward.lua"), "return { scale = 2.0 }\n").unwrap();
    assert_eq!(wait_reload(&mut t), ReloadOutcome::Reloaded);
    assert_eq!(t.generation, 2);
}

#[test]
fn a_live_size_beyond_its_bound_is_refused_at_reload_and_training_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let w = common::tiny_weights(dir.path());
    let good = common::standard_script(&w, "");
    let path = common::write_script(dir.path(), "exp.lua", &good);
    let (mut o, log) = common::quiet_options(&path, &dir.path().join("run"), &[]);
    o.watch = true;
    let mut t = Trainer::new(o).unwrap();
    t.run_epoch().unwrap();
    // `batch` is live; 2^21 trajectories per epoch is above its cap.
    std::fs::write(&path, good.replace("batch = 6", "batch = 2^21")).unwrap();
    assert_eq!(wait_reload(&mut t), ReloadOutcome::Rejected);
    assert!(
        log.lines()
            .join("\n")
            .contains("exp.lua: config.batch = 2097152 is above its limit of 1048576"),
        "{}",
        log.lines().join("\n")
    );
    assert_eq!(t.script.config.batch, 6);
    assert_eq!(t.run_epoch().unwrap().script_generation, 1);
}

#[test]
fn after_a_burst_of_saves_the_last_version_on_disk_runs() {
    let dir = tempfile::tempdir().unwrap();
    let w = common::tiny_weights(dir.path());
    let good = common::standard_script(&w, "");
    let path = common::write_script(dir.path(), "exp.lua", &good);
    let (mut o, log) = common::quiet_options(&path, &dir.path().join("run"), &[]);
    o.watch = true;
    let mut t = Trainer::new(o).unwrap();
    t.run_epoch().unwrap();
    // A broken version whose top level takes a while, so that the next save lands while
    // it is being loaded; then a good one. Whatever the interleaving, the good one must end
    // up running, and no version is reported rejected that was not read.
    let slow_broken = good.replacen(
        "return {",
        "local n = 0\nfor i = 1, 2e7 do n = n + 1 end\nerror(\"broken on purpose\")\nreturn {",
        1,
    );
    let fixed = good.replace("alpha = 1.0", "alpha = 0.5");
    std::fs::write(&path, &slow_broken).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(300));
            std::fs::write(&path, &fixed).unwrap();
        });
        let start = Instant::now();
        while t.script.config.alpha != 0.5 && start.elapsed() < Duration::from_secs(30) {
            t.maybe_reload();
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    assert_eq!(t.script.config.alpha, 0.5, "{}", log.lines().join("\n"));
    assert_eq!(t.generation, 2);
    // Nothing is pending: no further reload, no rejection of the running version.
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(t.maybe_reload(), ReloadOutcome::NoChange);
}

#[test]
fn discount_and_priority_default_to_lua_sqdf() {
    let dir = tempfile::tempdir().unwrap();
    let w = common::tiny_weights(dir.path());
    let src = common::standard_script(&w, "gamma = 0.5, sampling = \"priority\"")
        .replace("  discount = sqdf.discount,\n", "")
        .replace("  priority = sqdf.priority,\n", "");
    assert!(!src.contains("discount =") && !src.contains("priority ="));
    let path = common::write_script(dir.path(), "exp.lua", &src);
    let (mut t, _) = common::trainer(&path, &dir.path().join("run"), &[]);
    // gamma^k, k = 0 for the last step (lua/sqdf.lua's discount, Eq. 15).
    let steps = t.models.sampler.steps();
    let want: Vec<f64> = (0..steps).map(|k| 0.5f64.powi(k as i32)).collect();
    assert_eq!(t.discounts(), want.as_slice());
    t.run_epoch().unwrap();
    // max(r, 0) * gamma^k for every stored state (lua/sqdf.lua's priority).
    for r in t.buffer.all_states().collect::<Vec<StateRef>>() {
        let k = steps - 1 - r.i;
        let want = (t.buffer.reward(r.slot) as f64).max(0.0) * 0.5f64.powi(k as i32);
        assert!((t.buffer.priority(r) - want).abs() < 1e-12);
    }
}
