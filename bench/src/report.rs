//! The report: everything measured in one run, as JSON (`--json FILE`), as aligned plain-text
//! tables, or as Markdown tables ready for perf.md (`--markdown`). Ratios are computed here
//! from the medians, never typed in. MB/s are 10^6 bytes per second, MiB/s 2^20.

use crate::baselines::{RelayResult, SeaweedResult, SketchResult};
use crate::dfs::{Op, PhaseResult, MIB};
use crate::machine::Machine;
use crate::stats::Stats;
use serde::Serialize;
use std::fmt::Write as _;

#[derive(Serialize)]
pub struct Report {
    pub started_utc: String,
    /// How the harness was invoked.
    pub invocation: String,
    pub options: serde_json::Value,
    pub machine: Machine,
    /// The engine's data paths measured (`copy`, `splice`), or `default` alone.
    pub data_paths: Vec<String>,
    pub dfs: Vec<PhaseResult>,
    pub relay: Vec<RelayResult>,
    pub sketch: Option<SketchResult>,
    pub seaweedfs: Option<SeaweedResult>,
    pub ratios: Vec<Ratio>,
    /// dfs's many-small-object puts against SeaweedFS's of the same size, count and concurrency.
    pub small_ratios: Vec<SmallRatio>,
    pub cpu_ratios: Vec<CpuRatio>,
    pub notes: Vec<String>,
    /// Every command run, in order, repeats folded.
    pub commands: Vec<String>,
}

/// dfs's median against one baseline's.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Versus {
    pub baseline: String,
    pub baseline_mb_s: f64,
    /// dfs / baseline: above 1 means dfs is faster.
    pub ratio: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Ratio {
    pub figure: String,
    pub dfs_mb_s: f64,
    pub relay_best: Option<Versus>,
    pub relay_rw: Option<Versus>,
    pub relay_splice: Option<Versus>,
    pub sketch: Option<Versus>,
    pub seaweedfs: Option<Versus>,
}

/// A many-small-object dfs phase against SeaweedFS's `weed benchmark` (writes with `-fsync`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SmallRatio {
    pub figure: String,
    pub dfs_ops_s: f64,
    pub dfs_p99_ms: f64,
    pub seaweedfs_ops_s: f64,
    pub seaweedfs_p99_ms: f64,
    /// dfs / SeaweedFS ops/s: above 1 means dfs is faster.
    pub ratio: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CpuRatio {
    pub figure: String,
    pub engine_cpu_s_per_gib: f64,
    pub relay_rw_cpu_s_per_gib: f64,
    /// engine / relay: below 1 means the engine uses less CPU per GiB.
    pub ratio: f64,
}

fn versus(name: &str, dfs: f64, base: f64) -> Versus {
    Versus { baseline: name.to_string(), baseline_mb_s: base, ratio: dfs / base }
}

fn path_tag(p: &PhaseResult) -> String {
    match &p.data_path {
        Some(d) => format!(" [{d}]"),
        None => String::new(),
    }
}

/// Ratios for every single-object dfs phase whose size the baselines were measured at.
pub fn ratios(
    dfs: &[PhaseResult],
    relay: &[RelayResult],
    sketch: Option<&SketchResult>,
    seaweedfs: Option<&SeaweedResult>,
    size: u64,
) -> Vec<Ratio> {
    let mut out = Vec::new();
    for p in dfs.iter().filter(|p| p.spec.count == 1 && p.spec.size_bytes == size) {
        let op = p.spec.op.name();
        let dfs_mb_s = p.mb_s.median;
        let mode = |m: &str| relay.iter().find(|r| r.op == op && r.mode == m);
        let best = relay.iter().filter(|r| r.op == op).max_by(|a, b| a.mb_s.median.total_cmp(&b.mb_s.median));
        let sketch_mb_s = sketch.filter(|s| s.size_bytes == size).map(|s| match p.spec.op {
            Op::Put => s.upload_mb_s.median,
            Op::Get => s.get_mb_s.median,
        });
        let seaweed_mb_s =
            seaweedfs.and_then(|s| s.large.as_ref()).filter(|l| l.size_bytes == size).map(|l| match p.spec.op {
                Op::Put => l.put_mb_s.median,
                Op::Get => l.get_mb_s.median,
            });
        out.push(Ratio {
            figure: format!("{}{}", p.label, path_tag(p)),
            dfs_mb_s,
            relay_best: best.map(|r| versus(&r.mode, dfs_mb_s, r.mb_s.median)),
            relay_rw: mode("rw").map(|r| versus("relay rw", dfs_mb_s, r.mb_s.median)),
            relay_splice: mode("splice").map(|r| versus("relay splice", dfs_mb_s, r.mb_s.median)),
            sketch: sketch_mb_s.map(|s| versus("sketch", dfs_mb_s, s)),
            seaweedfs: seaweed_mb_s.map(|s| versus("seaweedfs", dfs_mb_s, s)),
        });
    }
    out
}

