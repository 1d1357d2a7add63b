//! `--plot FILE.svg`: two views of the run's latencies side by side.
//! - The percentile curve, drawn the way HdrHistogram's plotter draws it. The x axis is
//!   1/(1-p) on a log scale, so each decade is one more nine (0%, 90%, 99%, 99.9%, ...) and the
//!   tail gets as much room as the median; the y axis is latency in milliseconds.
//! - Latency over time: for each of up to [`TIME_BINS`] slices of the run, the median and the
//!   highest latency of the requests that ended in it, so stalls and warm-up show where they
//!   happened.
//!
//! Drawn with plotters' SVG backend alone, which writes text as `<text>` elements for the
//! viewer to render, so no font or graphics library is needed here.

use super::latency::US_PER_MS;
use hdrhistogram::Histogram;
use plotters::drawing::DrawingAreaErrorKind;
use plotters::prelude::*;

/// Why the plot could not be drawn: plotters refused the layout or a drawing step. The SVG is
/// written into a string, so no file is involved yet.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct PlotError(#[from] DrawingAreaErrorKind<std::io::Error>);

/// The picture's size in SVG pixels (both views).
const WIDTH_PX: u32 = 1800;
const HEIGHT_PX: u32 = 600;
/// Quantile steps per halving of the distance to 100%: more than the `.hgrm` file's 5, so the
/// curve is smooth.
const TICKS_PER_HALF_DISTANCE: u32 = 20;
/// Decades of nines always shown (up to 99%), so a run of a few requests still gets an axis.
const MIN_DECADES: u32 = 2;
/// Room above the maximum, so the curve does not run along the frame.
const HEADROOM: f64 = 1.1;
/// Slices of the run in the latency-over-time view, at most.
pub const TIME_BINS: usize = 200;

/// Per slice of the run: its middle (seconds since the first request began), the median and
/// the highest latency (ms) of the requests that ended in it. `timeline` is (end, latency ms).
fn over_time(timeline: &[(f64, f64)]) -> Vec<(f64, f64, f64)> {
    let end = timeline.iter().map(|&(t, _)| t).fold(0.0, f64::max);
    if timeline.is_empty() {
        return Vec::new();
    }
    let n_bins = TIME_BINS.min(timeline.len()).max(1);
    let width = (end / n_bins as f64).max(1e-9);
    let mut bins: Vec<Vec<f64>> = vec![Vec::new(); n_bins];
    for &(t, ms) in timeline {
        bins[((t / width) as usize).min(n_bins - 1)].push(ms);
    }
    bins.into_iter()
        .enumerate()
        .filter(|(_, b)| !b.is_empty())
        .map(|(i, mut b)| {
            b.sort_by(f64::total_cmp);
            ((i as f64 + 0.5) * width, b[b.len() / 2], b[b.len() - 1])
        })
        .collect()
}

/// One point of the curve: x is log10(1/(1-p)) (0 at p = 0, 1 at 90%, 2 at 99%, ...), y the
/// latency in milliseconds.
fn curve(histogram: &Histogram<u64>) -> Vec<(f64, f64)> {
    histogram
        .iter_quantiles(TICKS_PER_HALF_DISTANCE)
        // p = 1 has no finite x; the maximum is drawn as its own line instead.
        .filter(|step| step.quantile_iterated_to() < 1.0)
        .map(|step| {
            let x = (1.0 / (1.0 - step.quantile_iterated_to())).log10();
            (x, step.value_iterated_to() as f64 / US_PER_MS)
        })
        .collect()
}

/// The label of x = log10(1/(1-p)): the percentile p, with as many nines as the decade has.
fn percentile_label(x: f64) -> String {
    let percent = 100.0 * (1.0 - 10f64.powf(-x));
    let decimals = (x.ceil() as i64 - 2).clamp(0, 12) as usize;
    format!("{percent:.decimals$}%")
}

/// Decimals of the y axis labels, so that neighbouring ticks differ in print.
fn y_decimals(y_max_ms: f64) -> usize {
    match y_max_ms {
        y if y < 1.0 => 3,
        y if y < 10.0 => 2,
        y if y < 100.0 => 1,
        _ => 0,
    }
}

/// Draws the percentile curve of `histogram` (microseconds) and the latency over time of
/// `timeline` ((seconds since the run began, latency ms) per request) under `title`, and
/// returns the SVG document.
pub fn render_svg(histogram: &Histogram<u64>, timeline: &[(f64, f64)], title: &str) -> Result<String, PlotError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH_PX, HEIGHT_PX)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(title, ("sans-serif", 22))?;
        let (left, right) = root.split_horizontally(WIDTH_PX / 2);
        draw_percentiles(&left, histogram)?;
        draw_over_time(&right, timeline)?;
        root.present()?;
    }
    Ok(svg)
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

type Chart<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// One of the two panels: its caption and axes from 0 to the maxima.
fn panel<'a, 'b>(area: &'a Area<'b>, caption: &str, x_max: f64, y_max: f64) -> Result<Chart<'a, 'b>, PlotError> {
    ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(PlotError)
}

/// The series' legend, upper left, as both panels draw it.
fn draw_legend<'a, 'b: 'a>(chart: &mut Chart<'a, 'b>) -> Result<(), PlotError> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(PlotError)
}

