//! A 3x3 conv's forward and backward in f16 on the CPU ([1, 320, 32, 32], SD-1.5's first
//! level at 32x32 latents): `nn::conv::conv2d` against candle's own conv2d, whose backward
//! is a direct conv_transpose2d loop (a benchmark, not a test).
//!
//!     cargo run --release --example conv_half_cpu
use candle_core::{DType, Device, Result, Tensor, Var};
use std::time::Instant;

fn time(name: &str, f: impl Fn(&Tensor) -> Result<Tensor>, x: &Var) -> Result<()> {
    let t = Instant::now();
    let y = f(x.as_tensor())?;
    let g = y.to_dtype(DType::F32)?.sqr()?.sum_all()?.backward()?;
    g.get(x.as_tensor()).expect("x gets a gradient");
    println!(
        "{name}: forward + backward {:.2} s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() -> Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (1, 320, 32, 32), &dev)?.to_dtype(DType::F16)?;
    let x = Var::from_tensor(&x)?;
    let w = Tensor::randn(0f32, 0.05, (320, 320, 3, 3), &dev)?.to_dtype(DType::F16)?;
    time(
        "sqdf::nn::conv::conv2d",
        |x| sqdf::nn::conv::conv2d(x, &w, 1, 1),
        &x,
    )?;
    time("candle conv2d", |x| x.conv2d(&w, 1, 1, 1, 1), &x)?;
    Ok(())
}
