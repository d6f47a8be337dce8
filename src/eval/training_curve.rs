//! `training_curve.png`: a run's `metrics.jsonl` drawn as curves over epochs (reward with
//! its ±1 std band, KL to the reference, loss), with a dashed line where a reload took effect.

use super::scatter::register_font;
use crate::train::metrics::EpochMetrics;
use anyhow::{anyhow, Result};
use plotters::prelude::*;
use std::path::Path;

/// A number of a metrics line.
type Field = fn(&EpochMetrics) -> Option<f64>;

/// One curve: its title, its value, and the half-width of the band to shade around it.
struct Curve {
    title: &'static str,
    value: Field,
    band: Option<Field>,
}

const CURVES: [Curve; 3] = [
    Curve {
        title: "reward (mean ± std of the epoch's trajectories)",
        value: |m| m.reward_mean,
        band: Some(|m| m.reward_std),
    },
    Curve {
        title: "KL to the pretrained model (per state)",
        value: |m| m.kl,
        band: None,
    },
    Curve {
        title: "loss",
        value: |m| m.loss,
        band: None,
    },
];

/// Draws `metrics` (a metrics.jsonl) into `png`; curves without values are left out.
pub fn plot_training_curve(metrics: &Path, png: &Path) -> Result<()> {
    register_font();
    let lines = EpochMetrics::read_all(metrics)?;
    let epoch = |l: &EpochMetrics| l.epoch as f64;
    let last = lines.iter().map(epoch).fold(1.0, f64::max);
    let reloads: Vec<f64> = lines
        .windows(2)
        .filter(|w| w[0].script_generation != w[1].script_generation)
        .map(|w| epoch(&w[1]) - 0.5)
        .collect();
    let (pw, ph) = (420u32, 320u32);
    let (w, h) = (pw * CURVES.len() as u32, ph);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        for (c, area) in CURVES.iter().zip(root.split_evenly((1, CURVES.len()))) {
            let pts: Vec<(f64, f64, f64)> = lines
                .iter()
                .filter_map(|l| {
                    let y = (c.value)(l).filter(|y| y.is_finite())?;
                    let s = c.band.and_then(|b| b(l)).unwrap_or(0.0);
                    Some((epoch(l), y, s))
                })
                .collect();
            if pts.is_empty() {
                continue;
            }
            let lo = pts.iter().map(|p| p.1 - p.2).fold(f64::INFINITY, f64::min);
            let hi = pts
                .iter()
                .map(|p| p.1 + p.2)
                .fold(f64::NEG_INFINITY, f64::max);
            let pad = ((hi - lo) * 0.08).max(1e-6);
            let mut chart = ChartBuilder::on(&area)
                .caption(c.title, ("sans-serif", 14))
                .margin(10)
                .x_label_area_size(28)
                .y_label_area_size(48)
                .build_cartesian_2d(0.0..last, (lo - pad)..(hi + pad))
                .map_err(|e| anyhow!("{e}"))?;
            chart
                .configure_mesh()
                .x_desc("epoch")
                .x_label_formatter(&|x| format!("{x:.0}"))
                .x_labels(6)
                .y_labels(6)
                .light_line_style(WHITE)
                .draw()
                .map_err(|e| anyhow!("{e}"))?;
            let blue = RGBColor(31, 119, 180);
            if c.band.is_some() {
                let mut poly: Vec<(f64, f64)> = pts.iter().map(|p| (p.0, p.1 + p.2)).collect();
                poly.extend(pts.iter().rev().map(|p| (p.0, p.1 - p.2)));
                chart
                    .draw_series(std::iter::once(Polygon::new(poly, blue.mix(0.2).filled())))
                    .map_err(|e| anyhow!("{e}"))?;
            }
            chart
                .draw_series(LineSeries::new(
                    pts.iter().map(|p| (p.0, p.1)),
                    blue.stroke_width(2),
                ))
                .map_err(|e| anyhow!("{e}"))?;
            for &x in &reloads {
                let dashes = (0..20).map(|i| {
                    let a = lo - pad + (hi - lo + 2.0 * pad) * i as f64 / 20.0;
                    PathElement::new(vec![(x, a), (x, a + (hi - lo + 2.0 * pad) / 40.0)], RED)
                });
                chart.draw_series(dashes).map_err(|e| anyhow!("{e}"))?;
            }
        }
        root.present().map_err(|e| anyhow!("{e}"))?;
    }
    crate::tensor_io::write_png_atomic(png, &buf, w, h, image::ColorType::Rgb8)
}
