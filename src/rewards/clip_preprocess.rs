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

/// The [out_len, in_len] (row-major) matrix resizing a signal of `in_len` samples to
/// `out_len` with PIL's triangle filter: output sample i is centred at source position
/// (i + 1/2) * in/out, the filter is widened by max(in/out, 1) (antialiasing when
/// downscaling), weights outside the signal are dropped and each row renormalised to sum
/// to 1. Upscaling is then plain half-pixel bilinear with edges clamped.
pub fn resize_weights(in_len: usize, out_len: usize) -> Vec<f32> {
    let scale = in_len as f64 / out_len as f64;
    let width = scale.max(1.0);
    let mut m = vec![0f32; out_len * in_len];
    for i in 0..out_len {
        let center = (i as f64 + 0.5) * scale;
        let lo = (center - width + 0.5).floor().max(0.0) as usize;
        let hi = ((center + width + 0.5).floor() as usize).min(in_len);
        let w: Vec<f64> = (lo..hi)
            .map(|j| (1.0 - ((j as f64 + 0.5 - center) / width).abs()).max(0.0))
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
    let (b, c, h, w) = x.dims4()?;
    if h == size && w == size {
        return Ok(x.clone());
    }
    let (rh, rw) = resize_crop_weights(h, w, size);
    let mat = |v: Vec<f32>, n: usize| {
        Tensor::from_vec(v, (size, n), &Device::Cpu)?
            .to_device(x.device())?
            .to_dtype(x.dtype())
    };
    let (rh, rw) = (mat(rh, h)?, mat(rw, w)?);
    // Along W: rows are (b, c, y).
    let y = x.reshape((b * c * h, w))?.matmul(&rw.t()?)?;
    // Along H: rows are (b, c, x_out).
    let y = y
        .reshape((b * c, h, size))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b * c * size, h))?
        .matmul(&rh.t()?)?;
    y.reshape((b * c, size, size))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b, c, size, size))
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
    let stat = |v: [f64; 3]| {
        Tensor::from_vec(v.to_vec(), (1, 3, 1, 1), &Device::Cpu)?
            .to_device(x.device())?
            .to_dtype(x.dtype())
    };
    x.broadcast_sub(&stat(CLIP_MEAN)?)?
        .broadcast_div(&stat(CLIP_STD)?)
}
