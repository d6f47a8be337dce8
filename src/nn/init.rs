//! Seeded initialisation: candle initialises variables from an unseeded RNG, so models the
//! project trains re-draw their weights from the run's seeded RNG to be reproducible.

use crate::rng::{randn, Rng};
use crate::tensor_io::sorted_vars;
use anyhow::Result;
use candle_nn::VarMap;

/// Weight matrices and kernels ([out, in, ...]) get N(0, 1/fan_in) (Kaiming, gain 1);
/// biases and constant-initialised tensors (norm scales and shifts) get zeros or keep
/// their constant.
pub fn seeded_init(varmap: &VarMap, rng: &mut Rng) -> Result<()> {
    for (name, var) in sorted_vars(varmap) {
        let t = var.as_tensor();
        let flat = t.flatten_all()?;
        let (lo, hi) = (
            flat.min(0)?.to_scalar::<f32>()?,
            flat.max(0)?.to_scalar::<f32>()?,
        );
        // A constant tensor keeps its constant (LoRA's B = 0, norm scales); a one-element
        // tensor is "constant" by its single value, so it is re-drawn as the rest (a bias
        // of one output, e.g. a reward head's, would otherwise keep candle's unseeded draw).
        if lo == hi && flat.elem_count() > 1 {
            continue;
        }
        if t.rank() >= 2 {
            let fan_in: usize = t.dims()[1..].iter().product();
            var.set(
                &randn(rng, t.shape(), t.device())?.affine(1.0 / (fan_in as f64).sqrt(), 0.0)?,
            )?;
        } else if name.ends_with("bias") {
            var.set(&t.zeros_like()?)?;
        }
    }
    Ok(())
}
