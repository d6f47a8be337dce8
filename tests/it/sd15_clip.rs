//! CLIP and the LAION aesthetic reward at tiny sizes, with weights written by the tests
//! and read back through the loaders: the reward gradient reaches the image (and matches
//! finite differences), the text tower's causal mask, the differentiable resize, loader
//! errors that name the file and the key, `.pth` files, configs and ViT-L/14's sizes.

use crate::common;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use common::max_abs_diff;
use sqdf::models::clip::{
    load_text, load_vision, ClipConfig, ClipText, ClipTextConfig, ClipVision, ClipVisionConfig,
};
use sqdf::rewards::aesthetic::{AestheticHead, AestheticReward};
use sqdf::rewards::clip_preprocess::{
    clip_preprocess, resize_crop, resize_crop_weights, resize_weights, CLIP_MEAN, CLIP_STD,
};
use sqdf::rewards::clip_score::{cosine_to_prompts, prompt_embeds, ClipScoreReward};
use sqdf::rng::{randn, seeded, Rng};
use sqdf::tensor_io::{expected_params, sorted_vars, write_atomic};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

const DEV: Device = Device::Cpu;

type Weights = BTreeMap<String, Tensor>;

/// Random weights for whatever `build` asks for: matrices N(0, 1/fan_in), norm scales
/// 1 + N(0, 0.1^2), biases and the class embedding N(0, 0.1^2) (not the constant inits,
/// so that every parameter matters).
fn random_weights(
    rng: &mut Rng,
    build: impl FnOnce(VarBuilder) -> candle_core::Result<()>,
) -> Weights {
    let varmap = VarMap::new();
    build(VarBuilder::from_varmap(&varmap, DType::F32, &DEV)).unwrap();
    sorted_vars(&varmap)
        .into_iter()
        .map(|(name, var)| {
            let shape = var.shape().clone();
            let noise = randn(rng, &shape, &DEV).unwrap();
            let t = if shape.rank() >= 2 {
                let fan_in: usize = shape.dims()[1..].iter().product();
                noise.affine(1.0 / (fan_in as f64).sqrt(), 0.0)
            } else if name.ends_with("norm1.weight")
                || name.ends_with("norm2.weight")
                || name.ends_with("layernorm.weight")
                || name.ends_with("layrnorm.weight")
                || name.ends_with("final_layer_norm.weight")
            {
                noise.affine(0.1, 1.0)
            } else {
                noise.affine(0.1, 0.0)
            };
            (name, t.unwrap())
        })
        .collect()
}

fn vision_weights(rng: &mut Rng, cfg: &ClipVisionConfig) -> Weights {
    random_weights(rng, |vb| ClipVision::new(vb, cfg).map(|_| ()))
}

fn text_weights(rng: &mut Rng, cfg: &ClipTextConfig, projection: bool) -> Weights {
    random_weights(rng, |vb| ClipText::new(vb, cfg, projection).map(|_| ()))
}

fn head_weights(rng: &mut Rng, in_dim: usize) -> Weights {
    random_weights(rng, |vb| AestheticHead::new(vb, in_dim).map(|_| ()))
}

fn write(dir: &Path, name: &str, w: &Weights) -> PathBuf {
    let path = dir.join(name);
    write_atomic(&path, w, HashMap::new()).unwrap();
    path
}

