//! The diffusers-compatible UNet: names and parameter count of SD-1.5 (without allocating
//! it), shapes, per-sample timesteps, gradients to every variable (the reason this UNet
//! exists: candle-nn's fused softmax and layer norm pass none), finite differences, LoRA.

use crate::common;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use common::{in_pool, max_abs_diff, values};
use sqdf::models::{DownBlockType::*, UNet2DConditionModel, UNetConfig, UpBlockType::*};
use sqdf::nn::{LoraBuilder, LoraConfig};
use sqdf::rng::{randn, seeded, Rng};
use sqdf::tensor_io::{expected_params, sorted_vars};
use std::collections::{BTreeSet, HashMap};

const DEV: Device = Device::Cpu;

/// 16x16, one cross-attention level plus the middle; small enough for finite differences.
fn tiny() -> UNetConfig {
    UNetConfig {
        sample_size: 16,
        in_channels: 1,
        out_channels: 1,
        block_out_channels: vec![8, 16],
        down_block_types: vec![Down, CrossAttnDown],
        up_block_types: vec![CrossAttnUp, Up],
        layers_per_block: 1,
        cross_attention_dim: 8,
        attention_head_dim: 2,
        norm_num_groups: 4,
        norm_eps: 1e-5,
        use_linear_projection: false,
        num_class_embeds: None,
    }
}

fn trainable(cfg: &UNetConfig, seed: u64) -> (UNet2DConditionModel, VarMap) {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &DEV);
    let model = UNet2DConditionModel::new(vb, cfg, None).unwrap();
    sqdf::nn::init::seeded_init(&varmap, &mut seeded(seed)).unwrap();
    (model, varmap)
}

struct Inputs {
    x: Tensor,
    t: Tensor,
    ctx: Tensor,
}

fn inputs(cfg: &UNetConfig, b: usize, rng: &mut Rng) -> Inputs {
    let s = cfg.sample_size;
    Inputs {
        x: randn(rng, (b, cfg.in_channels, s, s), &DEV).unwrap(),
        t: Tensor::from_vec((0..b).map(|i| (37 + 311 * i) as f32).collect(), b, &DEV).unwrap(),
        ctx: randn(rng, (b, 3, cfg.cross_attention_dim), &DEV).unwrap(),
    }
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

fn unit(rng: &mut Rng, shape: &[usize]) -> Tensor {
    let u = randn(rng, shape, &DEV).unwrap();
    let n = scalar(&u.sqr().unwrap().sum_all().unwrap()).sqrt();
    (u / n).unwrap()
}

#[test]
fn sd15_names_shapes_and_parameter_count() {
    let cfg = UNetConfig::sd15();
    let params = expected_params(|vb| UNet2DConditionModel::new(vb, &cfg, None)).unwrap();
    let total: usize = params
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    assert_eq!(
        total, 859_520_964,
        "SD-1.5's UNet has 859,520,964 parameters"
    );
    let names: HashMap<_, _> = params.into_iter().collect();
    assert_eq!(names.len(), 686, "SD-1.5's UNet has 686 tensors");
    let b0 = "down_blocks.0.attentions.0";
    for (k, s) in [
        (
            format!("{b0}.transformer_blocks.0.attn1.to_q.weight"),
            vec![320, 320],
        ),
        (
            format!("{b0}.transformer_blocks.0.attn2.to_k.weight"),
            vec![320, 768],
        ),
        (
            format!("{b0}.transformer_blocks.0.attn2.to_out.0.bias"),
            vec![320],
        ),
        (format!("{b0}.transformer_blocks.0.norm3.weight"), vec![320]),
        (format!("{b0}.proj_in.weight"), vec![320, 320, 1, 1]),
        (format!("{b0}.norm.weight"), vec![320]),
        (
            "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj.weight".into(),
            vec![10240, 1280],
        ),
        (
            "mid_block.attentions.0.transformer_blocks.0.ff.net.2.weight".into(),
            vec![1280, 5120],
        ),
        (
            "up_blocks.0.upsamplers.0.conv.weight".into(),
            vec![1280, 1280, 3, 3],
        ),
        (
            "up_blocks.3.resnets.0.conv_shortcut.weight".into(),
            vec![320, 960, 1, 1],
        ),
        (
            "up_blocks.3.resnets.2.conv1.weight".into(),
            vec![320, 640, 3, 3],
        ),
        (
            "down_blocks.1.resnets.0.conv_shortcut.weight".into(),
            vec![640, 320, 1, 1],
        ),
        (
            "down_blocks.2.downsamplers.0.conv.weight".into(),
            vec![1280, 1280, 3, 3],
        ),
        (
            "down_blocks.0.resnets.0.time_emb_proj.weight".into(),
            vec![320, 1280],
        ),
        ("time_embedding.linear_1.weight".into(), vec![1280, 320]),
        ("time_embedding.linear_2.weight".into(), vec![1280, 1280]),
        ("conv_in.weight".into(), vec![320, 4, 3, 3]),
        ("conv_norm_out.weight".into(), vec![320]),
        ("conv_out.weight".into(), vec![4, 320, 3, 3]),
    ] {
        assert_eq!(names.get(&k), Some(&s), "{k}");
    }
    for absent in [
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.bias",
        "down_blocks.3.downsamplers.0.conv.weight",
        "up_blocks.3.upsamplers.0.conv.weight",
        "down_blocks.0.resnets.0.conv_shortcut.weight",
    ] {
        assert!(!names.contains_key(absent), "{absent} should not exist");
    }
}

#[test]
fn config_reads_diffusers_json() {
    let json = r#"{"_class_name": "UNet2DConditionModel", "act_fn": "silu",
      "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
      "center_input_sample": false, "cross_attention_dim": 768,
      "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
      "downsample_padding": 1, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4,
      "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05,
      "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
      "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
      "use_linear_projection": false}"#;
    let cfg: UNetConfig = serde_json::from_str(json).unwrap();
    assert_eq!(cfg, UNetConfig::sd15());
    let back: UNetConfig = serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
    assert_eq!(back, cfg);
    let mut bad = tiny();
    bad.norm_num_groups = 3;
    let err = UNet2DConditionModel::new(VarBuilder::zeros(DType::F32, &DEV), &bad, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("norm_num_groups 3"), "{err}");
}

