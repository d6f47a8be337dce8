//! LoRA files: PEFT and kohya save -> load round trips (the same effective delta
//! s * B @ A for every module, linear and 3x3 conv), kohya merges checked against a hand
//! loop, and errors that name the file, the key and the shapes.

use candle_core::{DType, Device, Tensor};
use candle_nn::{Init, VarMap};
use sqdf::lora_files::{
    expected_adapters, load_lora, merge_kohya_file, save_kohya, save_peft, LoadedLora, LoraFormat,
};
use sqdf::nn::LoraConfig;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

const LINEAR: &str = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q";
const CONV: &str = "down_blocks.0.resnets.0.conv1";

/// A deterministic tensor with varied entries of order 1.
fn filled(shape: &[usize], seed: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| ((i as f32 + 1.0) * 0.731 + seed * 1.37).sin())
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// An adapter VarMap as a LoRA model would make it: a linear adapter and a 3x3 conv
/// adapter, with non-zero B.
fn adapters(rank: usize) -> VarMap {
    let vm = VarMap::new();
    let shapes: [(&str, Vec<usize>, Vec<usize>); 2] = [
        (LINEAR, vec![rank, 6], vec![5, rank]),
        (CONV, vec![rank, 3, 3, 3], vec![7, rank, 1, 1]),
    ];
    for (i, (m, a, b)) in shapes.iter().enumerate() {
        let va = vm
            .get(
                a.as_slice(),
                &format!("{m}.lora_A.weight"),
                Init::Const(0.0),
                DType::F32,
                &Device::Cpu,
            )
            .unwrap();
        let vb = vm
            .get(
                b.as_slice(),
                &format!("{m}.lora_B.weight"),
                Init::Const(0.0),
                DType::F32,
                &Device::Cpu,
            )
            .unwrap();
        let data = vm.data().lock().unwrap();
        data[&format!("{m}.lora_A.weight")]
            .set(&filled(va.dims(), i as f32))
            .unwrap();
        data[&format!("{m}.lora_B.weight")]
            .set(&filled(vb.dims(), 10.0 + i as f32))
            .unwrap();
    }
    vm
}

/// s * B.flatten(1) @ A.flatten(1) of one module.
fn delta(a: &Tensor, b: &Tensor, scale: f64) -> Vec<Vec<f32>> {
    let a = a.flatten_from(1).unwrap();
    let b = b.flatten_from(1).unwrap();
    (b.matmul(&a).unwrap() * scale).unwrap().to_vec2().unwrap()
}

fn var(vm: &VarMap, name: &str) -> Tensor {
    vm.data().lock().unwrap()[name].as_tensor().clone()
}

fn assert_close(x: &[Vec<f32>], y: &[Vec<f32>], tol: f32, what: &str) {
    assert_eq!(x.len(), y.len(), "{what}: rows");
    for (i, (rx, ry)) in x.iter().zip(y).enumerate() {
        assert_eq!(rx.len(), ry.len(), "{what}: columns");
        for (j, (a, b)) in rx.iter().zip(ry).enumerate() {
            let tol = tol * (1.0 + a.abs().max(b.abs()));
            assert!((a - b).abs() <= tol, "{what}[{i}][{j}]: {a} vs {b}");
        }
    }
}

/// Every module's effective delta of `loaded` equals the original's.
fn assert_same_model(vm: &VarMap, cfg: &LoraConfig, loaded: &LoadedLora) {
    for m in [LINEAR, CONV] {
        let (ka, kb) = (format!("{m}.lora_A.weight"), format!("{m}.lora_B.weight"));
        let want = delta(&var(vm, &ka), &var(vm, &kb), cfg.scale());
        let got = delta(&loaded.tensors[&ka], &loaded.tensors[&kb], loaded.scale());
        assert_eq!(loaded.tensors[&ka].dims(), var(vm, &ka).dims(), "{ka}");
        assert_eq!(loaded.tensors[&kb].dims(), var(vm, &kb).dims(), "{kb}");
        assert_close(&want, &got, 1e-6, m);
    }
    assert_eq!(loaded.tensors.len(), 4);
}