/// A whole tiny CLIP checkpoint, laid out as openai/clip-vit-large-patch14's
/// model.safetensors: both towers, both projections and logit_scale.
fn full_clip(rng: &mut Rng) -> Weights {
    let mut w = vision_weights(rng, &ClipVisionConfig::tiny());
    w.extend(text_weights(rng, &ClipTextConfig::tiny(), true));
    w.insert("logit_scale".into(), Tensor::new(4.6f32, &DEV).unwrap());
    w
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Images in [-0.7, 0.7]: the [0, 1] clamp of the preprocessing is far away.
fn images(rng: &mut Rng, b: usize, h: usize, w: usize) -> Tensor {
    (randn(rng, (b, 3, h, w), &DEV).unwrap().tanh().unwrap() * 0.7).unwrap()
}

fn aesthetic_reward(dir: &Path, rng: &mut Rng) -> AestheticReward {
    let cfg = ClipVisionConfig::tiny();
    let clip = write(dir, "model.safetensors", &full_clip(rng));
    let head = write(
        dir,
        "head.safetensors",
        &head_weights(rng, cfg.projection_dim),
    );
    AestheticReward::load(&clip, &head, &cfg, &DEV, DType::F32).unwrap()
}

#[test]
fn aesthetic_gradient_wrt_the_image_matches_finite_differences() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = seeded(1);
    let reward = aesthetic_reward(dir.path(), &mut rng);
    // 40x40 -> 28x28: the downscaling (antialiased) path of the resize.
    let x0 = images(&mut rng, 2, 40, 40);
    let f = |x: &Tensor| scalar(&reward.score(x).unwrap().sum_all().unwrap());
    let x = Var::from_tensor(&x0).unwrap();
    let scores = reward.score(x.as_tensor()).unwrap();
    assert_eq!(scores.dims(), &[2]);
    let grads = scores.sum_all().unwrap().backward().unwrap();
    let g = grads
        .get(x.as_tensor())
        .expect("the image receives a gradient");
    let g_norm = scalar(&g.sqr().unwrap().sum_all().unwrap()).sqrt();
    assert!(g_norm > 1e-3 && g_norm.is_finite(), "|grad| = {g_norm}");
    // Both images get their own gradient (no sample is cut off).
    for i in 0..2 {
        let gi = g.get(i).unwrap();
        assert!(scalar(&gi.abs().unwrap().max_all().unwrap()) > 0.0);
    }
    // Central differences along the gradient itself (derivative |grad|) and along random
    // unit directions (|eps v| is ~1e-4 per pixel, far from the clamp).
    let eps = 1e-2;
    let mut directions = vec![(g / g_norm).unwrap()];
    for _ in 0..3 {
        let v = randn(&mut rng, x0.dims(), &DEV).unwrap();
        directions.push((&v / scalar(&v.sqr().unwrap().sum_all().unwrap()).sqrt()).unwrap());
    }
    for (k, v) in directions.iter().enumerate() {
        let analytic = scalar(&(g * v).unwrap().sum_all().unwrap());
        let xp = (&x0 + (v * eps).unwrap()).unwrap();
        let xm = (&x0 - (v * eps).unwrap()).unwrap();
        let numeric = (f(&xp) - f(&xm)) / (2.0 * eps);
        // Measured: relative error 2e-5 along the gradient, up to 3e-3 along random
        // directions (whose derivatives are ~100x smaller: f32 roundoff).
        assert!(
            (numeric - analytic).abs() <= 2e-2 * analytic.abs() + 1e-4 * g_norm,
            "direction {k}: finite differences {numeric}, gradient {analytic} (|grad| {g_norm})"
        );
    }
}

#[test]
fn every_vision_and_head_parameter_receives_a_gradient() {
    // Guards against a fused candle-nn op (no backward) slipping into the tower.
    let cfg = ClipVisionConfig::tiny();
    let varmap = VarMap::new();
    let vision = ClipVision::new(VarBuilder::from_varmap(&varmap, DType::F32, &DEV), &cfg).unwrap();
    let head = AestheticHead::new(
        VarBuilder::from_varmap(&varmap, DType::F32, &DEV),
        cfg.projection_dim,
    )
    .unwrap();
    let mut rng = seeded(2);
    let w: Weights = vision_weights(&mut rng, &cfg)
        .into_iter()
        .chain(head_weights(&mut rng, cfg.projection_dim))
        .collect();
    for (name, var) in sorted_vars(&varmap) {
        var.set(&w[&name]).unwrap();
    }
    let reward = AestheticReward::new(vision, head).unwrap();
    let x = images(&mut rng, 2, 28, 28);
    let grads = reward
        .score(&x)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    for (name, var) in sorted_vars(&varmap) {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient"));
        assert!(
            scalar(&g.abs().unwrap().max_all().unwrap()) > 0.0,
            "{name}: zero gradient"
        );
    }
}