/// The many-small-object put phases against SeaweedFS's puts of the same size, count and
/// concurrency.
pub fn small_ratios(dfs: &[PhaseResult], seaweedfs: Option<&SeaweedResult>) -> Vec<SmallRatio> {
    let Some(s) = seaweedfs.and_then(|s| s.small.as_ref()) else { return Vec::new() };
    dfs.iter()
        .filter(|p| {
            p.spec.op == Op::Put
                && p.spec.count > 1
                && (p.spec.size_bytes, p.spec.count, p.spec.concurrency) == (s.size_bytes, s.count, s.concurrency)
        })
        .map(|p| SmallRatio {
            figure: format!("{}{}", p.label, path_tag(p)),
            dfs_ops_s: p.ops_s.median,
            dfs_p99_ms: p.latency_p99_us.median / 1000.0,
            seaweedfs_ops_s: s.put_ops_s.median,
            seaweedfs_p99_ms: s.put_p99_ms.median,
            ratio: p.ops_s.median / s.put_ops_s.median,
        })
        .collect()
}

/// Engine CPU per GiB (median of runs) against the copying (rw) relay's, for the same phases.
/// For gets, the engine figure is the estimate for the downloads alone where there is one.
pub fn cpu_ratios(dfs: &[PhaseResult], relay: &[RelayResult], size: u64) -> Vec<CpuRatio> {
    let mut out = Vec::new();
    for p in dfs.iter().filter(|p| p.spec.count == 1 && p.spec.size_bytes == size) {
        let Some(r) = relay.iter().find(|r| r.op == p.spec.op.name() && r.mode == "rw") else { continue };
        let (engine, what) = match &p.engine_cpu_s_per_gib_get_alone_est {
            Some(est) => (est.median, " (get alone, est.)"),
            None if p.spec.op == Op::Get => (p.engine_cpu_s_per_gib.median, " (its upload + get)"),
            None => (p.engine_cpu_s_per_gib.median, ""),
        };
        out.push(CpuRatio {
            figure: format!("{}{}{what}", p.label, path_tag(p)),
            engine_cpu_s_per_gib: engine,
            relay_rw_cpu_s_per_gib: r.cpu_s_per_gib,
            ratio: engine / r.cpu_s_per_gib,
        });
    }
    out
}

/// A figure with enough digits to compare: 1167, 98.4, 2.35, 0.447.
pub fn fmt_num(x: f64) -> String {
    if !x.is_finite() {
        return "n/a".into();
    }
    let a = x.abs();
    if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else if a >= 0.01 || a == 0.0 {
        format!("{x:.3}")
    } else {
        format!("{x:.2e}")
    }
}

pub fn fmt_ratio(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}")
    } else {
        "n/a".into()
    }
}

/// A table with a title; columns whose `right` flag is set are right-aligned.
#[derive(Clone, Debug)]
pub struct Table {
    pub title: String,
    pub headers: Vec<String>,
    pub right: Vec<bool>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    fn new(title: &str, headers: &[(&str, bool)]) -> Table {
        Table {
            title: title.to_string(),
            headers: headers.iter().map(|h| h.0.to_string()).collect(),
            right: headers.iter().map(|h| h.1).collect(),
            rows: Vec::new(),
        }
    }