fn write(path: &Path, tensors: Vec<(&str, Tensor)>) {
    let map: BTreeMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, t)| (k.to_string(), t))
        .collect();
    sqdf::tensor_io::write_atomic(path, &map, HashMap::new()).unwrap();
}

fn keys(path: &Path) -> HashMap<String, Vec<usize>> {
    sqdf::tensor_io::read(path, &Device::Cpu)
        .unwrap()
        .tensors
        .into_iter()
        .map(|(k, t)| (k, t.dims().to_vec()))
        .collect()
}

#[test]
fn peft_round_trip_keeps_every_delta_with_alpha_not_rank() {
    let dir = tempfile::tempdir().unwrap();
    for (rank, alpha) in [(4, 8.0), (3, 3.0), (2, 0.5)] {
        let cfg = LoraConfig {
            rank,
            alpha,
            convs: true,
        };
        let vm = adapters(rank);
        let path = dir.path().join(format!("peft_{rank}.safetensors"));
        save_peft(&path, &vm, &cfg).unwrap();

        let k = keys(&path);
        assert_eq!(k.len(), 4);
        assert_eq!(k[&format!("unet.{LINEAR}.lora_A.weight")], vec![rank, 6]);
        assert_eq!(k[&format!("unet.{LINEAR}.lora_B.weight")], vec![5, rank]);
        assert_eq!(
            k[&format!("unet.{CONV}.lora_A.weight")],
            vec![rank, 3, 3, 3]
        );
        assert_eq!(
            k[&format!("unet.{CONV}.lora_B.weight")],
            vec![7, rank, 1, 1]
        );

        let loaded = load_lora(&path, &expected_adapters(&vm), &Device::Cpu).unwrap();
        assert_eq!(loaded.format, LoraFormat::Peft);
        assert_eq!(loaded.rank, rank);
        // The scale is folded into B: the file means alpha = rank, as diffusers reads it.
        assert_eq!(loaded.alpha, rank as f64);
        assert_same_model(&vm, &cfg, &loaded);

        // Restated under the training alpha, it is still the same model.
        let back = loaded.rescale_to(alpha).unwrap();
        assert_eq!(back.alpha, alpha);
        assert_same_model(&vm, &cfg, &back);
    }
}

#[test]
fn peft_file_honours_diffusers_adapter_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let vm = adapters(4);
    let path = dir.path().join("meta.safetensors");
    let mut map = BTreeMap::new();
    for (k, v) in sqdf::tensor_io::sorted_vars(&vm) {
        map.insert(format!("unet.{k}"), v.as_tensor().clone());
    }
    let meta = HashMap::from([(
        "lora_adapter_metadata".to_string(),
        r#"{"unet.r": 4, "unet.lora_alpha": 2, "unet.alpha_pattern": {}, "unet.rank_pattern": {}}"#
            .to_string(),
    )]);
    sqdf::tensor_io::write_atomic(&path, &map, meta).unwrap();
    let loaded = load_lora(&path, &expected_adapters(&vm), &Device::Cpu).unwrap();
    assert_eq!((loaded.rank, loaded.alpha), (4, 2.0));
    assert_same_model(
        &vm,
        &LoraConfig {
            rank: 4,
            alpha: 2.0,
            convs: true,
        },
        &loaded,
    );
}