#[test]
fn timestep_features_match_diffusers() {
    // diffusers' get_timestep_embedding(t, 4, flip_sin_to_cos=True, downscale_freq_shift=0):
    // frequencies exp(-ln(1e4) k / 2) = [1, 0.01]; [cos, cos, sin, sin].
    let t = Tensor::new(&[3f32], &DEV).unwrap();
    let e = sqdf::nn::sinusoidal_embedding(&t, 4)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let want = [3f32.cos(), 0.03f32.cos(), 3f32.sin(), 0.03f32.sin()];
    for (a, b) in e[0].iter().zip(want) {
        assert!((a - b).abs() < 1e-6, "{:?} vs {want:?}", e[0]);
    }
}

#[test]
fn tiny_shape_and_per_sample_timesteps() {
    let cfg = tiny();
    let (model, _vm) = trainable(&cfg, 1);
    let inp = inputs(&cfg, 2, &mut seeded(2));
    let out = model.forward(&inp.x, &inp.t, &inp.ctx).unwrap();
    assert_eq!(out.dims(), &[2, 1, 16, 16]);
    for i in 0..2 {
        let one = |t: &Tensor| t.narrow(0, i, 1).unwrap();
        let single = model
            .forward(&one(&inp.x), &one(&inp.t), &one(&inp.ctx))
            .unwrap();
        let d = max_abs_diff(&single, &one(&out));
        assert!(d < 1e-5, "sample {i} differs by {d} when batched");
    }
    // A size that does not halve evenly (9 -> 5, upsampled back to 9) takes the
    // skip-sized upsampling, as diffusers' `upsample_size`.
    let x9 = randn(&mut seeded(3), (2, 1, 9, 9), &DEV).unwrap();
    let out9 = model.forward(&x9, &inp.t, &inp.ctx).unwrap();
    assert_eq!(out9.dims(), &[2, 1, 9, 9]);
}

/// sum(out * r) / sqrt(numel): a linear read-out keeps the loss O(1) and well conditioned.
fn readout_loss(model: &UNet2DConditionModel, inp: &Inputs, x: &Tensor, r: &Tensor) -> Tensor {
    let out = model.forward(x, &inp.t, &inp.ctx).unwrap();
    (out.mul(r).unwrap().sum_all().unwrap() / (r.elem_count() as f64).sqrt()).unwrap()
}