    fn push(&mut self, row: Vec<String>) {
        debug_assert_eq!(row.len(), self.headers.len());
        self.rows.push(row);
    }

    /// Columns padded to their widest cell (counted in characters), two spaces apart.
    pub fn text(&self) -> String {
        let n = self.headers.len();
        let mut width = vec![0; n];
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            for (w, cell) in width.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |row: &[String]| {
            let cells: Vec<String> = row
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let pad = " ".repeat(width[i] - c.chars().count());
                    if self.right[i] {
                        format!("{pad}{c}")
                    } else {
                        format!("{c}{pad}")
                    }
                })
                .collect();
            cells.join("  ").trim_end().to_string()
        };
        let mut out = format!("{}\n", self.title);
        out += &line(&self.headers);
        out.push('\n');
        out += &width.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("  ");
        out.push('\n');
        for r in &self.rows {
            out += &line(r);
            out.push('\n');
        }
        out
    }

    pub fn markdown(&self) -> String {
        let esc = |c: &str| c.replace('|', "\\|");
        let mut out = format!("**{}**\n\n", self.title);
        out += &format!("| {} |\n", self.headers.iter().map(|h| esc(h)).collect::<Vec<_>>().join(" | "));
        let align: Vec<&str> = self.right.iter().map(|r| if *r { "---:" } else { "---" }).collect();
        out += &format!("|{}|\n", align.join("|"));
        for r in &self.rows {
            out += &format!("| {} |\n", r.iter().map(|c| esc(c)).collect::<Vec<_>>().join(" | "));
        }
        out
    }
}

/// `median`, `min–max` and `n` cells of a figure.
fn stat_cells(s: &Stats, k: f64) -> [String; 3] {
    let range = if s.n > 1 { format!("{}–{}", fmt_num(s.min * k), fmt_num(s.max * k)) } else { "–".into() };
    [fmt_num(s.median * k), range, s.n.to_string()]
}

fn figure_row(t: &mut Table, figure: &str, unit: &str, s: &Stats, k: f64) {
    let [m, r, n] = stat_cells(s, k);
    t.push(vec![figure.to_string(), unit.to_string(), m, r, n]);
}

