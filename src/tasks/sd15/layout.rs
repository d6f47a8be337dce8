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

pub const UNET: &str = "unet/diffusion_pytorch_model.safetensors";
pub const VAE: &str = "vae/diffusion_pytorch_model.safetensors";
pub const TEXT_ENCODER: &str = "text_encoder/model.safetensors";
pub const VOCAB: &str = "tokenizer/vocab.json";
pub const MERGES: &str = "tokenizer/merges.txt";
pub const LCM_LORA: &str = "lcm-lora-sdv1-5/pytorch_lora_weights.safetensors";
pub const CLIP: &str = "clip-vit-large-patch14/model.safetensors";
pub const AESTHETIC: &str = "aesthetic/sac+logos+ava1-l14-linearMSE.pth";

/// The weight folder of one run.
#[derive(Debug, Clone)]
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// DIR/rel; for the aesthetic head, its .safetensors conversion when the .pth is absent.
    pub fn path(&self, rel: &str) -> PathBuf {
        let p = self.dir.join(rel);
        if rel == AESTHETIC && !p.is_file() {
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
