use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use sqdf::models::class_conditional::{ClassConditionalConfig, ClassConditionalUNet};
use sqdf::models::Denoiser;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    sqdf::keep_freed_memory();
    let dev = Device::Cpu;
    let cfg = ClassConditionalConfig::digits();
    let vm = VarMap::new();
    let net =
        ClassConditionalUNet::new(VarBuilder::from_varmap(&vm, DType::F32, &dev), &cfg, None)?;
    for rep in 0..3 {
        for (b, k) in [(16usize, 10usize), (32, 5), (80, 2), (160, 1)] {
            let x = Tensor::randn(0f32, 1., (b, 1, 28, 28), &dev)?;
            let t = Tensor::ones(b, DType::F32, &dev)?.affine(500., 0.)?;
            let c = Tensor::zeros(b, DType::U32, &dev)?;
            let s = Instant::now();
            for _ in 0..k * 5 {
                net.eps(&x, &t, &c)?;
            }
            println!(
                "rep {rep} batch {b} x{k}: {:.3} s per 160 samples",
                s.elapsed().as_secs_f64() / 5.0
            );
        }
    }
    Ok(())
}
