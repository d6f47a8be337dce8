//! A 3x3 conv's forward and backward in f16 on the CPU ([1, 320, 32, 32], SD-1.5's first
//! level at 32x32 latents; input and kernel both trainable, so both paths compute both
//! gradients): `nn::conv::conv2d` against candle's own conv2d, whose input gradient is a
//! direct conv_transpose2d loop (a benchmark, not a test). Each is timed after a warm-up.
//!
//!     cargo run --release --example conv_half_cpu
use candle_core::{DType, Device, Result, Tensor, Var};
use std::time::Instant;

fn time(
    name: &str,
    f: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
    x: &Var,
    w: &Var,
) -> Result<()> {
    let mut last = 0.0;
    for _ in 0..2 {
        let t = Instant::now();
        let y = f(x.as_tensor(), w.as_tensor())?;
        let g = y.to_dtype(DType::F32)?.sqr()?.sum_all()?.backward()?;
        assert!(g.get(x.as_tensor()).is_some() && g.get(w.as_tensor()).is_some());
        last = t.elapsed().as_secs_f64();
    }
    println!("{name}: forward + backward {last:.2} s");
    Ok(())
}

fn main() -> Result<()> {
    let dev = Device::Cpu;
    let half = |t: Tensor| t.to_dtype(DType::F16).and_then(|t| Var::from_tensor(&t));
    let x = half(Tensor::randn(0f32, 1.0, (1, 320, 32, 32), &dev)?)?;
    let w = half(Tensor::randn(0f32, 0.05, (320, 320, 3, 3), &dev)?)?;
    time(
        "sqdf::nn::conv::conv2d",
        |x, w| sqdf::nn::conv::conv2d(x, w, 1, 1),
        &x,
        &w,
    )?;
    time("candle conv2d", |x, w| x.conv2d(w, 1, 1, 1, 1), &x, &w)?;
    Ok(())
}
