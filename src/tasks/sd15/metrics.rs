//! The evaluation metrics' networks of an sd15 run (paper §5.1, Appendix D;
//! docs/sd15_metrics.md), each loaded where its files are present and otherwise absent with
//! the reason, which eval.json reports as `null` and the log states.
//!
//! They are loaded for each evaluation and dropped after it (`MetricSource::load`), so that
//! training does not hold them: together they are about 1.97B parameters. HPSv2 and
//! PickScore, which a script may train on (`rewards.hps`), are kept from their first use as
//! a reward, and an evaluation then shares them. A run checks every present metric's files
//! once when it starts, so that a broken file stops it before training, not at its end.

use super::layout::{self, config_or, Layout};
use super::prompt_text::text_embeds;
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
use std::sync::{Arc, OnceLock};

/// A metric's network, or why it is absent (the missing files).
pub type Optional<T> = std::result::Result<T, String>;

/// The metrics of one evaluation.
pub struct Metrics {
    /// HPSv2: the cosine under its OpenCLIP ViT-H/14.
    pub hps: Optional<Arc<ClipScoreReward>>,
    /// PickScore: exp(logit_scale) x the cosine under its CLIP.
    pub pickscore: Optional<Arc<ClipScoreReward>>,
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
    let (_, rels) = FILES
        .iter()
        .find(|(k, _)| *k == key)
        .ok_or_else(|| anyhow::anyhow!("no metric `{key}`"))?;
    match layout.metric_files(rels) {
        Ok(paths) => Ok(Ok(load(&paths).with_context(|| {
            format!("loading `{key}` from {}", paths[0].display())
        })?)),
        Err(why) => Ok(Err(why)),
    }
}

impl Metrics {
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

/// Where a run's metrics load from, and the two that rewards keep.
pub struct MetricSource {
    layout: Layout,
    prompts: Vec<String>,
    tok: ClipTokenizer,
    device: Device,
    dtype: DType,
    hps: OnceLock<Optional<Arc<ClipScoreReward>>>,
    pickscore: OnceLock<Optional<Arc<ClipScoreReward>>>,
}

/// The cell's value, loaded by `load` the first time.
fn cached<T>(
    cell: &OnceLock<Optional<T>>,
    load: impl FnOnce() -> Result<Optional<T>>,
) -> Result<&Optional<T>> {
    if cell.get().is_none() {
        let _ = cell.set(load()?);
    }
    Ok(cell.get().expect("set above"))
}

impl MetricSource {
    /// Checks every metric whose files are present by loading it once (one at a time, each
    /// dropped before the next), and keeps nothing.
    pub fn new(
        layout: &Layout,
        prompts: &[String],
        tok: &ClipTokenizer,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let source = Self {
            layout: layout.clone(),
            prompts: prompts.to_vec(),
            tok: tok.clone(),
            device: device.clone(),
            dtype,
            hps: OnceLock::new(),
            pickscore: OnceLock::new(),
        };
        drop(source.load_hps()?);
        drop(source.load_pickscore()?);
        drop(source.load_image_reward()?);
        drop(source.load_lpips()?);
        drop(source.load_dreamsim()?);
        Ok(source)
    }

    fn load_hps(&self) -> Result<Optional<Arc<ClipScoreReward>>> {
        let (l, t, p, d) = (&self.layout, &self.tok, &self.prompts, &self.device);
        optional(l, "hps", |f| {
            Ok(Arc::new(load_hps(l, &f[0], t, p, d, self.dtype)?))
        })
    }

    fn load_pickscore(&self) -> Result<Optional<Arc<ClipScoreReward>>> {
        let (l, t, p, d) = (&self.layout, &self.tok, &self.prompts, &self.device);
        optional(l, "pickscore", |f| {
            Ok(Arc::new(load_pickscore(l, &f[0], t, p, d, self.dtype)?))
        })
    }

    fn load_image_reward(&self) -> Result<Optional<ImageReward>> {
        let l = &self.layout;
        optional(l, "image_reward", |f| {
            load_image_reward(l, f, &self.prompts, &self.device)
        })
    }

    fn load_lpips(&self) -> Result<Optional<Lpips>> {
        optional(&self.layout, "diversity_lpips", |f| {
            Lpips::load(&f[0], &f[1], &self.device)
        })
    }

    fn load_dreamsim(&self) -> Result<Optional<DreamSim>> {
        let l = &self.layout;
        optional(l, "diversity_dreamsim", |f| {
            load_dreamsim(l, f, &self.device)
        })
    }

    /// HPSv2 for `rewards.hps`, loaded at the first call and kept.
    pub fn hps(&self) -> Result<&Optional<Arc<ClipScoreReward>>> {
        cached(&self.hps, || self.load_hps())
    }

    /// PickScore for `rewards.pickscore`, loaded at the first call and kept.
    pub fn pickscore(&self) -> Result<&Optional<Arc<ClipScoreReward>>> {
        cached(&self.pickscore, || self.load_pickscore())
    }

    /// Every metric for one evaluation: HPSv2 and PickScore shared where a reward keeps
    /// them, the others loaded now and dropped with the result.
    pub fn load(&self) -> Result<Metrics> {
        let shared = |cell: &OnceLock<Optional<Arc<ClipScoreReward>>>| cell.get().cloned();
        Ok(Metrics {
            hps: match shared(&self.hps) {
                Some(m) => m,
                None => self.load_hps()?,
            },
            pickscore: match shared(&self.pickscore) {
                Some(m) => m,
                None => self.load_pickscore()?,
            },
            image_reward: self.load_image_reward()?,
            lpips: self.load_lpips()?,
            dreamsim: self.load_dreamsim()?,
        })
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
    let cfg = config_or(
        layout.optional_file(layout::HPS_CONFIG),
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
    let med_path = layout.optional_file(layout::IMAGE_REWARD_MED);
    let med = config_or(med_path.clone(), MedConfig::blip(), MedConfig::from_json)?;
    let vit = config_or(
        layout.optional_file(layout::IMAGE_REWARD_VIT),
        image_reward::blip_vit_large(),
        |s| serde_json::from_str::<DinoVitConfig>(s),
    )?;
    let tok = BertTokenizer::blip_from_vocab_file(&p[1])?;
    // Checked here, not when the first image is scored after a run's sampling.
    if tok.vocab_size() > med.vocab_size {
        anyhow::bail!(
            "{} has {} tokens with BLIP's two added ones, more than the text encoder's vocab_size {} ({})",
            p[1].display(),
            tok.vocab_size(),
            med.vocab_size,
            med_path.map_or("BLIP's med_config.json".into(), |p| p.display().to_string())
        );
    }
    if image_reward::MAX_TOKENS > med.max_position_embeddings {
        anyhow::bail!(
            "ImageReward pads prompts to {} tokens; the text encoder has {} positions",
            image_reward::MAX_TOKENS,
            med.max_position_embeddings
        );
    }
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
    let cfg = config_or(
        layout.optional_file(layout::DREAMSIM_CONFIG),
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
