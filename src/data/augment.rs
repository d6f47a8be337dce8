//! Image augmentations for training the digits' evaluation and reward networks.

use crate::rng::Rng;
use candle_core::{Result, Tensor};
use rand::Rng as _;

/// Pads the last two dimensions by n with background (-1).
fn pad_background(x: &Tensor, n: usize) -> Result<Tensor> {
    x.affine(1.0, 1.0)?
        .pad_with_zeros(2, n, n)?
        .pad_with_zeros(3, n, n)?
        .affine(1.0, -1.0)
}

/// Shifts every image by a random offset in [-max, max] pixels (background fills in).
pub fn random_shift(x: &Tensor, max: usize, rng: &mut Rng) -> Result<Tensor> {
    let (b, _, h, w) = x.dims4()?;
    let padded = pad_background(x, max)?;
    let rows = (0..b)
        .map(|i| {
            let (dy, dx) = (rng.random_range(0..=2 * max), rng.random_range(0..=2 * max));
            padded.narrow(0, i, 1)?.narrow(2, dy, h)?.narrow(3, dx, w)
        })
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&rows, 0)
}

/// Grey-scale dilation (thicker strokes) by a 3x3 max filter.
pub fn dilate(x: &Tensor) -> Result<Tensor> {
    pad_background(x, 1)?.max_pool2d_with_stride(3, 1)
}

/// Grey-scale erosion (thinner strokes) by a 3x3 min filter.
pub fn erode(x: &Tensor) -> Result<Tensor> {
    dilate(&x.neg()?)?.neg()
}

/// Per image: a random number of dilations or erosions (-2..=2), a random contrast towards
/// the background, and a little noise: images of every boldness, all digit-like.
pub fn vary_boldness(x: &Tensor, rng: &mut Rng) -> Result<Tensor> {
    let b = x.dim(0)?;
    let rows = (0..b)
        .map(|i| {
            let mut img = x.narrow(0, i, 1)?;
            let k: i32 = rng.random_range(-2..=2);
            for _ in 0..k.unsigned_abs() {
                img = if k > 0 { dilate(&img)? } else { erode(&img)? };
            }
            // Contrast: ink p scaled by g in [0.5, 1]: x = 2 g p - 1 with p = (x + 1) / 2.
            let g: f64 = rng.random_range(0.5..=1.0);
            img = img.affine(g, g - 1.0)?;
            let noise = crate::rng::randn(rng, img.shape(), img.device())?.affine(0.05, 0.0)?;
            img.add(&noise)?.clamp(-1f32, 1f32)
        })
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&rows, 0)
}
