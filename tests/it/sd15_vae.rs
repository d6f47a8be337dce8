//! The SD-1.5 VAE decoder: SD-1.5's names, shapes and parameter count (without allocating
//! it), loading tiny random files in both attention key styles, a gradient to every
//! parameter (candle-nn's fused ops would pass none, silently), finite differences of a
//! reward-like sum with respect to the latents, f16, and errors that name the missing key.

use crate::common;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use common::max_abs_diff;
use sqdf::models::vae::{self, AutoencoderKLConfig, KeyStyle, VaeDecoder};
use sqdf::rng::{randn, seeded, Rng};
use sqdf::tensor_io::{expected_params, sorted_vars, write_atomic};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

const DEV: Device = Device::Cpu;

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

/// A parameter of `shape` drawn so activations stay O(1): kernels N(0, 1/fan_in), norm
/// scales 1 + N(0, 0.1^2), biases N(0, 0.1^2) (non-zero, so their use is tested too).
fn random_param(name: &str, shape: &[usize], rng: &mut Rng) -> Tensor {
    let n = randn(rng, shape, &DEV).unwrap();
    if shape.len() >= 2 {
        let fan_in: usize = shape[1..].iter().product();
        (n / (fan_in as f64).sqrt()).unwrap()
    } else if name.ends_with("weight") {
        n.affine(0.1, 1.0).unwrap()
    } else {
        n.affine(0.1, 0.0).unwrap()
    }
}

/// A trainable tiny decoder with random weights.
fn trainable(cfg: &AutoencoderKLConfig, seed: u64) -> (VaeDecoder, VarMap) {
    let varmap = VarMap::new();
    let model = VaeDecoder::new(VarBuilder::from_varmap(&varmap, DType::F32, &DEV), cfg).unwrap();
    let mut rng = seeded(seed);
    for (name, var) in sorted_vars(&varmap) {
        var.set(&random_param(&name, var.dims(), &mut rng)).unwrap();
    }
    (model, varmap)
}

/// The new attention name -> the old one (diffusers' deprecated `AttentionBlock`).
fn to_old_style(key: &str) -> String {
    [
        (".to_q.", ".query."),
        (".to_k.", ".key."),
        (".to_v.", ".value."),
        (".to_out.0.", ".proj_attn."),
    ]
    .iter()
    .fold(key.to_string(), |k, (new, old)| k.replace(new, old))
}

/// Writes the model's weights as a full VAE file would hold them (with a few encoder keys
/// the loader must ignore), in the given key style, without the keys in `drop`.
fn write_vae(dir: &Path, name: &str, varmap: &VarMap, style: KeyStyle, drop: &[&str]) -> PathBuf {
    let mut tensors: BTreeMap<String, Tensor> = sorted_vars(varmap)
        .into_iter()
        .map(|(k, v)| match style {
            KeyStyle::New => (k, v.as_tensor().clone()),
            KeyStyle::Old => (to_old_style(&k), v.as_tensor().clone()),
        })
        .collect();
    for k in [
        "encoder.conv_in.weight",
        "quant_conv.weight",
        "quant_conv.bias",
    ] {
        tensors.insert(k.into(), Tensor::zeros(3, DType::F32, &DEV).unwrap());
    }
    for k in drop {
        assert!(tensors.remove(*k).is_some(), "no key {k} to drop");
    }
    let path = dir.join(name);
    write_atomic(&path, &tensors, HashMap::new()).unwrap();
    path
}

/// Latents as the UNet produces them: unit variance once divided by the scaling factor.
fn latents(cfg: &AutoencoderKLConfig, shape: (usize, usize, usize), rng: &mut Rng) -> Tensor {
    let (b, h, w) = shape;
    let z = randn(rng, (b, cfg.latent_channels, h, w), &DEV).unwrap();
    (z * cfg.scaling_factor).unwrap()
}

