//! The integration tests, in one binary so that candle and mlua are linked once: each
//! module is one area (`cargo test --test it resume::` runs one). Shared helpers are in
//! `common`: tiny weight files the tests write themselves, scripts in temporary folders,
//! quiet trainers, and the binary's allocator.

mod attention_recompute;
mod bad_input;
mod baselines;
mod blackbox;
mod blackbox_surrogate;
mod checkpointing;
mod clip_tokenizer;
mod common;
mod compare;
mod digits;
#[cfg(feature = "mpi")]
mod distributed;
mod frozen_map;
mod hot_reload;
mod kl;
mod lora_files;
mod lua_tensor_ops;
mod parity;
mod parity_alignment;
mod parity_diversity;
mod readme;
mod replay;
mod resume;
mod sandbox;
mod sd15;
mod sd15_clip;
mod sd15_vae;
mod shipped_scripts;
mod sqdf_loss;
mod toy_run;
mod unet;
