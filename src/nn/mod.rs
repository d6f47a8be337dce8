//! Building blocks the project trusts to pass gradients (see docs/design.md on candle: candle-nn's
//! fused softmax and layer norm silently pass none).

pub mod attention;
pub mod attention_recompute;
pub mod channel;
pub mod checkpoint;
pub mod conv;
pub mod conv_avx512;
pub mod conv_direct;
pub mod conv_gemm;
pub mod conv_op;
pub mod conv_planes;
pub mod conv_unfold;
pub mod cpu;
pub mod flops;
pub mod frozen_map;
pub mod geglu;
pub mod group_norm;
pub mod group_norm_cpu;
pub mod half;
pub mod init;
pub mod layer_norm;
pub mod layer_norm_cpu;
pub mod linear;
pub mod linear_cpu;
pub mod lora;
pub mod lora_conv;
pub mod precomputed;
pub mod simd;
pub mod simd_avx512;
pub mod simd_scalar;
pub mod timestep_embedding;
pub mod upsample;

pub use attention::{scaled_dot_product_attention, scaled_dot_product_attention_plain, Attention};
pub use channel::scale_shift;
pub use conv::{conv2d, conv2d_layer, Conv2d};
pub use group_norm::{group_norm, GroupNorm};
pub use layer_norm::{layer_norm, LayerNorm};
pub use linear::{linear, linear_no_bias, Linear};
pub use lora::{Builders, LoraBuilder, LoraConfig, Proj};
pub use lora_conv::ConvProj;
pub use timestep_embedding::{sinusoidal_embedding, TimestepEmbedding};
pub use upsample::{upsample_nearest, upsample_nearest2x};
