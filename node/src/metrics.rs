//! The node's metrics, registered in the process-wide Prometheus registry and served by
//! `--metrics ADDR` (see `dfs_runtime::metrics`).

use dfs_runtime::metrics::{RequestMetricNames, RequestMetrics};
use prometheus::{register_int_counter, register_int_gauge, IntCounter, IntGauge};
use std::sync::LazyLock;

pub static REQUESTS: LazyLock<RequestMetrics> = LazyLock::new(|| {
    RequestMetrics::register(&RequestMetricNames {
        requests: "dfs_node_requests_total",
        seconds: "dfs_node_request_seconds",
        bytes_in: "dfs_node_bytes_in_total",
        bytes_out: "dfs_node_bytes_out_total",
        peer: "Engine",
        first_bucket_secs: 0.0001,
    })
});
pub static INFLIGHT_REQUESTS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("dfs_node_inflight_requests", "Requests being served").expect("metric registers once")
});
pub static CHUNKS: LazyLock<IntGauge> =
    LazyLock::new(|| register_int_gauge!("dfs_node_chunks", "Chunk files held").expect("metric registers once"));
pub static BYTES_USED: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("dfs_node_bytes_used", "Bytes of live chunk copies held").expect("metric registers once")
});
pub static BYTES_FREE: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("dfs_node_bytes_free", "Free bytes on the data directory's file system")
        .expect("metric registers once")
});
pub static QUARANTINED: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("dfs_node_quarantined_chunks", "Chunk files set aside by scrub").expect("metric registers once")
});

pub static BYTES_RECLAIMABLE: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "dfs_node_bytes_reclaimable",
        "Bytes on disk holding nothing live, which segment compaction gives back"
    )
    .expect("metric registers once")
});

pub static SEGMENTS_COMPACTED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("dfs_node_segments_compacted_total", "Segments rewritten by compaction and deleted")
        .expect("metric registers once")
});
pub static COMPACTION_BYTES_FREED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("dfs_node_compaction_freed_bytes_total", "Bytes of segment files deleted by compaction")
        .expect("metric registers once")
});

pub fn init() {
    LazyLock::force(&REQUESTS);
    INFLIGHT_REQUESTS.set(0);
}

/// Copies the store's counts into the gauges. Called on every NodeStat, that is at each of the
/// engine's health checks (every few seconds), so the gauges lag by at most that long.
pub fn record_store(report: &dfs_proto::StoreReport) {
    CHUNKS.set(report.n_chunks as i64);
    BYTES_USED.set(report.bytes_used as i64);
    BYTES_FREE.set(report.bytes_free as i64);
    QUARANTINED.set(report.n_quarantined as i64);
    BYTES_RECLAIMABLE.set(report.bytes_reclaimable as i64);
}

/// Counts one finished request and logs it at debug level.
pub fn record(op: &str, tally: &dfs_runtime::conn::Tally, elapsed: std::time::Duration) {
    REQUESTS.record(op, tally.outcome, tally.bytes_in, tally.bytes_out, elapsed);
}