#[test]
fn causal_mask_hides_later_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = seeded(3);
    let cfg = ClipTextConfig::tiny();
    // SD-1.5's text_encoder file: text_model.* only.
    let path = write(
        dir.path(),
        "text.safetensors",
        &text_weights(&mut rng, &cfg, false),
    );
    let text = load_text(&path, &cfg, &DEV, DType::F32, false).unwrap();
    let ids = |changed: u32| Tensor::new(&[[1u32, 5, 9, 3, changed, 63, 0, 0]], &DEV).unwrap();
    let a = text.forward(&ids(7)).unwrap();
    let b = text.forward(&ids(8)).unwrap();
    assert_eq!(a.dims(), &[1, 8, cfg.hidden_size]);
    let early = max_abs_diff(&a.narrow(1, 0, 4).unwrap(), &b.narrow(1, 0, 4).unwrap());
    assert!(early < 1e-6, "earlier tokens changed by {early}");
    for pos in 4..8 {
        let late = max_abs_diff(&a.narrow(1, pos, 1).unwrap(), &b.narrow(1, pos, 1).unwrap());
        assert!(late > 1e-3, "token {pos} ignores the change at 4 ({late})");
    }
    // pooled: the hidden state at the largest id (63 at position 5), per row.
    let two = Tensor::new(
        &[[1u32, 5, 9, 3, 7, 63, 0, 0], [2, 63, 4, 4, 4, 4, 4, 4]],
        &DEV,
    )
    .unwrap();
    let h = text.forward(&two).unwrap();
    let pooled = text.pooled(&two).unwrap();
    assert_eq!(pooled.dims(), &[2, cfg.hidden_size]);
    let want = Tensor::stack(
        &[
            h.get(0).unwrap().get(5).unwrap(),
            h.get(1).unwrap().get(1).unwrap(),
        ],
        0,
    )
    .unwrap();
    assert_eq!(max_abs_diff(&pooled, &want), 0.0);
    let err = text.text_embeds(&two).unwrap_err().to_string();
    assert!(err.contains("text_projection"), "{err}");
}

#[test]
fn clip_score_is_the_cosine_to_the_sample_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = seeded(4);
    let path = write(dir.path(), "model.safetensors", &full_clip(&mut rng));
    let (vcfg, tcfg) = (ClipVisionConfig::tiny(), ClipTextConfig::tiny());
    let vision = load_vision(&path, &vcfg, &DEV, DType::F32).unwrap();
    let text = load_text(&path, &tcfg, &DEV, DType::F32, true).unwrap();
    let prompts = Tensor::new(&[[1u32, 5, 63, 0], [2, 7, 9, 63], [3, 63, 0, 0]], &DEV).unwrap();
    let t = prompt_embeds(&text, &prompts).unwrap();
    assert_eq!(t.dims(), &[3, vcfg.projection_dim]);
    let norms = to_vec(&t.sqr().unwrap().sum(1).unwrap().sqrt().unwrap());
    assert!(norms.iter().all(|n| (n - 1.0).abs() < 1e-5), "{norms:?}");
    let reward = ClipScoreReward::new(vision.clone(), &t).unwrap();
    let x = images(&mut rng, 2, 28, 28);
    let cond = Tensor::new(&[2u32, 0], &DEV).unwrap();
    let s = to_vec(&reward.score(&x, &cond).unwrap());
    let img = vision.forward(&clip_preprocess(&x, 28).unwrap()).unwrap();
    let t = to_vec(&t);
    let d = vcfg.projection_dim;
    for (b, &c) in [2usize, 0].iter().enumerate() {
        let e = to_vec(&img.get(b).unwrap());
        let n = e.iter().map(|v| v * v).sum::<f32>().sqrt();
        let cos: f32 = e
            .iter()
            .zip(&t[c * d..(c + 1) * d])
            .map(|(a, b)| a * b)
            .sum::<f32>()
            / n;
        assert!((s[b] - cos).abs() < 1e-5, "sample {b}: {} vs {cos}", s[b]);
        assert!(s[b].abs() <= 1.0 + 1e-5);
    }
    // The same through the free function, and a gradient to the image.
    let again = cosine_to_prompts(&img, reward.text_embeds(), &cond).unwrap();
    assert!(max_abs_diff(&again, &Tensor::new(s.as_slice(), &DEV).unwrap()) < 1e-6);
    let xv = Var::from_tensor(&x).unwrap();
    let grads = reward
        .score(xv.as_tensor(), &cond)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let g = grads.get(xv.as_tensor()).unwrap();
    assert!(scalar(&g.abs().unwrap().max_all().unwrap()) > 0.0);
}