#[test]
fn full_finetuning_gradients_reach_every_variable() {
    let cfg = tiny();
    let (model, varmap) = trainable(&cfg, 4);
    let inp = inputs(&cfg, 2, &mut seeded(5));
    let loss = model
        .forward(&inp.x, &inp.t, &inp.ctx)
        .unwrap()
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap();
    let grads = loss.backward().unwrap();
    let vars = sorted_vars(&varmap);
    assert!(vars.len() > 100, "{} variables", vars.len());
    let mut checked = BTreeSet::new();
    for (name, var) in &vars {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name} has no gradient"));
        let m = scalar(&g.abs().unwrap().max_all().unwrap());
        assert!(m > 0.0, "{name} has a zero gradient");
        for key in [
            "to_q",
            "to_k",
            "norm1",
            "norm2",
            "norm3",
            "attentions.0.norm",
        ] {
            if name.contains(key) {
                checked.insert(key);
            }
        }
    }
    assert_eq!(
        checked.len(),
        6,
        "softmax and norm paths all checked: {checked:?}"
    );
}

/// The tiny UNet's variables, inputs of `CPU_PART_ROWS` + 5 rows (two parts) and a
/// read-out of its output's shape.
fn over_one_part() -> (UNet2DConditionModel, VarMap, Inputs, Tensor) {
    let cfg = tiny();
    let (model, varmap) = trainable(&cfg, 4);
    let b = sqdf::models::unet::CPU_PART_ROWS + 5;
    let inp = inputs(&cfg, b, &mut seeded(5));
    let r = randn(&mut seeded(6), (b, 1, 16, 16), &DEV).unwrap();
    (model, varmap, inp, r)
}

/// A CPU batch over `CPU_PART_ROWS` rows runs in parts side by side: its output is each
/// part run alone, bit for bit, on one thread or two; the gradients of every variable (the
/// sum of the parts'), of x and of the context (the parts' rows) are the parts' alone, with
/// the model's variables named (each part's backward side by side) or not (narrow and cat).
#[test]
fn cpu_forward_in_parts_is_the_parts_alone() {
    use sqdf::models::unet::CPU_PART_ROWS;
    let (model, varmap, inp, r) = over_one_part();
    let b = inp.x.dim(0).unwrap();
    let rows = |t: &Tensor, (start, n): (usize, usize)| t.narrow(0, start, n).unwrap();
    let parts = [(0, CPU_PART_ROWS), (CPU_PART_ROWS, 5)];
    // sum(out * r) over the rows given, with x and the context as variables.
    type Pass = (Tensor, candle_core::backprop::GradStore, Var, Var);
    let loss = |m: &UNet2DConditionModel, (start, n): (usize, usize)| {
        let x = Var::from_tensor(&rows(&inp.x, (start, n))).unwrap();
        let ctx = Var::from_tensor(&rows(&inp.ctx, (start, n))).unwrap();
        let out = m.forward(&x, &rows(&inp.t, (start, n)), &ctx).unwrap();
        let l = out.mul(&rows(&r, (start, n))).unwrap().sum_all().unwrap();
        (out, l.backward().unwrap(), x, ctx)
    };
    let named = model.clone().with_trainable(varmap.all_vars());
    for (label, m) in [("variables named", &named), ("variables not named", &model)] {
        let whole = |threads: usize| in_pool(threads, || loss(m, (0, b)));
        let (one, two) = (whole(1), whole(2));
        assert!(
            values(&one.0) == values(&two.0),
            "{label}: 1 and 2 threads differ"
        );
        let alone: Vec<_> = parts.iter().map(|&p| loss(&model, p)).collect();
        let cat = |f: &dyn Fn(&Pass) -> Tensor| {
            Tensor::cat(&alone.iter().map(f).collect::<Vec<_>>(), 0).unwrap()
        };
        assert!(
            values(&one.0) == values(&cat(&|a| a.0.clone())),
            "{label}: the parts alone differ"
        );
        let close = |what: &str, g: &Tensor, want: &Tensor| {
            let size = scalar(&want.abs().unwrap().max_all().unwrap()).max(1e-6);
            let diff = max_abs_diff(g, want);
            assert!(
                diff <= 1e-5 * size,
                "{label}, {what}: {diff} against {size}"
            );
        };
        for (name, var) in sorted_vars(&varmap) {
            let (g1, g2) = (one.1.get(&var).unwrap(), two.1.get(&var).unwrap());
            assert!(
                values(g1) == values(g2),
                "{label}: {name}'s gradient differs on 1 and 2 threads"
            );
        }
        for (threads, (_, grads, x, ctx)) in [(1, &one), (2, &two)] {
            let what = format!("{threads} threads");
            close(
                &format!("x, {what}"),
                grads.get(x).unwrap(),
                &cat(&|a| a.1.get(&a.2).unwrap().clone()),
            );
            close(
                &format!("context, {what}"),
                grads.get(ctx).unwrap(),
                &cat(&|a| a.1.get(&a.3).unwrap().clone()),
            );
            for (name, var) in sorted_vars(&varmap) {
                let sum = (alone[0].1.get(&var).unwrap() + alone[1].1.get(&var).unwrap()).unwrap();
                close(&format!("{name}, {what}"), grads.get(&var).unwrap(), &sum);
            }
        }
    }
}