#[test]
fn kohya_round_trip_keeps_every_delta() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LoraConfig {
        rank: 4,
        alpha: 2.5,
        convs: true,
    };
    let vm = adapters(4);
    let path = dir.path().join("kohya.safetensors");
    save_kohya(&path, &vm, &cfg).unwrap();

    let k = keys(&path);
    assert_eq!(k.len(), 6);
    let lin = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q";
    let conv = "lora_unet_down_blocks_0_resnets_0_conv1";
    assert_eq!(k[&format!("{lin}.lora_down.weight")], vec![4, 6]);
    assert_eq!(k[&format!("{lin}.lora_up.weight")], vec![5, 4]);
    assert_eq!(k[&format!("{lin}.alpha")], Vec::<usize>::new());
    assert_eq!(k[&format!("{conv}.lora_down.weight")], vec![4, 3, 3, 3]);
    assert_eq!(k[&format!("{conv}.lora_up.weight")], vec![7, 4, 1, 1]);
    let file = sqdf::tensor_io::read(&path, &Device::Cpu).unwrap();
    let alpha = &file.tensors[&format!("{conv}.alpha")];
    assert_eq!(alpha.dtype(), DType::F32);
    assert_eq!(alpha.to_scalar::<f32>().unwrap(), 2.5);

    let loaded = load_lora(&path, &expected_adapters(&vm), &Device::Cpu).unwrap();
    assert_eq!(loaded.format, LoraFormat::Kohya);
    assert_eq!((loaded.rank, loaded.alpha), (4, 2.5));
    assert_same_model(&vm, &cfg, &loaded);
    // Nothing is folded in kohya files: the tensors come back as they were.
    for (name, _) in expected_adapters(&vm) {
        let d = (&loaded.tensors[&name] - var(&vm, &name))
            .unwrap()
            .abs()
            .unwrap();
        assert_eq!(
            d.flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0,
            "{name}"
        );
    }
}

#[test]
fn kohya_per_module_alphas_missing_alpha_and_1x1_linear_load_as_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    let vm = adapters(2);
    let (a_lin, b_lin) = (
        var(&vm, &format!("{LINEAR}.lora_A.weight")),
        var(&vm, &format!("{LINEAR}.lora_B.weight")),
    );
    let (a_conv, b_conv) = (
        var(&vm, &format!("{CONV}.lora_A.weight")),
        var(&vm, &format!("{CONV}.lora_B.weight")),
    );
    let lin = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q";
    let conv = "lora_unet_down_blocks_0_resnets_0_conv1";
    let path = dir.path().join("mixed.safetensors");
    write(
        &path,
        vec![
            // The linear adapter stored as a 1x1 convolution, alpha 6 (scale 3).
            (
                &format!("{lin}.lora_down.weight"),
                a_lin.reshape((2, 6, 1, 1)).unwrap(),
            ),
            (
                &format!("{lin}.lora_up.weight"),
                b_lin.reshape((5, 2, 1, 1)).unwrap(),
            ),
            (
                &format!("{lin}.alpha"),
                Tensor::new(6f32, &Device::Cpu).unwrap(),
            ),
            // No alpha: alpha = rank (scale 1).
            (&format!("{conv}.lora_down.weight"), a_conv.clone()),
            (&format!("{conv}.lora_up.weight"), b_conv.clone()),
        ],
    );
    let loaded = load_lora(&path, &expected_adapters(&vm), &Device::Cpu).unwrap();
    assert_eq!(loaded.rank, 2);
    let s = loaded.scale();
    let got_lin = delta(
        &loaded.tensors[&format!("{LINEAR}.lora_A.weight")],
        &loaded.tensors[&format!("{LINEAR}.lora_B.weight")],
        s,
    );
    let got_conv = delta(
        &loaded.tensors[&format!("{CONV}.lora_A.weight")],
        &loaded.tensors[&format!("{CONV}.lora_B.weight")],
        s,
    );
    assert_close(&got_lin, &delta(&a_lin, &b_lin, 3.0), 1e-6, "linear");
    assert_close(&got_conv, &delta(&a_conv, &b_conv, 1.0), 1e-6, "conv");
    assert_eq!(
        loaded.tensors[&format!("{LINEAR}.lora_A.weight")].dims(),
        &[2, 6]
    );
}

