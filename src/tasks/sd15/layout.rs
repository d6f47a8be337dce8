//! Where the sd15 task finds the public weight files, under the folder the user names
//! (`--set weights=DIR`). Every path is checked before anything loads, and a missing file
//! is reported together with all the others, each with the public file it should be.

use anyhow::{bail, Result};
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

/// The weight folder of one run.
#[derive(Debug, Clone)]
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// DIR/rel; for a PyTorch file (the aesthetic head, HPS), its .safetensors conversion
    /// when the PyTorch file is absent.
    pub fn path(&self, rel: &str) -> PathBuf {
        let p = self.dir.join(rel);
        if (rel == AESTHETIC || rel == HPS) && !p.is_file() {
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
        Err(format!("{} not found ({what}; docs/sd15.md)", p.display()))
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
