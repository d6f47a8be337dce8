//! The diversity metrics against the packages that define them:
//! - LPIPS (`tools/parity/make_lpips_fixtures.py`, `tests/fixtures/parity/lpips/`):
//!   AlexNet in torchvision's checkpoint format (zip, f16) and the linear layers in the
//!   lpips package's own legacy-format `alex.pth`, distances as `lpips.LPIPS(net="alex")`
//!   gives them;
//! - DreamSim (`tools/parity/make_dreamsim_fixtures.py`, `tests/fixtures/parity/dreamsim/`):
//!   tiny backbones in the files dreamsim's cache folder holds (DINO's plain state dict,
//!   the converted CLIPs' `{"state_dict": ...}` `.pth.tar`, peft's adapter), features,
//!   embeddings and distances as `dreamsim.dreamsim()`'s model gives them.

use crate::common;
use crate::parity::{assert_close, fixtures, io};
use candle_core::{Device, Tensor};
use sqdf::eval::diversity::mean_off_diagonal;
use sqdf::models::metrics::dreamsim::{self, DreamSim, DreamSimConfig, DreamSimFiles};
use sqdf::models::metrics::lpips::Lpips;
use sqdf::rewards::clip_preprocess::{resize, Filter, CLIP_MEAN, CLIP_STD};
use std::path::PathBuf;

const DEV: Device = Device::Cpu;

fn lpips() -> Lpips {
    let dir = fixtures().join("lpips");
    Lpips::load(
        &dir.join("alexnet-owt-7be5be79.pth"),
        &dir.join("alex.pth"),
        &DEV,
    )
    .unwrap()
}

#[test]
fn lpips_distances_match_the_lpips_package() {
    let io = io("lpips/lpips_io.safetensors");
    let m = lpips();
    let images = &io["images"];
    let pairwise = m.pairwise(&m.features(images).unwrap()).unwrap();
    // The diagonal is zero up to the rounding of ‖a‖² + ‖a‖² − 2‖a‖².
    let d = pairwise.to_dtype(candle_core::DType::F32).unwrap();
    assert_close(&d, &io["distances"], "LPIPS pairwise distances");
    // Pair by pair, layer by layer as lpips computes it.
    let pick = |i: usize| images.narrow(0, i, 1).unwrap();
    let d01 = m.distance(&pick(0), &pick(1)).unwrap();
    assert_close(&d01, &io["distance_01"], "LPIPS(0, 1)");
    let d03 = m.distance(&pick(0), &pick(3)).unwrap();
    assert_close(&d03, &io["distance_03"], "LPIPS(0, 3)");
    // Where AlexNet's pools floor (48 x 40).
    let odd = &io["images_48x40"];
    let d = m
        .distance(&odd.narrow(0, 0, 1).unwrap(), &odd.narrow(0, 1, 1).unwrap())
        .unwrap();
    assert_close(&d, &io["distance_48x40"], "LPIPS at 48 x 40");
    // The diversity is the mean over the off-diagonal pairs.
    let want = io["distances"].to_vec2::<f32>().unwrap();
    let mean = (0..4)
        .flat_map(|i| (0..4).filter(move |&j| j != i).map(move |j| (i, j)))
        .map(|(i, j)| want[i][j] as f64)
        .sum::<f64>()
        / 12.0;
    assert!((mean_off_diagonal(&pairwise).unwrap() - mean).abs() < 1e-5 * mean);
}

#[test]
fn lpips_refuses_images_smaller_than_alexnet_takes() {
    let m = lpips();
    let small = Tensor::zeros((1, 3, 30, 64), candle_core::DType::F32, &DEV).unwrap();
    let err = m.features(&small).unwrap_err().to_string();
    assert!(
        err.contains("at least 31x31") && err.contains("30x64"),
        "{err}"
    );
}

#[test]
fn a_missing_lpips_key_names_the_file_and_the_key() {
    let dir = fixtures().join("lpips");
    // The linear layers' file given for AlexNet's.
    let err = Lpips::load(&dir.join("alex.pth"), &dir.join("alex.pth"), &DEV)
        .err()
        .unwrap();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("alex.pth") && msg.contains("features.0.weight"),
        "{msg}"
    );
}