/// W + (alpha/rank) up @ down by hand: w [out * k], down [r * k], up [out * r].
fn hand_merge(
    w: &[f32],
    up: &[f32],
    down: &[f32],
    out: usize,
    r: usize,
    k: usize,
    scale: f32,
) -> Vec<f32> {
    let mut res = w.to_vec();
    for o in 0..out {
        for j in 0..k {
            let mut acc = 0f32;
            for q in 0..r {
                acc += up[o * r + q] * down[q * k + j];
            }
            res[o * k + j] += scale * acc;
        }
    }
    res
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn merge_kohya_into_linear_3x3_and_1x1_conv_matches_a_hand_loop() {
    let dir = tempfile::tempdir().unwrap();
    let lin_w = filled(&[5, 6], 1.0);
    let conv_w = filled(&[7, 3, 3, 3], 2.0);
    // SD-1.5's transformer proj_in is a 1x1 conv (use_linear_projection = false).
    let proj = "down_blocks.0.attentions.0.proj_in";
    let proj_w = filled(&[5, 5, 1, 1], 2.5);
    let bias = filled(&[7], 3.0);
    let other = filled(&[4, 4], 4.0);
    let base = HashMap::from([
        (format!("{LINEAR}.weight"), lin_w.clone()),
        (format!("{CONV}.weight"), conv_w.clone()),
        (format!("{proj}.weight"), proj_w.clone()),
        (format!("{CONV}.bias"), bias.clone()),
        ("conv_in.weight".to_string(), other.clone()),
    ]);
    let r = 3;
    let (lin_down, lin_up) = (filled(&[r, 6], 5.0), filled(&[5, r], 6.0));
    let (conv_down, conv_up) = (filled(&[r, 3, 3, 3], 7.0), filled(&[7, r, 1, 1], 8.0));
    let lin = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q";
    let conv = "lora_unet_down_blocks_0_resnets_0_conv1";
    let (proj_down, proj_up) = (filled(&[r, 5, 1, 1], 8.5), filled(&[5, r, 1, 1], 8.7));
    let kproj = "lora_unet_down_blocks_0_attentions_0_proj_in";
    let path = dir.path().join("lcm.safetensors");
    write(
        &path,
        vec![
            (&format!("{lin}.lora_down.weight"), lin_down.clone()),
            (&format!("{lin}.lora_up.weight"), lin_up.clone()),
            (
                &format!("{lin}.alpha"),
                Tensor::new(2f32, &Device::Cpu).unwrap(),
            ),
            // No alpha on the conv: alpha = rank.
            (&format!("{conv}.lora_down.weight"), conv_down.clone()),
            (&format!("{conv}.lora_up.weight"), conv_up.clone()),
            (&format!("{kproj}.lora_down.weight"), proj_down.clone()),
            (&format!("{kproj}.lora_up.weight"), proj_up.clone()),
            (
                &format!("{kproj}.alpha"),
                Tensor::new(1.5f32, &Device::Cpu).unwrap(),
            ),
            // A text-encoder module belongs to another model: skipped, not merged.
            (
                "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",
                filled(&[r, 4], 9.0),
            ),
            (
                "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight",
                filled(&[4, r], 9.5),
            ),
        ],
    );
    let merged = merge_kohya_file(&path, base).unwrap();
    let mut names = merged.merged.clone();
    names.sort();
    let mut want_names = vec![
        format!("{LINEAR}.weight"),
        format!("{CONV}.weight"),
        format!("{proj}.weight"),
    ];
    want_names.sort();
    assert_eq!(names, want_names);
    assert_eq!(
        merged.skipped,
        vec!["lora_te_text_model_encoder_layers_0_mlp_fc1".to_string()]
    );

    let want_lin = hand_merge(
        &flat(&lin_w),
        &flat(&lin_up),
        &flat(&lin_down),
        5,
        r,
        6,
        2.0 / 3.0,
    );
    let want_conv = hand_merge(
        &flat(&conv_w),
        &flat(&conv_up),
        &flat(&conv_down),
        7,
        r,
        27,
        1.0,
    );
    let want_proj = hand_merge(
        &flat(&proj_w),
        &flat(&proj_up),
        &flat(&proj_down),
        5,
        r,
        5,
        1.5 / 3.0,
    );
    let got_lin = &merged.tensors[&format!("{LINEAR}.weight")];
    let got_conv = &merged.tensors[&format!("{CONV}.weight")];
    let got_proj = &merged.tensors[&format!("{proj}.weight")];
    assert_eq!(got_lin.dims(), &[5, 6]);
    assert_eq!(got_conv.dims(), &[7, 3, 3, 3]);
    assert_eq!(got_proj.dims(), &[5, 5, 1, 1]);
    for (name, got, want) in [
        ("linear", flat(got_lin), want_lin),
        ("conv", flat(got_conv), want_conv),
        ("1x1 conv", flat(got_proj), want_proj),
    ] {
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((g - w).abs() <= 1e-6, "{name}[{i}]: {g} vs {w}");
        }
    }
    // Untouched tensors are the base's.
    assert_eq!(flat(&merged.tensors[&format!("{CONV}.bias")]), flat(&bias));
    assert_eq!(flat(&merged.tensors["conv_in.weight"]), flat(&other));
    assert_eq!(merged.tensors.len(), 5);
}

