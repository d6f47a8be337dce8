//! The sd15 task on a tiny random SD-1.5 with the real key names, written to a weight
//! folder by `random_weights::write` and read back by the real loaders: one SQDF update
//! goes through policy, reference, the merged LCM copy, VAE decoding, CLIP and the
//! aesthetic head and moves every LoRA parameter; micro-batches accumulate to the whole
//! batch's gradient; the reward gradient matches finite differences; missing files and
//! keys are named.

use crate::common;

use candle_core::{DType, Device, Tensor};
use sqdf::rng::{randn, seeded};
use sqdf::tasks::sd15::{layout, parts::Sd15Parts, random_weights, Layout};
use std::path::Path;

fn tiny_folder(dir: &Path) -> Layout {
    random_weights::write(
        &dir.join("weights"),
        &random_weights::Sizes::tiny(),
        7,
        DType::F32,
    )
    .unwrap()
}

fn script(dir: &Path, weights: &Path, extra: &str) -> std::path::PathBuf {
    let prompts = dir.join("prompts.txt");
    std::fs::write(&prompts, "cat\ndog\n").unwrap();
    let src = format!(
        r#"local sqdf = require("sqdf")
return {{
  config = {{
    task = "sd15", weights = "{}", prompts = "{}",
    steps = 4, batch = 2, epochs = 1, capacity = 8, eval_per_prompt = 2,
    lora_rank = 2, guidance = 5.0, weight_decay = 0, {extra}
  }},
  reward = function(x0, cond, cfg) return rewards.aesthetic(x0) end,
  loss = sqdf.loss, discount = sqdf.discount, priority = sqdf.priority,
}}"#,
        weights.display(),
        prompts.display()
    );
    common::write_script(dir, "sd15.lua", &src)
}

/// Gives every LoRA B a random value: with B = 0 (a fresh adapter) A gets no gradient.
fn perturb_adapters(t: &sqdf::train::Trainer) {
    for (i, (_, v)) in sqdf::tensor_io::sorted_vars(&t.models.policy_vars)
        .iter()
        .enumerate()
    {
        let r = randn(&mut seeded(100 + i as u64), v.shape(), &Device::Cpu).unwrap();
        v.set(&(r * 0.05).unwrap()).unwrap();
    }
}

fn snapshot(t: &sqdf::train::Trainer) -> Vec<(String, Tensor)> {
    sqdf::tensor_io::sorted_vars(&t.models.policy_vars)
        .into_iter()
        .map(|(k, v)| (k, v.as_tensor().copy().unwrap()))
        .collect()
}

#[test]
fn one_sqdf_update_moves_every_lora_parameter() {
    let dir = tempfile::tempdir().unwrap();
    let l = tiny_folder(dir.path());
    let s = script(dir.path(), &l.dir, "");
    let (mut t, _) = common::trainer(&s, &dir.path().join("run"), &[]);
    assert!(
        t.models.consistency.is_some(),
        "the LCM copy is the x0 estimator"
    );
    perturb_adapters(&t);
    let before = snapshot(&t);
    assert!(before.iter().all(|(k, _)| k.contains(".lora_")));
    assert!(before.iter().any(|(k, _)| k.contains("attn2.to_k")));
    t.collect().unwrap();
    let u = t.update().unwrap().expect("a finite update");
    assert!(u.loss.is_finite() && u.grad_norm > 0.0);
    // Weight decay is 0: a parameter moves only if its gradient is non-zero.
    for ((k, b), (_, a)) in before.iter().zip(snapshot(&t)) {
        assert!(common::max_abs_diff(b, &a) > 0.0, "{k} got no gradient");
    }
}