fn dreamsim_dir() -> PathBuf {
    fixtures().join("dreamsim")
}

fn dreamsim_config() -> DreamSimConfig {
    let text = std::fs::read_to_string(dreamsim_dir().join("tiny_configs.json")).unwrap();
    DreamSimConfig::from_json(&text).unwrap()
}

fn dreamsim_files() -> [PathBuf; 4] {
    let m = dreamsim_dir().join("models");
    [
        m.join("checkpoints/dino_vitbase16_pretrain.pth"),
        m.join("clip_vitb16_pretrain.pth.tar"),
        m.join("open_clip_vitb16_pretrain.pth.tar"),
        m.join("ensemble_lora/adapter_model.safetensors"),
    ]
}

fn dreamsim_model() -> DreamSim {
    let [dino, clip, open_clip, lora] = dreamsim_files();
    let files = DreamSimFiles {
        dino: &dino,
        clip: &clip,
        open_clip: &open_clip,
        lora: &lora,
    };
    DreamSim::load(&files, &dreamsim_config(), &DEV).unwrap()
}

#[test]
fn dreamsim_features_embeddings_and_distances_match_the_dreamsim_package() {
    let io = io("dreamsim/dreamsim_io.safetensors");
    let m = dreamsim_model();
    let images = &io["images"];
    let feats = m.features(images).unwrap();
    let names = ["dino_feature", "clip_feature", "open_clip_feature"];
    for (f, name) in feats.iter().zip(names) {
        assert_close(f, &io[name], name);
    }
    let e = m.embed_pixels(images).unwrap();
    assert_close(&e, &io["embedding"], "DreamSim embedding");
    let d = e
        .matmul(&e.t().unwrap())
        .unwrap()
        .affine(-1.0, 1.0)
        .unwrap();
    assert_close(&d, &io["distances"], "DreamSim distances");
    let div = sqdf::eval::diversity::cosine_diversity(&e).unwrap();
    let want = io["diversity"].to_vec1::<f32>().unwrap()[0] as f64;
    assert!(
        (div - want).abs() < 1e-4 * want,
        "diversity {div} vs {want}"
    );
}

#[test]
fn dreamsim_backbones_without_the_adapter_match_the_package_with_it_disabled() {
    let io = io("dreamsim/dreamsim_io.safetensors");
    let cfg = dreamsim_config();
    let files = dreamsim_files();
    let names = ["dino", "clip", "open_clip"];
    for (k, (name, tower_cfg, layout)) in cfg.towers().into_iter().enumerate() {
        let vit = dreamsim::load_dino_vit(&files[k], "", &tower_cfg, layout, None, &DEV).unwrap();
        let (mean, std) = match k {
            0 => ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
            _ => (CLIP_MEAN, CLIP_STD),
        };
        let stat = |v: [f64; 3]| {
            Tensor::new(&v.map(|x| x as f32), &DEV)
                .unwrap()
                .reshape((1, 3, 1, 1))
                .unwrap()
        };
        let x = io["images"]
            .broadcast_sub(&stat(mean))
            .unwrap()
            .broadcast_div(&stat(std))
            .unwrap();
        let f = match k {
            0 => vit
                .last_hidden_state(&x)
                .unwrap()
                .narrow(1, 0, 1)
                .unwrap()
                .squeeze(1)
                .unwrap(),
            _ => vit.forward(&x).unwrap(),
        };
        let key = format!("{}_feature_no_lora", names[k]);
        assert_close(&f, &io[key.as_str()], name);
    }
}

/// The fixture's 64 x 40 8-bit image, [H, W, C] bytes -> [1, C, H, W] in [0, 1].
fn raw_image(io: &std::collections::HashMap<String, Tensor>) -> Tensor {
    io["raw_image_hwc_u8"]
        .permute((2, 0, 1))
        .unwrap()
        .unsqueeze(0)
        .unwrap()
        .affine(1.0 / 255.0, 0.0)
        .unwrap()
}

