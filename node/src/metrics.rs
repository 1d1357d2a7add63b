//! The node's metrics, registered in the process-wide Prometheus registry and served by
//! `--metrics ADDR` (see `dfs_runtime::metrics`).

use prometheus::{
    register_histogram_vec, register_int_counter, register_int_counter_vec, register_int_gauge, HistogramVec,
    IntCounter, IntCounterVec, IntGauge,
};
use std::sync::LazyLock;

pub static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("dfs_node_requests_total", "Engine requests by kind and result", &["op", "result"])
        .expect("metric registers once")
});
pub static REQUEST_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "dfs_node_request_seconds",
        "Engine request latency by kind",
        &["op"],
        prometheus::exponential_buckets(0.0001, 2.0, 20).expect("valid buckets")
    )
    .expect("metric registers once")
});
pub static BYTES_IN: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("dfs_node_bytes_in_total", "Bytes received").expect("metric registers once")
});
pub static BYTES_OUT: LazyLock<IntCounter> =
    LazyLock::new(|| register_int_counter!("dfs_node_bytes_out_total", "Bytes sent").expect("metric registers once"));
pub static INFLIGHT_REQUESTS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("dfs_node_inflight_requests", "Requests being served").expect("metric registers once")
});
pub static CHUNKS: LazyLock<IntGauge> =
    LazyLock::new(|| register_int_gauge!("dfs_node_chunks", "Chunk files held").expect("metric registers once"));
pub static BYTES_USED: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("dfs_node_bytes_used", "Bytes of chunk files held").expect("metric registers once")
});
pub static BYTES_FREE: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("dfs_node_bytes_free", "Free bytes on the data directory's file system")
        .expect("metric registers once")
});
pub static QUARANTINED: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("dfs_node_quarantined_chunks", "Chunk files set aside by scrub").expect("metric registers once")
});

pub fn init() {
    LazyLock::force(&REQUESTS);
    LazyLock::force(&REQUEST_SECONDS);
    BYTES_IN.reset();
    BYTES_OUT.reset();
    INFLIGHT_REQUESTS.set(0);
}

/// Copies the store's counts into the gauges. Called on every NodeStat, that is at each of the
/// engine's health checks (every few seconds), so the gauges lag by at most that long.
pub fn record_store(report: &dfs_proto::StoreReport) {
    CHUNKS.set(report.n_chunks as i64);
    BYTES_USED.set(report.bytes_used as i64);
    BYTES_FREE.set(report.bytes_free as i64);
    QUARANTINED.set(report.n_quarantined as i64);
}

/// Counts one finished request and logs it at debug level.
pub fn record(op: &str, tally: &dfs_proto::io_uring::Tally, elapsed: std::time::Duration) {
    BYTES_IN.inc_by(tally.bytes_in);
    BYTES_OUT.inc_by(tally.bytes_out);
    REQUESTS.with_label_values(&[op, tally.outcome]).inc();
    REQUEST_SECONDS.with_label_values(&[op]).observe(elapsed.as_secs_f64());
    tracing::debug!(
        op,
        outcome = tally.outcome,
        bytes_in = tally.bytes_in,
        bytes_out = tally.bytes_out,
        "request took {elapsed:.2?}"
    );
}