#[test]
fn micro_batches_accumulate_to_the_whole_batch_gradient() {
    let dir = tempfile::tempdir().unwrap();
    let l = tiny_folder(dir.path());
    let s = script(dir.path(), &l.dir, "");
    let run = |micro: usize, out: &str| {
        let (mut t, _) = common::trainer(&s, &dir.path().join(out), &[]);
        perturb_adapters(&t);
        t.collect().unwrap();
        // micro_batch may change during a run: only the update is split here, so both runs
        // draw the same states and the same noise (one sample after the other).
        t.script.config.micro_batch = micro;
        let u = t.update().unwrap().unwrap();
        (snapshot(&t), u.loss, u.grad_norm)
    };
    let ((whole, loss_a, norm_a), (split, loss_b, norm_b)) = (run(0, "a"), run(1, "b"));
    // AdamW's first step is about lr * sign(g), so the parameters alone would not notice a
    // wrongly weighted accumulation; the loss and the gradient's norm do (f32 sums in
    // another order differ by ~1e-5).
    let rel = |a: f64, b: f64| (a - b).abs() / a.abs().max(1e-12);
    assert!(rel(loss_a, loss_b) < 1e-4, "loss {loss_a} vs {loss_b}");
    assert!(rel(norm_a, norm_b) < 1e-4, "grad norm {norm_a} vs {norm_b}");
    for ((k, a), (_, b)) in whole.iter().zip(&split) {
        let d = common::max_abs_diff(a, b);
        assert!(
            d < 1e-5,
            "{k}: micro-batches differ from the whole batch by {d}"
        );
    }
}

/// The reward's parts (VAE, CLIP, head) of a tiny folder, frozen in `dtype`, one prompt.
fn load_parts(l: &layout::Layout, dtype: DType) -> Sd15Parts {
    let tok =
        sqdf::text::ClipTokenizer::from_files(&l.path(layout::VOCAB), &l.path(layout::MERGES))
            .unwrap();
    Sd15Parts::load(l, vec!["cat".into()], 1, &tok, &Device::Cpu, dtype).unwrap()
}

type RewardOf = fn(&Sd15Parts, &Tensor) -> Tensor;

#[test]
fn the_reward_gradients_match_finite_differences() {
    let dir = tempfile::tempdir().unwrap();
    let l = tiny_folder(dir.path());
    // f64 end to end: the check is then exact to ~1e-8 instead of f32's noise.
    let parts = load_parts(&l, DType::F64);
    assert_eq!(parts.head.dtype(), DType::F64);
    let dev = Device::Cpu;
    let rewards: [(&str, RewardOf); 3] = [
        ("aesthetic", |p, x| p.aesthetic(x).unwrap()),
        ("hps", |p, x| {
            p.hps(x, &Tensor::new(&[0u32, 0], x.device()).unwrap())
                .unwrap()
        }),
        ("pickscore", |p, x| {
            p.pickscore(x, &Tensor::new(&[0u32, 0], x.device()).unwrap())
                .unwrap()
        }),
    ];
    for (name, reward) in rewards {
        let z = randn(&mut seeded(3), (2, 4, 8, 8), &dev)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        let var = candle_core::Var::from_tensor(&z).unwrap();
        let r = reward(&parts, var.as_tensor());
        assert_eq!(r.dims(), &[2], "{name}");
        let g = r.sum_all().unwrap().backward().unwrap();
        let grad = g
            .get(var.as_tensor())
            .expect("the latents get a gradient")
            .clone();
        assert!(
            common::max_abs_diff(&grad, &grad.zeros_like().unwrap()) > 0.0,
            "{name}: zero gradient"
        );
        let f = |x: &Tensor| -> f64 {
            reward(&parts, x)
                .to_dtype(DType::F64)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        for k in 0..3 {
            let d = randn(&mut seeded(20 + k), z.shape(), &dev)
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap();
            let eps = 1e-4;
            let fd = (f(&(&z + (&d * eps).unwrap()).unwrap())
                - f(&(&z - (&d * eps).unwrap()).unwrap()))
                / (2.0 * eps);
            let an = (&grad * &d)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            assert!(
                (fd - an).abs() <= 1e-6 + 1e-4 * fd.abs(),
                "{name}, direction {k}: finite differences {fd}, backward {an}"
            );
        }
    }
}

#[test]
fn a_missing_file_or_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    // No folder at all: every file is listed, with the public file it should be.
    let s = script(dir.path(), &dir.path().join("nowhere"), "");
    let (o, _) = common::quiet_options(&s, &dir.path().join("r0"), &[]);
    let e = format!("{:#}", sqdf::train::Trainer::new(o).err().expect("fails"));
    for (rel, _) in layout::FILES {
        assert!(e.contains(rel), "{rel} is not listed in: {e}");
    }
    // One key removed from the UNet file: the error names the file and the key.
    let l = tiny_folder(dir.path());
    let unet = l.path(layout::UNET);
    let mut file = sqdf::tensor_io::read(&unet, &Device::Cpu).unwrap().tensors;
    let key = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight";
    assert!(file.remove(key).is_some());
    candle_core::safetensors::save(&file, &unet).unwrap();
    let s = script(dir.path(), &l.dir, "");
    let (o, _) = common::quiet_options(&s, &dir.path().join("r1"), &[]);
    let e = format!("{:#}", sqdf::train::Trainer::new(o).err().expect("fails"));
    assert!(
        e.contains(key) && e.contains("diffusion_pytorch_model.safetensors"),
        "{e}"
    );
}

