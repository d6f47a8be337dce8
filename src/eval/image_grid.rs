//! Grids of images as PNG: one row per prompt, the same seeds in the same places, so grids
//! of two models can be compared cell by cell. Grey-scale (the digits) or RGB (SD samples).

use anyhow::{bail, Result};
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
    save(path, images, rows, cols, zoom, 1)
}

/// images [rows * cols, 3, h, w] in [-1, 1] (decoded SD samples), row-major, as an RGB PNG
/// with a 2-pixel grey gutter.
pub fn save_rgb_grid(path: &Path, images: &Tensor, rows: usize, cols: usize) -> Result<()> {
    save(path, images, rows, cols, 1, 3)
}

fn save(
    path: &Path,
    images: &Tensor,
    rows: usize,
    cols: usize,
    zoom: usize,
    channels: usize,
) -> Result<()> {
    let (n, c, h, w) = images.dims4()?;
    if n != rows * cols || c != channels {
        bail!(
            "a {rows}x{cols} grid needs [{}, {channels}, h, w] images, got {:?}",
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
    let mut buf = vec![128u8; gw * gh * c];
    for i in 0..n {
        let (r, k) = (i / cols, i % cols);
        for y in 0..h * zoom {
            for x in 0..w * zoom {
                for p in 0..c {
                    let v = px[((i * c + p) * h + y / zoom) * w + x / zoom];
                    let g = ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8;
                    buf[((gut + r * ch + y) * gw + gut + k * cw + x) * c + p] = g;
                }
            }
        }
    }
    let color = if c == 3 {
        image::ColorType::Rgb8
    } else {
        image::ColorType::L8
    };
    crate::tensor_io::write_png_atomic(path, &buf, gw as u32, gh as u32, color)
}
