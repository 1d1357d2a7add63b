//! What a benchmark run measured and how it is shown: aligned text for people, or one JSON
//! object for scripts.
//!
//! The JSON object's schema is fixed, because other tools parse it:
//! `{"op":"put"|"get","size_bytes":u64,"count":u64,"concurrency":u64,"chunking":"equal"|"dynamic",
//! "elapsed_s":f64,"bytes_total":u64,"mib_s":f64,"gib_s":f64,"ops_s":f64,
//! "latency_us":{"p50":u64,"p90":u64,"p99":u64,"p999":u64,"max":u64,"mean":f64},"errors":u64}`.
//! Throughput counts `size_bytes × count` bytes over `elapsed_s`, the time from the start of
//! the first request to the end of the last; latencies are per request, in microseconds.

use super::latency::LatencySummary;
use super::BenchOp;
use dfs_proto::Chunking;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::io::{self, Write};
use std::time::Duration;

const MIB: f64 = (1u64 << 20) as f64;
const GIB: f64 = (1u64 << 30) as f64;
/// The shortest elapsed time used as a divisor, so that rates stay finite (JSON has no
/// infinity) even for a run too fast to measure.
const MIN_ELAPSED_S: f64 = 1e-9;

/// What happened to the objects the benchmark created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cleanup {
    /// Deleted after the run.
    Deleted,
    /// Left in place (`--keep`).
    Kept,
    /// Some could not be deleted; they are still stored.
    Failed { n_failed: u64, first_error: String },
}

/// The result of a successful run.
pub struct BenchReport {
    pub op: BenchOp,
    pub size_bytes: u64,
    pub count: u64,
    pub concurrency: u64,
    pub chunking: Chunking,
    /// Distinct objects the run stored: `count` for put, the preloaded objects for get.
    pub n_objects: u64,
    /// From the start of the first request to the end of the last.
    pub elapsed: Duration,
    /// One sample per request, in microseconds.
    pub latency_us: Histogram<u64>,
    /// Per request, in the order they ended: (seconds since the first request began,
    /// latency in ms).
    pub timeline: Vec<(f64, f64)>,
    /// Failed requests; a run stops at its first failure, so a report always has none. Kept
    /// for the JSON schema's sake.
    pub errors: u64,
    pub cleanup: Cleanup,
}

/// The JSON report; see the module documentation for its schema.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BenchJson {
    pub op: BenchOp,
    pub size_bytes: u64,
    pub count: u64,
    pub concurrency: u64,
    pub chunking: String,
    pub elapsed_s: f64,
    pub bytes_total: u64,
    pub mib_s: f64,
    pub gib_s: f64,
    pub ops_s: f64,
    pub latency_us: LatencySummary,
    pub errors: u64,
}

impl BenchReport {
    /// Bytes moved by the timed requests. The limits on count and size keep it within a u64.
    pub fn bytes_total(&self) -> u64 {
        self.size_bytes.saturating_mul(self.count)
    }

    fn elapsed_s(&self) -> f64 {
        self.elapsed.as_secs_f64().max(MIN_ELAPSED_S)
    }

    pub fn json(&self) -> BenchJson {
        let elapsed_s = self.elapsed_s();
        let bytes_total = self.bytes_total();
        BenchJson {
            op: self.op,
            size_bytes: self.size_bytes,
            count: self.count,
            concurrency: self.concurrency,
            chunking: self.chunking.to_string(),
            elapsed_s: self.elapsed.as_secs_f64(),
            bytes_total,
            mib_s: bytes_total as f64 / MIB / elapsed_s,
            gib_s: bytes_total as f64 / GIB / elapsed_s,
            ops_s: self.count as f64 / elapsed_s,
            latency_us: LatencySummary::of(&self.latency_us),
            errors: self.errors,
        }
    }

