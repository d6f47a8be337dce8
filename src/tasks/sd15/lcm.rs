//! LCM-LoRA as the consistency model f_ψ (§4.2.2; METHOD.md): the LoRA merged once into a
//! frozen copy of SD-1.5's UNet, queried without guidance (w = 1) at the LCM timestep
//! nearest to the DDIM one, with LCM's boundary scalings (σ_data 0.5, timestep scaling 10).

use super::prompt_unet::PromptUNet;
use crate::diffusion::consistency::BoundaryScalings;
use crate::diffusion::NoiseSchedule;
use crate::models::ConsistencyModel;
use std::sync::Arc;

/// diffusers' LCMScheduler skeleton for `original_inference_steps = 50` over 1000 training
/// steps: c = 20, timesteps 19, 39, ..., 999.
pub fn lcm_grid() -> Vec<usize> {
    (1..=50).map(|i| i * 20 - 1).collect()
}

/// f_ψ from the merged UNet.
pub fn consistency(merged: PromptUNet, schedule: NoiseSchedule) -> ConsistencyModel {
    ConsistencyModel {
        net: Arc::new(merged),
        scalings: BoundaryScalings::default(),
        schedule,
        grid: lcm_grid(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn grid_is_lcms_skeleton() {
        let g = super::lcm_grid();
        assert_eq!((g.len(), g[0], g[49]), (50, 19, 999));
    }
}
