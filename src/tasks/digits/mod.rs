//! `digits`: the paper's text-to-image experiment at a size that runs on 2 CPU cores. The
//! "prompt" is a class 0..9 fed by cross-attention, as SD feeds text; real MNIST digits
//! (data/mnist10k.safetensors) train the UNet, the classifier that measures alignment and
//! diversity, and a learned reward that can be over-optimised.

pub mod classifier;
pub mod distill;
pub mod eval_cache;
pub mod evaluate;
pub mod process;
pub mod reward;
pub mod task;
pub mod unet;

pub use task::DigitsTask;

use crate::data::mnist::{self, Digits};
use anyhow::Result;
use candle_core::Device;

pub const UNET_FILE: &str = "unet.safetensors";
pub const CONSISTENCY_FILE: &str = "consistency.safetensors";
pub const CLASSIFIER_FILE: &str = "classifier.safetensors";
pub const REWARD_FILE: &str = "reward.safetensors";
/// Seed of every evaluation's noise and augmentations: figures are repeatable.
pub(crate) const EVAL_SEED: u64 = 0xd161;

/// The fixed (training, held-out) split of the shipped digits.
pub fn data(device: &Device) -> Result<(Digits, Digits)> {
    mnist::load_split(&mnist::default_path(), device)
}
