//! Where the sd15 task finds the public weight files, under the folder the user names
//! (`--set weights=DIR`). Every path is checked before anything loads, and a missing file
//! is reported together with all the others, each with the public file it should be.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// (path under DIR, what to put there).
pub const FILES: &[(&str, &str)] = &[
    (
        UNET,
        "runwayml/stable-diffusion-v1-5 (or stable-diffusion-v1-5/stable-diffusion-v1-5): unet/diffusion_pytorch_model.safetensors",
    ),
    (
        VAE,
        "the same repository's vae/diffusion_pytorch_model.safetensors",
    ),
    (
        TEXT_ENCODER,
        "the same repository's text_encoder/model.safetensors",
    ),
    (VOCAB, "the same repository's tokenizer/vocab.json"),
    (MERGES, "the same repository's tokenizer/merges.txt"),
    (
        LCM_LORA,
        "latent-consistency/lcm-lora-sdv1-5: pytorch_lora_weights.safetensors (kohya key names)",
    ),
    (
        CLIP,
        "openai/clip-vit-large-patch14: model.safetensors (ViT-L/14 at 224 px, both towers)",
    ),
    (
        AESTHETIC,
        "LAION improved-aesthetic-predictor: sac+logos+ava1-l14-linearMSE.pth (a .safetensors with the same keys also works)",
    ),
];

/// The alignment metrics' networks (paper §5.1, Appendix D.2.2): optional. Each metric
/// whose file is present is computed; `rewards.hps` needs its file.
pub const METRIC_FILES: &[(&str, &str)] = &[
    (
        HPS,
        "xswu/HPSv2: HPS_v2.1_compressed.pt (or HPS_v2_compressed.pt under this name; a .safetensors with the same keys also works)",
    ),
    (
        PICKSCORE,
        "yuvalkirstain/PickScore_v1: model.safetensors and config.json",
    ),
    (
        IMAGE_REWARD,
        "THUDM/ImageReward: ImageReward.pt (med_config.json beside it is read when present)",
    ),
    (
        IMAGE_REWARD_VOCAB,
        "google-bert/bert-base-uncased: vocab.txt (the tokenizer ImageReward loads)",
    ),
    (
        LPIPS_ALEXNET,
        "torchvision's AlexNet: https://download.pytorch.org/models/alexnet-owt-7be5be79.pth (only features.* is read)",
    ),
    (
        LPIPS_LIN,
        "the lpips package's lpips/weights/v0.1/alex.pth (pip install lpips; the file is inside the package)",
    ),
    (
        DREAMSIM_DINO,
        "DINO ViT-B/16: https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth",
    ),
    (
        DREAMSIM_CLIP,
        "dreamsim's dreamsim_ensemble_checkpoint.zip (github.com/ssundaram21/dreamsim, release v0.2.0-checkpoints): clip_vitb16_pretrain.pth.tar",
    ),
    (
        DREAMSIM_OPEN_CLIP,
        "the same zip's open_clip_vitb16_pretrain.pth.tar",
    ),
    (
        DREAMSIM_LORA,
        "the same zip's ensemble_lora/adapter_model.safetensors (or .bin) with its adapter_config.json",
    ),
];

pub const UNET: &str = "unet/diffusion_pytorch_model.safetensors";
pub const VAE: &str = "vae/diffusion_pytorch_model.safetensors";
pub const TEXT_ENCODER: &str = "text_encoder/model.safetensors";
pub const VOCAB: &str = "tokenizer/vocab.json";
pub const MERGES: &str = "tokenizer/merges.txt";
pub const LCM_LORA: &str = "lcm-lora-sdv1-5/pytorch_lora_weights.safetensors";
pub const CLIP: &str = "clip-vit-large-patch14/model.safetensors";
pub const AESTHETIC: &str = "aesthetic/sac+logos+ava1-l14-linearMSE.pth";
pub const HPS: &str = "hps/HPS_v2.1_compressed.pt";
/// open_clip's model config beside the HPS checkpoint (optional: ViT-H-14 without it).
pub const HPS_CONFIG: &str = "hps/open_clip_config.json";
pub const PICKSCORE: &str = "pickscore/model.safetensors";
pub const IMAGE_REWARD: &str = "image_reward/ImageReward.pt";
pub const IMAGE_REWARD_VOCAB: &str = "image_reward/bert-base-uncased/vocab.txt";
/// BLIP's text encoder config (optional: BLIP's med_config.json without it).
pub const IMAGE_REWARD_MED: &str = "image_reward/med_config.json";
/// The image encoder's sizes (sqdf's, optional: BLIP's ViT-L/16 at 224 px without it).
pub const IMAGE_REWARD_VIT: &str = "image_reward/vit_config.json";
pub const LPIPS_ALEXNET: &str = "lpips/alexnet-owt-7be5be79.pth";
pub const LPIPS_LIN: &str = "lpips/alex.pth";
/// DreamSim's files where its `cache_dir` (`./models`) puts them.
pub const DREAMSIM_DINO: &str = "dreamsim/checkpoints/dino_vitbase16_pretrain.pth";
pub const DREAMSIM_CLIP: &str = "dreamsim/clip_vitb16_pretrain.pth.tar";
pub const DREAMSIM_OPEN_CLIP: &str = "dreamsim/open_clip_vitb16_pretrain.pth.tar";
pub const DREAMSIM_LORA: &str = "dreamsim/ensemble_lora/adapter_model.safetensors";
/// The backbones' sizes (optional: the released ensemble's without it).
pub const DREAMSIM_CONFIG: &str = "dreamsim/config.json";

