//! `mpirun -n 2 sqdf compare` (the `mpi` feature; docs/scale-out.md): the runs spread over
//! the ranks give the report one process gives, and a run that fails on rank 1 is reported
//! by rank 0. Needs `mpirun` (OpenMPI or MPICH) on the PATH.

use super::{mpirun, sqdf};
use crate::common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;

/// `mpirun -n 2 sqdf --quiet compare FILE --out OUT`.
fn compare_on_two_ranks(file: &Path, out: &Path) -> Output {
    mpirun(2)
        .args(["--quiet", "compare"])
        .arg(file)
        .arg("--out")
        .arg(out)
        .output()
        .expect("mpirun (OpenMPI or MPICH) must be on the PATH for the mpi feature's tests")
}

fn comparison(dir: &Path, extra_run: &str) -> PathBuf {
    let w = tiny_weights(dir);
    write_script(dir, "toy.lua", &standard_script(&w, ""));
    // A run of it stops at its start: the reward raises an error.
    let broken = standard_script(&w, "").replace(
        "reward = function(x0, cond, cfg) return",
        "reward = function(x0, cond, cfg) error(\"boom\") return",
    );
    write_script(dir, "broken.lua", &broken);
    write_script(
        dir,
        "cmp.lua",
        &format!(
            r#"return {{
  title = "two ranks",
  seeds = {{ 0, 1 }},
  evals = 1,
  set = {{ epochs = 2 }},
  runs = {{
    {{ label = "SQDF", script = "toy.lua" }},
    {{ label = "Tweedie", script = "toy.lua", set = {{ x0 = "tweedie" }} }},
    {extra_run}
  }},
}}"#
        ),
    )
}

/// (label, seed, the final evaluation) of every row of results.json, sorted.
fn rows(out: &Path) -> Vec<(String, u64, Value)> {
    let text = std::fs::read_to_string(out.join("results.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let mut rows: Vec<_> = v["runs"]
        .as_array()
        .or_else(|| v.as_array())
        .expect("results.json holds the runs")
        .iter()
        .map(|r| {
            (
                r["label"].as_str().unwrap().to_string(),
                r["seed"].as_u64().unwrap(),
                r["after"].clone(),
            )
        })
        .collect();
    rows.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    rows
}

#[test]
fn a_two_rank_compare_reports_what_one_process_does() {
    let dir = tempfile::tempdir().unwrap();
    let file = comparison(dir.path(), "");
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    let o = sqdf()
        .args(["--quiet", "compare"])
        .arg(&file)
        .arg("--out")
        .arg(&one)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = compare_on_two_ranks(&file, &two);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Each run is the same single process wherever it ran: the same numbers.
    assert_eq!(rows(&one), rows(&two));
    let report = std::fs::read_to_string(two.join("report.md")).unwrap();
    assert!(report.contains("spread over 2 MPI ranks"), "{report}");
    // Rank 1 ran runs 2 and 4 of the 4 and logged them in its own file.
    let rank1 = std::fs::read_to_string(two.join("compare.rank1.log")).unwrap();
    assert!(
        rank1.contains("run 2/4") && rank1.contains("run 4/4"),
        "{rank1}"
    );
    assert!(
        !rank1.contains("run 1/4") && !rank1.contains("run 3/4"),
        "{rank1}"
    );
    // Only rank 0 prints the report's path.
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(stdout.matches("report.md").count(), 1, "{stdout}");
}

#[test]
fn a_run_failing_on_rank_1_is_reported_by_rank_0() {
    let dir = tempfile::tempdir().unwrap();
    // Runs 5 and 6 of 6 (rank 0's and rank 1's) fail at their start.
    let file = comparison(
        dir.path(),
        r#"{ label = "Broken", script = "broken.lua" },"#,
    );
    let out = dir.path().join("out");
    let o = compare_on_two_ranks(&file, &out);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("2 of 6 runs failed"), "{err}");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("**Failed runs (left out):** Broken"),
        "{report}"
    );
    assert!(
        report.contains("| SQDF |") && report.contains("| Tweedie |"),
        "{report}"
    );
    let log = std::fs::read_to_string(out.join("compare.log")).unwrap();
    assert!(log.contains("failed on rank 1"), "{log}");
}

#[test]
fn a_comparison_file_error_stops_every_rank_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = comparison(dir.path(), r#"{ label = "Gone", script = "missing.lua" },"#);
    let out = dir.path().join("out");
    let o = compare_on_two_ranks(&file, &out);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("missing.lua not found"), "{err}");
}