/// With the variables named, x without a graph (LoRA training on stored states) still
/// gives every variable the parts' summed gradient; a variable the list leaves out is an
/// error, not a lost gradient.
#[test]
fn cpu_parts_with_named_variables_need_every_variable() {
    let (model, varmap, inp, r) = over_one_part();
    let named = model.clone().with_trainable(varmap.all_vars());
    let whole = readout_loss(&named, &inp, &inp.x, &r).backward().unwrap();
    let plain = readout_loss(&model, &inp, &inp.x, &r).backward().unwrap();
    for (name, var) in sorted_vars(&varmap) {
        let (g, want) = (whole.get(&var).unwrap(), plain.get(&var).unwrap());
        let size = scalar(&want.abs().unwrap().max_all().unwrap()).max(1e-6);
        let diff = max_abs_diff(g, want);
        assert!(diff <= 1e-5 * size, "{name}: {diff} against {size}");
    }
    let one = varmap.all_vars().into_iter().take(1).collect();
    let partial = model.with_trainable(one);
    let err = partial
        .forward(&inp.x, &inp.t, &inp.ctx)
        .expect_err("a variable left out of with_trainable")
        .to_string();
    assert!(err.contains("with_trainable"), "{err}");
}

#[test]
fn finite_differences_match_backward() {
    let cfg = tiny();
    let (model, varmap) = trainable(&cfg, 6);
    let mut rng = seeded(7);
    let inp = inputs(&cfg, 2, &mut rng);
    let r = randn(&mut rng, (2, 1, 16, 16), &DEV).unwrap();
    let x = Var::from_tensor(&inp.x).unwrap();
    let grads = readout_loss(&model, &inp, x.as_tensor(), &r)
        .backward()
        .unwrap();
    let h = 1e-2;
    let check = |what: &str, analytic: f64, plus: f64, minus: f64| {
        let numeric = (plus - minus) / (2.0 * h);
        // Directional derivatives here are 0.004..0.4 and agree to ~3e-5 (f32, h = 1e-2);
        // the fused softmax's missing gradient shows as -0.0025 vs -0.018.
        let tol = 1e-4 + 0.01 * numeric.abs().max(analytic.abs());
        assert!(
            (analytic - numeric).abs() < tol,
            "{what}: backward {analytic:.6} vs finite difference {numeric:.6}"
        );
    };
    let dot = |g: &Tensor, u: &Tensor| scalar(&g.mul(u).unwrap().sum_all().unwrap());

    // With respect to the input, along three random unit directions.
    let gx = grads.get(x.as_tensor()).unwrap();
    for k in 0..3 {
        let u = unit(&mut rng, x.dims());
        let at = |s: f64| {
            let xs = (x.as_tensor() + (&u * s).unwrap()).unwrap();
            scalar(&readout_loss(&model, &inp, &xs, &r))
        };
        check(&format!("x, direction {k}"), dot(gx, &u), at(h), at(-h));
    }
    // With respect to parameters on the softmax, layer-norm, GEGLU and resnet paths.
    let vars: HashMap<_, _> = sorted_vars(&varmap).into_iter().collect();
    let a = "down_blocks.1.attentions.0";
    for name in [
        format!("{a}.transformer_blocks.0.attn1.to_q.weight"),
        format!("{a}.transformer_blocks.0.attn2.to_k.weight"),
        format!("{a}.transformer_blocks.0.norm1.weight"),
        format!("{a}.transformer_blocks.0.ff.net.0.proj.weight"),
        "mid_block.attentions.0.transformer_blocks.0.attn1.to_k.weight".to_string(),
        "up_blocks.0.resnets.1.conv1.weight".to_string(),
        "up_blocks.0.upsamplers.0.conv.weight".to_string(),
        "down_blocks.0.downsamplers.0.conv.weight".to_string(),
        "time_embedding.linear_1.weight".to_string(),
    ] {
        let var = &vars[&name];
        let orig = var.as_tensor().copy().unwrap();
        let u = unit(&mut rng, var.dims());
        let at = |s: f64| {
            var.set(&(&orig + (&u * s).unwrap()).unwrap()).unwrap();
            scalar(&readout_loss(&model, &inp, x.as_tensor(), &r))
        };
        let (plus, minus) = (at(h), at(-h));
        var.set(&orig).unwrap();
        check(
            &name,
            dot(grads.get(var.as_tensor()).unwrap(), &u),
            plus,
            minus,
        );
    }
}

