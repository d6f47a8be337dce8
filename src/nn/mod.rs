//! Building blocks the project trusts to pass gradients (see CANDLE-NOTES: candle-nn's
//! fused softmax and layer norm silently pass none).

pub mod conv2d;
pub mod init;
pub mod timestep_embedding;
pub mod unfold;

pub use timestep_embedding::{sinusoidal_embedding, TimestepEmbedding};
