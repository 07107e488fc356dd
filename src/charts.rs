//! SVG charts for the HTML views, drawn with plotters' SVG backend: the claim-vs-measured
//! panel, the latency distribution per form and the latency-vs-accuracy trade-off.
//!
//! Text is written as SVG `<text>` elements that the browser lays out with its own fonts, so
//! drawing needs no font files (plotters is built without its `ttf` feature; its layout
//! estimates are only used to place axis labels).

use anyhow::{anyhow, Result};
use plotters::coord::combinators::WithKeyPoints;
use plotters::coord::types::{RangedCoordf64, RangedCoordi32};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::latency::percentile;
use crate::metrics::Accuracy;

/// Chart width, pixels; heights grow with the number of rows.
pub const CHART_WIDTH: u32 = 760;

const FONT: &str = "sans-serif";
const CLAIM_COLOUR: RGBColor = RGBColor(214, 39, 40);
const FRONTIER_COLOUR: RGBColor = RGBColor(90, 90, 90);
const NOTE_COLOUR: RGBColor = RGBColor(120, 60, 0);
const LIGHT_GRID: RGBColor = RGBColor(246, 246, 246);

type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

/// One row of the claim panel: a measured top-1 with its 95% interval, or why there is none.
pub struct AccuracyRow {
    pub label: String,
    pub form: String,
    pub top1: Option<Accuracy>,
    /// Shown instead of a point when `top1` is absent.
    pub note: String,
}

/// One row of the latency distribution: every timed run of a form, or why there are none.
pub struct LatencyRow {
    pub label: String,
    pub form: String,
    pub samples_ms: Option<Vec<f64>>,
    pub note: String,
}

/// One run-form of the trade-off chart.
pub struct TradeoffPoint {
    pub label: String,
    pub form: String,
    pub p50_ms: Option<f64>,
    /// p10 and p90 of the timed runs, milliseconds.
    pub spread_ms: Option<(f64, f64)>,
    pub top1: Option<Accuracy>,
    pub pareto: bool,
}

/// The colour of a form, the same in every chart.
pub fn form_colour(form: &str) -> RGBColor {
    match form {
        "f32" => RGBColor(31, 119, 180),
        "int8" => RGBColor(255, 127, 14),
        "f16" => RGBColor(44, 160, 44),
        _ => RGBColor(148, 103, 189),
    }
}

/// p10 and p90 of samples in any order, milliseconds.
pub fn spread_ms(samples_ms: &[f64]) -> Option<(f64, f64)> {
    let sorted = sorted(samples_ms)?;
    Some((percentile(&sorted, 10.0), percentile(&sorted, 90.0)))
}

fn sorted(samples: &[f64]) -> Option<Vec<f64>> {
    if samples.is_empty() {
        return None;
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    Some(v)
}

/// Draws on a fresh white SVG canvas of `size` pixels and returns the `<svg>` element.
fn render(
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<SVGBackend, Shift>) -> DrawResult,
) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("drawing a chart: {e}"))?;
        draw(&root).map_err(|e| anyhow!("drawing a chart: {e}"))?;
        root.present().map_err(|e| anyhow!("drawing a chart: {e}"))?;
    }
    Ok(svg)
}