/// Module paths that carry adapters: attention projections, and resnet convs with `convs`.
fn adapted_modules(cfg: &UNetConfig, convs: bool) -> BTreeSet<String> {
    let params = expected_params(|vb| UNet2DConditionModel::new(vb, cfg, None)).unwrap();
    params
        .into_iter()
        .filter_map(|(n, _)| n.strip_suffix(".weight").map(str::to_string))
        .filter(|m| {
            let attn = ["to_q", "to_k", "to_v", "to_out.0"]
                .iter()
                .any(|p| m.ends_with(&format!("attn1.{p}")) || m.ends_with(&format!("attn2.{p}")));
            let conv = m.contains(".resnets.") && (m.ends_with(".conv1") || m.ends_with(".conv2"));
            attn || (convs && conv)
        })
        .collect()
}

#[test]
fn lora_adapters_names_identity_and_gradients() {
    let cfg = tiny();
    // Frozen base: plain tensors, so nothing in it is a variable.
    let (_, base_vm) = trainable(&cfg, 8);
    let base: HashMap<String, Tensor> = sorted_vars(&base_vm)
        .into_iter()
        .map(|(k, v)| (k, v.as_tensor().copy().unwrap()))
        .collect();
    let base_vb = VarBuilder::from_tensors(base, DType::F32, &DEV);
    let reference = UNet2DConditionModel::new(base_vb.clone(), &cfg, None).unwrap();

    let lora_vm = VarMap::new();
    let lora_cfg = LoraConfig {
        rank: 2,
        alpha: 4.0,
        convs: true,
    };
    let lb = LoraBuilder::new(
        lora_cfg,
        VarBuilder::from_varmap(&lora_vm, DType::F32, &DEV),
    );
    let policy = UNet2DConditionModel::new(base_vb, &cfg, Some(&lb)).unwrap();

    let vars = sorted_vars(&lora_vm);
    let names: BTreeSet<String> = vars.iter().map(|(n, _)| n.clone()).collect();
    let want: BTreeSet<String> = adapted_modules(&cfg, true)
        .into_iter()
        .flat_map(|m| [format!("{m}.lora_A.weight"), format!("{m}.lora_B.weight")])
        .collect();
    assert_eq!(names, want);
    let q = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k";
    let shapes: HashMap<_, _> = vars
        .iter()
        .map(|(n, v)| (n.clone(), v.dims().to_vec()))
        .collect();
    assert_eq!(shapes[&format!("{q}.lora_A.weight")], vec![2, 8]);
    assert_eq!(shapes[&format!("{q}.lora_B.weight")], vec![16, 2]);
    let c = "up_blocks.0.resnets.0.conv1";
    assert_eq!(shapes[&format!("{c}.lora_A.weight")], vec![2, 32, 3, 3]);
    assert_eq!(shapes[&format!("{c}.lora_B.weight")], vec![16, 2, 1, 1]);

    // B = 0: the policy is exactly the reference.
    let inp = inputs(&cfg, 2, &mut seeded(9));
    let p = policy.forward(&inp.x, &inp.t, &inp.ctx).unwrap();
    let r = reference.forward(&inp.x, &inp.t, &inp.ctx).unwrap();
    assert_eq!(max_abs_diff(&p, &r), 0.0);

    // B != 0: every adapter variable gets a gradient, and the output moves.
    let mut rng = seeded(10);
    for (name, v) in &vars {
        if name.ends_with("lora_B.weight") {
            v.set(&(randn(&mut rng, v.shape(), &DEV).unwrap() * 0.1).unwrap())
                .unwrap();
        }
    }
    let p = policy.forward(&inp.x, &inp.t, &inp.ctx).unwrap();
    assert!(max_abs_diff(&p, &r) > 1e-4);
    let grads = p.sqr().unwrap().mean_all().unwrap().backward().unwrap();
    for (name, v) in &vars {
        let g = grads
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("{name} has no gradient"));
        assert!(
            scalar(&g.abs().unwrap().max_all().unwrap()) > 0.0,
            "{name}: zero gradient"
        );
    }

    // The gradient reaching adapters through the frozen base (whose convolutions skip
    // their weight gradient) is right: finite differences along random directions.
    let rr = randn(&mut rng, (2, 1, 16, 16), &DEV).unwrap();
    let grads = readout_loss(&policy, &inp, &inp.x, &rr).backward().unwrap();
    let by_name: HashMap<_, _> = vars.iter().cloned().collect();
    for name in [
        "down_blocks.0.resnets.0.conv1.lora_A.weight",
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight",
        "up_blocks.1.resnets.1.conv2.lora_B.weight",
    ] {
        let var = &by_name[name];
        let orig = var.as_tensor().copy().unwrap();
        let u = unit(&mut rng, var.dims());
        let at = |s: f64| {
            var.set(&(&orig + (&u * s).unwrap()).unwrap()).unwrap();
            scalar(&readout_loss(&policy, &inp, &inp.x, &rr))
        };
        let numeric = (at(1e-2) - at(-1e-2)) / 2e-2;
        var.set(&orig).unwrap();
        let g = grads.get(var.as_tensor()).unwrap();
        let analytic = scalar(&g.mul(&u).unwrap().sum_all().unwrap());
        let tol = 1e-4 + 0.01 * numeric.abs().max(analytic.abs());
        assert!(
            (analytic - numeric).abs() < tol,
            "{name}: backward {analytic:.6} vs finite difference {numeric:.6}"
        );
    }

    // Without conv adapters, only attention projections are adapted.
    let vm2 = VarMap::new();
    let lb2 = LoraBuilder::new(
        LoraConfig {
            rank: 2,
            alpha: 2.0,
            convs: false,
        },
        VarBuilder::from_varmap(&vm2, DType::F32, &DEV),
    );
    UNet2DConditionModel::new(VarBuilder::zeros(DType::F32, &DEV), &cfg, Some(&lb2)).unwrap();
    assert_eq!(vm2.all_vars().len(), 2 * adapted_modules(&cfg, false).len());
}