fn draw_percentiles(area: &Area<'_>, histogram: &Histogram<u64>) -> Result<(), PlotError> {
    let points = curve(histogram);
    let max_ms = histogram.max() as f64 / US_PER_MS;
    let last_x = points.last().map_or(0.0, |&(x, _)| x);
    let decades = (last_x.ceil() as u32).max(MIN_DECADES);
    let x_max = f64::from(decades);
    // A histogram of zeros (or nothing) still needs a y range of positive height.
    let y_max = (max_ms * HEADROOM).max(0.001);
    let decimals = y_decimals(y_max);
    let y_label = |y: &f64| format!("{y:.decimals$}");
    let x_label = |x: &f64| percentile_label(*x);
    let mut chart = panel(area, "latency by percentile", x_max, y_max)?;
    chart
        .configure_mesh()
        // One label per decade: 0%, 90%, 99%, ...
        .x_labels(decades as usize + 1)
        .x_label_formatter(&x_label)
        .y_label_formatter(&y_label)
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .draw()?;
    chart
        .draw_series(LineSeries::new(points, BLUE.stroke_width(2)))?
        .label("latency at percentile")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    chart
        .draw_series(DashedLineSeries::new([(0.0, max_ms), (x_max, max_ms)], 6, 4, RED.stroke_width(1)))?
        .label(format!("max {max_ms:.3} ms"))
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED.stroke_width(1)));
    draw_legend(&mut chart)
}

fn draw_over_time(area: &Area<'_>, timeline: &[(f64, f64)]) -> Result<(), PlotError> {
    let bins = over_time(timeline);
    let x_max = bins.last().map_or(1.0, |&(t, _, _)| t * 1.02).max(1e-3);
    let y_max = (bins.iter().map(|&(_, _, max)| max).fold(0.0, f64::max) * HEADROOM).max(0.001);
    let decimals = y_decimals(y_max);
    let y_label = |y: &f64| format!("{y:.decimals$}");
    let x_label = |x: &f64| format!("{x:.1}");
    let mut chart = panel(area, "latency over time", x_max, y_max)?;
    chart
        .configure_mesh()
        .x_label_formatter(&x_label)
        .y_label_formatter(&y_label)
        .x_desc("seconds since the first request")
        .y_desc("latency (ms)")
        .draw()?;
    chart
        .draw_series(LineSeries::new(bins.iter().map(|&(t, _, max)| (t, max)), RED.stroke_width(1)))?
        .label("highest in slice")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED.stroke_width(1)));
    chart
        .draw_series(LineSeries::new(bins.iter().map(|&(t, median, _)| (t, median)), BLUE.stroke_width(2)))?
        .label("median in slice")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    draw_legend(&mut chart)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::latency;
    use std::time::Duration;

    #[test]
    fn percentile_labels_count_nines() {
        for (x, label) in [(0.0, "0%"), (1.0, "90%"), (2.0, "99%"), (3.0, "99.9%"), (4.0, "99.99%"), (6.0, "99.9999%")]
        {
            assert_eq!(percentile_label(x), label, "x = {x}");
        }
    }

    /// The contents of the SVG's `<text>` elements, trimmed.
    fn texts(svg: &str) -> Vec<&str> {
        svg.split("<text")
            .skip(1)
            .filter_map(|element| element.split_once('>').and_then(|(_, rest)| rest.split_once("</text>")))
            .map(|(text, _)| text.trim())
            .collect()
    }

    #[test]
    fn svg_has_the_title_axes_and_a_curve() {
        let mut histogram = latency::new_histogram();
        for us in 1..=2000u64 {
            latency::record(&mut histogram, Duration::from_micros(us * 10));
        }
        let timeline: Vec<(f64, f64)> = (1..=2000u64).map(|i| (i as f64 / 1000.0, (i * 10) as f64 / 1000.0)).collect();
        let svg = render_svg(&histogram, &timeline, "put latency: 2000 × 4 KiB, concurrency 32").expect("render");
        assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
        let texts = texts(&svg);
        for label in [
            "put latency: 2000 × 4 KiB, concurrency 32",
            "0%",
            "90%",
            "99%",
            "99.9%",
            "99.99%",
            "percentile",
            "latency (ms)",
            "max 20.015 ms",
            "latency over time",
            "seconds since the first request",
            "median in slice",
        ] {
            assert!(texts.contains(&label), "missing label {label:?} in {texts:?}");
        }
        // One decade per nine, no more: nothing past 99.99% for 2000 requests.
        assert!(!texts.contains(&"99.999%"), "{texts:?}");
        assert!(svg.contains("<polyline"), "no curve");
    }

    #[test]
    fn a_single_request_still_plots() {
        let mut histogram = latency::new_histogram();
        latency::record(&mut histogram, Duration::from_millis(3));
        let svg = render_svg(&histogram, &[(0.003, 3.0)], "get").expect("render");
        let texts = texts(&svg);
        assert!(texts.contains(&"99%") && texts.contains(&"max 3.001 ms"), "{texts:?}");
    }

    #[test]
    fn the_slices_of_the_run_keep_their_median_and_highest() {
        // Ten requests at 1 ms, then a stall: one at 50 ms, at the end.
        let mut timeline: Vec<(f64, f64)> = (1..=10).map(|i| (i as f64 * 0.1, 1.0)).collect();
        timeline.push((2.0, 50.0));
        let bins = over_time(&timeline);
        assert_eq!(bins.first().map(|b| (b.1, b.2)), Some((1.0, 1.0)));
        assert_eq!(bins.last().map(|b| (b.1, b.2)), Some((50.0, 50.0)), "the stall is in the last slice");
        assert!(bins.iter().all(|b| b.0 > 0.0 && b.0 <= 2.0));
        assert!(over_time(&[]).is_empty());
    }
}
