//! A consistency model f_ψ for the one-step x0 estimate in the soft Q (Eq. 16, §4.2.2),
//! in LCM's form: an ε-prediction network (initialised from the teacher) whose Tweedie
//! x0 is mixed with x_t by the boundary scalings, so f(x, 0) = x exactly.

use super::Denoiser;
use crate::diffusion::{consistency::BoundaryScalings, tweedie, NoiseSchedule};
use candle_core::{Result, Tensor};
use std::sync::Arc;

/// t itself at 0 (the boundary, where f(x, 0) = x) or when `grid` is empty, else the
/// nearest timestep of `grid` (the earlier one on a tie).
pub fn snap(grid: &[usize], t: usize) -> usize {
    if t == 0 {
        return t;
    }
    grid.iter()
        .copied()
        .min_by_key(|g| g.abs_diff(t))
        .unwrap_or(t)
}

#[derive(Clone)]
pub struct ConsistencyModel {
    pub net: Arc<dyn Denoiser>,
    pub scalings: BoundaryScalings,
    pub schedule: NoiseSchedule,
    /// The timesteps it was distilled on; a query between them is snapped to the nearest
    /// (as the released code snaps DDIM timesteps to the LCM grid). Empty: no snapping.
    pub grid: Vec<usize>,
}

impl ConsistencyModel {
    /// t itself at 0 (the boundary) or when there is no grid, else the nearest grid timestep.
    pub fn snap(&self, t: usize) -> usize {
        snap(&self.grid, t)
    }

    /// f_ψ(x_t, t) for per-sample training timesteps `t`.
    pub fn x0(&self, x: &Tensor, t: &[usize], cond: &Tensor) -> Result<Tensor> {
        let t: Vec<usize> = t.iter().map(|&t| self.snap(t)).collect();
        let t = t.as_slice();
        let tt: Vec<f32> = t.iter().map(|&t| t as f32).collect();
        let t_tensor = Tensor::from_vec(tt, t.len(), x.device())?;
        let eps = self.net.eps(x, &t_tensor, cond)?;
        let a: Vec<f64> = t.iter().map(|&t| self.schedule.alpha_bar(t)).collect();
        let x0_pred = tweedie::x0_from_eps_with(x, &eps, &a)?;
        let tf: Vec<f64> = t.iter().map(|&t| t as f64).collect();
        self.scalings.apply(x, &x0_pred, &tf)
    }
}
