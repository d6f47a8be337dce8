//! The diffusion process in the paper's notation: the noise schedule (Eq. 2), the
//! DDIM grid sampler whose step is a reparameterisable Gaussian (Eq. 1, Eq. 12),
//! Tweedie's one-step x0 (Eq. 37), the consistency model's boundary scalings and
//! the Gaussian KL between two policy steps (Eq. 16).

pub mod consistency;
pub mod ddim;
pub mod forward_process;
pub mod kl;
pub mod log_prob;
pub mod schedule;
pub mod tweedie;

pub use ddim::{DdimSampler, Spacing, Step};
pub use forward_process::add_noise;
pub use schedule::{BetaSchedule, NoiseSchedule};

use candle_core::{Result, Tensor};

/// Per-sample scalars as a tensor shaped to broadcast against `like` ([B] -> [B, 1, ...]).
pub fn per_sample(values: &[f64], like: &Tensor) -> Result<Tensor> {
    let b = values.len();
    let mut shape = vec![b];
    shape.extend(std::iter::repeat_n(1, like.rank().saturating_sub(1)));
    let v: Vec<f32> = values.iter().map(|&x| x as f32).collect();
    Tensor::from_vec(v, shape, like.device())
}
