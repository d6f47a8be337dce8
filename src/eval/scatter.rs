//! Scatter plots of 2-D samples as PNG (plotters draws into a buffer, `image` encodes it).
//! The font ships with the project (DejaVu Sans), so no system font is needed.

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

static FONT: Once = Once::new();

pub fn register_font() {
    FONT.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../../assets/DejaVuSans.ttf");
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, bytes);
    });
}

/// One panel: a title, its points, and optional marked locations (mode means, say).
pub struct Panel<'a> {
    pub title: String,
    pub points: &'a [[f64; 2]],
    pub marks: &'a [[f64; 2]],
}

/// Panels side by side (`cols` per row), each over [-lim, lim]^2.
pub fn scatter_png(path: &Path, panels: &[Panel], cols: usize, lim: f64) -> Result<()> {
    register_font();
    let cols = cols.max(1);
    let rows = panels.len().div_ceil(cols);
    let (pw, ph) = (360u32, 380u32);
    let (w, h) = (pw * cols as u32, ph * rows as u32);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        let areas = root.split_evenly((rows, cols));
        for (p, area) in panels.iter().zip(areas) {
            let mut chart = ChartBuilder::on(&area)
                .caption(&p.title, ("sans-serif", 16))
                .margin(8)
                .x_label_area_size(24)
                .y_label_area_size(30)
                .build_cartesian_2d(-lim..lim, -lim..lim)
                .map_err(|e| anyhow!("{e}"))?;
            chart
                .configure_mesh()
                .x_labels(5)
                .y_labels(5)
                .light_line_style(WHITE)
                .draw()
                .map_err(|e| anyhow!("{e}"))?;
            let blue = RGBColor(31, 119, 180).mix(0.35);
            chart
                .draw_series(
                    p.points
                        .iter()
                        .map(|q| Circle::new((q[0], q[1]), 2, blue.filled())),
                )
                .map_err(|e| anyhow!("{e}"))?;
            chart
                .draw_series(
                    p.marks
                        .iter()
                        .map(|q| Cross::new((q[0], q[1]), 5, RED.stroke_width(2))),
                )
                .map_err(|e| anyhow!("{e}"))?;
        }
        root.present().map_err(|e| anyhow!("{e}"))?;
    }
    crate::tensor_io::write_png_atomic(path, &buf, w, h, image::ColorType::Rgb8)
}
