//! Grids of grey-scale images as PNG: one row per prompt, the same seeds in the same places,
//! so grids of two models can be compared cell by cell.

use anyhow::{anyhow, bail, Result};
use candle_core::Tensor;
use std::path::Path;

/// images [rows * cols, 1, h, w] in [-1, 1], row-major, each cell scaled up by `zoom`, with a
/// 2-pixel grey gutter.
pub fn save_grid(
    path: &Path,
    images: &Tensor,
    rows: usize,
    cols: usize,
    zoom: usize,
) -> Result<()> {
    let (n, c, h, w) = images.dims4()?;
    if n != rows * cols || c != 1 {
        bail!(
            "a {rows}x{cols} grid needs [{}, 1, h, w] images, got {:?}",
            rows * cols,
            images.dims()
        );
    }
    let px = images
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let gut = 2;
    let (cw, ch) = (w * zoom + gut, h * zoom + gut);
    let (gw, gh) = (cols * cw + gut, rows * ch + gut);
    let mut buf = vec![128u8; gw * gh];
    for i in 0..n {
        let (r, k) = (i / cols, i % cols);
        for y in 0..h * zoom {
            for x in 0..w * zoom {
                let v = px[i * h * w + (y / zoom) * w + x / zoom];
                let g = ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8;
                buf[(gut + r * ch + y) * gw + gut + k * cw + x] = g;
            }
        }
    }
    image::save_buffer(path, &buf, gw as u32, gh as u32, image::ColorType::L8)
        .map_err(|e| anyhow!("writing {}: {e}", path.display()))
}

/// images [rows * cols, 3, h, w] in [-1, 1] (decoded SD samples), row-major, as an RGB PNG
/// with a 2-pixel grey gutter.
pub fn save_rgb_grid(path: &Path, images: &Tensor, rows: usize, cols: usize) -> Result<()> {
    let (n, c, h, w) = images.dims4()?;
    if n != rows * cols || c != 3 {
        bail!(
            "a {rows}x{cols} RGB grid needs [{}, 3, h, w] images, got {:?}",
            rows * cols,
            images.dims()
        );
    }
    let px = images
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let gut = 2;
    let (cw, ch) = (w + gut, h + gut);
    let (gw, gh) = (cols * cw + gut, rows * ch + gut);
    let mut buf = vec![128u8; gw * gh * 3];
    for i in 0..n {
        let (r, k) = (i / cols, i % cols);
        for y in 0..h {
            for x in 0..w {
                for ch_i in 0..3 {
                    let v = px[((i * 3 + ch_i) * h + y) * w + x];
                    let g = ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8;
                    buf[((gut + r * ch + y) * gw + gut + k * cw + x) * 3 + ch_i] = g;
                }
            }
        }
    }
    image::save_buffer(path, &buf, gw as u32, gh as u32, image::ColorType::Rgb8)
        .map_err(|e| anyhow!("writing {}: {e}", path.display()))
}