#[test]
fn merge_keeps_the_base_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let w = filled(&[4, 3], 1.0).to_dtype(DType::F16).unwrap();
    let base = HashMap::from([("mid_block.proj.weight".to_string(), w.clone())]);
    let path = dir.path().join("half.safetensors");
    let (down, up) = (filled(&[2, 3], 2.0), filled(&[4, 2], 3.0));
    write(
        &path,
        vec![
            (
                "lora_unet_mid_block_proj.lora_down.weight",
                down.to_dtype(DType::F16).unwrap(),
            ),
            (
                "lora_unet_mid_block_proj.lora_up.weight",
                up.to_dtype(DType::F16).unwrap(),
            ),
            (
                "lora_unet_mid_block_proj.alpha",
                Tensor::new(1f32, &Device::Cpu).unwrap(),
            ),
        ],
    );
    let merged = merge_kohya_file(&path, base).unwrap();
    let got = &merged.tensors["mid_block.proj.weight"];
    assert_eq!(got.dtype(), DType::F16);
    let want = hand_merge(
        &flat(&w),
        &flat(&up.to_dtype(DType::F16).unwrap()),
        &flat(&down.to_dtype(DType::F16).unwrap()),
        4,
        2,
        3,
        0.5,
    );
    for (g, w) in flat(got).iter().zip(&want) {
        assert!((g - w).abs() <= 2e-3, "{g} vs {w}");
    }
}

