//! The apparatus around the library: the `sqdf` subcommands (`Cli`, parsed by the binary)
//! and what only they use: the benchmarks, the comparison runner and report, the
//! evaluation of a checkpoint.

pub mod bench;
pub mod bench_methods;
pub mod bench_metrics;
pub mod bench_peer;
pub mod compare;
pub mod eval;
pub mod export;

use crate::run_log::RunLog;
use crate::script::config::parse_override;
use crate::tasks::{self, TrainCommand};
use crate::train::{RunOptions, Trainer};
use anyhow::{Context, Result};
use candle_core::Device;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "sqdf",
    version,
    about = "Reward fine-tuning of diffusion models with SQDF; experiments are Lua scripts, hot-reloaded between epochs"
)]
pub struct Cli {
    /// No progress bars (log lines still go to the terminal and run.log).
    #[arg(long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Fine-tune with an experiment script (edit it while it runs: it reloads between epochs).
    Run {
        /// The experiment script, e.g. scripts/toy_gmm.lua.
        script: PathBuf,
        /// Override a config key (repeatable): --set alpha=0.5 --set params.w=2 --set surrogate.c1=0.002.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Run folder (default runs/<script name>-<UTC time>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Continue the run in this folder from its checkpoint (raise epochs with --set to
        /// train longer); the run goes on in that folder, so --out may not name another.
        #[arg(long, value_name = "DIR")]
        resume: Option<PathBuf>,
        /// Do not watch the script for edits.
        #[arg(long)]
        no_watch: bool,
    },
    /// Train a task's base model, or an evaluation or reward network (writes models/<task>/).
    Pretrain {
        /// gmm2d, digits, digits-classifier or digits-reward.
        task: String,
        #[arg(long)]
        out: Option<PathBuf>,
        /// Optimiser steps (default: the task's documented number).
        #[arg(long)]
        steps: Option<usize>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Continue from this weight file instead of a fresh seeded initialisation, at a
        /// lower learning rate (digits only; its card records both commands).
        #[arg(long)]
        init: Option<PathBuf>,
    },
    /// Distil a task's consistency model from its base model (writes models/<task>/).
    Distill {
        /// The task: gmm2d or digits.
        task: String,
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        steps: Option<usize>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Time the hot paths: sampling a batch of trajectories and one update (a benchmark).
    Bench {
        /// The script whose task and config to time, e.g. scripts/digits_sqdf.lua.
        script: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Trajectories sampled, and states per update.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Timed rounds (after one warm-up round; 0: time the one round there is).
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// Time one update per micro-batch size in this list after each sampling
        /// (e.g. 8,4,2,1); default: one update at the script's `micro_batch`.
        #[arg(long, value_delimiter = ',')]
        micro: Vec<usize>,
    },
    /// The PyTorch peer benchmark's sqdf side (bench/peer/run.sh runs it): the parity
    /// dump, the timed work items, the CPU's peak FMA throughput.
    #[command(hide = true)]
    BenchPeer {
        /// The script whose models and config the work items use.
        #[arg(long, default_value = "scripts/digits_sqdf.lua")]
        script: PathBuf,
        /// Samples per work item (trajectories, states per update).
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Write fixed inputs and sqdf's outputs to DIR/parity.safetensors.
        #[arg(long, value_name = "DIR")]
        dump: Option<PathBuf>,
        /// Time the six work items, each `repeats` times after one warm-up.
        #[arg(long)]
        time: bool,
        #[arg(long, default_value_t = 1)]
        repeats: usize,
        /// Measure the peak f32 FMA throughput on RAYON_NUM_THREADS threads.
        #[arg(long)]
        peak: bool,
        /// Write the timings or the peak as JSON here (default: standard output).
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Time and memory of one update of every method on the digits model, for T = 10, 25,
    /// 50 and DRaFT's K = 1..8 (a benchmark; prints a Markdown table, JSON to --json).
    BenchMethods {
        /// States or trajectories per update.
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// Also write the rows as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Load time, time per image and peak memory of each SD-1.5 evaluation metric whose
    /// files DIR holds (a benchmark; prints a Markdown table, JSON to --json).
    BenchMetrics {
        /// An sd15 weight folder (e.g. `sqdf random-weights DIR --size sd15-narrow`).
        dir: PathBuf,
        /// Timed images per metric, after one warm-up image.
        #[arg(long, default_value_t = 4)]
        images: usize,
        /// Image side in pixels (decoded SD-1.5 images: 512).
        #[arg(long, default_value_t = 512)]
        size: usize,
        /// Only this metric, in this process (what the benchmark runs in each child).
        #[arg(long)]
        only: Option<String>,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// One case of bench-methods, in its own process: two updates on random trajectories,
    /// prints their time and the first one's peak memory as JSON.
    #[command(hide = true)]
    BenchUpdate {
        script: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Write an sd15 weight folder with random weights and the real file and key names
    /// (for timing SD-1.5-sized updates without the public weights, e.g. on a GPU).
    RandomWeights {
        /// The folder to write (its layout is in docs/sd15.md).
        out: PathBuf,
        /// "sd15" (real sizes, about 3 GB in f16), "sd15-narrow" (SD-1.5's spatial sizes
        /// with a fifth of the UNet's channels, for CPU memory measurements) or "tiny".
        #[arg(long, default_value = "sd15")]
        size: String,
        /// Weight dtype in the files: f32, f16 or bf16.
        #[arg(long, default_value = "f16")]
        dtype: String,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Write the digits UNet as a diffusers folder (unet/, scheduler/, prompt_embeds).
    Export(export::ExportArgs),
    /// Run a comparison file (scripts/compare/*.lua: methods x seeds) and write its report:
    /// report.md (mean ± std over seeds) and the plots of the paper's Fig. 3 and Fig. 4.
    Compare {
        /// The comparison file, e.g. scripts/compare/paper.lua.
        file: PathBuf,
        /// One seed and shorter runs (the file's `quick` table): a smoke check.
        #[arg(long)]
        quick: bool,
        /// Report folder (default runs/compare-<file name>[-quick]); finished runs in it are
        /// kept, interrupted ones resumed.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Write the report from the runs already finished and run nothing.
        #[arg(long)]
        report_only: bool,
    },
    /// Evaluate the pretrained model, or a run's checkpoint, under a script's reward and config.
    Eval {
        script: PathBuf,
        /// A run's checkpoint.safetensors (default: the pretrained model).
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Folder for the JSON and plots (default: the working directory's eval/).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn overrides(set: &[String]) -> Result<Vec<(String, serde_json::Value)>> {
    set.iter().map(|s| parse_override(s)).collect()
}

/// Runs one subcommand.
pub fn dispatch(cli: Cli) -> Result<()> {
    let log = RunLog::stderr();
    let several = matches!(cli.command, Command::Run { .. } | Command::Compare { .. });
    let ranks = crate::distributed::launched_ranks();
    if ranks > 1 && !several {
        anyhow::bail!(
            "started as one of {ranks} ranks, but only `sqdf run` and `sqdf compare` run on several processes; start this command without mpirun or srun"
        );
    }
    match cli.command {
        Command::Run {
            script,
            set,
            out,
            resume,
            no_watch,
        } => {
            let job = std::rc::Rc::new(crate::distributed::Job::init()?);
            let mut opts = RunOptions::new(script);
            opts.overrides = overrides(&set)?;
            opts.out = out;
            opts.resume = resume;
            opts.watch = !no_watch;
            // Rank 0 speaks for the job; the others' lines would repeat its own.
            opts.progress = !cli.quiet && job.rank() == 0;
            opts.log = if job.rank() == 0 {
                log
            } else {
                RunLog::discarding()
            };
            opts.job = job.clone();
            let eval = job.run_or_abort(|| Trainer::new(opts).and_then(|mut t| t.run()))?;
            if job.rank() == 0 {
                println!("{}", serde_json::to_string_pretty(&eval.to_json())?);
            }
            Ok(())
        }
        Command::Pretrain {
            task,
            out,
            steps,
            seed,
            init,
        } => {
            if init.is_some() && task != "digits" {
                anyhow::bail!("--init is supported by `sqdf pretrain digits` only");
            }
            let cmd = TrainCommand {
                out,
                steps,
                seed,
                init,
                progress: !cli.quiet,
                log,
                device: Device::Cpu,
            };
            tasks::pretrain(&task, &cmd)
        }
        Command::Distill {
            task,
            out,
            steps,
            seed,
        } => {
            let cmd = TrainCommand {
                out,
                steps,
                seed,
                init: None,
                progress: !cli.quiet,
                log,
                device: Device::Cpu,
            };
            tasks::by_name(&task)?.distill(&cmd)
        }
        Command::Bench {
            script,
            set,
            batch,
            repeats,
            micro,
        } => {
            let v = bench::bench(&script, overrides(&set)?, batch, repeats, &micro, log)?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
        Command::BenchPeer {
            script,
            batch,
            dump,
            time,
            repeats,
            peak,
            json,
        } => {
            let what = bench_peer::Request {
                dump,
                time,
                repeats,
                peak,
                json,
            };
            bench_peer::command(&script, batch, what, log)
        }
        Command::BenchMethods { batch, json } => {
            let exe = std::env::current_exe().context("locating the sqdf executable")?;
            let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
            let v = bench_methods::bench_methods(&exe, root, batch, &log)?;
            if let Some(p) = json {
                crate::tensor_io::write_file_atomic(&p, serde_json::to_string_pretty(&v)?)?;
            }
            Ok(())
        }
        Command::BenchMetrics {
            dir,
            images,
            size,
            only,
            json,
        } => {
            let v = match only {
                Some(name) => bench_metrics::bench_one(&dir, &name, images, size)?,
                None => {
                    let exe = std::env::current_exe().context("locating the sqdf executable")?;
                    bench_metrics::bench_metrics(&exe, &dir, images, size, &log)?
                }
            };
            match json {
                Some(p) => {
                    crate::tensor_io::write_file_atomic(&p, serde_json::to_string_pretty(&v)?)?
                }
                None if v.get("metric").is_some() => println!("{v}"),
                None => {}
            }
            Ok(())
        }
        Command::BenchUpdate { script, set } => {
            let v = bench_methods::bench_update(&script, overrides(&set)?, log)?;
            println!("{v}");
            Ok(())
        }
        Command::Compare {
            file,
            quick,
            out,
            report_only,
        } => {
            let opts = compare::runner::CompareOptions {
                file,
                out,
                quick,
                exe: std::env::current_exe().context("locating the sqdf executable")?,
                progress: !cli.quiet,
                report_only,
                log,
            };
            let job = crate::distributed::Job::init()?;
            let dir = job.run_or_abort(|| compare::runner::compare(&opts, &job))?;
            if job.rank() == 0 {
                println!("{}", dir.join("report.md").display());
            }
            Ok(())
        }
        Command::Export(args) => export::run(args),
        Command::RandomWeights {
            out,
            size,
            dtype,
            seed,
        } => {
            use crate::tasks::sd15::random_weights::{write, Sizes};
            let sizes = match size.as_str() {
                "sd15" => Sizes::sd15(),
                "sd15-narrow" => Sizes::sd15_narrow(),
                "tiny" => Sizes::tiny(),
                other => anyhow::bail!("--size must be sd15, sd15-narrow or tiny, got {other}"),
            };
            let dtype = match dtype.as_str() {
                "f32" => candle_core::DType::F32,
                "f16" => candle_core::DType::F16,
                "bf16" => candle_core::DType::BF16,
                other => anyhow::bail!("--dtype must be f32, f16 or bf16, got {other}"),
            };
            write(&out, &sizes, seed, dtype)?;
            println!("{}", out.display());
            Ok(())
        }
        Command::Eval {
            script,
            checkpoint,
            set,
            out,
        } => {
            let out = out.unwrap_or_else(|| PathBuf::from("eval"));
            // Its files (eval.json, the sample grids) are a run folder's names: one writer.
            let _lock = crate::train::run_dir::lock(&out)?;
            let v = eval::evaluate(&script, checkpoint.as_deref(), &overrides(&set)?, &out, log)
                .with_context(|| format!("evaluating under {}", script.display()))?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
    }
}