#[test]
fn upsampling_accumulates_gradients() {
    // upsample_nearest2d's backward overwrites the gradient of its input; ours adds.
    let x = Var::from_tensor(&Tensor::new(&[[[[1f32, 2.], [3., 4.]]]], &DEV).unwrap()).unwrap();
    let up = sqdf::nn::upsample_nearest2x(x.as_tensor()).unwrap();
    assert_eq!(
        up.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        [1., 1., 2., 2., 1., 1., 2., 2., 3., 3., 4., 4., 3., 3., 4., 4.]
    );
    let loss = (up.sum_all().unwrap() + x.as_tensor().sum_all().unwrap()).unwrap();
    let g = loss.backward().unwrap();
    let g = g.get(x.as_tensor()).unwrap().flatten_all().unwrap();
    assert_eq!(g.to_vec1::<f32>().unwrap(), [5., 5., 5., 5.]);
    // Non-integer ratio (3 -> 5), torch's "nearest": source floor(i * 3 / 5).
    let y = Tensor::arange(0f32, 3., &DEV)
        .unwrap()
        .reshape((1, 1, 1, 3))
        .unwrap();
    let z = sqdf::nn::upsample_nearest(&y, 1, 5).unwrap();
    assert_eq!(
        z.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        [0., 0., 1., 1., 2.]
    );
}