#[test]
fn a_runs_lora_files_load_back_in_both_formats() {
    let dir = tempfile::tempdir().unwrap();
    let l = tiny_folder(dir.path());
    let s = script(dir.path(), &l.dir, "");
    let run = dir.path().join("run");
    let (mut t, _) = common::trainer(&s, &run, &[]);
    perturb_adapters(&t);
    t.run_epoch().unwrap();
    t.save_checkpoint().unwrap();
    let dev = Device::Cpu;
    let x = randn(&mut seeded(5), (2, 4, 8, 8), &dev).unwrap();
    let tt = Tensor::new(&[900f32, 100.], &dev).unwrap();
    let c = Tensor::new(&[0u32, 1], &dev).unwrap();
    let trained = t.models.policy.eps(&x, &tt, &c).unwrap();
    let pretrained = t.models.reference.eps(&x, &tt, &c).unwrap();
    assert!(common::max_abs_diff(&trained, &pretrained) > 1e-4);
    use sqdf::train::lora_export::{DIFFUSERS_FILE, KOHYA_FILE};
    for file in [DIFFUSERS_FILE, KOHYA_FILE] {
        let init = format!("lora_init={}", run.join(file).display());
        let (again, _) = common::trainer(&s, &dir.path().join(file), &[&init]);
        let eps = again.models.policy.eps(&x, &tt, &c).unwrap();
        let d = common::max_abs_diff(&eps, &trained);
        assert!(d < 1e-5, "{file}: the reloaded LoRA differs by {d}");
    }
}

