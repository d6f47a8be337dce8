//! The baselines written in Lua (lua/baselines/) against what they claim to compute:
//! DRaFT-K's gradient is backpropagation through the last K steps of the sampled trajectory,
//! DDPO's likelihood ratio is 1 on the first PPO epoch, and the KL variants add exactly the
//! KL of the SQDF paper's Appendix D.1.1 (alpha * sum_t KL_t).

use crate::common;

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

/// Each gradient of `lua` equals the same parameter's in `direct`, relative 1e-4 of the
/// latter's largest entry.
fn assert_same_grads(lua: &[Tensor], direct: &[Tensor]) {
    for (a, d) in lua.iter().zip(direct) {
        let scale = scalar(&d.abs().unwrap().flatten_all().unwrap().max(0).unwrap()).max(1e-6);
        assert!(
            max_abs_diff(a, d) / scale < 1e-4,
            "gradients differ: {a} vs {d}"
        );
    }
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
    draft_k_gradient_is_backprop_through_the_last_k_steps(1);
}

#[test]
fn draft3_gradient_is_backprop_through_the_last_three_steps() {
    draft_k_gradient_is_backprop_through_the_last_k_steps(3);
}

/// DRaFT-K's loss and gradient on the epoch's trajectories equal -mean r(x_0) of the same
/// trajectory sampled again from the same noise streams, the graph kept on its last K steps.
fn draft_k_gradient_is_backprop_through_the_last_k_steps(k: usize) {
    let dir = tempfile::tempdir().unwrap();
    let script = baseline_script(
        dir.path(),
        "draft",
        "loss",
        &format!(", params = {{ K = {k} }}"),
    );
    let (mut t, _) = trainer(&script, &dir.path().join("run"), &[]);
    let rng_before = t.rng.lock().unwrap().clone();
    t.collect().unwrap();

    let lua_loss = t.script.loss(latest(&t), t.context()).unwrap().loss;
    let lua_grads = grads(&t, &lua_loss);

    // The same trajectory sampled again from the same noise streams, the graph kept on the last
    // K steps only: -mean r(x_0) differentiated by plain backpropagation.
    let m = t.models.clone();
    let mut rng = rng_before;
    let b = t.script.config.batch;
    let cond = t.task.conditions(b, &mut rng);
    // Trajectory j's noise is stream j of a key from the run's stream.
    let key: u64 = rand::Rng::random(&mut rng);
    let mut streams: Vec<_> = (0..b as u64)
        .map(|j| sqdf::rng::row_stream(key, j))
        .collect();
    let ct = cond_tensor(&cond, &m.device).unwrap();
    let mut x = sqdf::rng::randn_rows(&mut streams, (b, 2), &m.device).unwrap();
    let steps = m.sampler.steps();
    for i in 0..steps {
        let idx = vec![i; b];
        let tt = m.sampler.timesteps_tensor(&idx, &m.device).unwrap();
        let step = m
            .sampler
            .step(&x, &m.policy.eps(&x, &tt, &ct).unwrap(), &idx)
            .unwrap();
        let z = sqdf::rng::randn_rows(&mut streams, x.shape(), &m.device).unwrap();
        x = step
            .mean
            .add(&z.broadcast_mul(&step.sigma).unwrap())
            .unwrap();
        if i + k < steps {
            x = x.detach();
        }
    }
    let r = t.script.reward(&x, &ct).unwrap();
    let direct = r.mean_all().unwrap().neg().unwrap();
    assert!((scalar(&direct) - scalar(&lua_loss)).abs() < 1e-5);
    assert_same_grads(&lua_grads, &grads(&t, &direct));
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

/// The script's loss on `traj` with config.alpha = `alpha`.
fn loss_at(t: &Trainer, traj: &Trajectories, alpha: f64) -> Tensor {
    t.script
        .loss(traj.clone(), with_alpha(t.context(), alpha))
        .unwrap()
        .loss
}

/// loss(alpha = 0.5) - loss(alpha = 0) on the same trajectories.
fn kl_part_of_the_loss(t: &Trainer, traj: &Trajectories) -> f64 {
    scalar(&loss_at(t, traj, 0.5)) - scalar(&loss_at(t, traj, 0.0))
}

/// DDPO+KL (alpha 0.5, every step) one update away from the reference, on a fresh batch.
fn ddpo_kl(dir: &std::path::Path) -> (Trainer, Trajectories) {
    let script = baseline_script(
        dir,
        "ddpo",
        "loss",
        ", alpha = 0.5, params = { min_count = 2, timestep_fraction = 1 }",
    );
    moved_then_fresh(&script, &dir.join("run"))
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
    let kl: f64 = step_kls(&t, &traj).iter().sum();
    assert!(kl > 1e-6, "the KL should be positive after an update: {kl}");
    assert!(
        (diff - 0.5 * kl).abs() < 1e-5 * (1.0 + kl),
        "{diff} != 0.5 * {kl}"
    );
}

#[test]
fn ddpo_kl_takes_alpha_times_the_step_kl_off_the_advantage() {
    let dir = tempfile::tempdir().unwrap();
    // On the policy's own batch the ratio is 1: loss = mean_t mean_b -(A - alpha KL_t), so the KL
    // version is larger by alpha times the per-step KL averaged over steps and samples. DDPO+KL's
    // KL_t is half the released form (mean / 2 sigma^2: the first author's DDPO fork).
    let (t, traj) = ddpo_kl(dir.path());
    let diff = kl_part_of_the_loss(&t, &traj);
    let mean_kl = step_kls(&t, &traj).iter().sum::<f64>() / traj.steps() as f64;
    assert!(
        mean_kl > 1e-6,
        "the KL should be positive after an update: {mean_kl}"
    );
    assert!(
        (diff - 0.5 * mean_kl / 2.0).abs() < 1e-5 * (1.0 + mean_kl),
        "{diff} != 0.5 * {mean_kl} / 2"
    );
}

/// KL(p_θ || p') (released form) of each stored step i = 0..T-1, averaged over the batch.
fn step_kls(t: &Trainer, traj: &Trajectories) -> Vec<f64> {
    let ctx = t.context();
    (0..traj.steps())
        .map(|i| {
            let b = traj.at(i).unwrap();
            let (p, q) = (ctx.step(&b, true).unwrap(), ctx.step(&b, false).unwrap());
            scalar(
                &gaussian_kl(&p.mean, &q.mean, &p.sigma, KlForm::Released)
                    .unwrap()
                    .mean_all()
                    .unwrap(),
            )
        })
        .collect()
}

#[test]
fn draft_kl_samples_the_early_steps_kl_scaled_to_their_number() {
    let dir = tempfile::tempdir().unwrap();
    // The shipped default: kl_steps = 4 random ones of the T - K = 7 early steps, scaled by
    // 7/4, plus the last step's own KL. The loss must match one 4-subset exactly.
    let script = baseline_script(
        dir.path(),
        "draft",
        "loss",
        ", alpha = 0.5, params = { K = 1, kl_steps = 4 }",
    );
    let (t, traj) = moved_then_fresh(&script, &dir.path().join("run"));
    let k = step_kls(&t, &traj);
    let subsets: Vec<f64> = (0u32..128)
        .filter(|m| m.count_ones() == 4)
        .map(|m| {
            0.5 * (k[7]
                + 7.0 / 4.0
                    * (0..7)
                        .filter(|i| m >> i & 1 == 1)
                        .map(|i| k[i])
                        .sum::<f64>())
        })
        .collect();
    for _ in 0..5 {
        let diff = kl_part_of_the_loss(&t, &traj);
        let nearest = subsets
            .iter()
            .map(|s| (diff - s).abs())
            .fold(f64::INFINITY, f64::min);
        assert!(
            nearest < 1e-6 * (1.0 + diff.abs()),
            "{diff} matches no 4-subset: {subsets:?}"
        );
    }
}

#[test]
fn ddpo_kl_is_detached_so_its_gradient_is_the_advantage_shift_only() {
    let dir = tempfile::tempdir().unwrap();
    let (t, traj) = ddpo_kl(dir.path());
    let (with_kl, without) = (
        grads(&t, &loss_at(&t, &traj, 0.5)),
        grads(&t, &loss_at(&t, &traj, 0.0)),
    );
    // On the policy's own batch (ratio 1, inside the clip) the KL variant's loss is larger by
    // mean_t mean_b alpha KL_t.detach() ratio_t: its gradient flows through the ratio alone.
    let ctx = t.context();
    let mut shift = Tensor::zeros((), DType::F32, &t.models.device).unwrap();
    for i in 0..traj.steps() {
        let b = traj.at(i).unwrap();
        let (p, q) = (ctx.step(&b, true).unwrap(), ctx.step(&b, false).unwrap());
        let kl = gaussian_kl(&p.mean, &q.mean, &p.sigma, KlForm::Released)
            .unwrap()
            .detach();
        let lp = sqdf::diffusion::log_prob::gaussian_log_prob(&b.next, &p.mean, &p.sigma).unwrap();
        let ratio = (lp - &b.log_prob).unwrap().exp().unwrap();
        // alpha 0.5 times DDPO+KL's KL, half the released form.
        let term = (kl * ratio).unwrap().mean_all().unwrap() * (0.5 * 0.5);
        shift = (shift + term.unwrap()).unwrap();
    }
    let shift = (shift / traj.steps() as f64).unwrap();
    let expected = grads(&t, &shift);
    for ((a, b), e) in with_kl.iter().zip(&without).zip(&expected) {
        let d = (a - b).unwrap();
        let scale = scalar(&e.abs().unwrap().flatten_all().unwrap().max(0).unwrap()).max(1e-8);
        assert!(
            max_abs_diff(&d, e) / scale < 1e-3,
            "gradients differ: {d} vs {e}"
        );
    }
}

#[test]
fn refl_takes_its_gradient_step_in_the_last_fifth_of_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let script = baseline_script(dir.path(), "refl", "loss", "");
    let (mut t, _) = trainer(&script, &dir.path().join("run"), &[]);
    t.collect().unwrap();
    let traj = latest(&t);
    // T = 8: floor(0.8 T) = 6, so step 6 or 7 (ReFL's [40, 50) of 50, scaled).
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let out = t.script.loss(traj.clone(), t.context()).unwrap();
        seen.insert(out.stats["step"] as usize);
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), [6, 7]);
}

