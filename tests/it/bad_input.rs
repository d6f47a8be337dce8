//! Every user mistake gets a clear error before training starts, a non-zero exit code and no
//! Rust backtrace: syntax errors, missing hooks, unknown config keys, hooks returning the
//! wrong type or shape, missing or corrupt weight files. A NaN loss skips the step, and five
//! in a row stop the run with its last checkpoint intact.

use crate::common;

use std::path::Path;
use std::process::Command;

/// Runs `sqdf run SCRIPT` and returns (success, stderr).
fn run(script: &Path, out: &Path, extra: &[&str]) -> (bool, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_sqdf"))
        .args(["--quiet", "run"])
        .arg(script)
        .args(["--no-watch", "--out"])
        .arg(out)
        .args(extra)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "a panic instead of an error:\n{err}"
    );
    (o.status.success(), err)
}

fn expect_error(name: &str, script_src: &str, dir: &Path, needles: &[&str]) {
    let script = common::write_script(dir, &format!("{name}.lua"), script_src);
    let (ok, err) = run(&script, &dir.join(format!("run-{name}")), &[]);
    assert!(!ok, "{name}: the run should fail");
    assert!(err.starts_with("error: "), "{name}: {err}");
    for n in needles {
        assert!(err.contains(n), "{name}: expected `{n}` in:\n{err}");
    }
    assert!(
        !dir.join(format!("run-{name}"))
            .join("metrics.jsonl")
            .exists(),
        "{name}: no epoch may run"
    );
}

#[test]
fn script_mistakes_are_reported_with_file_and_line() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let w = common::tiny_weights(dir);
    let good = common::standard_script(&w, "");

    expect_error(
        "syntax",
        &good.replacen("return {", "local x = = 2\nreturn {", 1),
        dir,
        &["syntax.lua:3:"],
    );
    expect_error(
        "missing_hook",
        &good.replace("loss = sqdf.loss,", ""),
        dir,
        &["missing_hook.lua", "missing hook `loss`"],
    );
    expect_error(
        "unknown_key",
        &common::standard_script(&w, "lrr = 0.1"),
        dir,
        &["unknown_key.lua", "unknown config key `lrr`", "known keys"],
    );
    expect_error(
        "wrong_type_cfg",
        &common::standard_script(&w, "gamma = \"high\""),
        dir,
        &["config.gamma has the wrong type"],
    );
    expect_error(
        "many_steps",
        &common::standard_script(&w, "steps = 5000"),
        dir,
        &["config.steps must be in 1..999"],
    );
    expect_error(
        "bad_gamma",
        &common::standard_script(&w, "gamma = 1.5"),
        dir,
        &["config.gamma must be in (0, 1]"],
    );
    expect_error(
        "reward_shape",
        &good.replace("return x0:matmul(W):squeeze(2)", "return x0"),
        dir,
        &["hook `reward`", "shape [2, 2], expected [2]"],
    );
    expect_error(
        "reward_type",
        &good.replace("return x0:matmul(W):squeeze(2)", "return 3"),
        dir,
        &["hook `reward` returned an integer"],
    );
    expect_error(
        "priority_type",
        &good.replace(
            "priority = sqdf.priority,",
            "priority = function(s) return \"high\" end,",
        ),
        dir,
        &["hook `priority` returned the string \"high\""],
    );
    expect_error(
        "loss_shape",
        &good.replace(
            "loss = sqdf.loss,",
            "loss = function(b, ctx) return ctx:policy_step(b).mean end,",
        ),
        dir,
        &["hook `loss` returned a tensor of shape [2, 2], expected a scalar"],
    );
    expect_error(
        "runtime",
        &good.replace(
            "loss = sqdf.loss,",
            "loss = function(b, ctx)\n  return b.nothing:mean()\nend,",
        ),
        dir,
        &["hook `loss` failed", "runtime.lua:7:"],
    );
    expect_error(
        "surrogate_without_oracle",
        &common::standard_script(&w, "surrogate = { c1 = 0.1 }"),
        dir,
        &["config.surrogate applies to black-box runs only"],
    );
    expect_error(
        "hook_not_a_function",
        &good.replace("discount = sqdf.discount,", "discount = 3,"),
        dir,
        &["hook `discount` must be a function", "got an integer"],
    );
    expect_error("not_a_table", "return 42\n", dir, &["must return a table"]);
    expect_error(
        "no_module",
        &good.replace("require(\"sqdf\")", "require(\"nosuch\")"),
        dir,
        &["module \"nosuch\" not found"],
    );
}

