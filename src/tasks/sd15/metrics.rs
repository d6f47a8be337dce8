//! The evaluation metrics' networks of an sd15 run (paper §5.1, Appendix D;
//! docs/sd15_metrics.md), each loaded where its files are present and otherwise absent with
//! the reason, which eval.json reports as `null` and the log states.

use super::layout::{self, Layout};
use super::parts::{config_or, text_embeds};
use crate::models::clip::open_clip::{load_open_clip, OpenClipConfig};
use crate::models::clip::{self, ClipConfig};
use crate::models::metrics::dino_vit::DinoVitConfig;
use crate::models::metrics::dreamsim::{DreamSim, DreamSimConfig, DreamSimFiles};
use crate::models::metrics::image_reward::{self, med_bert::MedConfig, ImageReward};
use crate::models::metrics::lpips::Lpips;
use crate::rewards::clip_score::ClipScoreReward;
use crate::text::{BertTokenizer, ClipTokenizer};
use anyhow::{Context, Result};
use candle_core::{DType, Device};
use std::path::PathBuf;

/// A metric's network, or why it is absent (the missing files).
pub type Optional<T> = std::result::Result<T, String>;

pub struct Metrics {
    /// HPSv2: the cosine under its OpenCLIP ViT-H/14.
    pub hps: Optional<ClipScoreReward>,
    /// PickScore: exp(logit_scale) x the cosine under its CLIP.
    pub pickscore: Optional<ClipScoreReward>,
    pub image_reward: Optional<ImageReward>,
    /// LPIPS (AlexNet), for the LPIPS diversity.
    pub lpips: Optional<Lpips>,
    /// DreamSim's ensemble, for the DreamSim diversity.
    pub dreamsim: Optional<DreamSim>,
}

/// Each metric's eval.json key and the files it needs.
pub const FILES: [(&str, &[&str]); 5] = [
    ("hps", &[layout::HPS]),
    ("pickscore", &[layout::PICKSCORE]),
    (
        "image_reward",
        &[layout::IMAGE_REWARD, layout::IMAGE_REWARD_VOCAB],
    ),
    (
        "diversity_lpips",
        &[layout::LPIPS_ALEXNET, layout::LPIPS_LIN],
    ),
    (
        "diversity_dreamsim",
        &[
            layout::DREAMSIM_DINO,
            layout::DREAMSIM_CLIP,
            layout::DREAMSIM_OPEN_CLIP,
            layout::DREAMSIM_LORA,
        ],
    ),
];

/// `load` of the files of metric `key` when all are present (its failure an error naming
/// the metric), or why not.
pub fn optional<T>(
    layout: &Layout,
    key: &str,
    load: impl FnOnce(&[PathBuf]) -> Result<T>,
) -> Result<Optional<T>> {
    let rels = FILES
        .iter()
        .find(|(k, _)| *k == key)
        .map_or(&[][..], |(_, r)| *r);
    match layout.metric_files(rels) {
        Ok(paths) => Ok(Ok(load(&paths).with_context(|| {
            format!("loading `{key}` from {}", paths[0].display())
        })?)),
        Err(why) => Ok(Err(why)),
    }
}

impl Metrics {
    /// Every metric whose files are present, on `device` (HPSv2 and PickScore in `dtype`,
    /// the others in f32), with the prompts' text sides computed once.
    pub fn load(
        layout: &Layout,
        prompts: &[String],
        tok: &ClipTokenizer,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        Ok(Self {
            hps: optional(layout, "hps", |p| {
                load_hps(layout, &p[0], tok, prompts, device, dtype)
            })?,
            pickscore: optional(layout, "pickscore", |p| {
                load_pickscore(layout, &p[0], tok, prompts, device, dtype)
            })?,
            image_reward: optional(layout, "image_reward", |p| {
                load_image_reward(layout, p, prompts, device)
            })?,
            lpips: optional(layout, "diversity_lpips", |p| {
                Lpips::load(&p[0], &p[1], device)
            })?,
            dreamsim: optional(layout, "diversity_dreamsim", |p| {
                load_dreamsim(layout, p, device)
            })?,
        })
    }