    /// The report as aligned `key  value` lines.
    pub fn write_text(&self, w: &mut dyn Write) -> io::Result<()> {
        let json = self.json();
        let latency = &json.latency_us;
        writeln!(w, "op            {}", self.op)?;
        writeln!(w, "size          {} ({} bytes)", format_bytes(self.size_bytes), self.size_bytes)?;
        writeln!(w, "count         {}", self.count)?;
        writeln!(w, "concurrency   {}", self.concurrency)?;
        writeln!(w, "chunking      {}", self.chunking)?;
        let objects = match self.op {
            BenchOp::Put => format!("{} stored", self.n_objects),
            BenchOp::Get => format!("{} preloaded, read round-robin", self.n_objects),
        };
        let fate = match &self.cleanup {
            Cleanup::Deleted => "deleted".to_owned(),
            Cleanup::Kept => "kept".to_owned(),
            Cleanup::Failed { n_failed, .. } => format!("{n_failed} could not be deleted"),
        };
        writeln!(w, "objects       {objects}, {fate}")?;
        writeln!(w, "elapsed       {:.3} s", json.elapsed_s)?;
        writeln!(w, "throughput    {:.2} MiB/s = {:.3} GiB/s", json.mib_s, json.gib_s)?;
        writeln!(w, "ops/s         {:.1}", json.ops_s)?;
        writeln!(w, "latency p50   {}", format_us(latency.p50 as f64))?;
        writeln!(w, "latency p90   {}", format_us(latency.p90 as f64))?;
        writeln!(w, "latency p99   {}", format_us(latency.p99 as f64))?;
        writeln!(w, "latency p99.9 {}", format_us(latency.p999 as f64))?;
        writeln!(w, "latency max   {}", format_us(latency.max as f64))?;
        writeln!(w, "latency mean  {}", format_us(latency.mean))?;
        writeln!(w, "errors        {}", self.errors)
    }
}

/// A byte count in the largest binary unit it reaches: `4 KiB`, `1.50 MiB`, `0 B`.
pub fn format_bytes(n_bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut unit = None;
    for (power, name) in UNITS.iter().enumerate() {
        let unit_bytes = 1u64 << (10 * (power + 1));
        if n_bytes >= unit_bytes {
            unit = Some((unit_bytes, *name));
        }
    }
    match unit {
        None => format!("{n_bytes} B"),
        Some((unit_bytes, name)) if n_bytes.is_multiple_of(unit_bytes) => format!("{} {name}", n_bytes / unit_bytes),
        Some((unit_bytes, name)) => format!("{:.2} {name}", n_bytes as f64 / unit_bytes as f64),
    }
}

/// A latency in microseconds, in µs, ms or s, whichever keeps it readable.
pub fn format_us(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else if us < 1_000_000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.3} s", us / 1_000_000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::latency;

    fn report() -> BenchReport {
        let mut histogram = latency::new_histogram();
        for us in [100, 200, 300, 400] {
            latency::record(&mut histogram, Duration::from_micros(us));
        }
        BenchReport {
            op: BenchOp::Get,
            size_bytes: 1 << 20,
            count: 4,
            concurrency: 2,
            chunking: Chunking::Dynamic,
            n_objects: 4,
            elapsed: Duration::from_millis(500),
            latency_us: histogram,
            timeline: vec![(0.1, 0.1), (0.2, 0.2), (0.3, 0.3), (0.4, 0.4)],
            errors: 0,
            cleanup: Cleanup::Deleted,
        }
    }

    #[test]
    fn json_has_exactly_the_documented_schema() {
        let json = serde_json::to_value(report().json()).expect("serialize");
        let expected = serde_json::json!({
            "op": "get", "size_bytes": 1048576, "count": 4, "concurrency": 2, "chunking": "dynamic",
            "elapsed_s": 0.5, "bytes_total": 4194304, "mib_s": 8.0, "gib_s": 8.0 / 1024.0, "ops_s": 8.0,
            "latency_us": { "p50": 200, "p90": 400, "p99": 400, "p999": 400, "max": 400, "mean": 250.0 },
            "errors": 0
        });
        assert_eq!(json, expected);
        let text = serde_json::to_string(&report().json()).expect("serialize");
        assert!(text.starts_with(r#"{"op":"get","size_bytes":1048576,"count":4,"#), "{text}");
    }

    #[test]
    fn text_report_names_every_figure() {
        let mut out = Vec::new();
        report().write_text(&mut out).expect("write");
        let text = String::from_utf8(out).expect("utf-8");
        for line in [
            "op            get",
            "size          1 MiB (1048576 bytes)",
            "objects       4 preloaded, read round-robin, deleted",
            "throughput    8.00 MiB/s = 0.008 GiB/s",
            "ops/s         8.0",
            "latency p50   200 µs",
            "latency max   400 µs",
            "latency mean  250 µs",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn byte_and_latency_units() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(1023), "1023 B");
        assert_eq!(format_bytes(4096), "4 KiB");
        assert_eq!(format_bytes(3 << 19), "1.50 MiB");
        assert_eq!(format_bytes(1 << 30), "1 GiB");
        assert_eq!(format_us(12.0), "12 µs");
        assert_eq!(format_us(1234.0), "1.23 ms");
        assert_eq!(format_us(2_500_000.0), "2.500 s");
    }
}
