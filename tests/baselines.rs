//! The baselines written in Lua (lua/baselines/) against what they claim to compute:
//! DRaFT-1's gradient is backpropagation through the last step of the sampled trajectory,
//! DDPO's likelihood ratio is 1 on the first PPO epoch, and the KL variants add exactly the
//! KL of the SQDF paper's Appendix D.1.1 (alpha * sum_t KL_t).

mod common;

use candle_core::{DType, Tensor};
use common::*;
use sqdf::diffusion::kl::{gaussian_kl, KlForm};
use sqdf::script::{LossContext, Trajectories};
use sqdf::tasks::cond_tensor;
use sqdf::train::Trainer;

/// A toy script (tiny weights, T = 8) with an on-policy baseline's loss.
fn baseline_script(
    dir: &std::path::Path,
    module: &str,
    loss: &str,
    extra: &str,
) -> std::path::PathBuf {
    let w = tiny_weights(dir);
    let src = format!(
        r#"local m = require("baselines.{module}")
local W = tensor.from({{ {{ 1.0 }}, {{ 0.5 }} }})
return {{
  config = {{ {base}, update_on = "trajectories", lr = 1e-2{extra} }},
  reward = function(x0, cond, cfg) return x0:matmul(W):squeeze(2) end,
  loss = m.{loss},
  discount = m.discount,
  priority = m.priority,
}}
"#,
        base = tiny_config_lua(&w),
    );
    write_script(dir, &format!("{module}.lua"), &src)
}

/// The trajectories of the epoch just collected.
fn latest(t: &Trainer) -> Trajectories {
    let b = t.script.config.batch;
    Trajectories::from_buffer(
        &t.buffer,
        &t.buffer.latest(b),
        &t.models.sampler,
        t.discounts(),
        &t.models.device,
    )
    .unwrap()
}

fn grads(t: &Trainer, loss: &Tensor) -> Vec<Tensor> {
    let store = loss.backward().unwrap();
    t.optim
        .params
        .iter()
        .map(|(n, v)| {
            store
                .get(v.as_tensor())
                .cloned()
                .unwrap_or_else(|| panic!("no gradient reaches {n}"))
        })
        .collect()
}

