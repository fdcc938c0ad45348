//! The report's PNG charts, drawn with plotters. Text needs a TrueType font: DejaVu Sans from
//! Debian's `fonts-dejavu-core` (`scripts/bench` installs it), or `BENCH_FONT`.

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use crate::report::{Figure, Step};

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

fn register_font() -> anyhow::Result<()> {
    let path = std::env::var("BENCH_FONT").ok().or_else(|| {
        FONT_PATHS
            .iter()
            .find(|p| Path::new(p).exists())
            .map(|p| (*p).to_owned())
    });
    let path = path.context(
        "no TrueType font for the charts: install fonts-dejavu-core (scripts/deps does) or set BENCH_FONT",
    )?;
    let bytes = std::fs::read(&path).with_context(|| format!("reading {path}"))?;
    // plotters keeps the font for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("{path} is not a font plotters can read"))?;
    Ok(())
}

/// One line of a chart: its name, colour and (x, figure) points.
struct Series<'a> {
    name: &'a str,
    colour: RGBColor,
    points: Vec<(f64, Figure)>,
}

fn chart(
    path: &Path,
    title: &str,
    y_label: &str,
    series: &[Series<'_>],
    diagonal: bool,
) -> anyhow::Result<()> {
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let x_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|(x, _)| *x))
        .fold(1.0, f64::max)
        * 1.1;
    let y_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|(_, f)| f.max))
        .fold(1.0, f64::max)
        * 1.15;
    let mut c = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
    c.configure_mesh()
        .x_desc("offered orders/s")
        .y_desc(y_label)
        .label_style(("sans-serif", 15))
        .draw()?;
    if diagonal {
        let top = x_max.min(y_max);
        c.draw_series(LineSeries::new([(0.0, 0.0), (top, top)], BLACK.mix(0.3)))?
            .label("offered")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.mix(0.3)));
    }
    for s in series {
        let colour = s.colour;
        c.draw_series(LineSeries::new(
            s.points.iter().map(|(x, f)| (*x, f.median)),
            colour.stroke_width(2),
        ))?
        .label(s.name)
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
        // The range of the runs as a vertical bar at each point.
        c.draw_series(
            s.points
                .iter()
                .map(|(x, f)| PathElement::new([(*x, f.min), (*x, f.max)], colour.stroke_width(1))),
        )?;
        c.draw_series(
            s.points
                .iter()
                .map(|(x, f)| Circle::new((*x, f.median), 4, colour.filled())),
        )?;
    }
    c.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK.mix(0.3))
        .draw()?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Writes `edge.png`, `throughput.png` and `e2e.png` into `dir`.
pub(crate) fn draw(dir: &Path, steps: &[Step]) -> anyhow::Result<()> {
    register_font()?;
    let line = |name, colour, f: &dyn Fn(&Step) -> Figure| Series {
        name,
        colour,
        points: steps.iter().map(|s| (f64::from(s.rate), f(s))).collect(),
    };
    chart(
        &dir.join("edge.png"),
        "POST /api/orders latency (k6)",
        "ms",
        &[
            line("p50", BLUE, &|s| s.edge_p50),
            line("p95", GREEN, &|s| s.edge_p95),
            line("p99", RED, &|s| s.edge_p99),
        ],
        false,
    )?;
    chart(
        &dir.join("throughput.png"),
        "Accepted and completed orders per second",
        "orders/s",
        &[
            line("accepted/s (202)", BLUE, &|s| s.accepted_per_s),
            line("completed/s (saga)", GREEN, &|s| s.completed_per_s),
        ],
        true,
    )?;
    chart(
        &dir.join("e2e.png"),
        "From 202 Accepted to the outcome",
        "ms",
        &[
            line("p50", BLUE, &|s| s.e2e_p50),
            line("p95", GREEN, &|s| s.e2e_p95),
            line("p99", RED, &|s| s.e2e_p99),
        ],
        false,
    )?;
    Ok(())
}