#[test]
fn sd15_names_shapes_and_parameter_count() {
    let cfg = AutoencoderKLConfig::sd15();
    let params = expected_params(|vb| VaeDecoder::new(vb, &cfg)).unwrap();
    let shapes: HashMap<_, _> = params.iter().cloned().collect();
    let total: usize = params
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    // diffusers' vae.decoder plus post_quant_conv, as counted from SD's AutoencoderKL.
    assert_eq!(total, 49_490_199, "SD-1.5's decoder parameter count");
    let norms = shapes
        .keys()
        .filter(|k| k.contains("norm") && k.ends_with(".weight"));
    assert_eq!(norms.count(), 30, "group norms");
    for (key, shape) in [
        ("post_quant_conv.weight", vec![4, 4, 1, 1]),
        ("decoder.conv_in.weight", vec![512, 4, 3, 3]),
        ("decoder.mid_block.attentions.0.to_q.weight", vec![512, 512]),
        ("decoder.mid_block.attentions.0.to_out.0.bias", vec![512]),
        (
            "decoder.mid_block.attentions.0.group_norm.weight",
            vec![512],
        ),
        (
            "decoder.up_blocks.0.upsamplers.0.conv.weight",
            vec![512, 512, 3, 3],
        ),
        (
            "decoder.up_blocks.2.resnets.0.conv_shortcut.weight",
            vec![256, 512, 1, 1],
        ),
        (
            "decoder.up_blocks.3.resnets.2.conv2.weight",
            vec![128, 128, 3, 3],
        ),
        ("decoder.conv_norm_out.bias", vec![128]),
        ("decoder.conv_out.weight", vec![3, 128, 3, 3]),
    ] {
        assert_eq!(shapes.get(key), Some(&shape), "{key}");
    }
    assert!(!shapes.contains_key("decoder.up_blocks.3.upsamplers.0.conv.weight"));
    assert!(!shapes.contains_key("decoder.up_blocks.0.resnets.3.conv1.weight"));
    assert!(shapes.keys().all(|k| !k.contains("time_emb_proj")));
}

#[test]
fn config_json_and_validation() {
    // runwayml/stable-diffusion-v1-5 vae/config.json: no scaling_factor (added to
    // diffusers later, 0.18215 by default), keys the decoder does not read.
    let sd15_json = r#"{"_class_name": "AutoencoderKL", "_diffusers_version": "0.6.0",
        "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
        "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
        "out_channels": 3, "sample_size": 512,
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]}"#;
    let cfg: AutoencoderKLConfig = serde_json::from_str(sd15_json).unwrap();
    assert_eq!(cfg, AutoencoderKLConfig::sd15());
    assert_eq!(cfg.upscale(), 8);

    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        vae::config_from_dir(dir.path()).unwrap(),
        AutoencoderKLConfig::sd15()
    );
    std::fs::create_dir(dir.path().join("vae")).unwrap();
    let tiny = AutoencoderKLConfig::tiny();
    let json = serde_json::to_string(&tiny).unwrap();
    std::fs::write(dir.path().join("vae/config.json"), json).unwrap();
    assert_eq!(vae::config_from_dir(dir.path()).unwrap(), tiny);

    let bad = AutoencoderKLConfig {
        norm_num_groups: 3,
        ..tiny.clone()
    };
    let e = bad.validate().unwrap_err();
    assert!(
        e.contains("norm_num_groups 3 does not divide") && e.contains('8'),
        "{e}"
    );
    let e = VaeDecoder::new(VarBuilder::zeros(DType::F32, &DEV), &bad).unwrap_err();
    assert!(e.to_string().contains("AutoencoderKLConfig"), "{e}");
    std::fs::write(
        dir.path().join("vae/config.json"),
        r#"{"norm_num_groups": 5}"#,
    )
    .unwrap();
    let e = format!("{:#}", vae::config_from_dir(dir.path()).unwrap_err());
    assert!(
        e.contains("config.json") && e.contains("norm_num_groups 5"),
        "{e}"
    );
}

#[test]
fn tiny_shapes_and_both_key_styles_load() {
    let cfg = AutoencoderKLConfig::tiny();
    let (model, varmap) = trainable(&cfg, 1);
    let dir = tempfile::tempdir().unwrap();
    let z = latents(&cfg, (2, 4, 6), &mut seeded(2));
    let reference = model.decode(&z).unwrap();
    assert_eq!(reference.dims(), &[2, 3, 8, 12]);
    assert_eq!(cfg.upscale(), 2);

    for (style, name) in [
        (KeyStyle::New, "new.safetensors"),
        (KeyStyle::Old, "old.safetensors"),
    ] {
        let path = write_vae(dir.path(), name, &varmap, style, &[]);
        let loaded = vae::load(&path, &cfg, &DEV, DType::F32).unwrap();
        let out = loaded.decode(&z).unwrap();
        assert_eq!(out.dims(), &[2, 3, 8, 12]);
        assert!(
            max_abs_diff(&out, &reference) < 1e-5,
            "{style:?} weights give another image"
        );
        // VaeDecoder::new reads the style from the VarBuilder itself.
        let tensors = candle_core::safetensors::load(&path, &DEV).unwrap();
        let built = VaeDecoder::new(VarBuilder::from_tensors(tensors, DType::F32, &DEV), &cfg);
        assert!(max_abs_diff(&built.unwrap().decode(&z).unwrap(), &reference) < 1e-5);
    }
    // A plausible image range for O(1) weights: finite, not exploding.
    let m = scalar(
        &reference
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap(),
    );
    assert!(m.is_finite() && m < 50.0, "max |pixel| {m}");
}

