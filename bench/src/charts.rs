//! `--svg-dir DIR`: the run's figures as pictures, next to its tables. `throughput.svg`: each
//! single-object dfs figure beside the baselines measured in the same run (the relay's best
//! mode, SeaweedFS, the Python sketch); `small.svg`: the many-small-object puts beside
//! SeaweedFS's; `latency.svg`: the median and 99th percentile request latency of every dfs phase
//! of many requests, and SeaweedFS's 99th percentile. Bars, drawn from the report's own numbers
//! with plotters' SVG backend (text as `<text>` elements: no font library needed).

use crate::baselines::SeaweedResult;
use crate::dfs::PhaseResult;
use crate::report::{Ratio, SmallRatio};
use plotters::drawing::DrawingAreaErrorKind;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Why a chart could not be drawn: plotters refused the layout or a drawing step. The SVG is
/// written into a string, so no file is involved yet.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct ChartError(#[from] DrawingAreaErrorKind<std::io::Error>);

const WIDTH_PX: u32 = 1200;
const HEIGHT_PX: u32 = 560;

/// One group of bars: its label, and (series, value) pairs; a missing value is no bar.
type Group = (String, Vec<Option<f64>>);

fn bars(title: &str, y_desc: &str, series: &[(&str, RGBColor)], groups: &[Group]) -> Result<String, ChartError> {
    let y_max = groups.iter().flat_map(|(_, v)| v.iter().flatten()).copied().fold(0.0, f64::max).max(1e-9) * 1.15;
    let n = groups.len().max(1);
    let labels: Vec<String> = groups.iter().map(|(l, _)| l.clone()).collect();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH_PX, HEIGHT_PX)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(20)
            .x_label_area_size(60)
            .y_label_area_size(80)
            .build_cartesian_2d(0.0..n as f64, 0.0..y_max)?;
        let label_of = |x: &f64| {
            let i = x.floor() as usize;
            if (x - (i as f64 + 0.5)).abs() < 1e-6 {
                labels.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(2 * n + 1)
            .x_label_formatter(&label_of)
            .y_desc(y_desc)
            .draw()?;
        let width = 0.8 / series.len() as f64;
        for (k, (name, color)) in series.iter().enumerate() {
            let rects = groups.iter().enumerate().filter_map(|(i, (_, values))| {
                let v = values.get(k).copied().flatten()?;
                let x0 = i as f64 + 0.1 + k as f64 * width;
                Some(Rectangle::new([(x0, 0.0), (x0 + width * 0.9, v)], color.filled()))
            });
            let color = *color;
            // Each bar's value above it, so a short bar next to a tall one is still read.
            let values = groups.iter().enumerate().filter_map(|(i, (_, values))| {
                let v = values.get(k).copied().flatten()?;
                let x0 = i as f64 + 0.1 + k as f64 * width;
                let style = TextStyle::from(("sans-serif", 11).into_font()).pos(Pos::new(HPos::Left, VPos::Bottom));
                Some(Text::new(crate::report::fmt_num(v), (x0, v + y_max * 0.005), style))
            });
            chart.draw_series(values)?;
            chart
                .draw_series(rects)?
                .label(*name)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
    }
    Ok(svg)
}

const DFS: RGBColor = RGBColor(59, 111, 216);
const RELAY: RGBColor = RGBColor(120, 130, 150);
const SKETCH: RGBColor = RGBColor(220, 150, 60);
const SEAWEEDFS: RGBColor = RGBColor(70, 160, 90);
const P99: RGBColor = RGBColor(200, 70, 60);

/// The dfs series' name: with the copies it kept, when every phase kept the same number.
fn dfs_series(phases: &[PhaseResult]) -> String {
    let mut copies: Vec<u64> = phases.iter().filter_map(|p| p.copies).collect();
    copies.sort_unstable();
    copies.dedup();
    match copies[..] {
        [1] => "dfs (1 copy)".into(),
        [n] => format!("dfs ({n} copies)"),
        _ => "dfs".into(),
    }
}

/// dfs against the baselines, MB/s, one group per single-object figure.
pub fn throughput_svg(ratios: &[Ratio], phases: &[PhaseResult]) -> Result<String, ChartError> {
    let groups: Vec<Group> = ratios
        .iter()
        .map(|r| {
            let relay = r.relay_best.as_ref().map(|v| v.baseline_mb_s);
            let seaweedfs = r.seaweedfs.as_ref().map(|v| v.baseline_mb_s);
            let sketch = r.sketch.as_ref().map(|v| v.baseline_mb_s);
            (r.figure.clone(), vec![Some(r.dfs_mb_s), relay, seaweedfs, sketch])
        })
        .collect();
    let dfs = dfs_series(phases);
    let series = [
        (dfs.as_str(), DFS),
        ("ideal relay (best mode, 1 copy)", RELAY),
        ("SeaweedFS (1 copy)", SEAWEEDFS),
        ("Python sketch (1 copy)", SKETCH),
    ];
    bars("throughput, median of runs, same run", "MB/s (10^6 bytes per second)", &series, &groups)
}

/// The many-small-object puts against SeaweedFS's of the same shape, ops/s.
pub fn small_svg(small: &[SmallRatio], phases: &[PhaseResult]) -> Result<String, ChartError> {
    let groups: Vec<Group> =
        small.iter().map(|r| (r.figure.clone(), vec![Some(r.dfs_ops_s), Some(r.seaweedfs_ops_s)])).collect();
    let dfs = dfs_series(phases);
    let series = [(dfs.as_str(), DFS), ("SeaweedFS (1 copy, weed benchmark -fsync)", SEAWEEDFS)];
    bars("small-object puts, median of runs, same run", "requests per second", &series, &groups)
}

/// Median and 99th percentile latency of each many-request dfs phase (the small objects), ms:
/// a single-object phase's one request per run is its throughput, in the other picture.
pub fn latency_svg(phases: &[PhaseResult], seaweedfs: Option<&SeaweedResult>) -> Result<String, ChartError> {
    let mut groups: Vec<Group> = phases
        .iter()
        .filter(|p| p.spec.count > 1)
        .map(|p| {
            let label = match &p.data_path {
                Some(d) => format!("{} [{d}]", p.label),
                None => p.label.clone(),
            };
            (label, vec![Some(p.latency_p50_us.median / 1000.0), Some(p.latency_p99_us.median / 1000.0)])
        })
        .collect();
    if let Some(s) = seaweedfs.and_then(|s| s.small.as_ref()) {
        // `weed benchmark`'s summary as run.sh prints it carries the 99th percentile only.
        let label = format!(
            "SeaweedFS put {} ×{}, {} concurrent",
            crate::dfs::human_size(s.size_bytes),
            s.count,
            s.concurrency
        );
        groups.push((label, vec![None, Some(s.put_p99_ms.median)]));
    }
    bars("request latency, median of runs", "ms", &[("p50", DFS), ("p99", P99)], &groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(svg: &str) -> Vec<&str> {
        svg.split("<text")
            .skip(1)
            .filter_map(|e| e.split_once('>').and_then(|(_, rest)| rest.split_once("</text>")))
            .map(|(t, _)| t.trim())
            .collect()
    }

    #[test]
    fn every_group_and_series_is_labelled_and_a_missing_value_draws_no_bar() {
        let groups: Vec<Group> =
            vec![("put 1 GiB".into(), vec![Some(500.0), Some(900.0)]), ("get 1 GiB".into(), vec![Some(1800.0), None])];
        let svg = bars("t", "MB/s", &[("dfs", DFS), ("relay", RELAY)], &groups).expect("render");
        let texts = texts(&svg);
        for label in ["t", "MB/s", "put 1 GiB", "get 1 GiB", "dfs", "relay", "500", "900", "1800"] {
            assert!(texts.contains(&label), "missing {label:?} in {texts:?}");
        }
        // Per series: its bars and its legend swatch; the missing value has none.
        let filled =
            |color: RGBColor| svg.matches(&format!("fill=\"#{:02X}{:02X}{:02X}\"", color.0, color.1, color.2)).count();
        assert_eq!(filled(DFS), 2 + 1);
        assert_eq!(filled(RELAY), 1 + 1);
    }

    #[test]
    fn seaweedfs_is_drawn_where_it_was_measured() {
        let small = [SmallRatio {
            figure: "put 4 KiB ×10000, 32 concurrent [copy]".into(),
            dfs_ops_s: 2500.0,
            dfs_p99_ms: 30.0,
            seaweedfs_ops_s: 1250.0,
            seaweedfs_p99_ms: 40.0,
            ratio: 2.0,
        }];
        let svg = small_svg(&small, &[]).expect("render");
        let labels = texts(&svg);
        assert!(labels.contains(&"put 4 KiB ×10000, 32 concurrent [copy]"), "{labels:?}");
        assert!(labels.iter().any(|l| l.starts_with("SeaweedFS")), "{labels:?}");
        let fills =
            |svg: &str, c: RGBColor| svg.matches(&format!("fill=\"#{:02X}{:02X}{:02X}\"", c.0, c.1, c.2)).count();
        assert_eq!(fills(&svg, SEAWEEDFS), 1 + 1, "one bar and its legend swatch");

        let seaweedfs = SeaweedResult {
            small: Some(crate::baselines::SeaweedSmall {
                size_bytes: 4096,
                count: 10_000,
                concurrency: 32,
                put_ops_s: crate::stats::Stats::single(1250.0),
                put_p99_ms: crate::stats::Stats::single(40.0),
                get_ops_s: crate::stats::Stats::single(9000.0),
                get_p99_ms: crate::stats::Stats::single(5.0),
            }),
            large: None,
        };
        let svg = latency_svg(&[], Some(&seaweedfs)).expect("render");
        assert!(texts(&svg).contains(&"SeaweedFS put 4 KiB ×10000, 32 concurrent"), "{:?}", texts(&svg));
        // Its p99 bar alone: run.sh reports no median latency.
        assert_eq!((fills(&svg, DFS), fills(&svg, P99)), (1, 2));
    }

    #[test]
    fn the_dfs_series_names_the_copies_its_phases_kept() {
        let phase = |copies| {
            let spec =
                crate::dfs::PhaseSpec { op: crate::dfs::Op::Put, size_bytes: 8, count: 1, concurrency: 1, runs: 1 };
            let runs = vec![crate::dfs::tests::bench_json("put", 8, 1, 1.0)];
            let mut p = crate::dfs::summarize(spec, None, runs, &[0.1], 1, vec![]).unwrap();
            p.copies = copies;
            p
        };
        assert_eq!(dfs_series(&[phase(Some(1)), phase(Some(1))]), "dfs (1 copy)");
        assert_eq!(dfs_series(&[phase(Some(2))]), "dfs (2 copies)");
        assert_eq!(dfs_series(&[phase(Some(2)), phase(Some(1)), phase(Some(2))]), "dfs");
        assert_eq!(dfs_series(&[phase(None)]), "dfs");
    }
}
