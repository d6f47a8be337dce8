//! CLIP's image preprocessing, differentiable: decoded Stable Diffusion images
//! [B, 3, H, W] in [-1, 1] -> CLIP pixels [B, 3, S, S] (S = 224 for ViT-L/14).
//!
//! 1. to [0, 1]: x / 2 + 0.5, clamped (the gradient is zero where the clamp bites);
//! 2. resize so that the shortest side is S and centre-crop S x S, as
//!    `CLIPImageProcessor` (HF's rounding: long side int(S * long / short), crop offset
//!    (size - S) // 2). Resize and crop are linear maps, applied as two matmuls with
//!    fixed matrices R_h [S, H] and R_w [S, W] (x -> R_h x R_w^T) through which the
//!    gradient flows; candle's `upsample_bilinear2d` has no backward (docs/design.md, candle);
//! 3. normalise with CLIP's per-channel mean and std.
//!
//! Differences from the reference pipelines (OpenAI's `clip.load` preprocess for the LAION
//! aesthetic predictor, `CLIPImageProcessor` for HF): they resize an 8-bit PIL image with
//! a *bicubic* filter; here the float image is resized with an antialiased *triangle*
//! (bilinear) filter, PIL's / torchvision's `antialias=True` bilinear: the support is
//! widened by the downscale factor, so 512 -> 224 averages every source pixel rather than
//! aliasing. No 8-bit quantisation. Scores therefore differ slightly (bicubic is a little
//! sharper); a reward trained against is self-consistent, but compare absolute aesthetic
//! scores with published numbers only approximately. torchvision's CenterCrop rounds the
//! offset (round((size - S) / 2)) where HF floors; only non-square inputs are affected.

use candle_core::{Device, Result, Tensor};

/// CLIP's normalisation (OpenAI's preprocessing), as published.
pub const CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
pub const CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// A resampling filter as PIL defines it: its kernel and support (in source pixels at
/// scale 1; both widen by the downscale factor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// PIL's BILINEAR / torchvision's antialiased bilinear: 1 − |x| on [−1, 1].
    Triangle,
    /// PIL's BICUBIC (Keys' cubic with a = −0.5) on [−2, 2].
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Triangle => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    fn kernel(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Triangle => (1.0 - x).max(0.0),
            Filter::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// The [out_len, in_len] (row-major) matrix resizing a signal of `in_len` samples to
/// `out_len` with PIL's triangle filter (see `filter_weights`).
pub fn resize_weights(in_len: usize, out_len: usize) -> Vec<f32> {
    filter_weights(in_len, out_len, Filter::Triangle)
}

/// The [out_len, in_len] (row-major) matrix of PIL's resampling with `filter`: output
/// sample i is centred at source position (i + 1/2) * in/out, the filter is widened by
/// max(in/out, 1) (antialiasing when downscaling), weights outside the signal are dropped
/// and each row renormalised to sum to 1. PIL then rounds to 8 bits between and after the
/// two passes; this float resize does not.
pub fn filter_weights(in_len: usize, out_len: usize, filter: Filter) -> Vec<f32> {
    let scale = in_len as f64 / out_len as f64;
    let width = scale.max(1.0);
    let support = filter.support() * width;
    let mut m = vec![0f32; out_len * in_len];
    for i in 0..out_len {
        let center = (i as f64 + 0.5) * scale;
        let lo = (center - support + 0.5).floor().max(0.0) as usize;
        let hi = ((center + support + 0.5).floor() as usize).min(in_len);
        let w: Vec<f64> = (lo..hi)
            .map(|j| filter.kernel((j as f64 + 0.5 - center) / width))
            .collect();
        let total: f64 = w.iter().sum();
        for (j, wj) in (lo..hi).zip(w) {
            m[i * in_len + j] = (wj / total) as f32;
        }
    }
    m
}

/// The matrices (R_h [size, h], R_w [size, w], row-major) of a resize of the shortest
/// side to `size` followed by a centre crop of size x size (CLIPImageProcessor).
pub fn resize_crop_weights(h: usize, w: usize, size: usize) -> (Vec<f32>, Vec<f32>) {
    let (nh, nw) = if w <= h {
        (size * h / w, size)
    } else {
        (size, size * w / h)
    };
    let crop = |in_len: usize, n: usize| {
        let top = (n - size) / 2;
        resize_weights(in_len, n)[top * in_len..(top + size) * in_len].to_vec()
    };
    (crop(h, nh), crop(w, nw))
}

/// x [B, C, H, W] -> R_h x R_w^T [B, C, size, size], as two 2-D matmuls (their backward
/// is two gemms; the matrices are constants).
pub fn resize_crop(x: &Tensor, size: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if h == size && w == size {
        return Ok(x.clone());
    }
    let (rh, rw) = resize_crop_weights(h, w, size);
    apply_resize(x, rh, (size, h), rw, (size, w), false)
}

/// x [B, C, H, W] resized to [B, C, out_h, out_w] with `filter` (no crop, the aspect ratio
/// not kept: DreamSim's `Resize((S, S))`). Bicubic output is clipped to [0, 1] after each
/// pass, as PIL clips its 8-bit passes: x must be an image in [0, 1].
pub fn resize(x: &Tensor, out_h: usize, out_w: usize, filter: Filter) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if (h, w) == (out_h, out_w) {
        return Ok(x.clone());
    }
    let rh = filter_weights(h, out_h, filter);
    let rw = filter_weights(w, out_w, filter);
    apply_resize(x, rh, (out_h, h), rw, (out_w, w), filter == Filter::Bicubic)
}