#[test]
fn a_half_precision_base_trains_f32_adapters() {
    // The GPU setting (frozen networks in half precision, adapters in f32) on the CPU,
    // in f16 (candle's CPU matmul has no bf16).
    let dir = tempfile::tempdir().unwrap();
    let l = tiny_folder(dir.path());
    let s = script(dir.path(), &l.dir, r#"dtype = "f16","#);
    let (mut t, _) = common::trainer(&s, &dir.path().join("run"), &[]);
    perturb_adapters(&t);
    let before = snapshot(&t);
    assert!(before.iter().all(|(_, v)| v.dtype() == DType::F32));
    t.collect().unwrap();
    let u = t.update().unwrap().expect("a finite update");
    assert!(u.loss.is_finite() && u.grad_norm > 0.0);
    for ((k, b), (_, a)) in before.iter().zip(snapshot(&t)) {
        assert!(common::max_abs_diff(b, &a) > 0.0, "{k} got no gradient");
    }
}

#[test]
fn the_aesthetic_head_scores_in_f32_under_a_half_precision_base() {
    // In bf16 scores near 5-6 would come in steps of 1/32: the head stays in f32.
    let dir = tempfile::tempdir().unwrap();
    let l = tiny_folder(dir.path());
    let (half, full) = (load_parts(&l, DType::F16), load_parts(&l, DType::F32));
    assert_eq!(half.head.dtype(), DType::F32);
    let dim = half.head.in_dim();
    let e = randn(&mut seeded(5), (3, dim), &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F16)
        .unwrap();
    let (a, b) = (half.head_score(&e).unwrap(), full.head_score(&e).unwrap());
    assert_eq!(a.dtype(), DType::F32);
    assert_eq!(common::max_abs_diff(&a, &b), 0.0);
}

#[test]
fn eval_reports_every_alignment_metric_and_null_without_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let l = tiny_folder(dir.path());
    let s = script(dir.path(), &l.dir, "");
    let json = |v: &serde_json::Value, k: &str| v.get(k).cloned().unwrap_or_default();
    let run = |out: &str| {
        let log = sqdf::run_log::RunLog::captured();
        sqdf::cli::eval::evaluate(&s, None, &[], &dir.path().join(out), log.clone()).unwrap()
    };
    let v = run("all");
    for k in [
        "aesthetic",
        "clip_score",
        "hps",
        "pickscore",
        "image_reward",
        "diversity_clip",
        "diversity_lpips",
        "diversity_dreamsim",
    ] {
        let x = json(&v, k).as_f64();
        assert!(
            x.is_some_and(f64::is_finite),
            "{k} = {:?} in {v}",
            json(&v, k)
        );
    }
    // PickScore is exp(logit_scale) x a cosine: within +-exp(ln(1/0.07)).
    assert!(json(&v, "pickscore").as_f64().unwrap().abs() <= 1.0 / 0.07 + 1e-3);
    // Distances of distinct images: positive; DreamSim's is a cosine distance (<= 2).
    for k in ["diversity_lpips", "diversity_dreamsim"] {
        assert!(json(&v, k).as_f64().unwrap() > 0.0, "{k} in {v}");
    }
    assert!(json(&v, "diversity_dreamsim").as_f64().unwrap() <= 2.0);
    // Without a metric's file the metric is null, the rest as before.
    for rel in [
        layout::HPS,
        layout::IMAGE_REWARD_VOCAB,
        layout::LPIPS_LIN,
        layout::DREAMSIM_LORA,
    ] {
        std::fs::remove_file(l.path(rel)).unwrap();
    }
    let w = run("without_metric_files");
    for k in [
        "hps",
        "image_reward",
        "diversity_lpips",
        "diversity_dreamsim",
    ] {
        assert!(json(&w, k).is_null(), "{k} in {w}");
    }
    for k in ["aesthetic", "pickscore", "diversity_clip"] {
        assert_eq!(json(&w, k), json(&v, k), "{k}");
    }
}

#[test]
fn eval_prompts_are_the_ones_evaluated_and_never_trained_on() {
    let dir = tempfile::tempdir().unwrap();
    let l = tiny_folder(dir.path());
    let eval_file = dir.path().join("eval_prompts.txt");
    std::fs::write(&eval_file, "a red fox\na blue whale\na green frog\n").unwrap();
    let extra = format!("eval_prompts = {:?},", eval_file.display().to_string());
    let s = script(dir.path(), &l.dir, &extra);
    let log = sqdf::run_log::RunLog::captured();
    let v = sqdf::cli::eval::evaluate(&s, None, &[], &dir.path().join("ev"), log).unwrap();
    assert_eq!(v.get("prompts").and_then(|p| p.as_u64()), Some(3), "{v}");
    // Training draws only the two training prompts (ids 0 and 1; the evaluation ones are
    // 2..5).
    let (t, _) = common::trainer(&s, &dir.path().join("run"), &[]);
    let ids = t.task.conditions(200, &mut sqdf::rng::seeded(3));
    assert!(ids.iter().all(|&c| c < 2), "{ids:?}");
    assert!(ids.contains(&0) && ids.contains(&1));
    // An empty evaluation list is an error naming the file, before anything runs.
    std::fs::write(&eval_file, "\n  \n").unwrap();
    let e = format!(
        "{:#}",
        sqdf::cli::eval::evaluate(
            &s,
            None,
            &[],
            &dir.path().join("ev2"),
            sqdf::run_log::RunLog::captured()
        )
        .expect_err("an empty list fails")
    );
    assert!(e.contains("eval_prompts.txt") && e.contains("empty"), "{e}");
}
