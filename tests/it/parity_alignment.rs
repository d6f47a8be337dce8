//! The alignment metrics against the packages that define them
//! (`tools/parity/make_alignment_fixtures.py`, fixtures in
//! `tests/fixtures/parity/alignment/`): HPSv2's checkpoint as `hpsv2` ships it (open_clip's
//! keys inside `{"state_dict": ...}`), read into sqdf's CLIP towers, scores as
//! `hpsv2.score` does; PickScore's `CLIPModel` (exact GELU), scores as its model card does;
//! ImageReward's checkpoint (`tests/fixtures/parity/image_reward/`), scores as the
//! `image-reward` package's `score_gard` and `score` give them.

use crate::parity::{assert_close, fixtures, io};
use candle_core::{DType, Device, Tensor};
use sqdf::models::clip::open_clip::{load_open_clip, open_clip_params, OpenClipConfig};
use sqdf::models::clip::{self, ClipConfig};
use sqdf::models::metrics::dino_vit::DinoVitConfig;
use sqdf::models::metrics::image_reward::{self, med_bert::MedConfig, ImageReward};
use sqdf::rewards::clip_preprocess::clip_preprocess;
use sqdf::rewards::clip_score::ClipScoreReward;
use sqdf::text::BertTokenizer;

const DEV: Device = Device::Cpu;

fn alignment() -> std::path::PathBuf {
    fixtures().join("alignment")
}

fn ids(t: &Tensor) -> Tensor {
    t.to_dtype(DType::U32).unwrap()
}

fn hps_config() -> OpenClipConfig {
    let text = std::fs::read_to_string(alignment().join("hps/open_clip_config.json")).unwrap();
    OpenClipConfig::from_json(&text).unwrap()
}

#[test]
fn hps_checkpoint_as_hpsv2_ships_it_scores_as_hpsv2() {
    let io = io("alignment/hps_io.safetensors");
    let path = alignment().join("hps/HPS_v2.1_compressed.pt");
    let m = load_open_clip(&path, &hps_config(), &DEV, DType::F32).unwrap();
    let images = &io["images"];
    let pixels = clip_preprocess(images, m.vision.config().image_size).unwrap();
    let image = clip::l2_normalize(&m.vision.forward(&pixels).unwrap()).unwrap();
    assert_close(&image, &io["image_features"], "HPS image features");
    let text = clip::l2_normalize(&m.text.text_embeds(&ids(&io["input_ids"])).unwrap()).unwrap();
    assert_close(&text, &io["text_features"], "HPS text features");
    // The reward: image i against prompt i (hpsv2.score's diagonal).
    let reward = ClipScoreReward::new(m.vision, &text).unwrap();
    let cond = Tensor::new(&[0u32, 1, 2], &DEV).unwrap();
    assert_close(
        &reward.score(images, &cond).unwrap(),
        &io["scores"],
        "HPS scores",
    );
}

#[test]
fn pickscore_scores_as_its_model_card_does() {
    let io = io("alignment/pickscore_io.safetensors");
    let dir = alignment().join("pickscore");
    let cfg =
        ClipConfig::from_json(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg.vision_config.hidden_act, clip::Activation::Gelu);
    let path = dir.join("model.safetensors");
    let vision = clip::load_vision(&path, &cfg.vision_config, &DEV, DType::F32).unwrap();
    let text = clip::load_text(&path, &cfg.text_config, &DEV, DType::F32, true).unwrap();
    let embeds = text.text_embeds(&ids(&io["input_ids"])).unwrap();
    let scale = clip::weights::logit_scale_exp(&path).unwrap();
    assert!((scale - 4.2f64.exp()).abs() < 1e-3, "logit scale {scale}");
    let reward = ClipScoreReward::new(vision, &embeds)
        .unwrap()
        .with_scale(scale);
    let cond = Tensor::new(&[0u32, 1, 2], &DEV).unwrap();
    let scores = reward.score(&io["images"], &cond).unwrap();
    assert_close(&scores, &io["scores"], "PickScore");
}

#[test]
fn a_missing_open_clip_key_names_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = hps_config();
    let src = alignment().join("hps/HPS_v2.1_compressed.pt");
    // The fixture's tensors under open_clip's names, one left out, as a safetensors file.
    let names: Vec<String> = open_clip_params(&cfg)
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let missing = "visual.transformer.resblocks.1.attn.in_proj_weight";
    let file = candle_core::pickle::PthTensors::new(&src, Some("state_dict")).unwrap();
    let kept: std::collections::HashMap<String, Tensor> = names
        .iter()
        .filter(|n| *n != missing)
        .map(|n| (n.clone(), file.get(n).unwrap().unwrap()))
        .collect();
    let path = dir.path().join("hps.safetensors");
    candle_core::safetensors::save(&kept, &path).unwrap();
    let e = format!(
        "{:#}",
        load_open_clip(&path, &cfg, &DEV, DType::F32).unwrap_err()
    );
    assert!(e.contains(missing) && e.contains("hps.safetensors"), "{e}");
    // With every key it loads, from safetensors as from the PyTorch file.
    let mut all = kept;
    all.insert(missing.into(), file.get(missing).unwrap().unwrap());
    candle_core::safetensors::save(&all, &path).unwrap();
    assert!(load_open_clip(&path, &cfg, &DEV, DType::F32).is_ok());
}

