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

/// Stream `row` of the generator seeded with `key`: ChaCha's 64-bit stream number picks one
/// of 2^64 independent sequences. A trajectory's or a batch row's noise is drawn from its
/// own stream, so it does not depend on which micro-batch or rank computes the row.
pub fn row_stream(key: u64, row: u64) -> Rng {
    let mut r = seeded(key);
    r.set_stream(row);
    r
}

/// The streams of rows `rows` under `key`, one per row.
pub fn row_streams(key: u64, rows: std::ops::Range<usize>) -> Vec<Rng> {
    rows.map(|r| row_stream(key, r as u64)).collect()
}

/// The stream of a key's draws that belong to no row (`math.random` in a `loss` hook).
pub const SHARED_STREAM: u64 = u64::MAX;

/// While it lives, a shared generator (the run's, which `math.random`, `tensor.randn` and
/// `ctx` draw from) is another stream; its own state comes back when it goes, however the
/// hook call in between ended.
pub struct StreamSwap<'a> {
    rng: &'a SharedRng,
    saved: Option<Rng>,
}

impl<'a> StreamSwap<'a> {
    pub fn new(rng: &'a SharedRng, stream: Rng) -> Self {
        let saved = std::mem::replace(&mut *lock(rng), stream);
        Self {
            rng,
            saved: Some(saved),
        }
    }
}

impl Drop for StreamSwap<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.saved.take() {
            *lock(self.rng) = s;
        }
    }
}

fn lock(rng: &SharedRng) -> std::sync::MutexGuard<'_, Rng> {
    rng.lock().unwrap_or_else(|p| p.into_inner())
}

/// Standard normal noise of `shape` whose row j (along the first dimension) is drawn from
/// `rows[j]`; each row's stream continues where its last draw left it.
pub fn randn_rows<S: Into<Shape>>(rows: &mut [Rng], shape: S, device: &Device) -> Result<Tensor> {
    let shape = shape.into();
    let n = shape.dims().first().copied().unwrap_or(0);
    if n != rows.len() {
        candle_core::bail!(
            "noise of shape {shape:?} for {} row streams: the first dimension must be the rows",
            rows.len()
        );
    }
    let per = shape.elem_count() / n.max(1);
    let mut v = Vec::with_capacity(shape.elem_count());
    for r in rows.iter_mut() {
        v.extend((0..per).map(|_| -> f32 { StandardNormal.sample(r) }));
    }
    Tensor::from_vec(v, shape, device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rows_noise_does_not_depend_on_its_neighbours() {
        let key = 42;
        let mut all: Vec<Rng> = (0..4).map(|r| row_stream(key, r)).collect();
        let whole = randn_rows(&mut all, (4, 3), &Device::Cpu).unwrap();
        let mut last_two: Vec<Rng> = (2..4).map(|r| row_stream(key, r)).collect();
        let part = randn_rows(&mut last_two, (2, 3), &Device::Cpu).unwrap();
        let whole = whole.to_vec2::<f32>().unwrap();
        assert_eq!(whole[2..].to_vec(), part.to_vec2::<f32>().unwrap());
        assert_ne!(whole[0], whole[1], "rows are different streams");
        assert!(randn_rows(&mut last_two, (3, 3), &Device::Cpu).is_err());
    }
}
