//! The evaluation metrics' networks (paper §5.1, Appendix D): frozen, evaluation only.

pub mod alexnet;
pub mod dino_vit;
pub mod dreamsim;
pub mod image_reward;
pub mod lpips;