fn with_alpha(ctx: LossContext, alpha: f64) -> LossContext {
    ctx.config.set("alpha", alpha).unwrap();
    ctx
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

#[test]
fn draft1_gradient_is_backprop_through_the_last_step_of_the_trajectory() {
    let dir = tempfile::tempdir().unwrap();
    let script = baseline_script(dir.path(), "draft", "loss", ", params = { K = 1 }");
    let (mut t, _) = trainer(&script, &dir.path().join("run"), &[]);
    let rng_before = t.rng.lock().unwrap().clone();
    t.collect().unwrap();

    let lua_loss = t.script.loss(latest(&t), t.context()).unwrap().loss;
    let lua_grads = grads(&t, &lua_loss);

    // The same trajectory sampled again from the same RNG state, the graph kept on the last
    // step only: -mean r(x_0) differentiated by plain backpropagation.
    let m = t.models.clone();
    let mut rng = rng_before;
    let b = t.script.config.batch;
    let cond = t.task.conditions(b, &mut rng);
    let ct = cond_tensor(&cond, &m.device).unwrap();
    let mut x = sqdf::rng::randn(&mut rng, (b, 2), &m.device).unwrap();
    let steps = m.sampler.steps();
    for i in 0..steps {
        let idx = vec![i; b];
        let tt = m.sampler.timesteps_tensor(&idx, &m.device).unwrap();
        let step = m
            .sampler
            .step(&x, &m.policy.eps(&x, &tt, &ct).unwrap(), &idx)
            .unwrap();
        let z = sqdf::rng::randn(&mut rng, x.shape(), &m.device).unwrap();
        x = step
            .mean
            .add(&z.broadcast_mul(&step.sigma).unwrap())
            .unwrap();
        if i + 1 < steps {
            x = x.detach();
        }
    }
    let r = t.script.reward(&x, &ct).unwrap();
    let direct = r.mean_all().unwrap().neg().unwrap();
    assert!((scalar(&direct) - scalar(&lua_loss)).abs() < 1e-5);
    for (a, d) in lua_grads.iter().zip(grads(&t, &direct)) {
        let scale = scalar(
            &d.abs()
                .unwrap()
                .max_keepdim(0)
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap(),
        )
        .max(1e-6);
        assert!(
            max_abs_diff(a, &d) / scale < 1e-4,
            "gradients differ: {a} vs {d}"
        );
    }
}

#[test]
fn ddpo_ratio_is_one_on_the_first_ppo_epoch_only() {
    let dir = tempfile::tempdir().unwrap();
    let script = baseline_script(
        dir.path(),
        "ddpo",
        "loss",
        ", updates_per_epoch = 2, params = { min_count = 2, clip_range = 0.2 }",
    );
    let (mut t, _) = trainer(&script, &dir.path().join("run"), &[]);
    t.collect().unwrap();
    let first = t.update().unwrap().expect("a finite first update");
    let second = t.update().unwrap().expect("a finite second update");
    assert!(
        first.stats["ratio_dev"] < 1e-5,
        "first epoch ratio off 1 by {}",
        first.stats["ratio_dev"]
    );
    assert!(
        second.stats["ratio_dev"] > 1e-4,
        "the update changed nothing: {}",
        second.stats["ratio_dev"]
    );
}

/// Σ_t KL(p_θ(·|x_t) || p'(·|x_t)) (released form) per trajectory, over all T stored states.
fn summed_kl(t: &Trainer, traj: &Trajectories) -> Tensor {
    let ctx = t.context();
    let mut sum = Tensor::zeros(traj.size(), DType::F32, &t.models.device).unwrap();
    for i in 0..traj.steps() {
        let b = traj.at(i).unwrap();
        let p = ctx.step(&b, true).unwrap();
        let q = ctx.step(&b, false).unwrap();
        sum = sum
            .add(&gaussian_kl(&p.mean, &q.mean, &p.sigma, KlForm::Released).unwrap())
            .unwrap();
    }
    sum
}

/// A trainer one update away from the reference (so the KL is not zero) that has then
/// sampled a fresh batch: the first update on it re-takes the policy's own actions (ratio 1,
/// no fresh noise in DRaFT's loss). Returns it with that batch.
fn moved_then_fresh(script: &std::path::Path, out: &std::path::Path) -> (Trainer, Trajectories) {
    let (mut t, _) = trainer(script, out, &[]);
    t.collect().unwrap();
    t.update().unwrap();
    t.collect().unwrap();
    let traj = latest(&t);
    (t, traj)
}

/// loss(alpha = 0.5) - loss(alpha = 0) on the same trajectories.
fn kl_part_of_the_loss(t: &Trainer, traj: &Trajectories) -> f64 {
    let at = |alpha| {
        scalar(
            &t.script
                .loss(traj.clone(), with_alpha(t.context(), alpha))
                .unwrap()
                .loss,
        )
    };
    at(0.5) - at(0.0)
}

#[test]
fn draft_kl_adds_alpha_times_the_summed_kl() {
    let dir = tempfile::tempdir().unwrap();
    // kl_steps = T - 1: every early step, so the sum is exact, not sampled.
    let script = baseline_script(
        dir.path(),
        "draft",
        "loss",
        ", alpha = 0.5, params = { K = 1, kl_steps = 7 }",
    );
    let (t, traj) = moved_then_fresh(&script, &dir.path().join("run"));
    let diff = kl_part_of_the_loss(&t, &traj);
    let kl = scalar(&summed_kl(&t, &traj).mean_all().unwrap());
    assert!(kl > 1e-6, "the KL should be positive after an update: {kl}");
    assert!(
        (diff - 0.5 * kl).abs() < 1e-5 * (1.0 + kl),
        "{diff} != 0.5 * {kl}"
    );
}

#[test]
fn ddpo_kl_takes_alpha_times_the_step_kl_off_the_advantage() {
    let dir = tempfile::tempdir().unwrap();
    let script = baseline_script(
        dir.path(),
        "ddpo",
        "loss",
        ", alpha = 0.5, params = { min_count = 2, timestep_fraction = 1 }",
    );
    // On the policy's own batch the ratio is 1: loss = mean_t mean_b -(A - alpha KL_t), so the KL
    // version is larger by alpha times the per-step KL averaged over steps and samples.
    let (t, traj) = moved_then_fresh(&script, &dir.path().join("run"));
    let diff = kl_part_of_the_loss(&t, &traj);
    let mean_kl = scalar(&summed_kl(&t, &traj).mean_all().unwrap()) / traj.steps() as f64;
    assert!(
        mean_kl > 1e-6,
        "the KL should be positive after an update: {mean_kl}"
    );
    assert!(
        (diff - 0.5 * mean_kl).abs() < 1e-5 * (1.0 + mean_kl),
        "{diff} != 0.5 * {mean_kl}"
    );
}
