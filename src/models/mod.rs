//! Denoisers: networks that predict ε_θ(x_t, t, c) for a batch with per-sample timesteps.

pub mod class_conditional;
pub mod classifier;
pub mod clip;
pub mod consistency_model;
pub mod denoiser;
pub mod guidance;
pub mod metrics;
pub mod reward_net;
pub mod toy_mlp;
pub mod unet;
pub mod vae;

pub use consistency_model::ConsistencyModel;
pub use denoiser::Denoiser;
pub use toy_mlp::{ToyMlp, ToyMlpConfig};
pub use unet::{DownBlockType, UNet2DConditionModel, UNetConfig, UpBlockType};
