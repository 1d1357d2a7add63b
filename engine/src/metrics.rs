//! The engine's metrics, registered in the process-wide Prometheus registry and served by
//! `--metrics ADDR` (see `dfs_runtime::metrics`).

use dfs_runtime::metrics::{RequestMetricNames, RequestMetrics};
use prometheus::{
    register_histogram_vec, register_int_counter, register_int_counter_vec, register_int_gauge, register_int_gauge_vec,
    HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};
use std::sync::LazyLock;

pub static REQUESTS: LazyLock<RequestMetrics> = LazyLock::new(|| {
    RequestMetrics::register(&RequestMetricNames {
        requests: "dfs_engine_requests_total",
        seconds: "dfs_engine_request_seconds",
        bytes_in: "dfs_engine_client_bytes_in_total",
        bytes_out: "dfs_engine_client_bytes_out_total",
        peer: "Client",
        first_bucket_secs: 0.0005,
    })
});
/// S3 requests by operation and the status they were answered with (`200`, or S3's error code).
pub static S3_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "dfs_engine_s3_requests_total",
        "S3 requests answered, by operation and code",
        &["op", "code"]
    )
    .expect("metric registers once")
});
/// Every HTTP answer of the S3 listener by status, those refused before an operation ran
/// (a bad signature, an unknown access key) included.
pub static S3_RESPONSES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "dfs_engine_s3_responses_total",
        "HTTP answers of the S3 listener, by status",
        &["status"]
    )
    .expect("metric registers once")
});
pub static S3_REQUEST_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "dfs_engine_s3_request_seconds",
        "Time to answer an S3 request (to its status line; a GET's body streams after), by operation",
        &["op"],
        prometheus::exponential_buckets(0.0005, 2.0, 18).expect("valid buckets")
    )
    .expect("metric registers once")
});
pub static S3_BYTES_IN: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("dfs_engine_s3_bytes_in_total", "Object bytes stored through S3")
        .expect("metric registers once")
});
pub static S3_BYTES_OUT: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "dfs_engine_s3_bytes_out_total",
        "Object bytes sent through S3 (verified, queued for the body)"
    )
    .expect("metric registers once")
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
/// Native GETs by how they were answered: `buffered` (the whole file under the buffer budget)
/// or `streamed` (block by block, in chunk order).
pub static DOWNLOADS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("dfs_engine_downloads_total", "Native file downloads by how they were answered", &["how"])
        .expect("metric registers once")
});

pub static REPAIR_COPIES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("dfs_engine_repair_copies_total", "Chunk copies made by repair")
        .expect("metric registers once")
});

pub static GET_BUFFER_BYTES: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "dfs_engine_get_buffer_bytes",
        "Bytes of download buffers allocated under --buffer-budget (whole-file buffers and chunk re-reads)"
    )
    .expect("metric registers once")
});
pub static GET_BUFFER_BYTES_PEAK: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("dfs_engine_get_buffer_bytes_peak", "Highest dfs_engine_get_buffer_bytes since start")
        .expect("metric registers once")
});

/// Moves the download buffer gauge by `delta` bytes and keeps its high-water mark.
pub fn add_get_buffer_bytes(delta: i64) {
    static NOW: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
    static PEAK: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
    use std::sync::atomic::Ordering;
    let now = NOW.fetch_add(delta, Ordering::AcqRel) + delta;
    GET_BUFFER_BYTES.set(now);
    let peak = PEAK.fetch_max(now, Ordering::AcqRel).max(now);
    GET_BUFFER_BYTES_PEAK.set(peak);
}

/// S3 requests of one operation since the engine started, from the counters above.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct S3OpCount {
    pub op: String,
    pub answered: u64,
    /// Answers by code (`200`, or S3's error code), most frequent first.
    pub by_code: Vec<(String, u64)>,
    pub mean_ms: f64,
}

/// Every S3 operation asked for since start, by operation name; and every HTTP answer of the
/// S3 listener by status (those refused before an operation ran included). For the status page.
pub fn s3_counts() -> (Vec<S3OpCount>, Vec<(String, u64)>) {
    use prometheus::core::Collector;
    let label = |m: &prometheus::proto::Metric, name: &str| {
        m.get_label().iter().find(|l| l.name() == name).map(|l| l.value().to_string()).unwrap_or_default()
    };
    let mut ops: std::collections::BTreeMap<String, S3OpCount> = Default::default();
    for family in S3_REQUESTS.collect() {
        for m in family.get_metric() {
            let n = m.get_counter().get_value() as u64;
            let entry = ops.entry(label(m, "op")).or_insert_with_key(|op| S3OpCount {
                op: op.clone(),
                answered: 0,
                by_code: Vec::new(),
                mean_ms: 0.0,
            });
            entry.answered += n;
            entry.by_code.push((label(m, "code"), n));
        }
    }
    for family in S3_REQUEST_SECONDS.collect() {
        for m in family.get_metric() {
            let h = m.get_histogram();
            if let Some(entry) = ops.get_mut(&label(m, "op")) {
                if h.get_sample_count() > 0 {
                    entry.mean_ms = h.get_sample_sum() * 1000.0 / h.get_sample_count() as f64;
                }
            }
        }
    }
    let mut ops: Vec<S3OpCount> = ops.into_values().collect();
    for op in &mut ops {
        op.by_code.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    }
    let mut statuses: Vec<(String, u64)> = S3_RESPONSES
        .collect()
        .iter()
        .flat_map(|f| f.get_metric().iter().map(|m| (label(m, "status"), m.get_counter().get_value() as u64)))
        .collect();
    statuses.sort();
    (ops, statuses)
}

/// Registers every metric, so the endpoint shows them all from the start.
pub fn init() {
    REPAIR_COPIES.reset();
    INFLIGHT_REQUESTS.set(0);
    INFLIGHT_BYTES.set(0);
    CONNECTIONS.set(0);
    LazyLock::force(&REQUESTS);
    LazyLock::force(&NODE_UP);
    LazyLock::force(&NODE_CHUNKS);
    LazyLock::force(&NODE_BYTES_USED);
    LazyLock::force(&NODE_BYTES_FREE);
    LazyLock::force(&GET_BUFFER_BYTES);
    LazyLock::force(&GET_BUFFER_BYTES_PEAK);
}

/// Counts one finished request and logs it at debug level.
pub fn record(op: &str, tally: &dfs_runtime::conn::Tally, elapsed: std::time::Duration) {
    REQUESTS.record(op, tally.outcome, tally.bytes_in, tally.bytes_out, elapsed);
}

/// Errors kept for the status page.
const MAX_ERRORS: usize = 20;

/// The last errors an engine answered to clients (at most [`MAX_ERRORS`]), for the status page.
#[derive(Default)]
pub struct RecentErrors(std::sync::Mutex<std::collections::VecDeque<(u64, String)>>);

impl RecentErrors {
    /// Remembers an error answered to a client.
    pub fn note(&self, message: &str) {
        let mut errors = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if errors.len() == MAX_ERRORS {
            errors.pop_front();
        }
        errors.push_back((dfs_runtime::unix_ms(), message.to_string()));
    }

    /// The errors kept, oldest first, with their time in Unix ms.
    pub fn recent(&self) -> Vec<(u64, String)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }
}
