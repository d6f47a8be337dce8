//! The run's randomness: one seeded ChaCha generator whose state is saved in checkpoints,
//! so the same seed gives the same run and a resumed run continues the same stream.
//! candle's CPU backend cannot be seeded, so every random tensor is drawn here.

use candle_core::{Device, Result, Shape, Tensor};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use std::sync::{Arc, Mutex};

pub type Rng = rand_chacha::ChaCha8Rng;

/// A generator shared between the trainer and the Lua state it lends it to.
pub type SharedRng = Arc<Mutex<Rng>>;

pub fn seeded(seed: u64) -> Rng {
    Rng::seed_from_u64(seed)
}

pub fn shared(seed: u64) -> SharedRng {
    Arc::new(Mutex::new(seeded(seed)))
}

/// Standard normal noise of the given shape.
pub fn randn<S: Into<Shape>>(rng: &mut Rng, shape: S, device: &Device) -> Result<Tensor> {
    let shape = shape.into();
    let v: Vec<f32> = (0..shape.elem_count())
        .map(|_| StandardNormal.sample(rng))
        .collect();
    Tensor::from_vec(v, shape, device)
}