fn text_style(size: u32, colour: &'static RGBColor, h: HPos, v: VPos) -> TextStyle<'static> {
    (FONT, size).into_font().color(colour).pos(Pos::new(h, v))
}

/// A range covering `values` with some margin, never empty, clamped to `[floor, ceil]`.
fn padded_range(values: &[f64], floor: f64, ceil: f64, default: (f64, f64)) -> (f64, f64) {
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if finite.is_empty() {
        return default;
    }
    let lo = finite.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let pad = ((hi - lo) * 0.08).max(hi.abs() * 0.02).max(0.5);
    ((lo - pad).max(floor), (hi + pad).min(ceil))
}

/// Height of one row in the row charts' y units (integer units, so that plotters can label
/// the rows at fixed key points).
const ROW: i32 = 100;

/// Row `i` of `n` is centred at y = (n - 1 - i) * ROW, so the first row is drawn on top.
fn row_y(i: usize, n: usize) -> i32 {
    (n - 1 - i) as i32 * ROW
}

/// The y range of `n` rows, with a key point at each row's centre.
fn rows_range(n: usize) -> WithKeyPoints<RangedCoordi32> {
    (-ROW / 2..n as i32 * ROW - ROW / 2).with_key_points((0..n as i32).map(|i| i * ROW).collect())
}

fn row_label(labels: &[String], y: i32) -> String {
    let n = labels.len() as i32;
    if y % ROW != 0 || !(0..n).contains(&(y / ROW)) {
        return String::new();
    }
    labels[(n - 1 - y / ROW) as usize].clone()
}

/// The style of a note in place of a row's data, drawn from just right of the y axis.
fn row_note_style() -> TextStyle<'static> {
    text_style(15, &NOTE_COLOUR, HPos::Left, VPos::Center)
}

/// The claim-vs-measured panel: one row per form with its measured top-1 and 95% interval,
/// the claim as a dashed vertical line; a form whose accuracy is not measurable shows so.
pub fn claim_panel(rows: &[AccuracyRow], claim_top1: Option<f64>) -> Result<String> {
    let n = rows.len().max(1);
    let height = 110 + 56 * n as u32;
    let mut bounds: Vec<f64> = rows.iter().flat_map(|r| r.top1.map(|a| a.ci95)).flatten().collect();
    // With nothing measured the axis spans 0-100%, so the claim does not crowd the notes.
    if !bounds.is_empty() {
        bounds.extend(claim_top1);
    }
    let (x0, x1) = padded_range(&bounds, 0.0, 100.0, (0.0, 100.0));
    let labels: Vec<String> = rows.iter().map(|r| r.label.clone()).collect();
    render((CHART_WIDTH, height), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption("Claim vs measured top-1", (FONT, 20))
            .margin(12)
            .margin_right(28)
            .x_label_area_size(44)
            .y_label_area_size(90)
            .build_cartesian_2d(x0..x1, rows_range(n))?;
        let label_of = |y: &i32| row_label(&labels, *y);
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_label_formatter(&label_of)
            .x_desc("top-1 accuracy on this slice, % (bar: 95% interval)")
            .label_style((FONT, 15))
            .light_line_style(LIGHT_GRID)
            .draw()?;
        for (i, row) in rows.iter().enumerate() {
            let y = row_y(i, n);
            let colour = form_colour(&row.form);
            let Some(a) = row.top1 else {
                let text = format!("{}: not measurable ({})", row.label, row.note);
                chart.draw_series([
                    EmptyElement::at((x0, y)) + Text::new(text, (10, 0), row_note_style())
                ])?;
                continue;
            };
            let bar = ErrorBar::new_horizontal(
                y,
                a.ci95[0],
                a.percent,
                a.ci95[1],
                colour.stroke_width(2),
                14,
            );
            chart.draw_series([bar])?;
            chart.draw_series([Circle::new((a.percent, y), 6, colour.filled())])?;
            let text = format!(
                "{:.2}% ({:.2}–{:.2}), {}/{}",
                a.percent, a.ci95[0], a.ci95[1], a.correct, a.evaluated
            );
            let style = text_style(14, &BLACK, HPos::Center, VPos::Bottom);
            chart.draw_series([Text::new(text, (a.percent, y + 22), style)])?;
        }
        if let Some(claim) = claim_top1 {
            let top = n as i32 * ROW - ROW / 2;
            let line = [(claim, -ROW / 2), (claim, top)];
            chart.draw_series(DashedLineSeries::new(line, 8, 5, CLAIM_COLOUR.stroke_width(2)))?;
            let style = text_style(14, &CLAIM_COLOUR, HPos::Left, VPos::Top);
            chart.draw_series([Text::new(format!(" claim {claim:.1}%"), (claim, top), style)])?;
        }
        Ok(())
    })
}