#[test]
fn ddpo_advantages_are_normalised_per_prompt_over_its_newest_rewards() {
    let dir = tempfile::tempdir().unwrap();
    let w = tiny_digits_weights(dir.path());
    // Digits (10 prompts), two batches of 16: some prompts have 3 or more rewards (their
    // newest 3 give the statistics), the others fall back to the batch's.
    let src = digits_script(
        &w,
        "batch = 16, capacity = 32, update_on = \"trajectories\", params = { min_count = 3, buffer_size = 3, adv_clip = 100 }",
    )
    .replace(
        "local sqdf = require(\"sqdf\")",
        "local sqdf = require(\"sqdf\")\nlocal ddpo = require(\"baselines.ddpo\")",
    )
    .replace(
        "loss = sqdf.loss,",
        r#"loss = function(traj, ctx)
    local st = {}
    for j, a in ipairs(ddpo.advantages(traj, ctx):totable()) do
      st["adv" .. j] = a
    end
    return ctx:policy_step(traj:at(0)).mean:sum() * 0, st
  end,"#,
    );
    let s = write_script(dir.path(), "adv.lua", &src);
    let (mut t, _) = trainer(&s, &dir.path().join("run"), &[]);
    t.collect().unwrap();
    t.collect().unwrap();
    let out = t.script.loss(latest(&t), t.context()).unwrap();
    let (conds, rewards) = t.buffer.rewards_in_push_order();
    let batch: Vec<(u32, f32)> = conds[16..]
        .iter()
        .copied()
        .zip(rewards[16..].iter().copied())
        .collect();
    let stats = |v: &[f64]| {
        let m = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| x * x).sum::<f64>() / v.len() as f64 - m * m;
        (m, var.max(0.0).sqrt())
    };
    let whole: Vec<f64> = batch.iter().map(|(_, r)| *r as f64).collect();
    let mut per_prompt_used = 0;
    for (j, (c, r)) in batch.iter().enumerate() {
        let newest: Vec<f64> = conds
            .iter()
            .zip(&rewards)
            .rev()
            .filter(|(cc, _)| *cc == c)
            .take(3)
            .map(|(_, r)| *r as f64)
            .collect();
        let (m, sd) = if newest.len() >= 3 {
            per_prompt_used += 1;
            stats(&newest)
        } else {
            stats(&whole)
        };
        let want = (*r as f64 - m) / (sd + 1e-6);
        let got = out.stats[&format!("adv{}", j + 1)];
        assert!(
            (got - want).abs() < 1e-3 * (1.0 + want.abs()),
            "sample {j}: {got} vs {want}"
        );
    }
    assert!(
        per_prompt_used > 0 && per_prompt_used < 16,
        "both cases: {per_prompt_used} of 16"
    );
}

