//! Whether a script's reward is linear, r(x) = w·x + b, found by autograd: the toy's
//! optimum has a closed form only then, so `tv_to_optimum` is reported only then.

use crate::rng::{randn, seeded};
use crate::script::Script;
use anyhow::Result;
use candle_core::{Device, Tensor, Var};

/// w if the reward's gradient is the same at 16 random points and r - w·x is constant.
pub fn probe_linear(script: &Script, device: &Device) -> Result<Option<[f64; 2]>> {
    let n = 16;
    let x = Var::from_tensor(&randn(&mut seeded(7), (n, 2), device)?.affine(3.0, 0.0)?)?;
    let cond = Tensor::zeros(n, candle_core::DType::U32, device)?;
    let r = script.reward(x.as_tensor(), &cond)?;
    let Some(g) = r.sum_all()?.backward()?.get(x.as_tensor()).cloned() else {
        return Ok(None);
    };
    let g = g.to_vec2::<f32>()?;
    let w = [g[0][0] as f64, g[0][1] as f64];
    let tol = 1e-4 * (1.0 + w[0].abs() + w[1].abs());
    if g.iter()
        .any(|row| (row[0] as f64 - w[0]).abs() > tol || (row[1] as f64 - w[1]).abs() > tol)
    {
        return Ok(None);
    }
    let xs = x.as_tensor().to_vec2::<f32>()?;
    let rs = r.to_vec1::<f32>()?;
    let b: Vec<f64> = xs
        .iter()
        .zip(&rs)
        .map(|(p, &r)| r as f64 - w[0] * p[0] as f64 - w[1] * p[1] as f64)
        .collect();
    let spread = b.iter().cloned().fold(f64::NEG_INFINITY, f64::max)
        - b.iter().cloned().fold(f64::INFINITY, f64::min);
    Ok((spread < 1e-3 * (1.0 + b[0].abs())).then_some(w))
}