    /// (eval.json key, why it is absent) of every absent metric.
    pub fn missing(&self) -> Vec<(&'static str, &str)> {
        let why = [
            self.hps.as_ref().err(),
            self.pickscore.as_ref().err(),
            self.image_reward.as_ref().err(),
            self.lpips.as_ref().err(),
            self.dreamsim.as_ref().err(),
        ];
        FILES
            .iter()
            .zip(why)
            .filter_map(|((k, _), w)| Some((*k, w?.as_str())))
            .collect()
    }
}

/// HPSv2's OpenCLIP towers (config `hps/open_clip_config.json`, or ViT-H-14) with the
/// prompts' normalised text embeddings; the text tower is dropped after them.
pub fn load_hps(
    layout: &Layout,
    path: &std::path::Path,
    tok: &ClipTokenizer,
    prompts: &[String],
    device: &Device,
    dtype: DType,
) -> Result<ClipScoreReward> {
    let cfg_path = layout.dir.join(layout::HPS_CONFIG);
    let cfg = config_or(
        cfg_path.is_file().then_some(cfg_path),
        OpenClipConfig::vit_h14(),
        OpenClipConfig::from_json,
    )?;
    let towers = load_open_clip(path, &cfg, device, dtype)?;
    let embeds = text_embeds(&towers.text, tok, prompts, device)?;
    Ok(ClipScoreReward::new(towers.vision, &embeds)?)
}

/// PickScore's `CLIPModel` (config `pickscore/config.json`, or ViT-H/14's), its prompts'
/// normalised text embeddings and exp(logit_scale).
pub fn load_pickscore(
    layout: &Layout,
    path: &std::path::Path,
    tok: &ClipTokenizer,
    prompts: &[String],
    device: &Device,
    dtype: DType,
) -> Result<ClipScoreReward> {
    let cfg = config_or(
        layout.config_of(layout::PICKSCORE),
        OpenClipConfig::vit_h14().to_clip()?,
        ClipConfig::from_json,
    )?;
    let vision = clip::load_vision(path, &cfg.vision_config, device, dtype)?;
    let text = clip::load_text(path, &cfg.text_config, device, dtype, true)?;
    let embeds = text_embeds(&text, tok, prompts, device)?;
    let scale = clip::weights::logit_scale_exp(path)?;
    Ok(ClipScoreReward::new(vision, &embeds)?.with_scale(scale))
}

/// ImageReward from `ImageReward.pt` and bert-base-uncased's vocabulary (`p`), its
/// med_config.json and sqdf's vit_config.json when present, with the prompts tokenised.
pub fn load_image_reward(
    layout: &Layout,
    p: &[std::path::PathBuf],
    prompts: &[String],
    device: &Device,
) -> Result<ImageReward> {
    let present = |rel: &str| Some(layout.dir.join(rel)).filter(|p| p.is_file());
    let med = config_or(
        present(layout::IMAGE_REWARD_MED),
        MedConfig::blip(),
        MedConfig::from_json,
    )?;
    let vit = config_or(
        present(layout::IMAGE_REWARD_VIT),
        image_reward::blip_vit_large(),
        |s| serde_json::from_str::<DinoVitConfig>(s),
    )?;
    let tok = BertTokenizer::blip_from_vocab_file(&p[1])?;
    let (ids, mask) = image_reward::tokenize(&tok, prompts, device)?;
    ImageReward::load(&p[0], &med, &vit, ids, mask, device)
}

/// DreamSim's ensemble from its four files (dino, clip, open_clip, adapter) and
/// `dreamsim/config.json`, or the released ensemble's sizes.
pub fn load_dreamsim(
    layout: &Layout,
    p: &[std::path::PathBuf],
    device: &Device,
) -> Result<DreamSim> {
    let cfg_path = layout.dir.join(layout::DREAMSIM_CONFIG);
    let cfg = config_or(
        cfg_path.is_file().then_some(cfg_path),
        DreamSimConfig::default(),
        DreamSimConfig::from_json,
    )?;
    let files = DreamSimFiles {
        dino: &p[0],
        clip: &p[1],
        open_clip: &p[2],
        lora: &p[3],
    };
    DreamSim::load(&files, &cfg, device)
}
