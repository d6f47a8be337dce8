//! `sqdf compare` end to end on the toy: every run in its own process, evaluations along
//! training, the report with its table and figures, and a second invocation that keeps the
//! finished runs instead of running them again.

use crate::common;

use common::*;
use std::process::Command;

/// The toy script `toy.lua` on tiny weights in `dir`, and the comparison file `cmp.lua`
/// (`comparison`, which names toy.lua); returns the comparison file's path.
fn toy_comparison(dir: &std::path::Path, comparison: &str) -> std::path::PathBuf {
    let w = tiny_weights(dir);
    write_script(dir, "toy.lua", &standard_script(&w, ""));
    write_script(dir, "cmp.lua", comparison)
}

#[test]
fn compare_runs_every_run_writes_the_report_and_keeps_finished_runs() {
    let dir = tempfile::tempdir().unwrap();
    let file = toy_comparison(
        dir.path(),
        r#"return {
  title = "tiny comparison",
  seeds = { 0, 1 },
  evals = 2,
  set = { epochs = 2 },
  quick = { seeds = { 0 }, evals = 1 },
  runs = {
    { label = "SQDF", script = "toy.lua" },
    { label = "Tweedie", script = "toy.lua", set = { x0 = "tweedie" } },
    { label = "SQDF alpha", script = "toy.lua", sweep = { alpha = { 0.5 } }, base = "SQDF" },
  },
}"#,
    );
    let out = dir.path().join("report");
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_sqdf"))
            .args(["--quiet", "compare"])
            .arg(&file)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap()
    };
    let report_only = || {
        Command::new(env!("CARGO_BIN_EXE_sqdf"))
            .args(["--quiet", "compare"])
            .arg(&file)
            .arg("--out")
            .arg(&out)
            .arg("--report-only")
            .output()
            .unwrap()
    };
    // Nothing finished yet: nothing to report, and nothing is run.
    let none = report_only();
    assert!(!none.status.success());
    assert!(String::from_utf8_lossy(&none.stderr).contains("no finished runs"));
    assert!(!out
        .join("runs")
        .join("sqdf-seed0")
        .join("eval.json")
        .exists());
    let first = run();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.starts_with("# tiny comparison"));
    for row in [
        "| SQDF |",
        "| Tweedie |",
        "| SQDF alpha (alpha = 0.5) |",
        "| SQDF alpha (alpha = 1) |",
    ] {
        assert!(report.contains(row), "no row {row} in\n{report}");
    }
    assert!(out.join("fig3_tradeoff_along_training.png").is_file());
    assert!(out.join("fig4_alpha_tradeoff.png").is_file());
    // Two seeds of three runs, each evaluated before training and after epochs 1 and 2.
    let results = sqdf::cli::compare::report::read_results(&out.join("results.json")).unwrap();
    let own: Vec<_> = results
        .iter()
        .filter(|r| r.label != "SQDF alpha" || r.sweep.as_ref().unwrap().1 != 1.0)
        .collect();
    assert_eq!(own.len(), 6);
    for r in &own {
        let epochs: Vec<usize> = r.curve.iter().map(|(e, _)| *e).collect();
        assert_eq!(epochs, vec![0, 1, 2], "{} seed {}", r.label, r.seed);
        assert!(r.peak_rss_mib > 0.0 && r.wall_seconds > 0.0);
    }
    let stamp = |p: &str| {
        std::fs::metadata(out.join("runs").join(p).join("eval.json"))
            .unwrap()
            .modified()
            .unwrap()
    };
    // Seed-major: every method's seed 0 before any seed 1.
    assert!(stamp("sqdf-alpha-alpha-0.5-seed0") < stamp("sqdf-seed1"));
    let before = stamp("tweedie-seed1");
    let second = run();
    assert!(second.status.success());
    assert_eq!(
        stamp("tweedie-seed1"),
        before,
        "a finished run was run again"
    );
    // An unfinished run: --report-only reports the others and leaves it unrun.
    let missing = out.join("runs").join("tweedie-seed1").join("eval.json");
    std::fs::remove_file(&missing).unwrap();
    let partial = report_only();
    assert!(
        partial.status.success(),
        "{}",
        String::from_utf8_lossy(&partial.stderr)
    );
    assert!(!missing.exists());
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("5 of the 6 runs finished"), "{report}");
}