#[test]
fn resize_keeps_constants_and_rows_sum_to_one() {
    for (n_in, n_out) in [(512, 224), (40, 28), (20, 28), (224, 224), (7, 3)] {
        let m = resize_weights(n_in, n_out);
        assert_eq!(m.len(), n_in * n_out);
        for (i, row) in m.chunks(n_in).enumerate() {
            let s: f32 = row.iter().sum();
            assert!(
                (s - 1.0).abs() < 1e-6,
                "{n_in}->{n_out} row {i} sums to {s}"
            );
            assert!(row.iter().all(|&w| w >= 0.0));
        }
    }
    // Same size: the identity.
    let id = resize_weights(5, 5);
    for i in 0..5 {
        for j in 0..5 {
            assert_eq!(id[i * 5 + j], if i == j { 1.0 } else { 0.0 });
        }
    }
    // Non-square: shortest side to 28, then a centre crop; still row-stochastic.
    let (rh, rw) = resize_crop_weights(60, 40, 28);
    assert_eq!((rh.len(), rw.len()), (28 * 60, 28 * 40));
    for row in rh.chunks(60).chain(rw.chunks(40)) {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }
    // A constant image stays constant, then is normalised per channel.
    for (h, w) in [(40, 40), (60, 40), (16, 16)] {
        let x = Tensor::full(0.3f32, (1, 3, h, w), &DEV).unwrap();
        let y = clip_preprocess(&x, 28).unwrap();
        assert_eq!(y.dims(), &[1, 3, 28, 28]);
        for c in 0..3 {
            let want = ((0.3 / 2.0 + 0.5 - CLIP_MEAN[c]) / CLIP_STD[c]) as f32;
            let got = to_vec(&y.get(0).unwrap().get(c).unwrap());
            assert!(
                got.iter().all(|v| (v - want).abs() < 1e-5),
                "{h}x{w} channel {c}"
            );
        }
    }
    // Antialiased: a pixel checkerboard (the highest frequency) is averaged out, where a
    // plain bilinear 512 -> 224 would alias it into a visible pattern.
    let cb: Vec<f32> = (0..64 * 64)
        .map(|i| {
            if (i / 64 + i % 64) % 2 == 0 {
                1.0
            } else {
                -1.0
            }
        })
        .collect();
    let cb = Tensor::from_vec(cb, (1, 1, 64, 64), &DEV).unwrap();
    let small = resize_crop(&cb, 28).unwrap();
    let peak = scalar(&small.abs().unwrap().max_all().unwrap());
    assert!(peak < 0.2, "checkerboard survives the downscale at {peak}");
}

#[test]
fn a_missing_key_names_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = seeded(5);
    let cfg = ClipVisionConfig::tiny();
    let mut clip = full_clip(&mut rng);
    let key = "vision_model.post_layernorm.weight";
    clip.remove(key).unwrap();
    let path = write(dir.path(), "clip.safetensors", &clip);
    let err = format!(
        "{:#}",
        load_vision(&path, &cfg, &DEV, DType::F32).unwrap_err()
    );
    assert!(
        err.contains(&path.display().to_string()) && err.contains(key),
        "{err}"
    );
    // A wrong shape, too.
    let mut clip = full_clip(&mut rng);
    let key = "vision_model.embeddings.position_embedding.weight";
    clip.insert(
        key.into(),
        Tensor::zeros((3, cfg.hidden_size), DType::F32, &DEV).unwrap(),
    );
    let path = write(dir.path(), "clip2.safetensors", &clip);
    let err = format!(
        "{:#}",
        load_vision(&path, &cfg, &DEV, DType::F32).unwrap_err()
    );
    assert!(
        err.contains(&path.display().to_string()) && err.contains(key),
        "{err}"
    );
    // The text projection, asked for but absent (SD-1.5's text encoder file).
    let text_only = text_weights(&mut rng, &ClipTextConfig::tiny(), false);
    let path = write(dir.path(), "text_encoder.safetensors", &text_only);
    let err = format!(
        "{:#}",
        load_text(&path, &ClipTextConfig::tiny(), &DEV, DType::F32, true).unwrap_err()
    );
    assert!(err.contains(&path.display().to_string()) && err.contains("text_projection.weight"));
    // The aesthetic head.
    let mut head = head_weights(&mut rng, cfg.projection_dim);
    head.remove("layers.4.bias").unwrap();
    let path = write(dir.path(), "head.safetensors", &head);
    let err = format!(
        "{:#}",
        AestheticHead::load(&path, cfg.projection_dim, &DEV, DType::F32).unwrap_err()
    );
    assert!(
        err.contains(&path.display().to_string()) && err.contains("layers.4.bias"),
        "{err}"
    );
    // A file that is not there.
    let missing = dir.path().join("nope.pth");
    let err = format!(
        "{:#}",
        AestheticHead::load(&missing, cfg.projection_dim, &DEV, DType::F32).unwrap_err()
    );
    assert!(err.contains("nope.pth"), "{err}");
}