/// Every measured figure, one row each; a row starting with `↳` belongs to the row above.
pub fn figures_table(r: &Report) -> Table {
    let mut t = Table::new(
        "Figures (MB/s = 10^6 B/s, MiB/s = 2^20 B/s; median of n runs)",
        &[("figure", false), ("unit", false), ("median", true), ("min–max", true), ("n", true)],
    );
    for p in &r.dfs {
        let name = format!("dfs {}{}", p.label, path_tag(p));
        if p.spec.count == 1 {
            figure_row(&mut t, &name, "MB/s", &p.mb_s, 1.0);
            figure_row(&mut t, "  ↳ the same in MiB/s", "MiB/s", &p.mib_s, 1.0);
        } else {
            figure_row(&mut t, &name, "ops/s", &p.ops_s, 1.0);
            figure_row(&mut t, "  ↳ latency p50", "ms", &p.latency_p50_us, 1e-3);
            figure_row(&mut t, "  ↳ latency p99", "ms", &p.latency_p99_us, 1e-3);
            figure_row(&mut t, "  ↳ engine CPU per op", "µs", &p.engine_cpu_us_per_op, 1.0);
        }
        let cpu = if p.spec.op == Op::Get {
            "  ↳ engine CPU per GiB moved (its upload + get)"
        } else {
            "  ↳ engine CPU per GiB moved"
        };
        figure_row(&mut t, cpu, "s/GiB", &p.engine_cpu_s_per_gib, 1.0);
        if let Some(est) = &p.engine_cpu_s_per_gib_get_alone_est {
            figure_row(&mut t, "  ↳ engine CPU per GiB, get alone (est.*)", "s/GiB", est, 1.0);
        }
        let hwm = Stats::single(p.engine_vm_hwm_kib as f64);
        figure_row(&mut t, "  ↳ engine peak RSS (VmHWM) over the phase", "MiB", &hwm, 1024.0 / MIB);
        if p.errors > 0 {
            t.push(vec![
                "  ↳ ERRORS".into(),
                "count".into(),
                p.errors.to_string(),
                "–".into(),
                p.runs.len().to_string(),
            ]);
        }
    }
    for rr in &r.relay {
        let name = format!("relay {} {} ({})", rr.op, crate::dfs::human_size(rr.size_bytes), rr.mode);
        figure_row(&mut t, &name, "MB/s", &rr.mb_s, 1.0);
        figure_row(&mut t, "  ↳ relay CPU per GiB, all runs", "s/GiB", &Stats::single(rr.cpu_s_per_gib), 1.0);
    }
    if let Some(s) = &r.sketch {
        let size = crate::dfs::human_size(s.size_bytes);
        figure_row(&mut t, &format!("sketch upload {size}"), "MB/s", &s.upload_mb_s, 1.0);
        figure_row(&mut t, &format!("sketch get {size}"), "MB/s", &s.get_mb_s, 1.0);
        let hwm = Stats::single(s.main_vm_hwm_kib_after_get as f64);
        figure_row(&mut t, "  ↳ main server peak RSS (VmHWM) after the gets", "MiB", &hwm, 1024.0 / MIB);
        let before = Stats::single(s.main_vm_hwm_kib_before_get as f64);
        figure_row(&mut t, "  ↳ main server peak RSS (VmHWM) before them", "MiB", &before, 1024.0 / MIB);
    }
    if let Some(s) = r.seaweedfs.as_ref().and_then(|s| s.small.as_ref()) {
        let what = format!("{} ×{}, {} concurrent", crate::dfs::human_size(s.size_bytes), s.count, s.concurrency);
        figure_row(&mut t, &format!("seaweedfs put {what}, -fsync"), "ops/s", &s.put_ops_s, 1.0);
        figure_row(&mut t, "  ↳ latency p99", "ms", &s.put_p99_ms, 1.0);
        figure_row(&mut t, &format!("seaweedfs get {what}"), "ops/s", &s.get_ops_s, 1.0);
        figure_row(&mut t, "  ↳ latency p99", "ms", &s.get_p99_ms, 1.0);
    }
    if let Some(l) = r.seaweedfs.as_ref().and_then(|s| s.large.as_ref()) {
        let size = crate::dfs::human_size(l.size_bytes);
        figure_row(&mut t, &format!("seaweedfs put {size} (weed upload, no fsync)"), "MB/s", &l.put_mb_s, 1.0);
        figure_row(&mut t, &format!("seaweedfs get {size} (curl to a file)"), "MB/s", &l.get_mb_s, 1.0);
    }
    t
}

fn versus_cell(v: &Option<Versus>, show_name: bool) -> String {
    match v {
        Some(v) if show_name => format!("{} ({}, {})", fmt_ratio(v.ratio), fmt_num(v.baseline_mb_s), v.baseline),
        Some(v) => format!("{} ({})", fmt_ratio(v.ratio), fmt_num(v.baseline_mb_s)),
        None => "–".into(),
    }
}

pub fn ratios_table(ratios: &[Ratio]) -> Table {
    let mut t = Table::new(
        "Ratios of medians, dfs / baseline (above 1: dfs is faster; baseline MB/s in parentheses)",
        &[
            ("dfs figure", false),
            ("dfs MB/s", true),
            ("÷ relay best", true),
            ("÷ relay rw", true),
            ("÷ relay splice", true),
            ("÷ sketch", true),
            ("÷ SeaweedFS", true),
        ],
    );
    for r in ratios {
        t.push(vec![
            r.figure.clone(),
            fmt_num(r.dfs_mb_s),
            versus_cell(&r.relay_best, true),
            versus_cell(&r.relay_rw, false),
            versus_cell(&r.relay_splice, false),
            versus_cell(&r.sketch, false),
            versus_cell(&r.seaweedfs, false),
        ]);
    }
    t
}

