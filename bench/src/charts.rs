//! Charts a person can look at: latency percentiles per target, and throughput per workload
//! relative to direct. Each is written as SVG and PNG from the same drawing code.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::report::Report;
use crate::workload::Primary;

#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    #[error("drawing {path}: {detail}")]
    Draw { path: PathBuf, detail: String },
}

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

#[derive(Clone, Copy)]
enum Chart {
    Latency,
    Throughput,
}

/// Writes `latency.{svg,png}` and `throughput.{svg,png}` into `dir`; returns the paths.
pub fn write_all(r: &Report, dir: &Path) -> Result<Vec<PathBuf>, ChartError> {
    let mut written = Vec::new();
    let lat_panels = latency_workloads(r).len().max(1) as u32;
    let lat_size = (1000, 300 * lat_panels.div_ceil(2) + 40);
    let bars = (r.workloads.len() * r.targets.len().max(1)) as u32;
    let thr_size = (1000, 80 + 9 * bars + 10 * r.workloads.len() as u32);
    for (name, size, chart) in [
        ("latency", lat_size, Chart::Latency),
        ("throughput", thr_size, Chart::Throughput),
    ] {
        let svg = dir.join(format!("{name}.svg"));
        draw(SVGBackend::new(&svg, size).into_drawing_area(), chart, r).map_err(|detail| {
            ChartError::Draw {
                path: svg.clone(),
                detail,
            }
        })?;
        written.push(svg);
        let png = dir.join(format!("{name}.png"));
        draw(BitMapBackend::new(&png, size).into_drawing_area(), chart, r).map_err(|detail| {
            ChartError::Draw {
                path: png.clone(),
                detail,
            }
        })?;
        written.push(png);
    }
    Ok(written)
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    chart: Chart,
    r: &Report,
) -> Result<(), String> {
    match chart {
        Chart::Latency => latency_on(&root, r),
        Chart::Throughput => throughput_on(&root, r),
    }
    .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

fn latency_workloads(r: &Report) -> Vec<String> {
    r.workloads
        .iter()
        .filter(|w| w.id.ends_with("-c1") || w.id.starts_with("connect/"))
        .map(|w| w.id.clone())
        .collect()
}

/// The throughput axis stops here: one outlier (pgbouncer reusing server sessions on
/// connect) would squash every other bar, so longer bars carry their value as a label.
const CAP: f64 = 2.0;

const PCT_NAMES: [&str; 5] = ["p50", "p90", "p99", "p99.9", "max"];

fn latency_on<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    r: &Report,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let root = root.titled(
        "Latency percentiles per target (µs, log scale)",
        ("sans-serif", 22),
    )?;
    let ids = latency_workloads(r);
    let panels = root.split_evenly((ids.len().div_ceil(2).max(1), 2));
    for (id, panel) in ids.iter().zip(panels.iter()) {
        let series: Vec<(usize, &str, [f64; 5])> = r
            .targets
            .iter()
            .enumerate()
            .filter_map(|(i, t)| {
                let m = r.result(id, &t.name).filter(|m| m.error.is_none())?;
                let l = m.latency_us;
                Some((i, t.name.as_str(), [l.p50, l.p90, l.p99, l.p999, l.max]))
            })
            .collect();
        let hi = series.iter().flat_map(|s| s.2).fold(10.0f64, f64::max) * 1.5;
        let lo = series
            .iter()
            .flat_map(|s| s.2)
            .filter(|v| *v > 0.0)
            .fold(hi, f64::min)
            .max(1.0)
            / 1.5;
        let mut chart = ChartBuilder::on(panel)
            .caption(id, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(24)
            .y_label_area_size(56)
            .build_cartesian_2d(-0.2f64..4.2f64, (lo..hi).log_scale())?;
        chart
            .configure_mesh()
            .x_labels(5)
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 0.01 && (0.0..5.0).contains(&i) {
                    PCT_NAMES[i as usize].to_string()
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()?;
        for (i, name, pts) in &series {
            let color = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(
                    pts.iter().enumerate().map(|(k, v)| (k as f64, v.max(lo))),
                    color.stroke_width(2),
                ))?
                .label(*name)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 12))
            .draw()?;
    }
    Ok(())
}

/// Throughput relative to direct: 1/ratio for time-judged workloads, the ratio for TPS.
fn relative(r: &Report, workload: &str, primary: Primary, target: &str) -> Option<f64> {
    let m = r.result(workload, target)?;
    let ratio = if target == "direct" {
        Some(1.0)
    } else {
        m.ratio_to_direct
    }?;
    Some(match primary {
        Primary::WallSeconds => 1.0 / ratio,
        Primary::Tps => ratio,
    })
}

fn throughput_on<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    r: &Report,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let n = r.workloads.len().max(1);
    let k = r.targets.len().max(1) as f64;
    let xmax = r
        .workloads
        .iter()
        .flat_map(|w| {
            r.targets
                .iter()
                .filter_map(|t| relative(r, &w.id, w.primary, &t.name))
        })
        .fold(1.2f64, f64::max)
        .min(CAP)
        * 1.1;
    let ids: Vec<String> = r.workloads.iter().map(|w| w.id.clone()).collect();
    let mut chart = ChartBuilder::on(root)
        .caption(
            "Throughput relative to direct (1.0 = direct; higher is better)",
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(230)
        .build_cartesian_2d(0f64..xmax, 0f64..n as f64)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n * 2 + 1)
        .y_label_formatter(&|y| {
            // Labels sit at the middle of each workload's band.
            let i = (y - 0.5).round();
            if (y - 0.5 - i).abs() < 0.01 && i >= 0.0 && (i as usize) < ids.len() {
                ids[ids.len() - 1 - i as usize].clone()
            } else {
                String::new()
            }
        })
        .x_desc("relative throughput")
        .draw()?;
    for (j, t) in r.targets.iter().enumerate() {
        let color = PALETTE[j % PALETTE.len()];
        let bars: Vec<Rectangle<(f64, f64)>> = r
            .workloads
            .iter()
            .enumerate()
            .filter_map(|(i, w)| {
                let v = relative(r, &w.id, w.primary, &t.name)?;
                // Top-down order: the first workload is drawn at the top.
                let band = (n - 1 - i) as f64;
                let y0 = band + 0.1 + 0.8 * j as f64 / k;
                let y1 = band + 0.1 + 0.8 * (j + 1) as f64 / k;
                Some(Rectangle::new(
                    [(0.0, y0), (v.min(CAP), y1)],
                    color.filled(),
                ))
            })
            .collect();
        let clipped: Vec<Text<'_, (f64, f64), String>> = r
            .workloads
            .iter()
            .enumerate()
            .filter_map(|(i, w)| {
                let v = relative(r, &w.id, w.primary, &t.name).filter(|v| *v > CAP)?;
                let band = (n - 1 - i) as f64;
                let y = band + 0.1 + 0.8 * (j as f64 + 0.9) / k;
                Some(Text::new(
                    format!("{v:.1}x"),
                    (CAP * 1.01, y),
                    ("sans-serif", 11).into_font(),
                ))
            })
            .collect();
        chart.draw_series(clipped)?;
        chart
            .draw_series(bars)?
            .label(t.name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    chart.draw_series(std::iter::once(PathElement::new(
        [(1.0, 0.0), (1.0, n as f64)],
        BLACK.stroke_width(1),
    )))?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}
