//! Metrics: engine and nodes serve Prometheus text on `--metrics ADDR`, and the counters move
//! with real requests: operations by kind and result, bytes in and out, node health and store
//! sizes.

use dfs_proto::Chunking;
use dfs_tests::http;
use dfs_tests::{pseudo_random_bytes, Cluster, ClusterOpts};
use std::path::Path;
use std::time::Duration;

/// The `http://ADDR/metrics` address a server logged, waiting for the line to appear.
fn metrics_addr(log: &Path) -> String {
    http::logged_addr(log, "metrics")
}

/// `GET /metrics`; returns the body.
fn scrape(addr: &str) -> String {
    let r = http::get(addr, "/metrics", &[]);
    assert_eq!(r.code, 200, "metrics answered {:?}", r.head);
    assert!(r.head.to_lowercase().contains("content-type: text/plain"), "metrics content type: {:?}", r.head);
    r.body
}

/// The value of the sample `name{labels}` (exactly as written), or 0 if absent.
fn sample(body: &str, series: &str) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap_or_else(|e| panic!("{series} has value {v:?}: {e}")))
        .unwrap_or(0.0)
}

#[test]
fn counters_move_with_requests_on_engine_and_nodes() {
    let opts = ClusterOpts {
        engine_args: vec!["--metrics".into(), "127.0.0.1:0".into(), "--ping-interval-secs".into(), "1".into()],
        node_args: vec!["--metrics".into(), "127.0.0.1:0".into()],
        ..ClusterOpts::default()
    };
    let cluster = Cluster::start(4, opts);
    let engine = metrics_addr(&cluster.engine_stderr_log());
    let node0 = metrics_addr(&cluster.node_stderr_log(0));
    let before = scrape(&engine);
    assert_eq!(sample(&before, r#"dfs_engine_requests_total{op="Put",result="ok"}"#), 0.0);

    let data = pseudo_random_bytes(1, 2_000_000);
    let id = cluster.put_bytes(&data, "measured", Chunking::Equal);
    cluster.get(&id).unwrap_or_else(|e| panic!("get {id}: {e}"));
    let missing = "0123456789abcdef0123456789abcdef";
    assert!(cluster.stat(missing).is_err(), "stat of an unknown ID must fail");

    let after = scrape(&engine);
    assert_eq!(sample(&after, r#"dfs_engine_requests_total{op="Put",result="ok"}"#), 1.0, "{after}");
    assert_eq!(sample(&after, r#"dfs_engine_requests_total{op="Get",result="ok"}"#), 1.0, "{after}");
    assert_eq!(sample(&after, r#"dfs_engine_requests_total{op="Stat",result="error"}"#), 1.0, "{after}");
    assert!(sample(&after, "dfs_engine_client_bytes_in_total") >= data.len() as f64, "{after}");
    assert!(sample(&after, "dfs_engine_client_bytes_out_total") >= data.len() as f64, "{after}");
    assert_eq!(sample(&after, r#"dfs_engine_request_seconds_count{op="Put"}"#), 1.0, "{after}");
    assert_eq!(sample(&after, "dfs_engine_inflight_requests"), 0.0, "{after}");

    // Node 0 took part (two copies of four chunks spread over four nodes), and the engine's
    // health check reports it up with the chunks it holds.
    let node_metrics = scrape(&node0);
    let held = cluster.chunk_files(0).len() as f64;
    assert!(held > 0.0, "node 0 holds no chunk of the file");
    assert_eq!(sample(&node_metrics, r#"dfs_node_requests_total{op="Store",result="ok"}"#), held, "{node_metrics}");
    assert!(sample(&node_metrics, "dfs_node_bytes_in_total") > 0.0, "{node_metrics}");
    let node_label = format!(r#"{{node="{}"}}"#, cluster.node_addr(0));
    dfs_tests::wait_until(
        &format!("the engine to report node 0 up (1) with {held} chunks"),
        Duration::from_secs(10),
        || {
            let body = scrape(&engine);
            let up = sample(&body, &format!("dfs_engine_node_up{node_label}"));
            let chunks = sample(&body, &format!("dfs_engine_node_chunks{node_label}"));
            up == 1.0 && chunks == held
        },
    );
}
