//! Consistency distillation (Song et al. 2023, Algorithm 2) on the sampler's grid, as LCM
//! does it: from x at grid state n (forward-noised data), one DDIM ODE step (η = 0) of the
//! teacher gives x at state n+1; the student's f(x_n) is pulled to the EMA target's
//! f(x_{n+1}), and to x_{n+1} itself at the clean end point (the boundary condition).

use super::pretrain::{lr_at, PretrainSettings};
use super::AdamW;
use crate::diffusion::{add_noise, per_sample, DdimSampler};
use crate::models::{ConsistencyModel, Denoiser};
use crate::rng::{randn, Rng};
use crate::tensor_io::sorted_vars;
use anyhow::Result;
use candle_core::Tensor;
use candle_nn::VarMap;
use indicatif::ProgressBar;
use rand::Rng as _;

pub struct DistillSettings {
    pub train: PretrainSettings,
    /// EMA decay of the target network (LCM: 0.95).
    pub ema: f64,
}

/// Distils `teacher` into `student` (variables `student_vars`); `target` (variables
/// `target_vars`, same names) is the EMA copy. `ode` must have η = 0.
#[allow(clippy::too_many_arguments)]
pub fn distill(
    student: &ConsistencyModel,
    student_vars: &VarMap,
    target: &ConsistencyModel,
    target_vars: &VarMap,
    teacher: &dyn Denoiser,
    ode: &DdimSampler,
    mut data: impl FnMut(&mut Rng, usize) -> Result<(Tensor, Tensor)>,
    s: &DistillSettings,
    rng: &mut Rng,
    bar: &ProgressBar,
) -> Result<f64> {
    assert_eq!(
        ode.eta(),
        0.0,
        "distillation follows the probability-flow ODE (η = 0)"
    );
    let mut opt = AdamW::new(sorted_vars(student_vars))?;
    let pairs: Vec<_> = sorted_vars(student_vars)
        .into_iter()
        .zip(sorted_vars(target_vars))
        .collect();
    let steps = ode.steps();
    let mut tail = Vec::new();
    for step in 0..s.train.steps {
        let (x0, cond) = data(rng, s.train.batch)?;
        let b = x0.dim(0)?;
        let idx: Vec<usize> = (0..b).map(|_| rng.random_range(0..steps)).collect();
        let a: Vec<f64> = idx.iter().map(|&i| ode.alpha_bar(i)).collect();
        let noise = randn(rng, x0.shape(), x0.device())?;
        let x_n = add_noise(&x0, &noise, &a)?;
        let t_n = ode.timesteps_tensor(&idx, x0.device())?;
        let eps = teacher.eps(&x_n, &t_n, &cond)?.detach();
        let x_next = ode.step(&x_n, &eps, &idx)?.mean.detach();
        let next: Vec<usize> = idx.iter().map(|&i| i + 1).collect();
        let t_next: Vec<usize> = next.iter().map(|&i| ode.time_of(i)).collect();
        let target_x0 = target.x0(&x_next, &t_next, &cond)?.detach();
        let last: Vec<f64> = next
            .iter()
            .map(|&i| if i == steps { 1.0 } else { 0.0 })
            .collect();
        let m = per_sample(&last, &x_next)?;
        let y = x_next
            .broadcast_mul(&m)?
            .add(&target_x0.broadcast_mul(&m.affine(-1.0, 1.0)?)?)?;
        let t_cur: Vec<usize> = idx.iter().map(|&i| ode.time_of(i)).collect();
        let pred = student.x0(&x_n, &t_cur, &cond)?;
        let loss = pred.sub(&y)?.sqr()?.mean_all()?;
        let l = opt.minimise(&loss, lr_at(&s.train, step), s.train.weight_decay)?;
        for ((_, sv), (_, tv)) in &pairs {
            tv.set(
                &tv.as_tensor()
                    .affine(s.ema, 0.0)?
                    .add(&sv.as_tensor().affine(1.0 - s.ema, 0.0)?)?,
            )?;
        }
        if step >= s.train.steps - s.train.steps / 10 {
            tail.push(l);
        }
        bar.inc(1);
        if step % 50 == 0 {
            bar.set_message(format!("loss {l:.4}"));
        }
    }
    Ok(tail.iter().sum::<f64>() / tail.len().max(1) as f64)
}