#[test]
fn a_bad_comparison_file_names_the_file_and_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_script(
        dir.path(),
        "cmp.lua",
        r#"return { runs = { { label = "A", script = "missing.lua" } } }"#,
    );
    let out = Command::new(env!("CARGO_BIN_EXE_sqdf"))
        .args(["--quiet", "compare"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cmp.lua: runs[1] (A): script") && err.contains("missing.lua not found"),
        "{err}"
    );
}

/// Killing `sqdf compare` stops the run it is waiting on: an orphaned run would train on
/// beside whatever starts next and slow it (Linux: PR_SET_PDEATHSIG).
#[cfg(target_os = "linux")]
#[test]
fn a_killed_comparison_takes_its_run_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = toy_comparison(
        dir.path(),
        r#"return {
  title = "a long comparison",
  seeds = { 0 },
  set = { epochs = 100000 },
  runs = { { label = "SQDF", script = "toy.lua" } },
}"#,
    );
    let mut parent = Command::new(env!("CARGO_BIN_EXE_sqdf"))
        .args(["--quiet", "compare"])
        .arg(&file)
        .arg("--out")
        .arg(dir.path().join("report"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut run = None;
    let found = wait_until(120, || {
        run = children_of(parent.id()).first().copied();
        run.is_some()
    });
    // The run is training (its log exists) and still alive when the comparison is killed,
    // so only the parent's death can stop it.
    let log = dir.path().join("report/runs/sqdf-seed0/run.log");
    let started = found && wait_until(120, || log.exists());
    let was_alive = run.is_some_and(alive);
    parent.kill().unwrap(); // SIGKILL: nothing of the comparison's own code runs
    parent.wait().unwrap();
    assert!(found, "the comparison started no run");
    let run = run.unwrap();
    if !(started && was_alive) {
        unsafe { libc::kill(run as i32, libc::SIGKILL) };
    }
    assert!(
        started && was_alive,
        "the run did not start, or stopped by itself"
    );
    let stopped = wait_until(30, || !alive(run));
    if !stopped {
        unsafe { libc::kill(run as i32, libc::SIGKILL) };
    }
    assert!(stopped, "the run outlived its comparison");
}

/// Polls `done` every 0.1 s for up to `secs` seconds.
#[cfg(target_os = "linux")]
fn wait_until(secs: u64, mut done: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_secs(secs) {
        if done() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    false
}

/// Processes whose parent is `pid` (from /proc/*/stat; the command name is in parentheses
/// and may hold spaces, so the fields are read after the last ')').
#[cfg(target_os = "linux")]
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let ppid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// Whether `pid` still runs (a zombie, waiting for a reaper, does not).
#[cfg(target_os = "linux")]
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

#[test]
fn a_comparison_file_runs_in_the_sandbox_with_its_limits() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("loop.lua");
    std::fs::write(
        &f,
        "while true do pcall(function() while true do end end) end\nreturn {}\n",
    )
    .unwrap();
    let e = format!(
        "{:#}",
        sqdf::cli::compare::plan::load(&f, false).err().unwrap()
    );
    assert!(
        e.contains("loop.lua: top-level code: instruction budget") && e.contains("exceeded"),
        "{e}"
    );
    std::fs::write(&f, "local f = io.open('/etc/passwd')\nreturn {}\n").unwrap();
    let e = format!(
        "{:#}",
        sqdf::cli::compare::plan::load(&f, false).err().unwrap()
    );
    assert!(e.contains("loop.lua:1:"), "{e}");
}

/// Started by a launcher (as `mpirun` would: its variables set) without the `mpi` feature,
/// `sqdf compare` refuses rather than letting N copies each run everything.
#[cfg(not(feature = "mpi"))]
#[test]
fn compare_started_as_a_rank_without_mpi_says_how_to_build_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = toy_comparison(
        dir.path(),
        r#"return { seeds = { 0 }, runs = { { label = "SQDF", script = "toy.lua" } } }"#,
    );
    let out = dir.path().join("out");
    let (ok, err) = common::sqdf_as_rank(&[
        "--quiet",
        "compare",
        file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("--features mpi"), "{err}");
    assert!(!dir.path().join("out/runs").exists(), "nothing ran");
}