/// The weight folder of one run.
#[derive(Debug, Clone)]
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// DIR/rel; for a PyTorch file (the aesthetic head, HPS, LPIPS, DreamSim), its
    /// .safetensors conversion (the last extension replaced) when the PyTorch file is
    /// absent; for DreamSim's adapter, its .bin form when the .safetensors is absent.
    pub fn path(&self, rel: &str) -> PathBuf {
        let p = self.dir.join(rel);
        if rel == DREAMSIM_LORA && !p.is_file() && p.with_extension("bin").is_file() {
            return p.with_extension("bin");
        }
        if crate::models::clip::weights::is_pickle(&p) && !p.is_file() {
            let alt = p.with_extension("safetensors");
            if alt.is_file() {
                return alt;
            }
        }
        p
    }

    /// `config.json` beside a weight file, when the folder has one (the diffusers layout
    /// does; without it the SD-1.5 configuration is assumed).
    pub fn config_of(&self, rel: &str) -> Option<PathBuf> {
        let p = self.path(rel).parent()?.join("config.json");
        p.is_file().then_some(p)
    }

    /// DIR/rel when the folder has it (an optional config file).
    pub fn optional_file(&self, rel: &str) -> Option<PathBuf> {
        let p = self.dir.join(rel);
        p.is_file().then_some(p)
    }

    /// The metric file `rel` when present, or the message saying what is missing.
    pub fn metric(&self, rel: &str) -> std::result::Result<PathBuf, String> {
        let p = self.path(rel);
        if p.is_file() {
            return Ok(p);
        }
        let what = METRIC_FILES
            .iter()
            .find(|(r, _)| *r == rel)
            .map_or("", |(_, w)| w);
        Err(format!(
            "{} not found ({what}; docs/sd15_metrics.md)",
            p.display()
        ))
    }

    /// The metric files `rels` when all are present, or the message naming the missing ones.
    pub fn metric_files(&self, rels: &[&str]) -> std::result::Result<Vec<PathBuf>, String> {
        let (found, missing): (Vec<_>, Vec<_>) =
            rels.iter().map(|r| self.metric(r)).partition(|r| r.is_ok());
        if missing.is_empty() {
            return Ok(found.into_iter().flatten().collect());
        }
        Err(missing
            .into_iter()
            .filter_map(|r| r.err())
            .collect::<Vec<_>>()
            .join("; "))
    }

    /// Every missing file at once, each with where it comes from.
    pub fn check(&self) -> Result<()> {
        let missing: Vec<String> = FILES
            .iter()
            .filter(|(rel, _)| !self.path(rel).is_file())
            .map(|(rel, what)| format!("  {} <- {what}", self.dir.join(rel).display()))
            .collect();
        if !missing.is_empty() {
            bail!(
                "the sd15 task needs the public weight files under {} (set with --set weights=DIR); missing:\n{}\ndocs/sd15.md lists them; nothing is downloaded.",
                display(&self.dir),
                missing.join("\n")
            );
        }
        Ok(())
    }
}

fn display(p: &Path) -> String {
    p.display().to_string()
}

/// A config.json parsed with `parse`, or the SD-1.5 default when the folder has none.
pub fn config_or<T, E: Into<anyhow::Error>>(
    path: Option<std::path::PathBuf>,
    default: T,
    parse: impl Fn(&str) -> std::result::Result<T, E>,
) -> Result<T> {
    match path {
        None => Ok(default),
        Some(p) => {
            let text =
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            parse(&text)
                .map_err(Into::into)
                .with_context(|| format!("parsing {}", p.display()))
        }
    }
}