/// The latency distribution: one row per form with every timed run as a dot over a box
/// (quartiles, median) and whiskers (min–max); a form without samples shows why.
pub fn latency_distribution(rows: &[LatencyRow]) -> Result<String> {
    let n = rows.len().max(1);
    let height = 110 + 96 * n as u32;
    let all: Vec<f64> = rows.iter().flat_map(|r| r.samples_ms.iter().flatten().copied()).collect();
    let (x0, x1) = padded_range(&all, 0.0, f64::INFINITY, (0.0, 1.0));
    let labels: Vec<String> = rows.iter().map(|r| r.label.clone()).collect();
    render((CHART_WIDTH, height), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption("Latency per form: every timed run", (FONT, 20))
            .margin(12)
            .margin_right(28)
            .x_label_area_size(44)
            .y_label_area_size(90)
            .build_cartesian_2d(x0..x1, rows_range(n))?;
        let label_of = |y: &i32| row_label(&labels, *y);
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_label_formatter(&label_of)
            .x_desc(
                "batch-1 latency, ms (dots: runs; box: quartiles and median; whiskers: min–max)",
            )
            .label_style((FONT, 15))
            .light_line_style(LIGHT_GRID)
            .draw()?;
        for (i, row) in rows.iter().enumerate() {
            let y = row_y(i, n);
            match row.samples_ms.as_deref().and_then(sorted) {
                Some(sorted) => draw_distribution_row(&mut chart, row, &sorted, y)?,
                None => {
                    let text = format!("{}: not measured ({})", row.label, row.note);
                    chart.draw_series([
                        EmptyElement::at((x0, y)) + Text::new(text, (10, 0), row_note_style())
                    ])?;
                }
            }
        }
        Ok(())
    })
}

type RowChart<'a, 'b> =
    ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, WithKeyPoints<RangedCoordi32>>>;

fn draw_distribution_row(
    chart: &mut RowChart,
    row: &LatencyRow,
    sorted: &[f64],
    y: i32,
) -> DrawResult {
    let colour = form_colour(&row.form);
    let q = |p: f64| percentile(sorted, p);
    let (min, q1, median, q3, max) =
        (sorted[0], q(25.0), q(50.0), q(75.0), sorted[sorted.len() - 1]);
    let whisker = colour.stroke_width(2);
    chart.draw_series(LineSeries::new([(min, y), (q1, y)], whisker))?;
    chart.draw_series(LineSeries::new([(q3, y), (max, y)], whisker))?;
    for end in [min, max] {
        chart.draw_series(LineSeries::new([(end, y - 12), (end, y + 12)], whisker))?;
    }
    chart.draw_series([Rectangle::new([(q1, y - 22), (q3, y + 22)], colour.mix(0.15).filled())])?;
    // plotters' SVG rectangles ignore the stroke width: the outline is drawn as a path.
    let outline = [(q1, y - 22), (q3, y - 22), (q3, y + 22), (q1, y + 22), (q1, y - 22)];
    chart.draw_series(LineSeries::new(outline, colour.stroke_width(2)))?;
    chart.draw_series(LineSeries::new(
        [(median, y - 22), (median, y + 22)],
        BLACK.stroke_width(2),
    ))?;
    let samples = row.samples_ms.as_deref().unwrap_or_default();
    // A fixed, evenly spread vertical offset per run keeps coincident runs visible and the
    // picture reproducible.
    let dots = samples.iter().enumerate().map(|(k, &ms)| {
        let jitter = (((k as f64 * 0.618_034) % 1.0 - 0.5) * 30.0) as i32;
        Circle::new((ms, y + jitter), 3, colour.mix(0.55).filled())
    });
    chart.draw_series(dots)?;
    let text = format!(
        "p50 {:.2} ms · p90 {:.2} ms · min {:.2} · max {:.2} · {} runs",
        median,
        q(90.0),
        min,
        max,
        sorted.len()
    );
    let x_left = chart.x_range().start;
    let style = text_style(14, &BLACK, HPos::Left, VPos::Bottom);
    chart.draw_series([Text::new(text, (x_left, y + 30), style)])?;
    Ok(())
}

