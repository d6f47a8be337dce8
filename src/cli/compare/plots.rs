//! The paper's trade-off figures: alignment and diversity against the target reward, along
//! training (Fig. 3) and across a swept hyperparameter after training (Fig. 4). Drawn as the
//! rest of the project draws: plotters into an RGB buffer, `image` encodes the PNG.

use super::axis::{clamp, robust_range};
use super::summary::{compact, gold_is_the_oracle, groups, mean_std, metric, symbol};
use super::RunResult;
use crate::eval::scatter::register_font;
use anyhow::{anyhow, Result};
use plotters::prelude::*;
use serde_json::Value as Json;
use std::path::Path;

/// The panels: each the y metric, its axis title, and the caption's start.
type Panels = [(&'static str, &'static str, &'static str)];

/// Fig. 3 and Fig. 4's panels for the digits and the toy.
#[rustfmt::skip]
const PANELS: &Panels = &[
    ("alignment_prob", "alignment (classifier prob.)", "alignment"),
    ("diversity_feature", "diversity (feature)", "feature diversity"),
    ("diversity_lpips", "diversity (LPIPS)", "LPIPS diversity"),
];

/// The paper's own panels for SD-1.5 (Fig. 3): alignment by ImageReward and HPSv2,
/// diversity by LPIPS and DreamSim.
#[rustfmt::skip]
const SD_PANELS: &Panels = &[
    ("image_reward", "ImageReward", "ImageReward"),
    ("hps", "HPSv2", "HPSv2"),
    ("diversity_lpips", "diversity (LPIPS)", "LPIPS diversity"),
    ("diversity_dreamsim", "diversity (DreamSim)", "DreamSim diversity"),
];

/// Whether some run is an sd15 run (its evaluations always report the aesthetic and CLIP
/// scores).
pub(super) fn has_sd15_runs(results: &[RunResult]) -> bool {
    let sd = |e: &Json| metric(e, "aesthetic").is_some() && metric(e, "clip_score").is_some();
    results.iter().any(|r| sd(&r.after))
}

/// SD-1.5's panels when some run is an sd15 run, the digits' otherwise.
fn trade_off_panels(results: &[RunResult]) -> &'static Panels {
    if has_sd15_runs(results) {
        SD_PANELS
    } else {
        PANELS
    }
}

/// The black-box figure's panels: the oracle's noise-free reward (the digits' gold score),
/// and what Table 1 says it costs.
#[rustfmt::skip]
const ORACLE_PANELS: &Panels = &[
    ("gold", "oracle reward (noise-free)", "oracle reward"),
    ("alignment_prob", "alignment (classifier prob.)", "alignment"),
    ("diversity_feature", "diversity (feature)", "feature diversity"),
];

/// The same when some run's oracle was not the gold score: the first panel is then only
/// the gold score.
#[rustfmt::skip]
const GOLD_PANELS: &Panels = &[
    ("gold", "gold score", "gold score"),
    ORACLE_PANELS[1],
    ORACLE_PANELS[2],
];

/// What the x axis shows: the metric key, its axis title and the captions' "vs ...", and
/// whether it counts something (queries), so that its ticks and notes are whole numbers.
struct XAxis {
    key: &'static str,
    title: &'static str,
    counts: bool,
}

impl XAxis {
    /// An x value as the notes beside clamped points write it.
    fn text(&self, v: f64) -> String {
        if self.counts {
            format!("{v:.0}")
        } else {
            format!("{v:.3}")
        }
    }
}

const TARGET: XAxis = XAxis {
    key: "reward",
    title: "target reward",
    counts: false,
};

const QUERIES: XAxis = XAxis {
    key: "queries_used",
    title: "oracle queries used",
    counts: true,
};

/// Twenty colours that stay apart on white (tab10, then darker and brighter ones: the
/// shipped comparison draws 13 methods in Fig. 3); more methods reuse them, in order.
#[rustfmt::skip]
const PALETTE: [RGBColor; 20] = [
    RGBColor(31, 119, 180), RGBColor(255, 127, 14), RGBColor(44, 160, 44),
    RGBColor(214, 39, 40), RGBColor(148, 103, 189), RGBColor(140, 86, 75),
    RGBColor(227, 119, 194), RGBColor(127, 127, 127), RGBColor(188, 189, 34),
    RGBColor(23, 190, 207), RGBColor(0, 0, 128), RGBColor(0, 100, 0),
    RGBColor(0, 0, 0), RGBColor(139, 0, 139), RGBColor(128, 128, 0),
    RGBColor(0, 128, 128), RGBColor(250, 128, 114), RGBColor(218, 165, 32),
    RGBColor(47, 79, 79), RGBColor(50, 205, 50),
];

const PANEL: (u32, u32) = (440, 360);
const LEGEND_COLS: usize = 4;
const LEGEND_ROW: u32 = 22;

/// One method's line: per point the target reward, the panels' metrics, and the text
/// written beside the point (Fig. 4's swept value).
struct Series {
    name: String,
    points: Vec<(f64, Vec<f64>, String)>,
}

/// The image size: the panels side by side, and a legend strip below them with as many
/// rows as the series need (under the panels, the legend never hides a point).
fn size(n_panels: usize, n_series: usize) -> (u32, u32) {
    let rows = n_series.div_ceil(LEGEND_COLS) as u32;
    (PANEL.0 * n_panels as u32, PANEL.1 + rows * LEGEND_ROW + 8)
}

/// A point from the seeds' evals at one checkpoint or sweep value: the reward and the panel
/// metrics, each the mean of the seeds' finite values (as the table's cells are).
fn averaged(evals: &[&Json], note: String, x: &XAxis, panels: &Panels) -> (f64, Vec<f64>, String) {
    let avg = |k: &str| {
        let v: Vec<f64> = evals.iter().filter_map(|e| metric(e, k)).collect();
        mean_std(&v).map_or(f64::NAN, |m| m.0)
    };
    (avg(x.key), panels.iter().map(|p| avg(p.0)).collect(), note)
}

/// Fig. 3: for each method (no sweep), its seed-averaged curve, checkpoint by checkpoint,
/// from the pretrained model (epoch 0, the hollow marker) to the last checkpoint.
pub fn plot_along_training(results: &[RunResult], png: &Path) -> Result<()> {
    along(results, png, &TARGET, trade_off_panels(results))
}

/// The black-box comparison's figure: the oracle reward (the gold score, named so only
/// when it is every run's oracle), alignment and diversity against the oracle queries
/// used, checkpoint by checkpoint (one checkpoint per round).
pub fn plot_oracle_vs_queries(results: &[RunResult], png: &Path) -> Result<()> {
    let panels = if gold_is_the_oracle(results) {
        ORACLE_PANELS
    } else {
        GOLD_PANELS
    };
    along(results, png, &QUERIES, panels)
}

fn along(results: &[RunResult], png: &Path, x: &XAxis, panels: &Panels) -> Result<()> {
    let plain = results.iter().filter(|r| r.sweep.is_none());
    let series: Vec<Series> = groups(plain, |r| r.label.clone())
        .into_iter()
        .map(|seeds| {
            let mut epochs: Vec<usize> = seeds[0].curve.iter().map(|c| c.0).collect();
            epochs.sort_unstable();
            epochs.dedup();
            // Only checkpoints every seed reached: a point is the mean of the same seeds.
            epochs.retain(|e| seeds.iter().all(|s| s.curve.iter().any(|c| c.0 == *e)));
            let points = epochs.iter().map(|&e| {
                let evals: Vec<&Json> = seeds
                    .iter()
                    .filter_map(|s| s.curve.iter().find(|c| c.0 == e))
                    .map(|c| &c.1)
                    .collect();
                averaged(&evals, String::new(), x, panels)
            });
            Series {
                name: seeds[0].label.clone(),
                points: points.collect(),
            }
        })
        .collect();
    draw(png, &series, "along training", true, x, panels)
}

/// Fig. 4: for each swept method, one point per swept value (the final eval, averaged over
/// seeds), in increasing order of the value, each written beside its point.
pub fn plot_alpha_tradeoff(results: &[RunResult], png: &Path) -> Result<()> {
    let panels = trade_off_panels(results);
    let swept = results.iter().filter(|r| r.sweep.is_some());
    let value = |r: &RunResult| r.sweep.as_ref().map_or(f64::NAN, |s| s.1);
    let series: Vec<Series> = groups(swept, |r| r.label.clone())
        .into_iter()
        .map(|runs| {
            let name = runs[0].label.clone();
            let mut by_value = groups(runs, |r| format!("{:x}", value(r).to_bits()));
            by_value.sort_by(|a, b| value(a[0]).total_cmp(&value(b[0])));
            let points = by_value.iter().map(|same| {
                let (key, v) = same[0].sweep.clone().unwrap_or_default();
                let evals: Vec<&Json> = same.iter().map(|r| &r.after).collect();
                averaged(
                    &evals,
                    format!("{}={}", symbol(&key), compact(v)),
                    &TARGET,
                    panels,
                )
            });
            Series {
                name,
                points: points.collect(),
            }
        })
        .collect();
    let mut keys: Vec<&str> = Vec::new();
    for r in results {
        if let Some(k) = r.sweep.as_ref().map(|s| symbol(&s.0)) {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
    }
    let caption = format!("across {}", keys.join(", "));
    draw(png, &series, &caption, false, &TARGET, panels)
}

/// Draws the three panels and the legend; `hollow_start` marks each line's first point
/// (the pretrained model) so the direction of training reads off the figure. The axes span
/// the bulk of the points (`axis::robust_range`); a point outside is drawn on the edge as a
/// triangle with its true coordinates beside it.
fn draw(
    png: &Path,
    series: &[Series],
    caption_tail: &str,
    hollow_start: bool,
    x: &XAxis,
    panels: &Panels,
) -> Result<()> {
    register_font();
    let e = |e: DrawingAreaErrorKind<_>| anyhow!("{e}");
    let (w, h) = size(panels.len(), series.len());
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(e)?;
        let (top, legend) = root.split_vertically(PANEL.1);
        let all = || series.iter().flat_map(|s| s.points.iter());
        let xr = robust_range(all().map(|p| p.0));
        for (k, area) in top.split_evenly((1, panels.len())).iter().enumerate() {
            // Notes of clamped points so far, below and at the top edge.
            let mut clamped_notes = [0i32; 2];
            let (_, ytitle, what) = panels[k];
            // Points whose reward or this metric is absent are left out of this panel only.
            let yr = robust_range(all().map(|p| p.1[k]));
            // (x, y) on the panel, whether it was clamped there, and the text beside it.
            let finite = |s: &Series| -> Vec<(f64, f64, bool, String)> {
                s.points
                    .iter()
                    .filter(|p| p.0.is_finite() && p.1[k].is_finite())
                    .map(|p| {
                        let ((cx, ox), (cy, oy)) = (clamp(p.0, &xr), clamp(p.1[k], &yr));
                        let mut note = p.2.clone();
                        if ox || oy {
                            let true_xy = format!("({}, {:.3})", x.text(p.0), p.1[k]);
                            note = [note, true_xy].join(" ").trim().to_string();
                        }
                        (cx, cy, ox || oy, note)
                    })
                    .collect()
            };
            let mut chart = ChartBuilder::on(area)
                .caption(
                    format!("{what} vs {} {caption_tail}", x.title),
                    ("sans-serif", 15),
                )
                .margin(10)
                .x_label_area_size(36)
                .y_label_area_size(56)
                .build_cartesian_2d(xr.clone(), yr.clone())
                .map_err(e)?;
            let whole = |v: &f64| x.text(*v);
            let mut mesh = chart.configure_mesh();
            mesh.x_desc(x.title)
                .y_desc(ytitle)
                .x_labels(6)
                .y_labels(6)
                .light_line_style(WHITE);
            if x.counts {
                mesh.x_label_formatter(&whole);
            }
            mesh.draw().map_err(e)?;
            for (i, s) in series.iter().enumerate() {
                let c = PALETTE[i % PALETTE.len()];
                let pts = finite(s);
                let xy = || pts.iter().map(|p| (p.0, p.1));
                chart
                    .draw_series(LineSeries::new(xy(), c.stroke_width(2)))
                    .map_err(e)?;
                let marks = pts.iter().enumerate().map(|(j, p)| {
                    let style = if j == 0 && hollow_start {
                        c.stroke_width(2)
                    } else {
                        c.filled()
                    };
                    let at = EmptyElement::at((p.0, p.1));
                    if p.2 {
                        at + TriangleMarker::new((0, 0), 6, style).into_dyn()
                    } else {
                        at + Circle::new((0, 0), 4, style).into_dyn()
                    }
                });
                chart.draw_series(marks).map_err(e)?;
                let mut notes = Vec::new();
                for p in pts.iter().filter(|p| !p.3.is_empty()) {
                    // A note in the right half or at the top edge is written inward, so that
                    // it stays inside the panel; the notes of clamped points (which share
                    // an edge, often a corner) are stacked one line apart.
                    let right = p.0 > 0.5 * (xr.start + xr.end);
                    let dx = if right {
                        -7 * p.3.chars().count() as i32
                    } else {
                        6
                    };
                    let top = p.1 >= yr.end;
                    let mut dy = if top { 6 } else { -16 };
                    if p.2 {
                        let n = &mut clamped_notes[top as usize];
                        dy += if top { 14 } else { -14 } * *n;
                        *n += 1;
                    }
                    notes.push(
                        EmptyElement::at((p.0, p.1))
                            + Text::new(
                                p.3.clone(),
                                (dx, dy),
                                ("sans-serif", 12).into_font().color(&c),
                            ),
                    );
                }
                chart.draw_series(notes).map_err(e)?;
            }
        }
        let cw = (w / LEGEND_COLS as u32) as i32;
        for (i, s) in series.iter().enumerate() {
            let c = PALETTE[i % PALETTE.len()];
            let x = 20 + cw * (i % LEGEND_COLS) as i32;
            let y = 12 + LEGEND_ROW as i32 * (i / LEGEND_COLS) as i32;
            let line = PathElement::new(vec![(x, y), (x + 28, y)], c.stroke_width(2));
            let name = Text::new(s.name.clone(), (x + 36, y - 8), ("sans-serif", 14));
            legend.draw(&line).map_err(e)?;
            legend
                .draw(&Circle::new((x + 14, y), 4, c.filled()))
                .map_err(e)?;
            legend.draw(&name).map_err(e)?;
        }
        root.present().map_err(e)?;
    }
    crate::tensor_io::write_png_atomic(png, &buf, w, h, image::ColorType::Rgb8)
}

#[cfg(test)]
mod tests {
    use super::super::report::tests::run;
    use super::*;

    fn check(png: &Path, n_series: usize) {
        let img = image::open(png).unwrap();
        assert_eq!((img.width(), img.height()), size(3, n_series));
    }

    #[test]
    fn a_count_axis_writes_whole_numbers() {
        assert_eq!(QUERIES.text(1440.0), "1440");
        assert_eq!(TARGET.text(2.5), "2.500");
    }

    #[test]
    fn both_figures_draw_and_decode() {
        let dir = tempfile::tempdir().unwrap();
        let mut nan = run("DRaFT-1", 0, None, 2.0);
        nan.curve[1].1["alignment_prob"] = serde_json::json!(f64::NAN);
        nan.curve[2].1.as_object_mut().unwrap().remove("reward");
        let mut rs = vec![
            run("SQDF", 0, None, 1.0),
            run("SQDF", 1, None, 3.0),
            nan,
            run("SQDF", 0, Some(2.0), 1.0),
            run("SQDF", 1, Some(2.0), 1.5),
            run("SQDF", 0, Some(0.5), 2.0),
            run("DRaFT-1", 0, Some(1.0), 2.0),
        ];
        rs.extend((0..13).map(|i| run(&format!("m{i}"), 0, None, i as f64)));
        // A collapsed run far outside the others: drawn clamped to the edge, with its note.
        rs.push(run("collapse", 0, None, 300.0));
        let (f3, f4) = (dir.path().join("f3.png"), dir.path().join("f4.png"));
        plot_along_training(&rs, &f3).unwrap();
        plot_alpha_tradeoff(&rs, &f4).unwrap();
        plot_oracle_vs_queries(&rs, &f3).unwrap();
        check(&f3, 16);
        check(&f4, 2);
        // One run: a single point per series in Fig. 4, a flat reward in Fig. 3.
        let mut flat = run("flat", 0, Some(1.0), 0.0);
        flat.curve.truncate(1);
        let plain = RunResult {
            sweep: None,
            ..flat.clone()
        };
        plot_along_training(&[plain], &f3).unwrap();
        plot_alpha_tradeoff(&[flat], &f4).unwrap();
        check(&f3, 1);
        check(&f4, 1);
        // Nothing to draw still makes a (blank) figure rather than an error.
        plot_alpha_tradeoff(&[], &f4).unwrap();
        check(&f4, 0);
    }

    #[test]
    fn sd15_runs_get_the_papers_four_panels() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = run("SQDF", 0, None, 1.0);
        let sd = |e: &mut Json| {
            e["aesthetic"] = serde_json::json!(5.0);
            e["clip_score"] = serde_json::json!(0.3);
            e["image_reward"] = serde_json::json!(0.1);
            e["hps"] = serde_json::json!(0.2);
            e["diversity_dreamsim"] = serde_json::json!(0.5);
        };
        r.curve.iter_mut().for_each(|(_, e)| sd(e));
        sd(&mut r.after);
        let f3 = dir.path().join("f3.png");
        plot_along_training(std::slice::from_ref(&r), &f3).unwrap();
        let img = image::open(&f3).unwrap();
        assert_eq!((img.width(), img.height()), size(4, 1));
    }
}