#[test]
fn seiko_draws_one_k_per_update_shared_by_its_micro_batches() {
    let dir = tempfile::tempdir().unwrap();
    let script = baseline_script(
        dir.path(),
        "seiko",
        "loss",
        ", micro_batch = 2, params = { K_max = 8, kl_steps = 2 }",
    );
    let (mut t, _) = trainer(&script, &dir.path().join("run"), &[]);
    t.collect().unwrap();
    // Batch 6 in 3 micro-batches: the logged K is their weighted mean, a whole number only
    // if they drew the same K (three independent draws would rarely all average to one).
    let ks: Vec<f64> = (0..8)
        .map(|_| t.update().unwrap().expect("a finite update").stats["K"])
        .collect();
    assert!(
        ks.iter()
            .all(|k| (k - k.round()).abs() < 1e-9 && (1.0..=8.0).contains(&k.round())),
        "{ks:?}"
    );
    assert!(
        ks.iter().any(|k| *k != ks[0]),
        "K is redrawn per update: {ks:?}"
    );
}

#[test]
fn the_ddim_x0_ablation_is_n_reference_ddim_steps_to_zero() {
    let dir = tempfile::tempdir().unwrap();
    let script = baseline_script(dir.path(), "draft", "loss", "");
    let (mut t, _) = trainer(&script, &dir.path().join("run"), &[]);
    t.collect().unwrap();
    let b = latest(&t).at(2).unwrap();
    let (ctx, m) = (t.context(), t.models.clone());
    let x = b.next.clone();
    // One step is Tweedie's estimate of the reference.
    let one = ctx.ddim_next(&x, &b, 1).unwrap();
    assert!(max_abs_diff(&one, &ctx.tweedie_next(&x, &b).unwrap()) < 1e-6);
    // Two steps by hand: Tweedie at τ, DDIM (η = 0) to round(τ / 2), Tweedie there.
    let tau: Vec<usize> = b.idx.iter().map(|&i| m.sampler.time_of(i + 1)).collect();
    let half: Vec<usize> = tau
        .iter()
        .map(|&v| (v as f64 / 2.0).round() as usize)
        .collect();
    let eps = |x: &Tensor, ts: &[usize]| -> Vec<Vec<f64>> {
        let tt = Tensor::new(ts.iter().map(|&v| v as f32).collect::<Vec<_>>(), &m.device).unwrap();
        let e = m.reference.eps(x, &tt, &b.cond).unwrap();
        e.to_dtype(DType::F64).unwrap().to_vec2().unwrap()
    };
    let xs: Vec<Vec<f64>> = x.to_dtype(DType::F64).unwrap().to_vec2().unwrap();
    let e1 = eps(&x, &tau);
    let mut x1 = xs.clone();
    let mut x0_first = xs.clone();
    for (i, row) in xs.iter().enumerate() {
        let (a, a1) = (m.schedule.alpha_bar(tau[i]), m.schedule.alpha_bar(half[i]));
        for (d, v) in row.iter().enumerate() {
            x0_first[i][d] = (v - (1.0 - a).sqrt() * e1[i][d]) / a.sqrt();
            x1[i][d] = a1.sqrt() * x0_first[i][d] + (1.0 - a1).sqrt() * e1[i][d];
        }
    }
    let x1_t = Tensor::new(x1.clone(), &m.device)
        .unwrap()
        .to_dtype(x.dtype())
        .unwrap();
    let e2 = eps(&x1_t, &half);
    let two = ctx
        .ddim_next(&x, &b, 2)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    for (i, row) in two.to_vec2::<f64>().unwrap().iter().enumerate() {
        let a1 = m.schedule.alpha_bar(half[i]);
        for (d, got) in row.iter().enumerate() {
            let want = (x1[i][d] - (1.0 - a1).sqrt() * e2[i][d]) / a1.sqrt();
            assert!(
                (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                "[{i}, {d}]: {got} vs {want}"
            );
        }
    }
}

#[test]
fn draft_lv_is_the_last_step_from_n_renoised_copies_of_x0() {
    let dir = tempfile::tempdir().unwrap();
    let script = baseline_script(
        dir.path(),
        "draft",
        "loss_lv",
        ", params = { lv_copies = 2 }",
    );
    let (mut t, _) = trainer(&script, &dir.path().join("run"), &[]);
    t.collect().unwrap();
    let traj = latest(&t);
    let saved = t.rng.lock().unwrap().clone();
    let lua_loss = t.script.loss(traj.clone(), t.context()).unwrap().loss;
    let lua_grads = grads(&t, &lua_loss);

    // Replayed from the same generator state, in the loss's order of draws: per copy, the
    // re-noising ε of q(x_1 | x_0), then the step's noise.
    *t.rng.lock().unwrap() = saved;
    let (ctx, m) = (t.context(), t.models.clone());
    let last = traj.at(traj.steps() - 1).unwrap();
    let x0 = &last.next;
    let mut sum: Option<Tensor> = None;
    for _ in 0..2 {
        let mut rng = t.rng.lock().unwrap().clone();
        let e1 = sqdf::rng::randn(&mut rng, x0.shape(), &m.device).unwrap();
        let a: Vec<f64> = last.idx.iter().map(|&i| m.sampler.alpha_bar(i)).collect();
        let col = |f: &dyn Fn(f64) -> f64| {
            Tensor::new(
                a.iter().map(|v| f(*v) as f32).collect::<Vec<_>>(),
                &m.device,
            )
            .unwrap()
            .unsqueeze(1)
            .unwrap()
        };
        let x1 = (x0.broadcast_mul(&col(&|v| v.sqrt())).unwrap()
            + e1.broadcast_mul(&col(&|v| (1.0 - v).sqrt())).unwrap())
        .unwrap();
        let step = ctx.step_from(&last, &x1, true).unwrap();
        let e2 = sqdf::rng::randn(&mut rng, step.mean.shape(), &m.device).unwrap();
        *t.rng.lock().unwrap() = rng;
        let x = step
            .mean
            .add(&e2.broadcast_mul(&step.sigma).unwrap())
            .unwrap();
        let r = t.script.reward(&x, &last.cond).unwrap();
        sum = Some(match sum {
            Some(s) => (s + r).unwrap(),
            None => r,
        });
    }
    let direct = (sum.unwrap() / 2.0)
        .unwrap()
        .mean_all()
        .unwrap()
        .neg()
        .unwrap();
    assert!((scalar(&direct) - scalar(&lua_loss)).abs() < 1e-5);
    assert_same_grads(&lua_grads, &grads(&t, &direct));
}
