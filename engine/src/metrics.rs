//! The engine's metrics, registered in the process-wide Prometheus registry and served by
//! `--metrics ADDR` (see `dfs_runtime::metrics`).

use prometheus::{
    register_histogram_vec, register_int_counter, register_int_counter_vec, register_int_gauge, register_int_gauge_vec,
    HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};
use std::sync::LazyLock;

pub static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("dfs_engine_requests_total", "Client requests by kind and result", &["op", "result"])
        .expect("metric registers once")
});
pub static REQUEST_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "dfs_engine_request_seconds",
        "Client request latency by kind",
        &["op"],
        prometheus::exponential_buckets(0.0005, 2.0, 18).expect("valid buckets")
    )
    .expect("metric registers once")
});
pub static BYTES_IN: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("dfs_engine_client_bytes_in_total", "Bytes received from clients")
        .expect("metric registers once")
});
pub static BYTES_OUT: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("dfs_engine_client_bytes_out_total", "Bytes sent to clients").expect("metric registers once")
});
pub static INFLIGHT_REQUESTS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("dfs_engine_inflight_requests", "Client requests being served").expect("metric registers once")
});
pub static INFLIGHT_BYTES: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("dfs_engine_inflight_bytes", "Bytes of uploads and downloads in progress")
        .expect("metric registers once")
});
pub static CONNECTIONS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("dfs_engine_client_connections", "Open client connections").expect("metric registers once")
});
pub static NODE_UP: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!("dfs_engine_node_up", "1 if the node answered its last check", &["node"])
        .expect("metric registers once")
});
pub static NODE_CHUNKS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!("dfs_engine_node_chunks", "Chunk copies a node reported holding", &["node"])
        .expect("metric registers once")
});
pub static NODE_BYTES_USED: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!("dfs_engine_node_bytes_used", "Bytes of chunk files a node reported", &["node"])
        .expect("metric registers once")
});
pub static NODE_BYTES_FREE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!("dfs_engine_node_bytes_free", "Free bytes a node reported on its disk", &["node"])
        .expect("metric registers once")
});
pub static REPAIR_COPIES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("dfs_engine_repair_copies_total", "Chunk copies made by repair")
        .expect("metric registers once")
});

/// Registers every metric, so the endpoint shows them all from the start.
pub fn init() {
    for m in [&*BYTES_IN, &*BYTES_OUT, &*REPAIR_COPIES] {
        m.reset();
    }
    INFLIGHT_REQUESTS.set(0);
    INFLIGHT_BYTES.set(0);
    CONNECTIONS.set(0);
    LazyLock::force(&REQUESTS);
    LazyLock::force(&REQUEST_SECONDS);
    LazyLock::force(&NODE_UP);
    LazyLock::force(&NODE_CHUNKS);
    LazyLock::force(&NODE_BYTES_USED);
    LazyLock::force(&NODE_BYTES_FREE);
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
