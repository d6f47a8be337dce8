//! The digits benchmark's pieces: LoRA trains only the adapters; the shipped evaluation and
//! reward networks give their documented figures; the evaluation is repeatable; a short
//! run on a tiny UNet goes through the whole loop (LoRA, guidance, consistency model).

use crate::common;
use common::{in_pool, values};

use candle_core::{Device, Tensor};
use sqdf::rng::{randn, seeded};

#[test]
fn lora_gradients_reach_only_the_adapters() {
    let dir = tempfile::tempdir().unwrap();
    let t = common::digits_trainer(dir.path());
    let vars = sqdf::tensor_io::sorted_vars(&t.models.policy_vars);
    assert!(!vars.is_empty());
    for (name, _) in &vars {
        assert!(
            name.contains(".lora_A.") || name.contains(".lora_B."),
            "{name} is trainable but not an adapter"
        );
    }
    let dev = Device::Cpu;
    let x = randn(&mut seeded(1), (3, 1, 28, 28), &dev).unwrap();
    let tt = Tensor::new(&[100f32, 500., 900.], &dev).unwrap();
    let c = Tensor::new(&[1u32, 4, 7], &dev).unwrap();
    // B = 0 at the start: the policy is exactly the pretrained model.
    let p = t.models.policy.eps(&x, &tt, &c).unwrap();
    let r = t.models.reference.eps(&x, &tt, &c).unwrap();
    assert_eq!(common::max_abs_diff(&p, &r), 0.0);
    // With B != 0 every adapter receives a gradient, and nothing else is a variable.
    for (i, (_, v)) in vars.iter().enumerate() {
        v.set(
            &randn(&mut seeded(10 + i as u64), v.shape(), &dev)
                .unwrap()
                .affine(0.1, 0.0)
                .unwrap(),
        )
        .unwrap();
    }
    let g = t
        .models
        .policy
        .eps(&x, &tt, &c)
        .unwrap()
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap()
        .backward()
        .unwrap();
    for (name, v) in &vars {
        let n = g
            .get(v.as_tensor())
            .map(|g| common::max_abs_diff(g, &g.zeros_like().unwrap()))
            .unwrap_or(0.0);
        assert!(n > 0.0, "{name} got no gradient");
    }
}

#[test]
fn a_short_digits_run_trains_the_adapters() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = common::digits_trainer(dir.path());
    let before: Vec<Tensor> = sqdf::tensor_io::sorted_vars(&t.models.policy_vars)
        .iter()
        .map(|(_, v)| v.as_tensor().copy().unwrap())
        .collect();
    let m = t.run_epoch().unwrap();
    assert!(m.kl.unwrap().is_finite());
    let after = sqdf::tensor_io::sorted_vars(&t.models.policy_vars);
    let moved = before
        .iter()
        .zip(&after)
        .filter(|(b, (_, a))| common::max_abs_diff(b, a.as_tensor()) > 0.0)
        .count();
    assert_eq!(moved, after.len(), "every adapter moves in an update");
    // The graph-free sampling policy shares the variables' storage: it has the updated
    // weights (merged into the base, so equal up to rounding), and records no graph.
    let dev = Device::Cpu;
    let x = randn(&mut seeded(1), (2, 1, 28, 28), &dev).unwrap();
    let (tt, c) = (
        Tensor::new(&[300f32, 700.], &dev).unwrap(),
        Tensor::new(&[2u32, 10], &dev).unwrap(),
    );
    let p = t.models.policy.eps(&x, &tt, &c).unwrap();
    let q = t.models.sampling_policy().eps(&x, &tt, &c).unwrap();
    assert!(p.track_op() && !q.track_op());
    assert!(common::max_abs_diff(&p, &q) < 1e-5);
    let r = t.models.reference.eps(&x, &tt, &c).unwrap();
    assert!(
        common::max_abs_diff(&q, &r) > 1e-3,
        "the sampling policy is not the reference"
    );
}