/// The latency-vs-accuracy trade-off: each run-form at its p50 latency (bar: p10–p90) and
/// top-1 (bar: 95% interval); Pareto-optimal points filled and joined by the frontier, the
/// others hollow. Points whose top-1 or latency is not measurable are listed under the chart.
pub fn tradeoff_chart(points: &[TradeoffPoint], claim_top1: Option<f64>) -> Result<String> {
    let placed: Vec<(&TradeoffPoint, f64, Accuracy)> =
        points.iter().filter_map(|p| Some((p, p.p50_ms?, p.top1?))).collect();
    let unplaced: Vec<&TradeoffPoint> =
        points.iter().filter(|p| p.p50_ms.is_none() || p.top1.is_none()).collect();
    let height = 460 + 22 * unplaced.len() as u32;
    // Latencies set the x axis even where the top-1 is missing, so the axis stays in ms.
    let mut xs: Vec<f64> = points.iter().filter_map(|p| p.p50_ms).collect();
    xs.extend(points.iter().filter_map(|p| p.spread_ms.map(|s| s.1)));
    // Room on the right for the last point's label.
    let x1 = padded_range(&xs, 0.0, f64::INFINITY, (0.0, 1.0)).1 * 1.08;
    let mut ys: Vec<f64> = placed.iter().flat_map(|(_, _, a)| a.ci95).collect();
    ys.extend(claim_top1);
    let (y0, y1) = padded_range(&ys, 0.0, 100.0, (0.0, 100.0));
    render((CHART_WIDTH, height), |root| {
        let (plot_area, notes_area) = root.split_vertically(460);
        let mut chart = ChartBuilder::on(&plot_area)
            .caption("Latency vs top-1 accuracy", (FONT, 20))
            .margin(12)
            .margin_right(28)
            .x_label_area_size(44)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x1, y0..y1)?;
        chart
            .configure_mesh()
            .x_desc("p50 batch-1 latency, ms (bar: p10–p90)   ·   filled: Pareto-optimal")
            .y_desc("top-1 %, bar: 95% interval")
            .label_style((FONT, 15))
            .light_line_style(LIGHT_GRID)
            .draw()?;
        if let Some(claim) = claim_top1 {
            chart.draw_series(DashedLineSeries::new(
                [(0.0, claim), (x1, claim)],
                8,
                5,
                CLAIM_COLOUR.stroke_width(2),
            ))?;
            let style = text_style(14, &CLAIM_COLOUR, HPos::Right, VPos::Bottom);
            chart.draw_series([Text::new(format!("claim {claim:.1}% "), (x1, claim), style)])?;
        }
        draw_frontier(&mut chart, &placed)?;
        for (p, ms, a) in &placed {
            draw_tradeoff_point(&mut chart, p, *ms, a)?;
        }
        if placed.is_empty() {
            let style = text_style(16, &NOTE_COLOUR, HPos::Center, VPos::Center);
            let text = "no run has both a measurable top-1 and a latency";
            chart.draw_series([Text::new(text, (x1 / 2.0, y0 + (y1 - y0) * 0.75), style)])?;
        }
        for (k, p) in unplaced.iter().enumerate() {
            let what =
                if p.top1.is_none() { "top-1 not measurable" } else { "latency not measured" };
            let style = text_style(15, &NOTE_COLOUR, HPos::Left, VPos::Top);
            notes_area.draw(&Text::new(
                format!("{}: {what}", p.label),
                (72, 22 * k as i32),
                style,
            ))?;
        }
        Ok(())
    })
}

type PlaneChart<'a, 'b> =
    ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