#[test]
fn group_norm_and_linear_match_candle() {
    use candle_core::Module;
    let mut rng = seeded(17);
    let x = randn(&mut rng, (2, 8, 3, 5), &DEV).unwrap();
    let w = randn(&mut rng, 8, &DEV).unwrap();
    let b = randn(&mut rng, 8, &DEV).unwrap();
    let tensors = HashMap::from([
        ("weight".to_string(), w.clone()),
        ("bias".to_string(), b.clone()),
    ]);
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &DEV);
    let ours = sqdf::nn::group_norm(4, 8, 1e-6, vb).unwrap();
    let theirs = candle_nn::GroupNorm::new(w, b, 8, 4, 1e-6).unwrap();
    let d = max_abs_diff(&ours.forward(&x).unwrap(), &theirs.forward(&x).unwrap());
    assert!(d < 1e-5, "group norm differs by {d}");

    let x = randn(&mut rng, (2, 3, 6), &DEV).unwrap();
    let w = randn(&mut rng, (4, 6), &DEV).unwrap();
    let b = randn(&mut rng, 4, &DEV).unwrap();
    let ours = sqdf::nn::Linear::new(w.clone(), Some(b.clone()));
    let theirs = candle_nn::Linear::new(w, Some(b));
    let d = max_abs_diff(&ours.forward(&x).unwrap(), &theirs.forward(&x).unwrap());
    assert!(d < 1e-5, "linear differs by {d}");
}

#[test]
fn layer_norm_matches_candle_and_has_a_gradient() {
    let mut rng = seeded(11);
    let x = Var::from_tensor(&randn(&mut rng, (2, 3, 6), &DEV).unwrap()).unwrap();
    let w = randn(&mut rng, 6, &DEV).unwrap();
    let b = randn(&mut rng, 6, &DEV).unwrap();
    let ours = sqdf::nn::LayerNorm::new(w.clone(), b.clone(), 1e-5);
    let fused = candle_nn::LayerNorm::new(w, b, 1e-5);
    use candle_core::Module;
    let y = ours.forward(x.as_tensor()).unwrap();
    assert!(max_abs_diff(&y, &fused.forward(x.as_tensor()).unwrap()) < 1e-5);
    let r = randn(&mut rng, (2, 3, 6), &DEV).unwrap();
    let g = y.mul(&r).unwrap().sum_all().unwrap().backward().unwrap();
    let g = g.get(x.as_tensor()).expect("layer norm passes a gradient");
    assert!(scalar(&g.abs().unwrap().max_all().unwrap()) > 0.0);
}

#[test]
fn digits_forward_and_parameter_count() {
    let cfg = UNetConfig::digits();
    let params = expected_params(|vb| UNet2DConditionModel::new(vb, &cfg, None)).unwrap();
    let total: usize = params
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    println!(
        "digits UNet: {total} parameters in {} tensors",
        params.len()
    );
    let (model, _vm) = trainable(&cfg, 12);
    let mut rng = seeded(13);
    let x = randn(&mut rng, (2, 1, 28, 28), &DEV).unwrap();
    let t = Tensor::new(&[5f32, 900.], &DEV).unwrap();
    let ctx = randn(&mut rng, (2, 4, 32), &DEV).unwrap();
    let class = Tensor::new(&[3u32, 10], &DEV).unwrap();
    let out = model
        .forward_with_class(&x, &t, &ctx, Some(&class))
        .unwrap();
    assert_eq!(out.dims(), &[2, 1, 28, 28]);
    assert!(
        model.forward(&x, &t, &ctx).is_err(),
        "a class-embedding UNet needs class ids"
    );
    let m = scalar(&out.abs().unwrap().max_all().unwrap());
    assert!(m.is_finite() && m > 0.0);
}

