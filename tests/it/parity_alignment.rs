//! The alignment metrics against the packages that define them
//! (`tools/parity/make_alignment_fixtures.py`, fixtures in
//! `tests/fixtures/parity/alignment/`): HPSv2's checkpoint as `hpsv2` ships it (open_clip's
//! keys inside `{"state_dict": ...}`), read into sqdf's CLIP towers, scores as
//! `hpsv2.score` does; PickScore's `CLIPModel` (exact GELU), scores as its model card does.

use crate::parity::{assert_close, fixtures, io};
use candle_core::{DType, Device, Tensor};
use sqdf::models::clip::open_clip::{load_open_clip, open_clip_params, OpenClipConfig};
use sqdf::models::clip::{self, ClipConfig};
use sqdf::rewards::clip_preprocess::clip_preprocess;
use sqdf::rewards::clip_score::ClipScoreReward;

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