#[test]
fn config_values_are_bounded_and_named_before_the_run() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let w = common::tiny_weights(dir);
    let cases: &[(&str, &str, &str)] = &[
        (
            "enum",
            "x0 = \"foo\"",
            "config.x0: unknown variant `foo`, expected one of `consistency`, `tweedie`, `ddim`",
        ),
        ("nan", "lr = 0/0", "config.lr must be a finite number, got"),
        (
            "inf",
            "alpha = math.huge",
            "config.alpha must be a finite number, got inf",
        ),
        (
            "decay",
            "weight_decay = -1",
            "config.weight_decay must be >= 0 and finite",
        ),
        (
            "no_epochs",
            "epochs = 0",
            "config.epochs must be at least 1",
        ),
        (
            "huge_batch",
            "batch = 2^40",
            "config.batch = 1099511627776 is above its limit of 1048576",
        ),
        (
            "huge_capacity",
            "capacity = 2^30",
            "config.capacity = 1073741824 is above its limit of 16777216",
        ),
        (
            "huge_eval",
            "eval_samples = 2^40",
            "config.eval_samples = 1099511627776 is above its limit of 16777216",
        ),
        (
            "x0_steps",
            "x0 = \"ddim\", x0_steps = 1000",
            "config.x0_steps = 1000 is above its limit of 999",
        ),
        (
            "deterministic_step",
            "steps = 700",
            "config.steps = 700: step 699 of the DDIM grid (training timestep 0) has σ = 0",
        ),
    ];
    for (name, cfg, needle) in cases {
        // The last key given wins in a Lua table constructor: the case overrides the base.
        expect_error(
            name,
            &common::standard_script(&w, cfg),
            dir,
            &[&format!("{name}.lua"), needle],
        );
    }
}

