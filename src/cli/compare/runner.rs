//! Runs a comparison plan: each run in its own `sqdf run` process (its peak memory is then
//! its own, and one failing run does not end the others), skipping runs already finished
//! and resuming interrupted ones, then writes the report from their folders.

use super::plan::{self, PlannedRun};
use super::{report, RunResult};
use crate::distributed::Job;
use crate::run_log::RunLog;
use crate::train::along_training::EvalLog;
use crate::train::checkpoint;
use crate::train::metrics::{EpochMetrics, EvalReport};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value as Json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

pub struct CompareOptions {
    pub file: PathBuf,
    /// The report folder (default `runs/compare-<file name>[-quick]`).
    pub out: Option<PathBuf>,
    pub quick: bool,
    /// The `sqdf` executable that runs each experiment.
    pub exe: PathBuf,
    pub progress: bool,
    /// Report the runs already finished and run nothing (progress of a long comparison).
    pub report_only: bool,
    pub log: Arc<RunLog>,
}

fn set_arg(k: &str, v: &Json) -> String {
    match v {
        Json::String(s) => format!("{k}={s}"),
        other => format!("{k}={other}"),
    }
}

/// One run to completion in a child process; its stderr goes to `stderr.log` in its folder.
fn execute(run: &PlannedRun, dir: &Path, exe: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cmd = Command::new(exe);
    cmd.arg("--quiet").arg("run").arg(&run.script);
    if dir.join(checkpoint::FILE).is_file() {
        cmd.arg("--resume").arg(dir);
    } else {
        cmd.arg("--out").arg(dir);
    }
    cmd.arg("--no-watch");
    crate::child_process::die_with_parent(&mut cmd);
    crate::distributed::detach(&mut cmd);
    for (k, v) in &run.overrides {
        cmd.arg("--set").arg(set_arg(k, v));
    }
    let err_path = dir.join("stderr.log");
    let err = std::fs::File::create(&err_path)
        .with_context(|| format!("creating {}", err_path.display()))?;
    let status = cmd
        .stdout(Stdio::null())
        .stderr(err)
        .status()
        .with_context(|| format!("starting {}", exe.display()))?;
    if !status.success() {
        let text = std::fs::read_to_string(&err_path).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(6).collect();
        bail!("{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }
    Ok(())
}

/// The first of `keys` an evaluation reports (the digits' metric, else SD-1.5's), or NaN.
fn first_of(eval: &Json, keys: &[&str]) -> f64 {
    keys.iter()
        .find_map(|k| eval[*k].as_f64())
        .unwrap_or(f64::NAN)
}

/// The sum of the epochs' `seconds` in a run's metrics.jsonl (resumed parts included).
fn training_seconds(dir: &Path) -> Option<f64> {
    let lines = EpochMetrics::read_all(&dir.join("metrics.jsonl")).ok()?;
    Some(lines.iter().map(|l| l.seconds).sum())
}

/// A finished run's folder as the report reads it, and the config it ran with.
pub fn read_result(run: &PlannedRun, dir: &Path) -> Result<(RunResult, Json)> {
    let eval = EvalReport::read(&dir.join("eval.json"))?;
    let curve = EvalLog::new(dir)
        .lines()
        .into_iter()
        .filter_map(|l| Some((l["epoch"].as_u64()? as usize, l)))
        .collect();
    let mut after = eval.after.clone();
    // Which task reward played the oracle, so the report can say whether its gold column is
    // the oracle's reward (only black-box runs count queries).
    if let Some(a) = after.as_object_mut() {
        if a.contains_key("queries_used") {
            a.insert("oracle".into(), Json::from(eval.config.oracle.clone()));
        }
    }
    let result = RunResult {
        label: run.label.clone(),
        seed: run.seed,
        sweep: run.sweep.clone(),
        after,
        curve,
        wall_seconds: training_seconds(dir).unwrap_or(f64::NAN),
        peak_rss_mib: eval.peak_rss_mib.unwrap_or(f64::NAN),
    };
    Ok((result, serde_json::to_value(&eval.config)?))
}

/// A sweep's `base` runs join its curve at their own value of the swept key (from the
/// config each run recorded, `configs[i]` beside `results[i]`), so the default point is not
/// run twice.
fn add_sweep_bases(runs: &[PlannedRun], results: &mut Vec<RunResult>, configs: &[Json]) {
    let mut extra = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for run in runs {
        let (Some(base), Some((key, _))) = (&run.base, &run.sweep) else {
            continue;
        };
        if !seen.insert(run.label.clone()) {
            continue;
        }
        for (r, config) in results.iter().zip(configs) {
            if &r.label != base || r.sweep.is_some() {
                continue;
            }
            if let Some(v) = config[key.as_str()].as_f64() {
                let mut copy = r.clone();
                copy.label = run.label.clone();
                copy.sweep = Some((key.clone(), v));
                extra.push(copy);
            }
        }
    }
    results.extend(extra);
}

/// Runs every planned run not yet finished, then writes report.md, the figures and
/// results.json into the report folder; returns that folder. Under MPI (`job` of several
/// ranks) rank r runs the runs n with n mod size = r, and rank 0 reports once every rank is
/// done (each run is a single process, as without MPI).
pub fn compare(opts: &CompareOptions, job: &Job) -> Result<PathBuf> {
    let plan = plan::load(&opts.file, opts.quick)?;
    let stem = opts
        .file
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "compare".into());
    let out = opts.out.clone().unwrap_or_else(|| {
        PathBuf::from("runs").join(format!(
            "compare-{stem}{}",
            if opts.quick { "-quick" } else { "" }
        ))
    });
    // One comparison per report folder: a second one would run the same runs beside it
    // (each run's folder is locked too, by the run itself). `--report-only` runs nothing and
    // may look at a comparison in progress: its files are replaced atomically. Rank 0 holds
    // the lock for all ranks.
    let _lock = match opts.report_only || job.rank() > 0 {
        true => {
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            None
        }
        false => Some(crate::train::run_dir::lock(&out)?),
    };
    let log_path = match job.rank() {
        0 => out.join("compare.log"),
        r => out.join(format!("compare.rank{r}.log")),
    };
    opts.log
        .attach_file(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    opts.log.info(format!(
        "{}: {} runs into {}{}",
        opts.file.display(),
        plan.runs.len(),
        out.display(),
        match job.size() {
            1 => String::new(),
            n => format!(" (rank {} of {n})", job.rank()),
        }
    ));
    let mine = |n: usize| n % job.size() == job.rank();
    let bar = opts.log.progress(
        (0..plan.runs.len()).filter(|&n| mine(n)).count() as u64,
        "",
        "runs",
        opts.progress,
    );
    let mut own: HashMap<usize, Result<(RunResult, Json)>> = HashMap::new();
    for (n, run) in plan.runs.iter().enumerate().filter(|(n, _)| mine(*n)) {
        let dir = out.join("runs").join(&run.dir_name);
        bar.set_message(run.name());
        let started = Instant::now();
        let done = dir.join("eval.json").is_file();
        let outcome = if done {
            Ok(())
        } else if opts.report_only {
            bar.inc(1);
            continue;
        } else {
            execute(run, &dir, &opts.exe)
        };
        let read = outcome.and_then(|_| read_result(run, &dir));
        match &read {
            Ok((r, _)) => opts.log.info(format!(
                "run {}/{} {}: {}: reward {:.3}, alignment {:.3}, diversity {:.3} ({:.0} s)",
                n + 1,
                plan.runs.len(),
                if done { "already done" } else { "finished" },
                run.name(),
                r.after["reward"].as_f64().unwrap_or(f64::NAN),
                first_of(&r.after, &["alignment_prob", "image_reward", "hps"]),
                first_of(&r.after, &["diversity_feature", "diversity_dreamsim"]),
                started.elapsed().as_secs_f64()
            )),
            Err(e) => opts.log.error(format!(
                "run {}/{} failed: {} ({}):\n{e:#}",
                n + 1,
                plan.runs.len(),
                run.name(),
                dir.display()
            )),
        }
        own.insert(n, read);
        bar.inc(1);
    }
    bar.finish_and_clear();
    opts.log.set_bar(None);
    job.barrier();
    if job.rank() > 0 {
        return Ok(out);
    }
    // Rank 0: its own runs as they went, the other ranks' from their folders.
    let (mut results, mut configs, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    for (n, run) in plan.runs.iter().enumerate() {
        let dir = out.join("runs").join(&run.dir_name);
        let read = match own.remove(&n) {
            Some(r) => r,
            None if opts.report_only && !dir.join("eval.json").is_file() => continue,
            None => read_result(run, &dir)
                .with_context(|| format!("see {}", dir.join("stderr.log").display())),
        };
        match read {
            Ok((r, config)) => {
                results.push(r);
                configs.push(config);
            }
            Err(_) if opts.report_only => {}
            Err(e) => {
                if !mine(n) {
                    opts.log.error(format!(
                        "run {}/{} failed on rank {}: {}:\n{e:#}",
                        n + 1,
                        plan.runs.len(),
                        n % job.size(),
                        run.name()
                    ));
                }
                failed.push(run.name());
            }
        }
    }
    let finished = results.len();
    add_sweep_bases(&plan.runs, &mut results, &configs);
    let machine = crate::cli::bench::machine();
    if opts.report_only && finished == 0 {
        bail!(
            "no finished runs under {} to report; run the comparison first",
            out.join("runs").display()
        );
    }
    let partial = if opts.report_only && finished < plan.runs.len() {
        format!(
            " **Partial report** (`--report-only`): {finished} of the {} runs finished; the others are not yet run.",
            plan.runs.len()
        )
    } else {
        String::new()
    };
    let seeds = plan
        .runs
        .iter()
        .map(|r| r.seed)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let notes = format!(
        "`sqdf compare {}{}`: {} runs{}, {seeds} seed{} per method, evaluated along training at evenly spaced epochs. Machine: {} ({} cores). Metrics: {}; training time is the sum of the epochs' times (sampling and updates, no evaluation); peak resident memory is each run's own process (models, buffer and evaluations included).{}{}",
        opts.file.display(),
        if opts.quick { " --quick" } else { "" },
        plan.runs.len(),
        match job.size() {
            1 => String::new(),
            n => format!(" spread over {n} MPI ranks (the machine is rank 0's)"),
        },
        if seeds == 1 { "" } else { "s" },
        machine["cpu"].as_str().unwrap_or("unknown"),
        machine["cores"],
        match super::plots::has_sd15_runs(&results) {
            true => "SD-1.5's evaluation (docs/sd15_metrics.md)",
            false => "the digits evaluation (docs/digits.md, \"The digits evaluation\")",
        },
        if failed.is_empty() {
            String::new()
        } else {
            format!(" **Failed runs (left out):** {}.", failed.join(", "))
        },
        partial
    );
    report::write_report(&results, &out, &plan.title, &notes, plan.equal_reward)?;
    opts.log
        .info(format!("wrote {}", out.join("report.md").display()));
    if !failed.is_empty() {
        return Err(anyhow!(
            "{} of {} runs failed: {}; their stderr.log is in their folders under {}",
            failed.len(),
            plan.runs.len(),
            failed.join(", "),
            out.join("runs").display()
        ));
    }
    Ok(out)
}