/// torchvision's `Resize(size)` (shortest side to `size`, the other int(size * long /
/// short)) then `CenterCrop(size)` (offsets round((n − size) / 2), halves to even), with
/// `filter`: ImageReward's preprocessing of a tensor. Bicubic output is clipped as by
/// `resize`.
pub fn resize_center_crop(x: &Tensor, size: usize, filter: Filter) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let (nh, nw) = if w <= h {
        (size * h / w, size)
    } else {
        (size, size * w / h)
    };
    let crop = |in_len: usize, n: usize| {
        let top = ((n - size) as f64 / 2.0).round_ties_even() as usize;
        filter_weights(in_len, n, filter)[top * in_len..(top + size) * in_len].to_vec()
    };
    if (h, w) == (size, size) {
        return Ok(x.clone());
    }
    let clip = filter == Filter::Bicubic;
    apply_resize(x, crop(h, nh), (size, h), crop(w, nw), (size, w), clip)
}

/// R_h x R_w^T for row-major matrices R_h [oh, H] and R_w [ow, W], clipped to [0, 1]
/// after each pass when `clip`.
fn apply_resize(
    x: &Tensor,
    rh: Vec<f32>,
    (oh, h): (usize, usize),
    rw: Vec<f32>,
    (ow, w): (usize, usize),
    clip: bool,
) -> Result<Tensor> {
    let clip = |t: Tensor| if clip { t.clamp(0f32, 1f32) } else { Ok(t) };
    let (b, c, _, _) = x.dims4()?;
    let mat = |v: Vec<f32>, rows: usize, n: usize| {
        Tensor::from_vec(v, (rows, n), &Device::Cpu)?
            .to_device(x.device())?
            .to_dtype(x.dtype())
    };
    let (rh, rw) = (mat(rh, oh, h)?, mat(rw, ow, w)?);
    // Along W: rows are (b, c, y).
    let y = clip(x.reshape((b * c * h, w))?.matmul(&rw.t()?)?)?;
    // Along H: rows are (b, c, x_out).
    let y = y
        .reshape((b * c, h, ow))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b * c * ow, h))?
        .matmul(&rh.t()?)?;
    clip(
        y.reshape((b * c, ow, oh))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, c, oh, ow))?,
    )
}

/// Decoded images [B, 3, H, W] in [-1, 1] -> CLIP's normalised pixels [B, 3, size, size],
/// in the images' dtype.
pub fn clip_preprocess(images: &Tensor, size: usize) -> Result<Tensor> {
    let c = images.dim(1)?;
    if c != 3 {
        candle_core::bail!("clip_preprocess expects RGB images [B, 3, H, W], got {c} channels")
    }
    let x = images.affine(0.5, 0.5)?.clamp(0.0, 1.0)?;
    let x = resize_crop(&x, size)?;
    normalize(&x, CLIP_MEAN, CLIP_STD)
}

/// (x − mean) / std per channel of images [B, 3, H, W], in x's dtype.
pub fn normalize(x: &Tensor, mean: [f64; 3], std: [f64; 3]) -> Result<Tensor> {
    let stat = |v: [f64; 3]| {
        Tensor::from_vec(v.to_vec(), (1, 3, 1, 1), &Device::Cpu)?
            .to_device(x.device())?
            .to_dtype(x.dtype())
    };
    x.broadcast_sub(&stat(mean)?)?.broadcast_div(&stat(std)?)
}