#[test]
fn weight_file_mistakes_name_the_file_and_key() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let missing = dir.join("nowhere");
    expect_error(
        "missing_weights",
        &common::standard_script(&missing, ""),
        dir,
        &[
            "weight file",
            "nowhere/denoiser.safetensors not found",
            "sqdf pretrain gmm2d",
        ],
    );

    let corrupt = dir.join("corrupt");
    std::fs::create_dir_all(&corrupt).unwrap();
    std::fs::write(
        corrupt.join("denoiser.safetensors"),
        b"this is not a safetensors file",
    )
    .unwrap();
    expect_error(
        "corrupt_weights",
        &common::standard_script(&corrupt, ""),
        dir,
        &["corrupt/denoiser.safetensors is not a valid safetensors file"],
    );

    // A file that lacks one key.
    let partial = dir.join("partial");
    common::tiny_weights(dir);
    std::fs::create_dir_all(&partial).unwrap();
    let full = sqdf::tensor_io::read(
        &dir.join("weights/denoiser.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let mut t: std::collections::BTreeMap<_, _> = full.tensors.into_iter().collect();
    t.remove("output.bias");
    sqdf::tensor_io::write_atomic(&partial.join("denoiser.safetensors"), &t, full.metadata)
        .unwrap();
    expect_error(
        "missing_key",
        &common::standard_script(&partial, ""),
        dir,
        &["partial/denoiser.safetensors: missing key `output.bias`"],
    );

    // No consistency model while config.x0 asks for one.
    let no_cm = dir.join("no_cm");
    common::write_tiny_model(&no_cm, "denoiser.safetensors", 1);
    expect_error(
        "no_cm",
        &common::standard_script(&no_cm, ""),
        dir,
        &[
            "consistency.safetensors not found",
            "config.x0 = \"tweedie\"",
        ],
    );
}

#[test]
fn nan_losses_are_skipped_then_stop_the_run_with_the_checkpoint_intact() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let w = common::tiny_weights(dir);
    // From the third epoch on every loss is NaN: 2 updates per epoch, so the fifth NaN in a
    // row falls in epoch 5, and the checkpoint of epoch 4 must remain.
    let src = common::standard_script(&w, "epochs = 10").replace(
        "loss = sqdf.loss,",
        "loss = function(b, ctx)\n  local l = sqdf.loss(b, ctx)\n  if ctx.epoch >= 2 then return l * (0 / 0) end\n  return l\nend,",
    );
    let script = common::write_script(dir, "nan.lua", &src);
    let out = dir.join("run-nan");
    let (ok, err) = run(&script, &out, &[]);
    assert!(!ok);
    assert!(err.contains("5 non-finite losses in a row"), "{err}");
    let log = std::fs::read_to_string(out.join("run.log")).unwrap();
    assert!(log.contains("step skipped (1 in a row)"), "{log}");
    let ck = sqdf::train::checkpoint::load(&out.join(sqdf::train::checkpoint::FILE)).unwrap();
    assert_eq!(ck.state.epoch, 4);
    for (k, t) in ck.policy_tensors() {
        let finite = t
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .all(|x| x.is_finite());
        assert!(finite, "{k} is not finite in the kept checkpoint");
    }
}

#[test]
fn bad_cli_input_is_an_error_not_a_panic() {
    let d = tempfile::tempdir().unwrap();
    let (ok, err) = run(&d.path().join("absent.lua"), &d.path().join("o"), &[]);
    assert!(
        !ok && err.contains("cannot read script") && err.contains("absent.lua"),
        "{err}"
    );
    let w = common::tiny_weights(d.path());
    let s = common::write_script(d.path(), "s.lua", &common::standard_script(&w, ""));
    let (ok, err) = run(&s, &d.path().join("o2"), &["--set", "alpha"]);
    assert!(!ok && err.contains("--set expects key=value"), "{err}");
    let (ok, err) = run(
        &s,
        &d.path().join("o3"),
        &["--resume", d.path().join("nothing").to_str().unwrap()],
    );
    assert!(!ok && err.contains("cannot resume"), "{err}");
}

/// Started by a launcher (its variables set, as `mpirun -n 2` would), a command that runs on
/// one process only refuses rather than letting two copies write the same files.
#[test]
fn a_one_process_command_started_as_a_rank_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("w");
    let (ok, err) = common::sqdf_as_rank(&[
        "--quiet",
        "random-weights",
        w.to_str().unwrap(),
        "--size",
        "tiny",
    ]);
    assert!(!ok);
    assert!(
        err.contains("only `sqdf run` and `sqdf compare` run on several processes"),
        "{err}"
    );
    assert!(!dir.path().join("w").exists(), "nothing was written");
}

/// `sqdf run` started by a launcher without the `mpi` feature says how to build it.
#[cfg(not(feature = "mpi"))]
#[test]
fn run_started_as_a_rank_without_mpi_says_how_to_build_it() {
    let dir = tempfile::tempdir().unwrap();
    let w = common::tiny_weights(dir.path());
    let script = common::write_script(dir.path(), "toy.lua", &common::standard_script(&w, ""));
    let out = dir.path().join("out");
    let (ok, err) = common::sqdf_as_rank(&[
        "--quiet",
        "run",
        script.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("--features mpi"), "{err}");
    assert!(!dir.path().join("out").exists(), "nothing ran");
}
