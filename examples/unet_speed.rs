//! A benchmark: forward+backward time of the digits UNet at a few widths (batch 64).
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use sqdf::models::class_conditional::{ClassConditionalConfig, ClassConditionalUNet};
use sqdf::models::Denoiser;
use std::time::Instant;

/// The binary's allocator and its setting (src/main.rs), so that times compare with a run's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    // SAFETY: a plain FFI call; 15 is `mi_option_purge_delay` in mimalloc.h.
    unsafe { libmimalloc_sys::mi_option_set(15, -1) };
    let dev = Device::Cpu;
    for (ch, groups) in [
        (vec![8, 16, 32], 4),
        (vec![16, 32, 32], 8),
        (vec![16, 32, 64], 8),
    ] {
        let mut cfg = ClassConditionalConfig::digits();
        cfg.unet.block_out_channels = ch.clone();
        cfg.unet.norm_num_groups = groups;
        let vm = VarMap::new();
        let net =
            ClassConditionalUNet::new(VarBuilder::from_varmap(&vm, DType::F32, &dev), &cfg, None)?;
        let n: usize = vm.all_vars().iter().map(|v| v.elem_count()).sum();
        let x = Tensor::randn(0f32, 1., (64, 1, 28, 28), &dev)?;
        let t = Tensor::ones(64, DType::F32, &dev)?.affine(500., 0.)?;
        let c = Tensor::zeros(64, DType::U32, &dev)?;
        for r in 0..3 {
            let s = Instant::now();
            let l = net.eps(&x, &t, &c)?.sqr()?.mean_all()?;
            let f = s.elapsed().as_secs_f64();
            l.backward()?;
            if r > 0 {
                println!(
                    "{ch:?} params {n}: fwd {f:.3} s, fwd+bwd {:.3} s",
                    s.elapsed().as_secs_f64()
                );
            }
        }
    }
    Ok(())
}