#[test]
fn gradient_reaches_every_parameter() {
    let cfg = AutoencoderKLConfig::tiny();
    let (model, varmap) = trainable(&cfg, 3);
    let mut rng = seeded(4);
    let z = latents(&cfg, (2, 4, 4), &mut rng);
    let out = model.decode(&z).unwrap();
    let w = randn(&mut rng, out.dims(), &DEV).unwrap();
    let grads = (out * w).unwrap().sum_all().unwrap().backward().unwrap();
    let norm = |t: &Tensor| scalar(&t.sqr().unwrap().sum_all().unwrap()).sqrt();
    let q_bias = "decoder.mid_block.attentions.0.to_q.bias";
    let q_bias_grad = norm(
        grads
            .get(varmap.data().lock().unwrap()[q_bias].as_tensor())
            .unwrap(),
    );
    let vars = sorted_vars(&varmap);
    assert!(vars.len() > 40, "only {} variables", vars.len());
    for (name, var) in vars {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let g = norm(g);
        if name.ends_with("to_k.bias") {
            // Adds q·b to every score of a query's row: softmax cancels it, so its true
            // gradient is zero (as in torch); only rounding is left.
            assert!(
                g < 1e-4 * q_bias_grad,
                "{name}: {g} vs to_q.bias {q_bias_grad}"
            );
        } else {
            assert!(g > 0.0 && g.is_finite(), "{name}: gradient norm {g}");
        }
    }
}

#[test]
fn latent_gradient_matches_finite_differences() {
    let cfg = AutoencoderKLConfig::tiny();
    let (_, varmap) = trainable(&cfg, 5);
    let dir = tempfile::tempdir().unwrap();
    let path = write_vae(dir.path(), "vae.safetensors", &varmap, KeyStyle::New, &[]);
    // Frozen, as the reward path uses it: only the latents track.
    let model = vae::load(&path, &cfg, &DEV, DType::F32).unwrap();
    let mut rng = seeded(6);
    let z0 = latents(&cfg, (1, 4, 4), &mut rng);
    let w = randn(&mut rng, (1, 3, 8, 8), &DEV)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    // The reward-like scalar, summed in f64 so rounding stays far below the differences.
    let f = |z: &Tensor| {
        let img = model.decode(z).unwrap().to_dtype(DType::F64).unwrap();
        (img * &w).unwrap().sum_all().unwrap()
    };
    let z = Var::from_tensor(&z0).unwrap();
    let grad = f(z.as_tensor())
        .backward()
        .unwrap()
        .get(z.as_tensor())
        .unwrap()
        .clone();
    let grad_norm = scalar(&grad.sqr().unwrap().sum_all().unwrap()).sqrt();
    assert!(
        grad_norm > 1.0,
        "gradient norm {grad_norm}: too small to test"
    );

    let eps = 1e-2;
    for _ in 0..4 {
        let u = randn(&mut rng, z0.dims(), &DEV).unwrap();
        let u = (&u / scalar(&u.sqr().unwrap().sum_all().unwrap()).sqrt()).unwrap();
        let analytic = scalar(&(&grad * &u).unwrap().sum_all().unwrap());
        let plus = scalar(&f(&(&z0 + (&u * eps).unwrap()).unwrap()));
        let minus = scalar(&f(&(&z0 - (&u * eps).unwrap()).unwrap()));
        let numeric = (plus - minus) / (2.0 * eps);
        // A random direction sees ~|g|/sqrt(n) of the gradient; require a clear signal.
        assert!(
            analytic.abs() > 0.05 * grad_norm / 8.0,
            "direction too flat: {analytic}"
        );
        let rel = (numeric - analytic).abs() / analytic.abs();
        assert!(
            rel < 0.03,
            "analytic {analytic}, numeric {numeric}, rel {rel}"
        );
    }
}

