//! What every report's plots share: SVG charts with the same caption and margins, lines with a dot at
//! each point, a framed legend, and numbers on axes written short (12k, 1.5M).

use std::path::Path;

use plotters::coord::Shift;
use plotters::coord::ranged1d::Ranged;
use plotters::prelude::*;

pub type Chart<'a, X, Y> = ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>;

/// A white 900×500 SVG drawing area writing to `path`.
pub fn canvas(path: &Path) -> anyhow::Result<DrawingArea<SVGBackend<'_>, Shift>> {
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    Ok(root)
}

/// A chart with the reports' caption size, margins and axis label areas.
pub fn builder<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, Shift>,
    title: &str,
) -> ChartBuilder<'a, 'b, SVGBackend<'b>> {
    let mut builder = ChartBuilder::on(root);
    builder.caption(title, ("sans-serif", 22)).margin(12).x_label_area_size(40).y_label_area_size(70);
    builder
}

/// Draws `points` as a line with a dot at each point; `label` puts the line in the legend.
pub fn dotted_line<X, Y>(
    chart: &mut Chart<'_, X, Y>,
    points: Vec<(f64, f64)>,
    color: RGBColor,
    label: Option<&str>,
) -> anyhow::Result<()>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    let line = chart.draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?;
    if let Some(label) = label {
        line.label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
    }
    chart.draw_series(points.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
    Ok(())
}

/// Draws the legend at `position` and writes the file.
pub fn finish<X, Y>(
    chart: &mut Chart<'_, X, Y>,
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    position: SeriesLabelPosition,
) -> anyhow::Result<()>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// An axis number written short: 950, 12k, 1.5M.
pub fn short_number(y: &f64) -> String {
    match *y {
        y if y >= 1e6 => format!("{:.1}M", y / 1e6),
        y if y >= 1e3 => format!("{:.0}k", y / 1e3),
        y => format!("{y:.0}"),
    }
}
