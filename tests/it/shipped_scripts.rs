//! Every experiment script the project ships runs one short epoch on the shipped models
//! (few steps, tiny batches): a copied script starts from one that works. Every comparison
//! file parses, in both modes, and names scripts that exist; each of its runs (the ablations
//! are `--set`s of shipped scripts) trains one short epoch.

use crate::common;

use common::*;
use std::path::{Path, PathBuf};

fn lua_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            lua_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "lua") {
            out.push(p);
        }
    }
}

#[test]
fn every_shipped_script_runs_one_short_epoch() {
    let mut files = Vec::new();
    lua_files(&repo_root().join("scripts"), &mut files);
    files.retain(|p| !p.starts_with(repo_root().join("scripts/compare")));
    files.sort();
    assert!(
        files.len() >= 9,
        "expected the shipped scripts, found {files:?}"
    );
    // SD-1.5 scripts run on a tiny random folder with the real names (no public weights here).
    let sd = tempfile::tempdir().unwrap();
    let sd15 = sqdf::tasks::sd15::random_weights::write(
        sd.path(),
        &sqdf::tasks::sd15::random_weights::Sizes::tiny(),
        0,
        candle_core::DType::F32,
    )
    .unwrap();
    for script in files {
        let out = tempfile::tempdir().unwrap();
        let src = std::fs::read_to_string(&script).unwrap();
        let mut opts = vec![
            "steps=3".to_string(),
            "batch=2".into(),
            "capacity=2".into(),
            "updates_per_epoch=1".into(),
            "epochs=1".into(),
        ];
        if src.contains("task = \"sd15\"") {
            opts.push(format!("weights={}", sd15.dir.display()));
        }
        // Black-box rounds: two of 4 queries.
        if src.contains("queries = {") {
            opts.extend(["queries=[4,4]".into(), "round_epochs=1".into()]);
        }
        let opts: Vec<&str> = opts.iter().map(String::as_str).collect();
        let (o, _) = quiet_options(&script, out.path(), &opts);
        let mut t =
            sqdf::train::Trainer::new(o).unwrap_or_else(|e| panic!("{}: {e:#}", script.display()));
        let m = t
            .run_epoch()
            .unwrap_or_else(|e| panic!("{}: {e:#}", script.display()));
        assert!(
            m.loss.is_some_and(f64::is_finite),
            "{}: no finite loss in {m:?}",
            script.display()
        );
    }
}

#[test]
fn every_comparison_file_names_existing_scripts() {
    let mut files = Vec::new();
    lua_files(&repo_root().join("scripts/compare"), &mut files);
    assert!(!files.is_empty());
    for f in files {
        for quick in [false, true] {
            let plan = sqdf::cli::compare::plan::load(&f, quick)
                .unwrap_or_else(|e| panic!("{} (quick {quick}): {e:#}", f.display()));
            assert!(!plan.runs.is_empty());
        }
    }
}

#[test]
fn every_run_of_the_comparison_files_trains_one_short_epoch() {
    // The ablations are `--set`s of shipped scripts (x0 = "ddim", gamma = 1, sampling =
    // "priority", the sweeps, the black-box variants): each combination loads and trains.
    let mut files = Vec::new();
    lua_files(&repo_root().join("scripts/compare"), &mut files);
    let mut trained = 0;
    for f in files {
        let plan = sqdf::cli::compare::plan::load(&f, false).unwrap();
        for run in plan.runs.iter().filter(|r| r.seed == 0) {
            trained += 1;
            let out = tempfile::tempdir().unwrap();
            let mut opts: Vec<String> = run
                .overrides
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            opts.extend(
                ["steps=3", "batch=2", "updates_per_epoch=1", "epochs=1"].map(String::from),
            );
            if std::fs::read_to_string(&run.script)
                .unwrap()
                .contains("queries = {")
            {
                opts.extend(["queries=[4,4]".into(), "round_epochs=1".into()]);
            }
            let opts: Vec<&str> = opts.iter().map(String::as_str).collect();
            let (o, _) = quiet_options(&run.script, out.path(), &opts);
            let what = format!("{} ({})", run.label, f.display());
            let mut t = sqdf::train::Trainer::new(o).unwrap_or_else(|e| panic!("{what}: {e:#}"));
            let m = t.run_epoch().unwrap_or_else(|e| panic!("{what}: {e:#}"));
            assert!(
                m.loss.is_some_and(f64::is_finite),
                "{what}: no finite loss in {m:?}"
            );
        }
    }
    // paper.lua: 21 runs a seed; blackbox.lua: 5.
    assert!(trained >= 26, "{trained} runs");
}
