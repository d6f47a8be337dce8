//! Helpers the integration tests share: tiny weight files written by the tests themselves,
//! scripts in temporary folders, and trainers that print nothing.
#![allow(dead_code)]

use candle_core::{Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use sqdf::models::{ToyMlp, ToyMlpConfig};
use sqdf::run_log::RunLog;
use sqdf::tensor_io::{sorted_vars, write_atomic};
use sqdf::train::{RunOptions, Trainer};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The binary's allocator in the test binaries too: glibc's maps and unmaps every
/// mid-sized tensor.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// As the binary does (src/main.rs): mimalloc keeps freed memory instead of returning it to
/// the OS, whose fresh pages the kernel zeroes one by one.
pub fn keep_freed_memory() {
    // SAFETY: a plain FFI call; 15 is `mi_option_purge_delay` in mimalloc.h.
    unsafe { libmimalloc_sys::mi_option_set(15, -1) };
}

/// The repository, read when the test runs (cargo sets CARGO_MANIFEST_DIR for it), not
/// when it compiles: a test binary built in another clone that shares the target folder
/// would otherwise look for the shipped models there (docs/design.md, "Tests").
pub fn repo_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

pub fn tiny_config() -> ToyMlpConfig {
    ToyMlpConfig {
        data_dim: 2,
        hidden: 16,
        blocks: 1,
        time_features: 8,
    }
}

/// The largest absolute difference between two tensors of the same shape (0 for two empty
/// ones).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    if a.elem_count() == 0 {
        return 0.0;
    }
    let f = |t: &Tensor| t.to_dtype(candle_core::DType::F64).unwrap();
    let d = f(a).sub(&f(b)).unwrap().abs().unwrap();
    d.flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// A random tiny toy model saved as `name` in `dir`, with its config in the metadata.
pub fn write_tiny_model(dir: &Path, name: &str, seed: u64) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let varmap = VarMap::new();
    let cfg = tiny_config();
    ToyMlp::new(
        VarBuilder::from_varmap(&varmap, sqdf::DTYPE, &Device::Cpu),
        &cfg,
    )
    .unwrap();
    sqdf::nn::init::seeded_init(&varmap, &mut sqdf::rng::seeded(seed)).unwrap();
    let t: BTreeMap<String, Tensor> = sorted_vars(&varmap)
        .into_iter()
        .map(|(k, v)| (k, v.as_tensor().clone()))
        .collect();
    let meta = HashMap::from([("config".to_string(), serde_json::to_string(&cfg).unwrap())]);
    let path = dir.join(name);
    write_atomic(&path, &t, meta).unwrap();
    path
}

/// A weights folder with a tiny denoiser and a tiny consistency model.
pub fn tiny_weights(dir: &Path) -> PathBuf {
    let w = dir.join("weights");
    write_tiny_model(&w, "denoiser.safetensors", 1);
    write_tiny_model(&w, "consistency.safetensors", 2);
    w
}

/// The config lines every test script shares: tiny weights, few steps, small batches.
pub fn tiny_config_lua(weights: &Path) -> String {
    format!(
        "task = \"gmm2d\", weights = {:?}, steps = 8, batch = 6, updates_per_epoch = 2, capacity = 16, epochs = 3, eval_samples = 32, alpha = 1.0",
        weights.display().to_string()
    )
}

/// A script using lua/sqdf.lua and a linear reward, with extra config entries.
pub fn standard_script(weights: &Path, extra_config: &str) -> String {
    format!(
        r#"local sqdf = require("sqdf")
local W = tensor.from({{ {{ 1.0 }}, {{ 0.5 }} }})
return {{
  config = {{ {base}{extra} }},
  reward = function(x0, cond, cfg) return x0:matmul(W):squeeze(2) end,
  loss = sqdf.loss,
  discount = sqdf.discount,
  priority = sqdf.priority,
}}
"#,
        base = tiny_config_lua(weights),
        extra = if extra_config.is_empty() {
            String::new()
        } else {
            format!(", {extra_config}")
        }
    )
}

pub fn write_script(dir: &Path, name: &str, src: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, src).unwrap();
    p
}

