//! Nearest-neighbour upsampling built from broadcast and index-select, whose backward sums
//! into the gradient already there. candle's `upsample_nearest2d` backward overwrites it
//! instead (CANDLE-NOTES), which would be wrong as soon as its input feeds anything else.

use candle_core::{Result, Tensor};

/// [B, C, H, W] -> [B, C, 2H, 2W], every pixel repeated 2x2 (torch's
/// `F.interpolate(x, scale_factor=2, mode="nearest")`).
pub fn upsample_nearest2x(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    x.reshape((b, c, h, 1, w, 1))?
        .broadcast_as((b, c, h, 2, w, 2))?
        .reshape((b, c, 2 * h, 2 * w))
}

/// [B, C, H, W] -> [B, C, out_h, out_w] with torch's "nearest" rule (source index
/// floor(i * in / out)); diffusers upsamples to the skip connection's size when the input
/// is not a multiple of 2^levels. Exact doubling takes the cheaper broadcast path.
pub fn upsample_nearest(x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if out_h == 2 * h && out_w == 2 * w {
        return upsample_nearest2x(x);
    }
    let index = |n_in: usize, n_out: usize| {
        let ids: Vec<u32> = (0..n_out).map(|i| (i * n_in / n_out) as u32).collect();
        Tensor::from_vec(ids, n_out, x.device())
    };
    x.index_select(&index(h, out_h)?, 2)?
        .index_select(&index(w, out_w)?, 3)
}
