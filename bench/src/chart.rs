//! The PNG for BENCHMARKS.md: throughput per scenario (median, min–max), and
//! per scenario over the run: throughput and the consumer's resident memory.
//! Text is drawn with a bundled subset of DejaVu Sans (no system fonts).

use std::ops::Range;
use std::path::Path;

use plotters::coord::Shift;
use plotters::coord::ranged1d::SegmentValue;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::report::Summary;
use crate::scenario::{Kind, Sample};

static FONT: &[u8] = include_bytes!("assets/DejaVuSans-subset.ttf");
const FAMILY: &str = "sans-serif";

fn color(s: &Summary) -> RGBColor {
    match s.kind {
        Kind::Bare => RGBColor(120, 120, 120),
        Kind::BareBatched => RGBColor(190, 190, 190),
        Kind::Instant => RGBColor(31, 119, 180),
        Kind::Latency => RGBColor(255, 127, 14),
        Kind::Repeated => RGBColor(44, 160, 44),
        Kind::Large => RGBColor(148, 103, 189),
        Kind::Direct => RGBColor(23, 190, 207),
        Kind::Replicas if s.replicas > 1 => RGBColor(140, 86, 75),
        Kind::Replicas => RGBColor(227, 119, 194),
        Kind::RateLimit => RGBColor(214, 39, 40),
        Kind::Capacity if s.name.contains("fixed") => RGBColor(188, 189, 34),
        Kind::Capacity => RGBColor(23, 120, 90),
    }
}

/// A line chart in `area` with the axes' ranges.
fn line_chart<'a, DB: DrawingBackend + 'a>(
    area: &DrawingArea<DB, Shift>,
    caption: &str,
    y_label_area: u32,
    x: Range<f64>,
    y: Range<f64>,
) -> Result<Chart<'a, DB>, String> {
    ChartBuilder::on(area)
        .caption(caption, (FAMILY, 18))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(y_label_area)
        .build_cartesian_2d(x, y)
        .map_err(|x| format!("chart: {x}"))
}

/// One series, 2 px wide, with its legend entry.
fn draw_line<'a, DB: DrawingBackend + 'a>(
    chart: &mut Chart<'a, DB>,
    points: impl IntoIterator<Item = (f64, f64)>,
    c: RGBColor,
    label: String,
) -> Result<(), String> {
    chart
        .draw_series(LineSeries::new(points, c.stroke_width(2)))
        .map_err(|x| format!("chart: {x}"))?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
    Ok(())
}

type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Axes and grid: `x_label` formats the x values, y values are whole numbers.
fn draw_mesh<'a, DB: DrawingBackend + 'a>(
    chart: &mut Chart<'a, DB>,
    x_desc: &str,
    y_desc: &str,
    x_label: &dyn Fn(&f64) -> String,
) -> Result<(), String> {
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(x_label)
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 14))
        .draw()
        .map_err(|x| format!("chart: {x}"))
}