/// Options for a quiet trainer writing into `out`.
pub fn quiet_options(script: &Path, out: &Path, overrides: &[&str]) -> (RunOptions, Arc<RunLog>) {
    let log = RunLog::captured();
    let mut o = RunOptions::new(script);
    o.out = Some(out.to_path_buf());
    o.watch = false;
    o.progress = false;
    o.log = log.clone();
    o.overrides = overrides
        .iter()
        .map(|s| sqdf::script::config::parse_override(s).unwrap())
        .collect();
    (o, log)
}

pub fn trainer(script: &Path, out: &Path, overrides: &[&str]) -> (Trainer, Arc<RunLog>) {
    let (o, log) = quiet_options(script, out, overrides);
    (Trainer::new(o).unwrap_or_else(|e| panic!("{e:#}")), log)
}

/// A trainer of `digits_script` on tiny digits weights, all in `dir` (the run in dir/run).
pub fn digits_trainer(dir: &Path) -> Trainer {
    let w = tiny_digits_weights(dir);
    let script = write_script(dir, "d.lua", &digits_script(&w, ""));
    trainer(&script, &dir.join("run"), &[]).0
}

/// `f` run in a rayon pool of `threads` threads.
pub fn in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

/// A tensor's values, flattened (for bit-for-bit comparisons).
pub fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// The sqdf binary with `args`, started as a launcher starts one of two ranks (the
/// variables `mpirun -n 2` sets): whether it succeeded, and its standard error.
pub fn sqdf_as_rank(args: &[&str]) -> (bool, String) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_sqdf"))
        .args(args)
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A tiny class-conditional UNet config (two levels, 4 and 8 channels).
pub fn tiny_digits_config() -> sqdf::models::class_conditional::ClassConditionalConfig {
    use sqdf::models::{DownBlockType, UNetConfig, UpBlockType};
    sqdf::models::class_conditional::ClassConditionalConfig {
        unet: UNetConfig {
            sample_size: 28,
            in_channels: 1,
            out_channels: 1,
            block_out_channels: vec![4, 8],
            down_block_types: vec![DownBlockType::Down, DownBlockType::CrossAttnDown],
            up_block_types: vec![UpBlockType::CrossAttnUp, UpBlockType::Up],
            layers_per_block: 1,
            cross_attention_dim: 8,
            attention_head_dim: 1,
            norm_num_groups: 2,
            norm_eps: 1e-5,
            use_linear_projection: false,
            num_class_embeds: None,
        },
        tokens: 2,
    }
}

/// A weights folder for the digits task with a tiny random UNet (also as the consistency
/// model) and the shipped classifier and learned reward.
pub fn tiny_digits_weights(dir: &Path) -> PathBuf {
    use sqdf::models::class_conditional::ClassConditionalUNet;
    let w = dir.join("digits");
    std::fs::create_dir_all(&w).unwrap();
    let cfg = tiny_digits_config();
    for (name, seed) in [("unet.safetensors", 1), ("consistency.safetensors", 2)] {
        let varmap = VarMap::new();
        ClassConditionalUNet::new(
            VarBuilder::from_varmap(&varmap, sqdf::DTYPE, &Device::Cpu),
            &cfg,
            None,
        )
        .unwrap();
        sqdf::nn::init::seeded_init(&varmap, &mut sqdf::rng::seeded(seed)).unwrap();
        let meta = HashMap::from([("config".to_string(), serde_json::to_string(&cfg).unwrap())]);
        sqdf::tensor_io::save_varmap(&w.join(name), &varmap, meta).unwrap();
    }
    let shipped = repo_root().join("models/digits");
    for f in ["classifier.safetensors", "reward.safetensors"] {
        std::fs::copy(shipped.join(f), w.join(f)).unwrap();
    }
    w
}

/// A digits script on tiny weights: few steps and small batches.
pub fn digits_script(weights: &Path, extra_config: &str) -> String {
    format!(
        r#"local sqdf = require("sqdf")
return {{
  config = {{ task = "digits", weights = {w:?}, steps = 3, batch = 4, updates_per_epoch = 2, capacity = 8, epochs = 2, lora_rank = 2{extra} }},
  reward = function(x0, cond, cfg) return rewards.learned(x0) * 10 end,
  loss = sqdf.loss,
  discount = sqdf.discount,
  priority = sqdf.priority,
}}
"#,
        w = weights.display().to_string(),
        extra = if extra_config.is_empty() {
            String::new()
        } else {
            format!(", {extra_config}")
        }
    )
}
