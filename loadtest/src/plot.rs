//! Throughput and latency over time, as an SVG an operator opens in a browser.
//!
//! Top: submissions offered and answers observed per second. Bottom: p50 and p99 latency of the
//! answers observed in each second. SVG needs no system fonts (the viewer draws the text);
//! PNG would, so it is refused with a clear error rather than drawn without labels.

use std::path::Path;

use plotters::prelude::*;

use crate::error::{LoadTestError, LoadTestErrorKind};
use crate::measure::SeriesPoint;

/// Size of the plot, pixels.
pub const PLOT_SIZE: (u32, u32) = (1000, 700);

fn plot_error(error: impl std::fmt::Display) -> LoadTestError {
    LoadTestError::new(LoadTestErrorKind::Output, format!("plot: {error}"))
}

/// Checks that `path` names a format this build draws (`.svg`).
pub fn check_plot_path(path: &Path) -> Result<(), LoadTestError> {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
    {
        Some(ext) if ext == "svg" => Ok(()),
        Some(ext) if ext == "png" => Err(LoadTestError::new(
            LoadTestErrorKind::PlotFormat,
            format!(
                "{}: PNG needs system fonts this build does not use; write .svg (any browser shows it, `rsvg-convert` turns it into PNG)",
                path.display()
            ),
        )),
        _ => Err(LoadTestError::new(
            LoadTestErrorKind::PlotFormat,
            format!("{}: the plot file must end in .svg", path.display()),
        )),
    }
}

/// Draws `points` to the SVG file `path`; `title` heads it, `window` (seconds) marks the
/// measured part.
pub fn write_plot(
    path: &Path,
    title: &str,
    points: &[SeriesPoint],
    window: (f64, f64),
) -> Result<(), LoadTestError> {
    check_plot_path(path)?;
    let root = SVGBackend::new(path, PLOT_SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let root = root.titled(title, ("sans-serif", 18)).map_err(plot_error)?;
    let (top, bottom) = root.split_vertically(PLOT_SIZE.1 / 2 - 20);
    let t_max = points.len().max(1) as f64;
    let rate_max = points
        .iter()
        .map(|p| p.offered.max(p.answered))
        .max()
        .unwrap_or(0)
        .max(1) as f64
        * 1.1;
    let latency_max = points.iter().map(|p| p.p99_ms).fold(0.0, f64::max).max(1.0) * 1.1;

    let mut rates = ChartBuilder::on(&top)
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .caption("throughput per second", ("sans-serif", 14))
        .build_cartesian_2d(0f64..t_max, 0f64..rate_max)
        .map_err(plot_error)?;
    rates
        .configure_mesh()
        .x_desc("seconds since the load began")
        .y_desc("payments/s")
        .draw()
        .map_err(plot_error)?;
    draw_window(&mut rates, window, rate_max)?;
    rates
        .draw_series(LineSeries::new(
            points.iter().map(|p| (f64::from(p.t_s), p.offered as f64)),
            &BLUE,
        ))
        .map_err(plot_error)?
        .label("offered")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    rates
        .draw_series(LineSeries::new(
            points.iter().map(|p| (f64::from(p.t_s), p.answered as f64)),
            &GREEN,
        ))
        .map_err(plot_error)?
        .label("answered")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN));
    rates
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)?;

    let mut latency = ChartBuilder::on(&bottom)
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .caption(
            "latency of the answers observed each second",
            ("sans-serif", 14),
        )
        .build_cartesian_2d(0f64..t_max, 0f64..latency_max)
        .map_err(plot_error)?;
    latency
        .configure_mesh()
        .x_desc("seconds since the load began")
        .y_desc("ms")
        .draw()
        .map_err(plot_error)?;
    draw_window(&mut latency, window, latency_max)?;
    let answered: Vec<&SeriesPoint> = points.iter().filter(|p| p.answered > 0).collect();
    latency
        .draw_series(LineSeries::new(
            answered.iter().map(|p| (f64::from(p.t_s), p.p50_ms)),
            &BLUE,
        ))
        .map_err(plot_error)?
        .label("p50")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    latency
        .draw_series(LineSeries::new(
            answered.iter().map(|p| (f64::from(p.t_s), p.p99_ms)),
            &RED,
        ))
        .map_err(plot_error)?
        .label("p99")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    latency
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)?;
    root.present().map_err(plot_error)
}

/// Grey vertical lines at the start and end of the measured window.
fn draw_window<DB: DrawingBackend>(
    chart: &mut ChartContext<
        '_,
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    (start, end): (f64, f64),
    y_max: f64,
) -> Result<(), LoadTestError>
where
    DB::ErrorType: 'static,
{
    for x in [start, end] {
        chart
            .draw_series(LineSeries::new(vec![(x, 0.0), (x, y_max)], BLACK.mix(0.3)))
            .map_err(plot_error)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn points() -> Vec<SeriesPoint> {
        (0..10)
            .map(|t| SeriesPoint {
                t_s: t,
                offered: 100,
                answered: 98 + u64::from(t % 3),
                p50_ms: 4.0,
                p99_ms: 12.0 + f64::from(t),
            })
            .collect()
    }

    #[test]
    fn draws_an_svg_with_both_panels() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("plot.svg");
        write_plot(&path, "test run", &points(), (2.0, 8.0)).expect("plot");
        let svg = std::fs::read_to_string(&path).expect("read");
        assert!(svg.starts_with("<svg"), "{}", &svg[..40.min(svg.len())]);
        assert!(svg.contains("throughput per second"));
        assert!(svg.contains("p99"));
        assert!(svg.contains("<polyline"), "no lines drawn");
    }

    #[test]
    fn refuses_png_with_a_plot_format_error() {
        let err = check_plot_path(Path::new("run.png")).expect_err("png");
        assert_eq!(err.reason_code(), "loadtest.plot_format");
    }

    #[test]
    fn refuses_a_path_without_extension() {
        assert!(check_plot_path(Path::new("run")).is_err());
    }
}
