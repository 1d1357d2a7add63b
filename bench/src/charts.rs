//! `--svg-dir DIR`: the run's figures as pictures, next to its tables. `throughput.svg`: each
//! single-object dfs figure beside the baselines measured in the same run (the relay's best
//! mode, the Python sketch); `latency.svg`: the median and 99th percentile request latency of
//! every dfs phase of many requests. Bars, drawn from the report's own numbers with plotters' SVG backend (text
//! as `<text>` elements: no font library needed).

use crate::dfs::PhaseResult;
use crate::report::Ratio;
use plotters::prelude::*;

const WIDTH_PX: u32 = 1200;
const HEIGHT_PX: u32 = 560;

/// One group of bars: its label, and (series, value) pairs; a missing value is no bar.
type Group = (String, Vec<Option<f64>>);

fn bars(title: &str, y_desc: &str, series: &[(&str, RGBColor)], groups: &[Group]) -> Result<String, String> {
    let y_max = groups.iter().flat_map(|(_, v)| v.iter().flatten()).copied().fold(0.0, f64::max).max(1e-9) * 1.15;
    let n = groups.len().max(1);
    let labels: Vec<String> = groups.iter().map(|(l, _)| l.clone()).collect();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH_PX, HEIGHT_PX)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(20)
            .x_label_area_size(60)
            .y_label_area_size(80)
            .build_cartesian_2d(0.0..n as f64, 0.0..y_max)
            .map_err(|e| e.to_string())?;
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
            .draw()
            .map_err(|e| e.to_string())?;
        let width = 0.8 / series.len() as f64;
        for (k, (name, color)) in series.iter().enumerate() {
            let rects = groups.iter().enumerate().filter_map(|(i, (_, values))| {
                let v = values.get(k).copied().flatten()?;
                let x0 = i as f64 + 0.1 + k as f64 * width;
                Some(Rectangle::new([(x0, 0.0), (x0 + width * 0.9, v)], color.filled()))
            });
            let color = *color;
            chart
                .draw_series(rects)
                .map_err(|e| e.to_string())?
                .label(*name)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

const DFS: RGBColor = RGBColor(59, 111, 216);
const RELAY: RGBColor = RGBColor(120, 130, 150);
const SKETCH: RGBColor = RGBColor(220, 150, 60);
const P99: RGBColor = RGBColor(200, 70, 60);

/// dfs against the baselines, MB/s, one group per single-object figure.
pub fn throughput_svg(ratios: &[Ratio]) -> Result<String, String> {
    let groups: Vec<Group> = ratios
        .iter()
        .map(|r| {
            let relay = r.relay_best.as_ref().map(|v| v.baseline_mb_s);
            (r.figure.clone(), vec![Some(r.dfs_mb_s), relay, r.sketch.as_ref().map(|v| v.baseline_mb_s)])
        })
        .collect();
    let series = [("dfs", DFS), ("ideal relay (best mode)", RELAY), ("Python sketch", SKETCH)];
    bars("throughput, median of runs, same run", "MB/s (10^6 bytes per second)", &series, &groups)
}

/// Median and 99th percentile latency of each many-request dfs phase (the small objects), ms:
/// a single-object phase's one request per run is its throughput, in the other picture.
pub fn latency_svg(phases: &[PhaseResult]) -> Result<String, String> {
    let groups: Vec<Group> = phases
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
    bars("dfs request latency, median of runs", "ms", &[("p50", DFS), ("p99", P99)], &groups)
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
        for label in ["t", "MB/s", "put 1 GiB", "get 1 GiB", "dfs", "relay"] {
            assert!(texts.contains(&label), "missing {label:?} in {texts:?}");
        }
        // Per series: its bars and its legend swatch; the missing value has none.
        let filled =
            |color: RGBColor| svg.matches(&format!("fill=\"#{:02X}{:02X}{:02X}\"", color.0, color.1, color.2)).count();
        assert_eq!(filled(DFS), 2 + 1);
        assert_eq!(filled(RELAY), 1 + 1);
    }
}