pub fn small_table(small: &[SmallRatio]) -> Table {
    let mut t = Table::new(
        "Small objects: dfs puts against SeaweedFS's (weed benchmark -fsync, same size, count and concurrency; medians)",
        &[
            ("dfs figure", false),
            ("dfs ops/s", true),
            ("dfs p99 ms", true),
            ("SeaweedFS ops/s", true),
            ("SeaweedFS p99 ms", true),
            ("dfs ÷ SeaweedFS", true),
        ],
    );
    for r in small {
        t.push(vec![
            r.figure.clone(),
            fmt_num(r.dfs_ops_s),
            fmt_num(r.dfs_p99_ms),
            fmt_num(r.seaweedfs_ops_s),
            fmt_num(r.seaweedfs_p99_ms),
            fmt_ratio(r.ratio),
        ]);
    }
    t
}

pub fn cpu_table(cpu: &[CpuRatio]) -> Table {
    let mut t = Table::new(
        "Engine CPU per GiB moved vs the copying relay (median of runs; below 1: the engine uses less)",
        &[("dfs figure", false), ("engine s/GiB", true), ("relay rw s/GiB", true), ("engine / relay", true)],
    );
    for c in cpu {
        t.push(vec![
            c.figure.clone(),
            fmt_num(c.engine_cpu_s_per_gib),
            fmt_num(c.relay_rw_cpu_s_per_gib),
            fmt_ratio(c.ratio),
        ]);
    }
    t
}

fn machine_line(m: &Machine) -> String {
    let mem = m.mem_total_kib.map(|k| format!("{:.1} GiB RAM", k as f64 * 1024.0 / (MIB * 1024.0))).unwrap_or_default();
    format!(
        "{} cores ({}), {mem}, Linux {}, scratch on {} ({}), dfs revision {}, {}",
        m.nproc, m.cpu_model, m.kernel, m.scratch_fs, m.scratch_device, m.revision, m.rustc
    )
}

fn tables(r: &Report) -> Vec<Table> {
    let mut t = vec![figures_table(r)];
    if !r.ratios.is_empty() {
        t.push(ratios_table(&r.ratios));
    }
    if !r.small_ratios.is_empty() {
        t.push(small_table(&r.small_ratios));
    }
    if !r.cpu_ratios.is_empty() {
        t.push(cpu_table(&r.cpu_ratios));
    }
    t
}

pub fn text(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "dfs benchmark, {} UTC", r.started_utc);
    let _ = writeln!(out, "machine: {}", machine_line(&r.machine));
    let _ = writeln!(
        out,
        "load average (1, 5, 15 min) at start: {}; at end: {}",
        r.machine.loadavg_start, r.machine.loadavg_end
    );
    let _ = writeln!(out, "data paths: {}\n", r.data_paths.join(", "));
    for t in tables(r) {
        out += &t.text();
        out.push('\n');
    }
    if !r.notes.is_empty() {
        out += "Notes\n";
        for n in &r.notes {
            let _ = writeln!(out, "- {n}");
        }
        out.push('\n');
    }
    let _ = writeln!(out, "Commands run ({}), in order; `(×N)` marks N identical runs", r.commands.len());
    out += &format!("  {}\n", r.invocation);
    for c in &r.commands {
        let _ = writeln!(out, "  {c}");
    }
    out
}

pub fn markdown(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Measured {} UTC with `{}`.\n", r.started_utc, r.invocation);
    let _ = writeln!(out, "Machine: {}. Data paths: {}.\n", machine_line(&r.machine), r.data_paths.join(", "));
    let _ = writeln!(
        out,
        "Load average (1, 5, 15 min) at start: {}; at end: {}.\n",
        r.machine.loadavg_start, r.machine.loadavg_end
    );
    for t in tables(r) {
        out += &t.markdown();
        out.push('\n');
    }
    if !r.notes.is_empty() {
        for n in &r.notes {
            let _ = writeln!(out, "- {n}");
        }
        out.push('\n');
    }
    let _ = writeln!(out, "<details><summary>Commands run ({})</summary>\n\n```sh", r.commands.len());
    for c in &r.commands {
        let _ = writeln!(out, "{c}");
    }
    out += "```\n\n</details>\n";
    out
}