#[test]
fn unknown_keys_and_bad_shapes_name_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let vm = adapters(2);
    let expected = expected_adapters(&vm);
    let cfg = LoraConfig {
        rank: 2,
        alpha: 2.0,
        convs: true,
    };

    // A run's file (kohya or PEFT) with `extra` tensors added: loading it fails; the error
    // names the file and the first extra key.
    let load_err_with = |file: &str, kohya: bool, extra: &[(&str, &[usize])]| -> String {
        let path = dir.path().join(file);
        if kohya {
            save_kohya(&path, &vm, &cfg).unwrap();
        } else {
            save_peft(&path, &vm, &cfg).unwrap();
        }
        let mut t: Vec<(String, Tensor)> = sqdf::tensor_io::read(&path, &Device::Cpu)
            .unwrap()
            .tensors
            .into_iter()
            .collect();
        t.extend(extra.iter().map(|(k, d)| (k.to_string(), filled(d, 0.0))));
        write(
            &path,
            t.iter().map(|(k, v)| (k.as_str(), v.clone())).collect(),
        );
        let err = format!(
            "{:#}",
            load_lora(&path, &expected, &Device::Cpu).unwrap_err()
        );
        assert!(
            err.contains(&path.display().to_string()) && err.contains(extra[0].0),
            "{err}"
        );
        err
    };

    // A module the model does not have, in either format.
    let nope = "lora_unet_up_blocks_9_nope";
    load_err_with(
        "unknown_kohya.safetensors",
        true,
        &[
            (&format!("{nope}.lora_down.weight"), &[2, 6]),
            (&format!("{nope}.lora_up.weight"), &[5, 2]),
        ],
    );
    load_err_with(
        "unknown_peft.safetensors",
        false,
        &[("unet.mid_block.nope.lora_A.weight", &[2, 6])],
    );

    // Text-encoder adapters (in either format) are named as such: sqdf adapts the UNet only.
    let te = "text_encoder.text_model.encoder.layers.0.mlp.fc1";
    let kte = "lora_te_text_model_encoder_layers_0_mlp_fc1";
    for (file, kohya, down, up) in [
        (
            "te_peft.safetensors",
            false,
            format!("{te}.lora_A.weight"),
            format!("{te}.lora_B.weight"),
        ),
        (
            "te_kohya.safetensors",
            true,
            format!("{kte}.lora_down.weight"),
            format!("{kte}.lora_up.weight"),
        ),
    ] {
        let err = load_err_with(file, kohya, &[(&down, &[2, 4]), (&up, &[4, 2])]);
        assert!(err.contains("adapts the text encoder"), "{err}");
    }

    // A shape that does not fit names the key and both shapes.
    let path = dir.path().join("bad_shape.safetensors");
    let mut t: Vec<(String, Tensor)> = sqdf::tensor_io::read(
        &path.with_file_name("unknown_peft.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
    .tensors
    .into_iter()
    .filter(|(k, _)| !k.contains("nope"))
    .collect();
    let key = format!("unet.{LINEAR}.lora_A.weight");
    for (k, v) in t.iter_mut() {
        if *k == key {
            *v = filled(&[2, 7], 0.0);
        }
    }
    write(
        &path,
        t.iter().map(|(k, v)| (k.as_str(), v.clone())).collect(),
    );
    let err = format!(
        "{:#}",
        load_lora(&path, &expected, &Device::Cpu).unwrap_err()
    );
    assert!(
        err.contains(&path.display().to_string()) && err.contains(&key),
        "{err}"
    );
    assert!(err.contains("[2, 7]") && err.contains("[2, 6]"), "{err}");

    // A missing adapter.
    let path = dir.path().join("missing.safetensors");
    write(
        &path,
        vec![
            (
                &format!("unet.{LINEAR}.lora_A.weight"),
                filled(&[2, 6], 0.0),
            ),
            (
                &format!("unet.{LINEAR}.lora_B.weight"),
                filled(&[5, 2], 0.0),
            ),
        ],
    );
    let err = format!(
        "{:#}",
        load_lora(&path, &expected, &Device::Cpu).unwrap_err()
    );
    assert!(
        err.contains(&path.display().to_string()) && err.contains(CONV),
        "{err}"
    );

    // Merge: a kohya module that maps to no base weight.
    let path = dir.path().join("merge_unknown.safetensors");
    write(
        &path,
        vec![
            (
                "lora_unet_mid_block_nope.lora_down.weight",
                filled(&[2, 3], 0.0),
            ),
            (
                "lora_unet_mid_block_nope.lora_up.weight",
                filled(&[4, 2], 0.0),
            ),
        ],
    );
    let base = HashMap::from([("mid_block.proj.weight".to_string(), filled(&[4, 3], 0.0))]);
    let err = format!("{:#}", merge_kohya_file(&path, base.clone()).unwrap_err());
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(
        err.contains("lora_unet_mid_block_nope.lora_down.weight"),
        "{err}"
    );

    // Merge: shapes that do not fit the base weight name the keys and the shapes.
    let path = dir.path().join("merge_shape.safetensors");
    write(
        &path,
        vec![
            (
                "lora_unet_mid_block_proj.lora_down.weight",
                filled(&[2, 5], 0.0),
            ),
            (
                "lora_unet_mid_block_proj.lora_up.weight",
                filled(&[4, 2], 0.0),
            ),
        ],
    );
    let err = format!("{:#}", merge_kohya_file(&path, base).unwrap_err());
    assert!(
        err.contains("lora_unet_mid_block_proj.lora_down.weight")
            && err.contains("[2, 5]")
            && err.contains("[4, 3]"),
        "{err}"
    );

    // Neither format.
    let path = dir.path().join("not_lora.safetensors");
    write(&path, vec![("conv_in.weight", filled(&[2, 2], 0.0))]);
    let err = format!(
        "{:#}",
        load_lora(&path, &expected, &Device::Cpu).unwrap_err()
    );
    assert!(
        err.contains(&path.display().to_string()) && err.contains("conv_in.weight"),
        "{err}"
    );
}
