//! `sd15`: the paper's headline experiment, Stable Diffusion 1.5 fine-tuned with LoRA for
//! the LAION aesthetic score or HPSv2 (§5.1), from the public weight files in a folder the user
//! names (`layout.rs` lists them; nothing is downloaded). LCM-LoRA, merged once into a
//! frozen copy of the UNet, is the consistency model. Tested here on tiny random models
//! with the real key names (`random_weights.rs`); run for real on a GPU.

pub mod evaluate;
pub mod hf_config;
pub mod layout;
pub mod lcm;
pub mod metrics;
pub mod parts;
pub mod prompt_text;
pub mod prompt_unet;
pub mod prompts;
pub mod random_weights;
pub mod task;

pub use layout::Layout;
pub use task::Sd15Task;

/// Seed of the evaluation's noise: every model is evaluated on the same x_T.
pub(crate) const EVAL_SEED: u64 = 0x5d15;