#[test]
fn dreamsim_resize_is_pils_bicubic_up_to_its_8_bit_rounding() {
    let io = io("dreamsim/dreamsim_io.safetensors");
    let raw = raw_image(&io);
    let ours = resize(&raw, 48, 48, Filter::Bicubic).unwrap();
    let want = &io["raw_image_preprocessed"];
    let worst = common::max_abs_diff(&ours, want);
    // PIL rounds to 8 bits after each of its two passes and clips the first pass's
    // overshoot: about one level of 255 in all.
    assert!(worst <= 1.5 / 255.0, "bicubic resize off PIL's by {worst}");
    assert!(worst > 0.0, "the fixture should show PIL's rounding");
}

#[test]
fn a_dreamsim_adapter_on_other_modules_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let lora_dir = dir.path().join("ensemble_lora");
    std::fs::create_dir_all(&lora_dir).unwrap();
    let src = dreamsim_dir().join("models/ensemble_lora");
    std::fs::copy(
        src.join("adapter_model.safetensors"),
        lora_dir.join("adapter_model.safetensors"),
    )
    .unwrap();
    let cfg = std::fs::read_to_string(src.join("adapter_config.json"))
        .unwrap()
        .replace("\"qkv\"", "\"qkv\", \"proj\"");
    std::fs::write(lora_dir.join("adapter_config.json"), cfg).unwrap();
    let err = dreamsim::load_lora(
        &lora_dir.join("adapter_model.safetensors"),
        &dreamsim_config(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("adapter_config.json") && err.contains("target_modules"),
        "{err}"
    );
}

#[test]
fn dreamsim_of_an_image_the_package_resized_itself() {
    let io = io("dreamsim/dreamsim_io.safetensors");
    let m = dreamsim_model();
    // A 64 x 40 8-bit image through sqdf's float bicubic (the package: PIL's 8-bit one).
    let raw = raw_image(&io);
    let ours = m.embed_pixels(&raw).unwrap();
    let want = &io["raw_image_embedding"];
    let worst = common::max_abs_diff(&ours, want);
    // The pixels differ by up to a level of 255 (see above); the unit-length embedding moved
    // by 1.3e-3 (2026-12-07), a few times that level. The package's own pixels give its
    // embedding to float rounding (below).
    assert!(worst < 4e-3, "embedding off the package's by {worst}");
    // And through the package's own pixels, to float rounding.
    let exact = m.embed_pixels(&io["raw_image_preprocessed"]).unwrap();
    assert_close(&exact, want, "DreamSim of the package's pixels");
}

#[test]
fn dreamsim_configs_and_adapters_it_cannot_run_are_refused_with_the_reason() {
    let mut cfg = dreamsim_config();
    cfg.backbones.dino_vitb16.depth = 4;
    let e = cfg.validate().unwrap_err().to_string();
    assert!(e.contains("dino_vitb16") && e.contains("block 11"), "{e}");
    let mut cfg = dreamsim_config();
    cfg.backbones.clip_vitb16.img_size = 64;
    assert!(cfg.validate().unwrap_err().to_string().contains("img_size"));
    let mut cfg = dreamsim_config();
    cfg.backbones.open_clip_vitb16.proj_dim = None;
    assert!(cfg.validate().unwrap_err().to_string().contains("proj_dim"));
    // An adapter_config.json without its rank.
    let dir = tempfile::tempdir().unwrap();
    let src = dreamsim_dir().join("models/ensemble_lora");
    let lora = dir.path().join("adapter_model.safetensors");
    std::fs::copy(src.join("adapter_model.safetensors"), &lora).unwrap();
    std::fs::write(
        dir.path().join("adapter_config.json"),
        r#"{"lora_alpha": 8}"#,
    )
    .unwrap();
    let e = dreamsim::load_lora(&lora, &dreamsim_config())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("adapter_config.json") && e.contains("`r`"),
        "{e}"
    );
}