// ------------------------------------------------------------------------------------
// ImageReward (tools/parity/make_image_reward_fixtures.py: the package's own `ImageReward`
// class at a tiny size, saved as `ImageReward.pt` is, scored by `score_gard` and `score`)

fn image_reward_dir() -> std::path::PathBuf {
    alignment().parent().unwrap().join("image_reward")
}

/// The fixture's ViT (`image_reward_io.json`'s "vit") and the tokenised prompts.
fn image_reward() -> (ImageReward, Vec<String>) {
    let dir = image_reward_dir();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("image_reward_io.json")).unwrap())
            .unwrap();
    let v = &meta["vit"];
    let n = |k: &str| v[k].as_u64().unwrap() as usize;
    let vit = DinoVitConfig {
        img_size: n("image_size"),
        patch_size: n("patch_size"),
        embed_dim: n("embed_dim"),
        depth: n("depth"),
        num_heads: n("num_heads"),
        ..image_reward::blip_vit_large()
    };
    let med = MedConfig::from_json(&std::fs::read_to_string(dir.join("med_config.json")).unwrap())
        .unwrap();
    let prompts: Vec<String> = serde_json::from_value(meta["prompts"].clone()).unwrap();
    let tok =
        BertTokenizer::blip_from_vocab_file(&dir.join("bert-base-uncased/vocab.txt")).unwrap();
    let (ids, mask) = image_reward::tokenize(&tok, &prompts, &DEV).unwrap();
    let path = dir.join("ImageReward.pt");
    (
        ImageReward::load(&path, &med, &vit, ids, mask, &DEV).unwrap(),
        prompts,
    )
}

#[test]
fn image_reward_scores_as_the_image_reward_package() {
    let io = io("image_reward/image_reward_io.safetensors");
    let (m, _) = image_reward();
    // The package's pixels and token ids: score_gard.
    let ids = ids(&io["input_ids"]);
    let s = m
        .score_pixels(&io["pixels"], &ids, &io["attention_mask"])
        .unwrap();
    assert_close(&s, &io["scores"], "ImageReward score_gard");
    // From images and prompt ids through sqdf's tokenizer and preprocessing: `score` on
    // PIL images at the model's size.
    let images = io["images"].affine(2.0, -1.0).unwrap();
    let cond = Tensor::new(&[0u32, 1, 2], &DEV).unwrap();
    assert_close(
        &m.score(&images, &cond).unwrap(),
        &io["pil_scores"],
        "ImageReward score",
    );
}

#[test]
fn image_reward_resize_and_crop_follow_the_package_up_to_pils_rounding() {
    let io = io("image_reward/image_reward_io.safetensors");
    let (m, _) = image_reward();
    // An 80 x 104 image: shortest side to 32 (32 x 41), centre crop at column 4.
    let big = io["big_image_u8"].unsqueeze(0).unwrap();
    let images = big.affine(2.0 / 255.0, -1.0).unwrap();
    let ours = m.preprocess(&images).unwrap();
    let want = &io["big_pixels"];
    let worst = crate::common::max_abs_diff(&ours, want);
    // PIL's 8-bit rounding in and after each pass: about a level of 255, over CLIP's std.
    assert!(worst <= 1.5 / 255.0 / 0.26, "off PIL's pixels by {worst}");
    // Given the package's pixels, the package's score.
    let ids = ids(&io["input_ids"]).narrow(0, 0, 1).unwrap();
    let mask = io["attention_mask"].narrow(0, 0, 1).unwrap();
    let s = m.score_pixels(want, &ids, &mask).unwrap();
    assert_close(&s, &io["big_score"], "ImageReward of the cropped image");
}

#[test]
fn an_image_reward_file_missing_a_key_or_config_it_cannot_run_is_named() {
    let dir = image_reward_dir();
    // LPIPS's linear layers given as ImageReward's checkpoint.
    let (ids, mask) = (
        Tensor::zeros((1, 35), DType::U32, &DEV).unwrap(),
        Tensor::ones((1, 35), DType::F32, &DEV).unwrap(),
    );
    let med = MedConfig::from_json(&std::fs::read_to_string(dir.join("med_config.json")).unwrap())
        .unwrap();
    let wrong = dir.parent().unwrap().join("lpips/alex.pth");
    let vit = image_reward::blip_vit_large();
    let e = ImageReward::load(&wrong, &med, &vit, ids, mask, &DEV)
        .err()
        .unwrap();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("alex.pth") && msg.contains("blip.visual_encoder."),
        "{msg}"
    );
    let e = MedConfig::from_json(
        r#"{"vocab_size": 9, "hidden_size": 8, "num_hidden_layers": 1,
        "num_attention_heads": 3, "intermediate_size": 8, "max_position_embeddings": 40,
        "layer_norm_eps": 1e-12, "hidden_act": "gelu"}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("3 attention heads"), "{e}");
}
