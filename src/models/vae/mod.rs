//! The VAE of Stable Diffusion (AutoencoderKL): its decoder, differentiable.
