//! KL(p_θ(·|x_t) || p'(·|x_t)) between two Gaussian policy steps that share σ_t (Eq. 16).
//! Both forms return one value per sample ([B]).

use candle_core::{bail, Result, Tensor};

/// Which scale of the Gaussian KL a loss uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KlForm {
    /// The exact KL: Σ_d (μ_θ - μ')² / (2 σ²).
    Exact,
    /// The authors' released code: mean_d (μ' - μ_θ)² / σ² (no 1/2, mean over dimensions).
    /// Their α values (2 for aesthetic) are tuned for this scale. Equal to `Exact` when D = 2.
    Released,
}

impl KlForm {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "exact" => Some(Self::Exact),
            "released" => Some(Self::Released),
            _ => None,
        }
    }
}

/// Per-sample KL of N(mean_theta, σ²I) from N(mean_ref, σ²I); `sigma` is [B, 1, ...].
pub fn gaussian_kl(
    mean_theta: &Tensor,
    mean_ref: &Tensor,
    sigma: &Tensor,
    form: KlForm,
) -> Result<Tensor> {
    let sig = sigma.flatten_all()?.to_vec1::<f32>()?;
    if sig.iter().any(|s| s.is_nan() || *s <= 0.0) {
        bail!("the KL between two policy steps needs σ > 0; a step with η = 0 or a noiseless last step is deterministic")
    }
    let b = mean_theta.dim(0)?;
    if mean_ref.dims() != mean_theta.dims() {
        bail!(
            "KL: the two means differ in shape: {:?} vs {:?}",
            mean_theta.dims(),
            mean_ref.dims()
        )
    }
    let sq = mean_theta
        .sub(mean_ref)?
        .sqr()?
        .broadcast_div(&sigma.sqr()?)?;
    let per_dim = sq.reshape((b, ()))?;
    match form {
        KlForm::Exact => per_dim.sum(1)?.affine(0.5, 0.0),
        KlForm::Released => per_dim.mean(1),
    }
}