/// `YYYY-MM-DD HH:MM:SS` of a Unix time, UTC (Howard Hinnant's days-to-civil algorithm).
pub fn utc(unix_s: u64) -> String {
    let days = (unix_s / 86_400) as i64;
    let secs = unix_s % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dfs::tests::bench_json;
    use crate::dfs::{summarize, PhaseSpec};

    fn relay(op: &str, mode: &str, median: f64, cpu: f64) -> RelayResult {
        let mut mb_s = Stats::of(&[median - 10.0, median, median + 10.0]).unwrap();
        mb_s.median = median;
        RelayResult { op: op.into(), mode: mode.into(), size_bytes: 1 << 30, mb_s, cpu_s_per_gib: cpu }
    }

    fn phase(op: Op, path: &str, elapsed_s: f64, cpu_s: f64) -> PhaseResult {
        let name = op.name();
        let spec = PhaseSpec { op, size_bytes: 1 << 30, count: 1, concurrency: 1, runs: 1 };
        summarize(spec, Some(path), vec![bench_json(name, 1 << 30, 1, elapsed_s)], &[cpu_s], 4096, vec![]).unwrap()
    }

    #[test]
    fn ratios_against_each_relay_mode_the_better_one_and_the_sketch() {
        let dfs = vec![phase(Op::Put, "copy", 1.0, 0.5), phase(Op::Get, "splice", 2.0, 0.4)];
        let relay =
            vec![relay("put", "rw", 500.0, 0.4), relay("put", "splice", 2000.0, 0.2), relay("get", "rw", 1000.0, 0.3)];
        let sketch = SketchResult {
            size_bytes: 1 << 30,
            upload_mb_s: Stats::single(200.0),
            get_mb_s: Stats::single(100.0),
            main_vm_hwm_kib_before_get: 1,
            main_vm_hwm_kib_after_get: 2,
        };
        let seaweedfs = SeaweedResult {
            small: None,
            large: Some(crate::baselines::SeaweedLarge {
                size_bytes: 1 << 30,
                put_mb_s: Stats::single(400.0),
                get_mb_s: Stats::single(1000.0),
            }),
        };
        let r = ratios(&dfs, &relay, Some(&sketch), Some(&seaweedfs), 1 << 30);
        assert_eq!(r.len(), 2);
        let put = &r[0];
        assert_eq!(put.figure, "put 1 GiB [copy]");
        assert!((put.dfs_mb_s - 1073.741824).abs() < 1e-9);
        let best = put.relay_best.as_ref().unwrap();
        assert_eq!((best.baseline.as_str(), best.baseline_mb_s), ("splice", 2000.0));
        assert!((best.ratio - 1073.741824 / 2000.0).abs() < 1e-12);
        assert!((put.relay_rw.as_ref().unwrap().ratio - 1073.741824 / 500.0).abs() < 1e-12);
        assert!((put.sketch.as_ref().unwrap().ratio - 1073.741824 / 200.0).abs() < 1e-12);
        let get = &r[1];
        assert_eq!(get.relay_best.as_ref().unwrap().baseline, "rw");
        assert_eq!(get.relay_splice, None, "no get splice relay run: no ratio");
        assert!((get.sketch.as_ref().unwrap().ratio - 536.870912 / 100.0).abs() < 1e-12);
        assert!((put.seaweedfs.as_ref().unwrap().ratio - 1073.741824 / 400.0).abs() < 1e-12);
        assert!((get.seaweedfs.as_ref().unwrap().ratio - 536.870912 / 1000.0).abs() < 1e-12);
        // Measured at another size: no ratio.
        assert_eq!(ratios(&dfs, &relay, None, Some(&seaweedfs), 1 << 20), vec![]);
        let other = SeaweedResult {
            small: None,
            large: Some(crate::baselines::SeaweedLarge { size_bytes: 1 << 20, ..seaweedfs.large.clone().unwrap() }),
        };
        assert!(ratios(&dfs, &relay, None, Some(&other), 1 << 30).iter().all(|r| r.seaweedfs.is_none()));

        let cpu = cpu_ratios(&dfs, &relay, 1 << 30);
        assert_eq!(cpu.len(), 2);
        assert!((cpu[0].ratio - 0.5 / 0.4).abs() < 1e-12);
        // The get run moved 2 GiB through the engine (its upload and the get).
        assert!((cpu[1].engine_cpu_s_per_gib - 0.2).abs() < 1e-12);
    }

    #[test]
    fn ratio_table_text_and_markdown() {
        let ratios = vec![Ratio {
            figure: "put 1 GiB [copy]".into(),
            dfs_mb_s: 940.4,
            relay_best: Some(versus("splice", 940.4, 1167.0)),
            relay_rw: Some(versus("relay rw", 940.4, 981.3)),
            relay_splice: Some(versus("relay splice", 940.4, 1167.0)),
            sketch: None,
            seaweedfs: None,
        }];
        let t = ratios_table(&ratios);
        let text = t.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[3].starts_with("put 1 GiB [copy]  "), "{text}");
        assert!(lines[3].contains("0.81 (1167, splice)"), "{text}");
        assert!(lines[3].contains("0.96 (981)"), "{text}");
        assert!(lines[3].ends_with('–'), "{text}");
        // Every line of the table (header, rule, rows) is equally wide, cells are right-aligned.
        let widths: Vec<usize> = lines[1..].iter().map(|l| l.chars().count()).collect();
        assert!(widths.iter().all(|w| *w == widths[0]), "{text}");
        let md = t.markdown();
        assert!(md.contains("| dfs figure | dfs MB/s | ÷ relay best |"), "{md}");
        assert!(md.contains("|---|---:|---:|---:|---:|---:|---:|"), "{md}");
        assert!(
            md.contains("| put 1 GiB [copy] | 940 | 0.81 (1167, splice) | 0.96 (981) | 0.81 (1167) | – | – |"),
            "{md}"
        );
    }

    #[test]
    fn small_objects_against_seaweedfs_of_the_same_shape_only() {
        let small = |size, count, concurrency, path| {
            let spec = PhaseSpec { op: Op::Put, size_bytes: size, count, concurrency, runs: 1 };
            summarize(spec, Some(path), vec![bench_json("put", size, count, 4.0)], &[1.0], 4096, vec![]).unwrap()
        };
        let dfs =
            vec![small(4096, 10_000, 32, "copy"), small(4096, 10_000, 32, "splice"), small(4096, 500, 32, "copy")];
        let seaweedfs = SeaweedResult {
            small: Some(crate::baselines::SeaweedSmall {
                size_bytes: 4096,
                count: 10_000,
                concurrency: 32,
                put_ops_s: Stats::single(1250.0),
                put_p99_ms: Stats::single(40.0),
                get_ops_s: Stats::single(9000.0),
                get_p99_ms: Stats::single(5.0),
            }),
            large: None,
        };
        let r = small_ratios(&dfs, Some(&seaweedfs));
        assert_eq!(
            r.iter().map(|r| r.figure.as_str()).collect::<Vec<_>>(),
            ["put 4 KiB ×10000, 32 concurrent [copy]", "put 4 KiB ×10000, 32 concurrent [splice]"]
        );
        // 10,000 puts in 4 s.
        assert!((r[0].dfs_ops_s - 2500.0).abs() < 1e-9 && (r[0].ratio - 2.0).abs() < 1e-12, "{r:?}");
        assert_eq!(r[0].seaweedfs_p99_ms, 40.0);
        assert!(small_ratios(&dfs, None).is_empty());
        let md = small_table(&r).markdown();
        assert!(md.contains("| 2500 |") && md.contains("| 1250 | 40.0 | 2.00 |"), "{md}");
    }

    #[test]
    fn numbers() {
        assert_eq!(fmt_num(1167.3), "1167");
        assert_eq!(fmt_num(98.44), "98.4");
        assert_eq!(fmt_num(2.345), "2.35");
        assert_eq!(fmt_num(0.4471), "0.447");
        assert_eq!(fmt_num(0.0), "0.000");
        assert_eq!(fmt_num(0.00123), "1.23e-3");
        assert_eq!(fmt_num(f64::NAN), "n/a");
        assert_eq!(fmt_ratio(0.8054), "0.81");
        assert_eq!(fmt_ratio(f64::INFINITY), "n/a");
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13:20");
    }
}