/// A minimal `torch.save(state_dict)` file: a stored (uncompressed) zip holding
/// `archive/data.pkl` (pickle protocol 2: an OrderedDict of `_rebuild_tensor_v2` calls
/// whose storages are persistent ids) and one `archive/data/<i>` per tensor (raw f32 LE).
fn write_pth(path: &Path, tensors: &Weights) {
    struct Pickle(Vec<u8>);
    impl Pickle {
        fn op(&mut self, b: u8) {
            self.0.push(b);
        }
        fn global(&mut self, module: &str, name: &str) {
            self.0.push(b'c');
            self.0.extend(format!("{module}\n{name}\n").as_bytes());
        }
        fn str(&mut self, s: &str) {
            self.0.push(b'X');
            self.0.extend((s.len() as u32).to_le_bytes());
            self.0.extend(s.as_bytes());
        }
        fn int(&mut self, v: usize) {
            self.0.push(b'J');
            self.0.extend((v as i32).to_le_bytes());
        }
        fn tuple(&mut self, vs: &[usize]) {
            self.op(b'(');
            vs.iter().for_each(|&v| self.int(v));
            self.op(b't');
        }
    }
    let mut p = Pickle(vec![0x80, 2]);
    p.global("collections", "OrderedDict");
    p.op(b')');
    p.op(b'R');
    p.op(b'(');
    let mut files = vec![];
    for (i, (name, t)) in tensors.iter().enumerate() {
        let dims = t.dims().to_vec();
        let strides: Vec<usize> = (0..dims.len())
            .map(|d| dims[d + 1..].iter().product())
            .collect();
        p.str(name);
        p.global("torch._utils", "_rebuild_tensor_v2");
        p.op(b'('); // args
        p.op(b'('); // persistent id: ('storage', FloatStorage, key, location, numel)
        p.str("storage");
        p.global("torch", "FloatStorage");
        p.str(&i.to_string());
        p.str("cpu");
        p.int(t.elem_count());
        p.op(b't');
        p.op(b'Q');
        p.int(0); // storage offset
        p.tuple(&dims);
        p.tuple(&strides);
        p.op(0x89); // requires_grad = False
        p.global("collections", "OrderedDict"); // backward hooks
        p.op(b')');
        p.op(b'R');
        p.op(b't');
        p.op(b'R');
        let data: Vec<u8> = to_vec(t).iter().flat_map(|v| v.to_le_bytes()).collect();
        files.push((format!("archive/data/{i}"), data));
    }
    p.op(b'u');
    p.op(b'.');
    files.insert(0, ("archive/data.pkl".to_string(), p.0));
    files.push(("archive/version".to_string(), b"3\n".to_vec()));
    std::fs::write(path, stored_zip(&files)).unwrap();
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// A zip archive of uncompressed entries (local headers, central directory, end record).
fn stored_zip(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let (mut out, mut central) = (Vec::new(), Vec::new());
    let u16le = |v: usize| (v as u16).to_le_bytes();
    let u32le = |v: usize| (v as u32).to_le_bytes();
    for (name, data) in files {
        let offset = out.len();
        let crc = crc32(data) as usize;
        // version 2.0, no flags, stored, time 0, date 1980-01-01
        let common = [u16le(20), u16le(0), u16le(0), u16le(0), u16le(0x21)].concat();
        let sizes = [u32le(crc), u32le(data.len()), u32le(data.len())].concat();
        out.extend(0x0403_4b50u32.to_le_bytes());
        out.extend(&common);
        out.extend(&sizes);
        out.extend(u16le(name.len()));
        out.extend(u16le(0));
        out.extend(name.as_bytes());
        out.extend(data);
        central.extend(0x0201_4b50u32.to_le_bytes());
        central.extend(u16le(20));
        central.extend(&common);
        central.extend(&sizes);
        central.extend(u16le(name.len()));
        central.extend([u16le(0), u16le(0), u16le(0), u16le(0)].concat()); // extra, comment, disk, attrs
        central.extend(u32le(0));
        central.extend(u32le(offset));
        central.extend(name.as_bytes());
    }
    let cd_offset = out.len();
    out.extend(&central);
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend([u16le(0), u16le(0), u16le(files.len()), u16le(files.len())].concat());
    out.extend(u32le(central.len()));
    out.extend(u32le(cd_offset));
    out.extend(u16le(0));
    out
}

#[test]
fn the_aesthetic_head_loads_from_a_pth_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = seeded(6);
    let in_dim = 16;
    let w = head_weights(&mut rng, in_dim);
    let pth = dir.path().join("sac+logos+ava1-l14-linearMSE.pth");
    write_pth(&pth, &w);
    let st = write(dir.path(), "head.safetensors", &w);
    let from_pth = AestheticHead::load(&pth, in_dim, &DEV, DType::F32).unwrap();
    let from_st = AestheticHead::load(&st, in_dim, &DEV, DType::F32).unwrap();
    let x = randn(&mut rng, (3, in_dim), &DEV).unwrap();
    let (a, b) = (from_pth.forward(&x).unwrap(), from_st.forward(&x).unwrap());
    assert_eq!(a.dims(), &[3]);
    assert_eq!(max_abs_diff(&a, &b), 0.0);
    // A missing key in a .pth names the file and the key.
    let mut w = w;
    w.remove("layers.7.weight").unwrap();
    let bad = dir.path().join("bad.pth");
    write_pth(&bad, &w);
    let err = format!(
        "{:#}",
        AestheticHead::load(&bad, in_dim, &DEV, DType::F32).unwrap_err()
    );
    assert!(
        err.contains("bad.pth") && err.contains("layers.7.weight"),
        "{err}"
    );
}