#[test]
fn the_last_point_along_training_is_the_evaluation_after_when_they_match() {
    // eval_per_prompt 8 = the along-training count: the final epoch's point is eval.json's
    // `after` (KL included), not a second sampling of the same 80 images; at 4 per prompt
    // the final epoch has its own smaller evaluation (no KL).
    for (per_prompt, shared) in [(8, true), (4, false)] {
        let dir = tempfile::tempdir().unwrap();
        let w = common::tiny_digits_weights(dir.path());
        let extra =
            format!("evals = 2, epochs = 2, updates_per_epoch = 1, eval_per_prompt = {per_prompt}");
        let script = common::write_script(dir.path(), "d.lua", &common::digits_script(&w, &extra));
        let run = dir.path().join("run");
        let (mut t, _) = common::trainer(&script, &run, &[]);
        let eval = t.run().unwrap();
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(run.join("evals.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let epochs: Vec<u64> = lines.iter().map(|l| l["epoch"].as_u64().unwrap()).collect();
        assert_eq!(epochs, [0, 1, 2]);
        let last = &lines[2];
        let png = run.join("along_training").join("samples_epoch_002.png");
        if shared {
            // The claim the reuse rests on: an evaluation along training of the trained
            // policy gives the evaluation after's metrics (the same samples), KL aside.
            let along = t
                .task
                .evaluate(
                    &t.models,
                    t.models.sampling_policy().as_ref(),
                    &t.script,
                    dir.path(),
                    "check",
                    &t.log,
                    true,
                )
                .unwrap();
            for k in [
                "reward",
                "gold",
                "alignment_prob",
                "diversity_feature",
                "diversity_lpips",
                "frechet",
            ] {
                assert_eq!(along[k], eval.after[k], "{k}");
            }
            assert_eq!(last["reward"], eval.after["reward"]);
            assert!(last["kl"].as_f64().is_some(), "{last}");
            assert!(!png.exists());
        } else {
            assert_ne!(last["reward"], eval.after["reward"]);
            assert!(last["kl"].is_null(), "{last}");
            assert!(png.exists());
        }
    }
}

#[test]
fn prompts_sampled_in_one_batch_are_the_prompts_sampled_alone() {
    use sqdf::tasks::digits::evaluate::{sample_prompts, KL_SAMPLES};
    let dir = tempfile::tempdir().unwrap();
    let t = common::digits_trainer(dir.path());
    // Adapters away from zero, so that the policy's KL to the reference is not zero.
    for (i, (_, v)) in sqdf::tensor_io::sorted_vars(&t.models.policy_vars)
        .iter()
        .enumerate()
    {
        let r = randn(&mut seeded(20 + i as u64), v.shape(), &Device::Cpu).unwrap();
        v.set(&r.affine(0.3, 0.0).unwrap()).unwrap();
    }
    // More samples per prompt than KL_SAMPLES: the KL rows are the first of each prompt.
    let per = KL_SAMPLES + 2;
    let (classes, seeds) = ([3u32, 7], [11u64, 12]);
    let x_t: Vec<Tensor> = (0..2)
        .map(|p| randn(&mut seeded(p), (per, 1, 28, 28), &Device::Cpu).unwrap())
        .collect();
    let models = t.models.as_ref();
    let sample = |ps: &[usize]| {
        let xs: Vec<Tensor> = ps.iter().map(|&p| x_t[p].clone()).collect();
        let cs: Vec<u32> = ps.iter().map(|&p| classes[p]).collect();
        let ss: Vec<u64> = ps.iter().map(|&p| seeds[p]).collect();
        let (x, kl) = sample_prompts(
            models,
            models.policy.as_ref(),
            Tensor::cat(&xs, 0).unwrap(),
            &cs,
            true,
            &ss,
        )
        .unwrap();
        (x, kl.unwrap())
    };
    let (x, kl) = sample(&[0, 1]);
    let (x0, kl0) = sample(&[0]);
    let (x1, kl1) = sample(&[1]);
    assert_eq!(kl.dims(), [2 * KL_SAMPLES]);
    assert!(kl0.min(0).unwrap().to_scalar::<f32>().unwrap() > 0.0);
    let alone = Tensor::cat(&[x0, x1], 0).unwrap();
    // Equal up to the rounding of convolutions of another batch size, relative to the
    // samples' size (the tiny random UNet's samples are far from [-1, 1]).
    let d = common::max_abs_diff(&x, &alone);
    let size = common::max_abs_diff(&alone, &alone.zeros_like().unwrap());
    assert!(
        d < 1e-5 * size,
        "batched and alone differ by {d} (size {size})"
    );
    let kl_alone = Tensor::cat(&[kl0, kl1], 0).unwrap();
    let scale = kl_alone
        .abs()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64;
    assert!(common::max_abs_diff(&kl, &kl_alone) < 1e-4 * scale);
}

#[test]
fn the_evaluation_is_repeatable_for_a_fixed_seed() {
    let dir = tempfile::tempdir().unwrap();
    let w = common::tiny_digits_weights(dir.path());
    let script = common::write_script(dir.path(), "d.lua", &common::digits_script(&w, ""));
    let log = sqdf::run_log::RunLog::captured();
    let a =
        sqdf::cli::eval::evaluate(&script, None, &[], &dir.path().join("e1"), log.clone()).unwrap();
    let b = sqdf::cli::eval::evaluate(&script, None, &[], &dir.path().join("e2"), log).unwrap();
    assert_eq!(a, b);
    for k in [
        "reward",
        "gold",
        "alignment_prob",
        "alignment_acc",
        "diversity_feature",
        "diversity_lpips",
        "frechet",
        "kl",
    ] {
        assert!(a[k].as_f64().is_some(), "eval lacks {k}");
    }
    assert!(dir.path().join("e1/samples_pretrained.png").is_file());
}

/// The figures the cards in models/digits document, on the held-out split.
#[test]
fn shipped_evaluation_networks_give_their_documented_figures() {
    let dev = Device::Cpu;
    let models = common::repo_root().join("models/digits");
    let (_, held) = sqdf::tasks::digits::data(&dev).unwrap();
    // classifier.md: 98.70% held-out accuracy.
    let clf = sqdf::tasks::digits::classifier::load(&models, &dev).unwrap();
    let (acc, _) =
        sqdf::tasks::digits::classifier::accuracy(&clf, &held.images, &held.labels).unwrap();
    assert!((acc - 0.987).abs() <= 0.002, "held-out accuracy {acc}");
    // reward.md: RMSE 0.0089, r = 0.989 on plain held-out digits.
    let net = sqdf::tasks::digits::reward::load(&models, &dev).unwrap();
    let pred = candle_core::Module::forward(&net, &held.images)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let gold = sqdf::rewards::gold::boldness(&held.images)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let (rmse, r) = sqdf::tasks::digits::reward::agreement(&pred, &gold);
    assert!(
        (rmse - 0.0089).abs() < 0.0005 && (r - 0.989).abs() < 0.002,
        "rmse {rmse}, r {r}"
    );
}

/// consistency.md's row for t = 15 of 50, recomputed: the shipped consistency model's one-step
/// x0 is closer to the guided ODE solution than Tweedie's, by the figures the card gives.
#[test]
fn shipped_consistency_model_gives_its_documented_error() {
    use sqdf::tasks::digits::{distill, task};
    let dev = Device::Cpu;
    let models = common::repo_root().join("models/digits");
    let (_, held) = sqdf::tasks::digits::data(&dev).unwrap();
    let (unet, _, _) =
        sqdf::tasks::digits::process::load_unet(&models.join("unet.safetensors"), &dev, "-")
            .unwrap();
    let teacher = sqdf::models::guidance::Guided {
        inner: std::sync::Arc::new(unet),
        scale: distill::GUIDANCE,
        null: sqdf::models::class_conditional::NULL_PROMPT,
    };
    let cm = task::load_consistency(&models, &dev).unwrap();
    let e = distill::one_step_errors(&teacher, &cm, &held, 15, distill::CARD_DIGITS).unwrap();
    let card = std::fs::read_to_string(models.join("consistency.md")).unwrap();
    let row: Vec<f64> = card
        .lines()
        .find(|l| l.starts_with("| 15 |"))
        .expect("consistency.md has a row for t = 15")
        .split('|')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let (tweedie, consistency) = (row[2], row[3]);
    assert!(
        (e.tweedie - tweedie).abs() < 2e-3 && (e.consistency - consistency).abs() < 2e-3,
        "measured Tweedie {:.4}, consistency {:.4}; card {tweedie}, {consistency}",
        e.tweedie,
        e.consistency
    );
    assert!(e.consistency < e.tweedie);
}

/// Trajectories sampled in parts side by side on the thread pool are bit for bit the same
/// on one thread or two, and the same as each part sampled alone.
#[test]
fn trajectories_sampled_in_parts_do_not_depend_on_the_thread_count() {
    use sqdf::train::rollout::{sample_trajectories, Rollout, CPU_PART};
    let dir = tempfile::tempdir().unwrap();
    let t = common::digits_trainer(dir.path());
    let m = t.models.clone();
    let n = CPU_PART + 3;
    let labels: Vec<u32> = (0..n as u32).map(|i| i % 10).collect();
    let cond = sqdf::tasks::cond_tensor(&labels, &Device::Cpu).unwrap();
    let streams = || -> Vec<_> { (0..n as u64).map(|g| sqdf::rng::row_stream(9, g)).collect() };
    let sample = |rows: std::ops::Range<usize>| -> Rollout {
        let c = cond.narrow(0, rows.start, rows.len()).unwrap();
        sample_trajectories(
            m.sampling_policy().as_ref(),
            &m.sampler,
            &m.state_shape,
            &c,
            &mut streams()[rows],
            true,
        )
        .unwrap()
    };
    let one = in_pool(1, || sample(0..n));
    let two = in_pool(2, || sample(0..n));
    assert_eq!(one.states.len(), two.states.len());
    for (i, (a, b)) in one.states.iter().zip(&two.states).enumerate() {
        assert!(
            values(a) == values(b),
            "state {i} differs on 1 and 2 threads"
        );
    }
    for (i, (a, b)) in one.log_probs.iter().zip(&two.log_probs).enumerate() {
        assert!(
            values(a) == values(b),
            "log-prob {i} differs on 1 and 2 threads"
        );
    }
    let (head, tail) = (sample(0..CPU_PART), sample(CPU_PART..n));
    let alone = Tensor::cat(&[head.x0, tail.x0], 0).unwrap();
    assert!(
        values(&two.x0) == values(&alone),
        "parts sampled alone differ"
    );
}

/// The evaluation's batches, sampled side by side, give what one thread gives.
#[test]
fn evaluation_batches_side_by_side_are_the_batches_one_by_one() {
    use sqdf::tasks::digits::evaluate::sample_all;
    let dir = tempfile::tempdir().unwrap();
    let t = common::digits_trainer(dir.path());
    let m = t.models.as_ref();
    // 32 per prompt: three batches of 4, 4 and 2 prompts.
    let run = || sample_all(m, m.policy.as_ref(), true, 5, 32).unwrap();
    let (x1, kl1) = in_pool(1, run);
    let (x2, kl2) = in_pool(2, run);
    assert_eq!(x1.dim(0).unwrap(), 320);
    assert!(
        values(&x1) == values(&x2),
        "samples differ on 1 and 2 threads"
    );
    assert_eq!(kl1, kl2);
}