#[test]
fn f16_matches_f32() {
    let cfg = AutoencoderKLConfig::tiny();
    let (_, varmap) = trainable(&cfg, 7);
    let dir = tempfile::tempdir().unwrap();
    let path = write_vae(dir.path(), "vae.safetensors", &varmap, KeyStyle::New, &[]);
    let z = latents(&cfg, (1, 8, 8), &mut seeded(8));
    let w = randn(&mut seeded(9), (1, 3, 16, 16), &DEV).unwrap();
    // The image and the gradient of sum(image * w) with respect to the latents.
    let run = |dtype: DType| {
        let model = vae::load(&path, &cfg, &DEV, dtype).unwrap();
        let z = Var::from_tensor(&z.to_dtype(dtype).unwrap()).unwrap();
        let img = model.decode(z.as_tensor()).unwrap();
        assert_eq!(img.dtype(), dtype);
        let loss = (img.to_dtype(DType::F32).unwrap() * &w)
            .unwrap()
            .sum_all()
            .unwrap();
        let grad = loss.backward().unwrap().get(z.as_tensor()).unwrap().clone();
        assert_eq!(grad.dtype(), dtype);
        (img, grad)
    };
    let (img32, grad32) = run(DType::F32);
    // candle's CPU matmul has no bf16 ("unsupported dtype BF16 for op matmul"): bf16 is
    // for the GPU; f16 takes the same code path here.
    let (img16, grad16) = run(DType::F16);
    let err = max_abs_diff(&img16, &img32);
    assert!(err < 0.03, "f16 image: max error {err}");
    let g_max = scalar(&grad32.abs().unwrap().flatten_all().unwrap().max(0).unwrap());
    let err = max_abs_diff(&grad16, &grad32) / g_max;
    assert!(
        err < 0.03,
        "f16 latent gradient: max error {err} of the largest"
    );
}

#[test]
fn missing_key_is_named_with_the_file() {
    let cfg = AutoencoderKLConfig::tiny();
    let (_, varmap) = trainable(&cfg, 9);
    let dir = tempfile::tempdir().unwrap();
    for (style, key) in [
        (KeyStyle::New, "decoder.up_blocks.1.resnets.0.conv1.weight"),
        (
            KeyStyle::Old,
            "decoder.mid_block.attentions.0.proj_attn.bias",
        ),
    ] {
        let path = write_vae(dir.path(), "broken.safetensors", &varmap, style, &[key]);
        let e = format!(
            "{:#}",
            vae::load(&path, &cfg, &DEV, DType::F32).unwrap_err()
        );
        assert!(
            e.contains(&path.display().to_string()) && e.contains(&format!("missing key `{key}`")),
            "{e}"
        );
    }
    let e = vae::load(&dir.path().join("none.safetensors"), &cfg, &DEV, DType::F32).unwrap_err();
    assert!(e.to_string().contains("none.safetensors"), "{e}");
}

/// SD-1.5 size, random weights: one 64x64 latent to a 512x512 image, then the gradient
/// back to 32x32 latents (256x256 images): the graph of a 512x512 decode outgrows 22 GB of
/// RAM on the CPU. `cargo test --release --test it sd15_vae:: -- --ignored --nocapture`.
#[test]
#[ignore]
fn sd15_decode_time() {
    // As the CLI does: fresh mappings, zeroed by the kernel page by page, cost more than
    // the convolutions the first time round.
    common::keep_freed_memory();
    let cfg = AutoencoderKLConfig::sd15();
    let mut rng = seeded(10);
    let tensors: HashMap<String, Tensor> = expected_params(|vb| VaeDecoder::new(vb, &cfg))
        .unwrap()
        .into_iter()
        .map(|(k, s)| {
            let t = random_param(&k, &s, &mut rng);
            (k, t)
        })
        .collect();
    let model = VaeDecoder::new(VarBuilder::from_tensors(tensors, DType::F32, &DEV), &cfg).unwrap();
    let z = latents(&cfg, (1, 64, 64), &mut rng);
    for round in ["first", "second"] {
        let start = std::time::Instant::now();
        let img = model.decode(&z).unwrap();
        assert_eq!(img.dims(), &[1, 3, 512, 512]);
        let secs = start.elapsed().as_secs_f64();
        println!("decode 64x64 -> 512x512 ({round}): {secs:.1} s");
    }
    let z = Var::from_tensor(&latents(&cfg, (1, 32, 32), &mut rng)).unwrap();
    let start = std::time::Instant::now();
    let img = model.decode(z.as_tensor()).unwrap();
    let grads = img.mean_all().unwrap().backward().unwrap();
    assert!(grads.get(z.as_tensor()).is_some());
    let secs = start.elapsed().as_secs_f64();
    println!("decode 32x32 -> 256x256 + backward to the latents: {secs:.1} s");
}