/// The legend of a line chart: lower right, over a light background.
fn draw_legend<'a, DB: DrawingBackend + 'a>(chart: &mut Chart<'a, DB>) -> Result<(), String> {
    chart
        .configure_series_labels()
        .label_font((FAMILY, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|x| format!("chart: {x}"))
}

/// Throughput over the run, from consecutive timeline samples about 1 s apart.
fn rate_series(timeline: &[Sample]) -> Vec<(f64, f64)> {
    // 1 s windows, shorter for short runs so there are points to draw.
    let total = timeline.last().map_or(0.0, |s| s.t);
    let window = (total / 10.0).clamp(0.2, 1.0) * 0.95;
    let mut out = Vec::new();
    let mut last: Option<&Sample> = None;
    for s in timeline {
        match last {
            None => last = Some(s),
            Some(l) if s.t - l.t >= window => {
                let rate = (s.messages.saturating_sub(l.messages)) as f64 / (s.t - l.t);
                out.push(((l.t + s.t) / 2.0, rate));
                last = Some(s);
            }
            _ => {}
        }
    }
    out
}

pub fn draw(path: &Path, summaries: &[Summary], title: &str) -> Result<(), String> {
    // Registering twice fails harmlessly.
    let _ = plotters::style::register_font(FAMILY, FontStyle::Normal, FONT);
    let e = |e: &dyn std::fmt::Display| format!("chart: {e}");
    let root = BitMapBackend::new(path, (1400, 1000)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let (top, bottom) = root.split_vertically(520);
    let (left, right) = bottom.split_horizontally(700);

    let shown: Vec<&Summary> = summaries.iter().filter(|s| s.msg_per_s.is_some()).collect();
    let n = shown.len().max(1) as i32;
    let ymax = shown
        .iter()
        .filter_map(|s| s.msg_per_s.map(|r| r.max))
        .chain(shown.iter().filter_map(|s| s.bound_msg_per_s))
        .fold(1.0f64, f64::max)
        * 1.18;
    let names: Vec<String> = shown.iter().map(|s| s.name.clone()).collect();
    let mut chart = ChartBuilder::on(&top)
        .caption(title, (FAMILY, 24))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d((0..n - 1).into_segmented(), 0f64..ymax)
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(names.len())
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => names.get(*i as usize).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .x_label_style((FAMILY, 16))
        .y_label_style((FAMILY, 14))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .y_desc("messages / s (median of runs, bar = min–max)")
        .axis_desc_style((FAMILY, 16))
        .draw()
        .map_err(|x| e(&x))?;
    chart
        .draw_series(shown.iter().enumerate().map(|(i, s)| {
            let i = i as i32;
            let median = s.msg_per_s.map_or(0.0, |r| r.median);
            let mut bar = Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), median),
                ],
                color(s).filled(),
            );
            bar.set_margin(0, 0, 45, 45);
            bar
        }))
        .map_err(|x| e(&x))?;
    chart
        .draw_series(shown.iter().enumerate().filter_map(|(i, s)| {
            let r = s.msg_per_s?;
            Some(ErrorBar::new_vertical(
                SegmentValue::CenterOf(i as i32),
                r.min,
                r.median,
                r.max,
                BLACK.stroke_width(2),
                14,
            ))
        }))
        .map_err(|x| e(&x))?;
    // The concurrency bound of the latency scenario, as a dashed mark.
    for (i, s) in shown.iter().enumerate() {
        if let Some(bound) = s.bound_msg_per_s {
            let i = i as i32;
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![
                        (SegmentValue::Exact(i), bound),
                        (SegmentValue::Exact(i + 1), bound),
                    ],
                    RED.stroke_width(2),
                )))
                .map_err(|x| e(&x))?;
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("bound {bound:.0}"),
                    (SegmentValue::Exact(i), bound + ymax * 0.01),
                    (FAMILY, 14).into_font().color(&RED),
                )))
                .map_err(|x| e(&x))?;
        }
    }
    chart
        .draw_series(shown.iter().enumerate().filter_map(|(i, s)| {
            let r = s.msg_per_s?;
            let ratio = match s.kind {
                Kind::Bare => String::new(),
                Kind::BareBatched => s.ratio_to_bare.map_or(String::new(), |x| {
                    format!("  {:.0}% of bare", x.median * 100.0)
                }),
                Kind::Latency => s
                    .ratio_to_reference
                    .map_or(String::new(), |x| format!("  {:.0}% of ref", x * 100.0)),
                Kind::Replicas => s
                    .ratio_to_one_replica
                    .filter(|_| s.replicas > 1)
                    .map_or(String::new(), |x| format!("  {x:.2}x of 1")),
                _ => s.ratio_to_bare.map_or(String::new(), |x| {
                    format!("  {:.0}% of bare", x.median * 100.0)
                }),
            };
            // Above the bar, and above the bound mark where there is one.
            let top = s.bound_msg_per_s.map_or(r.max, |b| b.max(r.max));
            Some(Text::new(
                format!("{:.0}{ratio}", r.median),
                (SegmentValue::Exact(i as i32), top + ymax * 0.04),
                (FAMILY, 15),
            ))
        }))
        .map_err(|x| e(&x))?;

    // Throughput and memory over the run (the median run of each scenario).
    let median_run = |s: &Summary| {
        let mut runs: Vec<_> = s.runs.iter().collect();
        runs.sort_by(|a, b| a.msg_per_s.total_cmp(&b.msg_per_s));
        runs.get(runs.len() / 2).map(|r| r.timeline.clone())
    };
    let series: Vec<(&Summary, Vec<Sample>)> = shown
        .iter()
        .filter_map(|s| median_run(s).map(|t| (*s, t)))
        .collect();
    let tmax = series
        .iter()
        .filter_map(|(_, t)| t.last().map(|x| x.t))
        .fold(1.0f64, f64::max);
    let rmax = series
        .iter()
        .flat_map(|(_, t)| rate_series(t).into_iter().map(|p| p.1))
        .fold(1.0f64, f64::max)
        * 1.1;
    let mut rates = line_chart(
        &left,
        "throughput during the median run",
        70,
        0f64..tmax,
        0f64..rmax,
    )?;
    draw_mesh(
        &mut rates,
        "seconds since the consumer was ready",
        "messages / s (1 s windows)",
        &|v| {
            if tmax < 10.0 {
                format!("{v:.1}")
            } else {
                format!("{v:.0}")
            }
        },
    )?;
    for (s, timeline) in &series {
        draw_line(&mut rates, rate_series(timeline), color(s), s.name.clone())?;
    }
    draw_legend(&mut rates)?;

    let mmax = series
        .iter()
        .flat_map(|(_, t)| t.iter().map(|x| x.rss_mib))
        .fold(1.0f64, f64::max)
        * 1.2;
    let mut memory = line_chart(
        &right,
        "consumer resident memory (VmRSS)",
        60,
        0f64..100f64,
        0f64..mmax,
    )?;
    draw_mesh(&mut memory, "% of the backlog consumed", "MiB", &|v| {
        format!("{v:.0}")
    })?;
    for (s, timeline) in &series {
        let total = s.events.max(1) as f64;
        draw_line(
            &mut memory,
            timeline
                .iter()
                .map(|x| (x.messages as f64 / total * 100.0, x.rss_mib)),
            color(s),
            format!("{} ({} msgs)", s.name, s.events),
        )?;
    }
    draw_legend(&mut memory)?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}