/// `cargo test --test it unet::digits_timing -- --ignored --nocapture`: one forward+backward
/// of the digits UNet on a batch of 64.
#[test]
#[ignore]
fn digits_timing() {
    let cfg = UNetConfig::digits();
    let (model, _vm) = trainable(&cfg, 14);
    let mut rng = seeded(15);
    let bsz: usize = std::env::var("BSZ")
        .map(|s| s.parse().unwrap())
        .unwrap_or(64);
    let x = randn(&mut rng, (bsz, 1, 28, 28), &DEV).unwrap();
    let t = Tensor::from_vec((0..bsz).map(|i| (i * 15) as f32).collect(), bsz, &DEV).unwrap();
    let ctx = randn(&mut rng, (bsz, 4, 32), &DEV).unwrap();
    let class = Tensor::from_vec((0..bsz).map(|i| (i % 11) as u32).collect(), bsz, &DEV).unwrap();
    for rep in 0..3 {
        let t0 = std::time::Instant::now();
        let out = model
            .forward_with_class(&x, &t, &ctx, Some(&class))
            .unwrap();
        let t1 = t0.elapsed();
        let _g = out.sqr().unwrap().mean_all().unwrap().backward().unwrap();
        println!(
            "rep {rep}: forward {:.3} s, forward+backward {:.3} s",
            t1.as_secs_f64(),
            t0.elapsed().as_secs_f64()
        );
    }
}

#[test]
fn fast_backward_conv_matches_candle() {
    // nn::conv2d replaces candle's conv (im2col + gemm, forward and backward). Both
    // gradients pass the adjoint test (the loss is linear in x and in w:
    // <dL/dx, u> = L(u) with w fixed), and equal candle's where candle's backward works
    // (it fails on non-square inputs with stride 2, see docs/design.md).
    let mut rng = seeded(16);
    let dot = |a: &Tensor, b: &Tensor| scalar(&a.mul(b).unwrap().sum_all().unwrap());
    for (h, w_, k, pad, stride) in [
        (9, 10, 3, 1, 1),
        (8, 8, 3, 1, 2),
        (7, 7, 3, 1, 2),
        (8, 9, 3, 1, 2),
        (6, 5, 1, 0, 1),
        (7, 6, 3, 0, 2),
        (5, 6, 3, 2, 1),
        (6, 6, 1, 1, 2),
        // Patches (stride = kernel, no padding: CLIP's patch embedding), leftovers dropped.
        (8, 8, 2, 0, 2),
        (11, 9, 3, 0, 3),
    ] {
        let what = format!("{h}x{w_}, k {k}, padding {pad}, stride {stride}");
        let x = Var::from_tensor(&randn(&mut rng, (2, 3, h, w_), &DEV).unwrap()).unwrap();
        let w = Var::from_tensor(&randn(&mut rng, (4, 3, k, k), &DEV).unwrap()).unwrap();
        let conv = |x: &Tensor, w: &Tensor| sqdf::nn::conv2d(x, w, pad, stride).unwrap();
        let ours = conv(x.as_tensor(), w.as_tensor());
        let theirs = x
            .as_tensor()
            .conv2d(w.as_tensor(), pad, stride, 1, 1)
            .unwrap();
        assert_eq!(ours.dims(), theirs.dims(), "{what}");
        assert!(max_abs_diff(&ours, &theirs) < 1e-5, "{what}");
        let r = randn(&mut rng, ours.dims(), &DEV).unwrap();
        let g = ours.mul(&r).unwrap().sum_all().unwrap().backward().unwrap();
        let (gx, gw) = (g.get(x.as_tensor()).unwrap(), g.get(w.as_tensor()).unwrap());
        let u = randn(&mut rng, x.dims(), &DEV).unwrap();
        let (a, b) = (dot(gx, &u), dot(&conv(&u, w.as_tensor()), &r));
        assert!(
            (a - b).abs() < 1e-3 * (1.0 + b.abs()),
            "{what}: dx {a} vs {b}"
        );
        let v = randn(&mut rng, w.dims(), &DEV).unwrap();
        let (a, b) = (dot(gw, &v), dot(&conv(x.as_tensor(), &v), &r));
        assert!(
            (a - b).abs() < 1e-3 * (1.0 + b.abs()),
            "{what}: dw {a} vs {b}"
        );
        if stride == 1 || h == w_ {
            let gc = theirs
                .mul(&r)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            assert!(
                max_abs_diff(gx, gc.get(x.as_tensor()).unwrap()) < 1e-4,
                "{what}"
            );
            assert!(
                max_abs_diff(gw, gc.get(w.as_tensor()).unwrap()) < 1e-4,
                "{what}"
            );
        }
    }
}