fn draw_frontier(chart: &mut PlaneChart, placed: &[(&TradeoffPoint, f64, Accuracy)]) -> DrawResult {
    let mut front: Vec<(f64, f64)> =
        placed.iter().filter(|(p, _, _)| p.pareto).map(|(_, ms, a)| (*ms, a.percent)).collect();
    front.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut steps = vec![];
    for (k, &(ms, pct)) in front.iter().enumerate() {
        if k > 0 {
            steps.push((ms, front[k - 1].1));
        }
        steps.push((ms, pct));
    }
    chart.draw_series(DashedLineSeries::new(steps, 4, 4, FRONTIER_COLOUR.stroke_width(1)))?;
    Ok(())
}

fn draw_tradeoff_point(
    chart: &mut PlaneChart,
    p: &TradeoffPoint,
    ms: f64,
    a: &Accuracy,
) -> DrawResult {
    let colour = form_colour(&p.form);
    let vertical =
        ErrorBar::new_vertical(ms, a.ci95[0], a.percent, a.ci95[1], colour.stroke_width(2), 12);
    chart.draw_series([vertical])?;
    if let Some((lo, hi)) = p.spread_ms {
        chart.draw_series([ErrorBar::new_horizontal(
            a.percent,
            lo,
            ms,
            hi,
            colour.stroke_width(2),
            12,
        )])?;
    }
    let marker = if p.pareto { colour.filled() } else { WHITE.filled() };
    chart.draw_series([Circle::new((ms, a.percent), 7, marker)])?;
    chart.draw_series([Circle::new((ms, a.percent), 7, colour.stroke_width(2))])?;
    let style = text_style(14, &BLACK, HPos::Left, VPos::Bottom);
    let label = EmptyElement::at((ms, a.percent)) + Text::new(p.label.clone(), (9, -6), style);
    chart.draw_series([label])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svg_size(svg: &str) -> (u32, u32) {
        let attr = |name: &str| -> u32 {
            let start = svg.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
            svg[start..].split('"').next().unwrap().parse().unwrap()
        };
        (attr("width"), attr("height"))
    }

    #[test]
    fn claim_panel_shows_not_measurable_rows() {
        let rows = vec![
            AccuracyRow {
                label: "f32".into(),
                form: "f32".into(),
                top1: Accuracy::new(17, 20),
                note: String::new(),
            },
            AccuracyRow {
                label: "int8".into(),
                form: "int8".into(),
                top1: None,
                note: "synthetic weights".into(),
            },
        ];
        let svg = claim_panel(&rows, Some(75.1)).unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.contains("int8: not measurable (synthetic weights)"), "{svg}");
        assert!(svg.contains("claim 75.1%"));
        assert!(svg.contains("85.00% (63.96–94.76), 17/20"), "{svg}");
        assert_eq!(svg_size(&svg), (CHART_WIDTH, 110 + 56 * 2));
    }

    #[test]
    fn latency_rows_give_their_quantiles() {
        let rows = vec![LatencyRow {
            label: "f32".into(),
            form: "f32".into(),
            samples_ms: Some(vec![4.0, 1.0, 3.0, 2.0, 5.0]),
            note: String::new(),
        }];
        let svg = latency_distribution(&rows).unwrap();
        assert!(svg.contains("p50 3.00 ms · p90 4.60 ms · min 1.00 · max 5.00 · 5 runs"), "{svg}");
        assert_eq!(svg.matches("<circle").count(), 5, "one dot per run");
    }

    #[test]
    fn tradeoff_chart_lists_points_it_cannot_place() {
        let points = vec![TradeoffPoint {
            label: "#1 f32".into(),
            form: "f32".into(),
            p50_ms: Some(10.0),
            spread_ms: Some((9.0, 12.0)),
            top1: None,
            pareto: false,
        }];
        let svg = tradeoff_chart(&points, None).unwrap();
        assert!(svg.contains("#1 f32: top-1 not measurable"), "{svg}");
        assert!(svg.contains("no run has both a measurable top-1 and a latency"));
    }

    #[test]
    fn spread_is_p10_to_p90() {
        let samples: Vec<f64> = (1..=11).rev().map(f64::from).collect();
        assert_eq!(spread_ms(&samples), Some((2.0, 10.0)));
        assert_eq!(spread_ms(&[]), None);
    }
}