#[test]
fn half_precision_towers_agree_with_f32() {
    // f16 weights (layer norms and softmax in f32 inside): the score stays close to the f32
    // one, and the gradient still reaches the (f32) image. bf16 takes the same code path
    // but candle's CPU matmul has no bf16 kernel, so it can only run on a GPU.
    let dir = tempfile::tempdir().unwrap();
    let mut rng = seeded(7);
    let cfg = ClipVisionConfig::tiny();
    let clip = write(dir.path(), "model.safetensors", &full_clip(&mut rng));
    let head = write(
        dir.path(),
        "head.safetensors",
        &head_weights(&mut rng, cfg.projection_dim),
    );
    let x = images(&mut rng, 2, 40, 40);
    let load = |dt| AestheticReward::load(&clip, &head, &cfg, &DEV, dt).unwrap();
    let s32 = load(DType::F32).score(&x).unwrap();
    {
        let dt = DType::F16;
        let r = load(dt);
        let xv = Var::from_tensor(&x).unwrap();
        let s = r.score(xv.as_tensor()).unwrap();
        assert_eq!(s.dtype(), DType::F32);
        let diff = max_abs_diff(&s, &s32);
        let scale = scalar(&s32.abs().unwrap().max_all().unwrap());
        assert!(
            diff < 0.02 * scale + 1e-3,
            "{dt:?}: {diff} against scores of {scale}"
        );
        let g = s.sum_all().unwrap().backward().unwrap();
        let g = g.get(xv.as_tensor()).unwrap();
        assert_eq!(g.dtype(), DType::F32);
        assert!(scalar(&g.abs().unwrap().max_all().unwrap()) > 0.0);
    }
    // The text tower too.
    let tcfg = ClipTextConfig::tiny();
    let ids = Tensor::new(&[[1u32, 5, 9, 63, 0]], &DEV).unwrap();
    let t32 = load_text(&clip, &tcfg, &DEV, DType::F32, true).unwrap();
    let tbf = load_text(&clip, &tcfg, &DEV, DType::F16, true).unwrap();
    let (a, b) = (t32.forward(&ids).unwrap(), tbf.forward(&ids).unwrap());
    assert_eq!(b.dtype(), DType::F16);
    assert!(max_abs_diff(&a, &b) < 2e-2, "{}", max_abs_diff(&a, &b));
}

