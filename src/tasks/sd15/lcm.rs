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
    use crate::models::consistency_model::snap;

    #[test]
    fn grid_is_lcms_skeleton() {
        let g = super::lcm_grid();
        assert_eq!((g.len(), g[0], g[49]), (50, 19, 999));
    }

    #[test]
    fn ddim_timesteps_snap_to_the_nearest_lcm_timestep() {
        let g = super::lcm_grid();
        // SD-1.5's 50 DDIM timesteps (981, 961, ..., 1) lie 2 above an LCM one (981 -> 979),
        // except 1, whose nearest is 19.
        for t in (0..50).map(|i| 1 + 20 * i) {
            let want = if t == 1 { 19 } else { t - 2 };
            assert_eq!(snap(&g, t), want, "t = {t}");
        }
        assert_eq!(snap(&g, 0), 0, "the boundary is not snapped");
        assert_eq!(
            (snap(&g, 999), snap(&g, 1000), snap(&g, 29)),
            (999, 999, 19)
        );
        assert_eq!(snap(&[], 37), 37, "no grid: no snapping");
    }
}
