//! SVG plots of a scenario's windows.

use std::path::Path;

use plotters::prelude::*;

use super::{ScenarioResult, Window};

type Series<'a> = (&'a str, RGBColor, fn(&Window) -> Option<u64>);

/// Draws retrieve and store p50/p99 (and the reference's p50) per window, in µs.
pub(super) fn write_svg(path: &Path, result: &ScenarioResult) -> Result<(), String> {
    let series: [Series<'_>; 5] = [
        ("retrieve p50", BLUE, |w| Some(w.retrieve.p50_ns)),
        ("retrieve p99", CYAN, |w| Some(w.retrieve.p99_ns)),
        ("store p50", RED, |w| {
            (w.store.count > 0).then_some(w.store.p50_ns)
        }),
        ("BTreeMap retrieve p50", GREEN, |w| {
            w.reference.map(|r| r.p50_ns)
        }),
        ("BTreeMap retrieve p99", BLACK, |w| {
            w.reference.map(|r| r.p99_ns)
        }),
    ];
    let max_us = result
        .windows
        .iter()
        .flat_map(|w| series.iter().filter_map(move |(_, _, f)| f(w)))
        .max()
        .unwrap_or(1) as f64
        / 1000.0;
    let windows = result.windows.len().max(1) as u32;
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("phoenix-node bench: {}", result.name),
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(1u32..windows, 0f64..max_us * 1.1)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("window (tenth of the operations)")
        .y_desc("latency (µs)")
        .draw()
        .map_err(|e| e.to_string())?;
    for (label, color, value) in series {
        let points: Vec<(u32, f64)> = result
            .windows
            .iter()
            .enumerate()
            .filter_map(|(i, w)| value(w).map(|ns| (i as u32 + 1, ns as f64 / 1000.0)))
            .collect();
        if points.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}