#[test]
fn configs_parse_from_hf_json_and_vit_l14_has_its_sizes() {
    // openai/clip-vit-large-patch14's config.json, abridged (unknown keys are ignored).
    let json = r#"{
        "architectures": ["CLIPModel"], "logit_scale_init_value": 2.6592,
        "projection_dim": 768,
        "text_config": {"hidden_size": 768, "intermediate_size": 3072,
            "num_attention_heads": 12, "num_hidden_layers": 12, "projection_dim": 768,
            "max_position_embeddings": 77, "vocab_size": 49408, "hidden_act": "quick_gelu",
            "bos_token_id": 0, "eos_token_id": 2, "dropout": 0.0},
        "vision_config": {"hidden_size": 1024, "intermediate_size": 4096,
            "num_attention_heads": 16, "num_hidden_layers": 24, "image_size": 224,
            "patch_size": 14, "projection_dim": 768, "layer_norm_eps": 1e-05}
    }"#;
    assert_eq!(ClipConfig::from_json(json).unwrap(), ClipConfig::vit_l14());
    // SD-1.5's text_encoder/config.json (CLIPTextConfig).
    let sd = r#"{"_name_or_path": "openai/clip-vit-large-patch14", "architectures": ["CLIPTextModel"],
        "attention_dropout": 0.0, "hidden_act": "quick_gelu", "hidden_size": 768,
        "intermediate_size": 3072, "layer_norm_eps": 1e-05, "max_position_embeddings": 77,
        "num_attention_heads": 12, "num_hidden_layers": 12, "projection_dim": 768,
        "torch_dtype": "float32", "vocab_size": 49408}"#;
    let t: ClipTextConfig = serde_json::from_str(sd).unwrap();
    assert_eq!(t, ClipTextConfig::vit_l14_text());
    let gelu: ClipTextConfig = serde_json::from_str(r#"{"hidden_act": "gelu"}"#).unwrap();
    assert_eq!(gelu.hidden_act, sqdf::models::clip::Activation::Gelu);
    // Parameter counts of transformers' CLIPVisionModel / CLIPTextModel for ViT-L/14,
    // from the names the towers ask for (nothing allocated).
    let count = |p: Vec<(String, Vec<usize>)>| -> usize {
        p.iter().map(|(_, s)| s.iter().product::<usize>()).sum()
    };
    let v = ClipVisionConfig::vit_l14_vision();
    let vp = expected_params(|vb| ClipVision::new(vb, &v)).unwrap();
    assert_eq!(count(vp.clone()), 303_179_776 + 1024 * 768);
    let names: Vec<&str> = vp.iter().map(|(n, _)| n.as_str()).collect();
    for n in [
        "vision_model.embeddings.class_embedding",
        "vision_model.embeddings.patch_embedding.weight",
        "vision_model.embeddings.position_embedding.weight",
        "vision_model.pre_layrnorm.weight",
        "vision_model.encoder.layers.23.self_attn.q_proj.bias",
        "vision_model.encoder.layers.23.mlp.fc2.weight",
        "vision_model.post_layernorm.bias",
        "visual_projection.weight",
    ] {
        assert!(names.contains(&n), "{n}");
    }
    assert!(!names.contains(&"vision_model.embeddings.patch_embedding.bias"));
    let t = ClipTextConfig::vit_l14_text();
    let tp = expected_params(|vb| ClipText::new(vb, &t, false)).unwrap();
    assert_eq!(count(tp), 123_060_480);
    let tp = expected_params(|vb| ClipText::new(vb, &t, true)).unwrap();
    assert_eq!(count(tp), 123_060_480 + 768 * 768);
    let hp = expected_params(|vb| AestheticHead::new(vb, 768)).unwrap();
    assert_eq!(count(hp), 927_969);
}
