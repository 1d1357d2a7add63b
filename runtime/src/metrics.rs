//! The optional HTTP endpoint: Prometheus text format (`GET /metrics`), served by a thread of
//! its own from the process-wide default registry, where engine and node register their
//! counters, gauges and histograms; and whatever else the server adds ([`Pages`]: the engine's
//! status page).

use std::net::SocketAddr;

/// An HTTP answer: status code, content type, body.
pub type Page = (u16, &'static str, Vec<u8>);

/// More pages beside `/metrics`: called first for every request with its method, its URL and
/// its `Authorization` header; None passes the request on to `/metrics` (or 404).
pub type Pages = Box<dyn FnMut(&str, &str, Option<&str>) -> Option<Page> + Send>;

/// Why the HTTP listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot serve HTTP on {addr}: {cause}")]
    Bind { addr: SocketAddr, cause: Box<dyn std::error::Error + Send + Sync> },
    #[error("HTTP server on {0} has no IP address")]
    NoIp(SocketAddr),
    #[error("cannot start the HTTP thread: {0}")]
    Thread(std::io::Error),
}

/// Starts serving `GET /metrics` on `addr`; returns the bound address.
pub fn serve(addr: SocketAddr) -> Result<SocketAddr, HttpError> {
    serve_with(addr, None)
}

/// [`serve`], with `pages` answering what they know first.
pub fn serve_with(addr: SocketAddr, mut pages: Option<Pages>) -> Result<SocketAddr, HttpError> {
    let server = tiny_http::Server::http(addr).map_err(|cause| HttpError::Bind { addr, cause })?;
    let bound = server.server_addr().to_ip().ok_or(HttpError::NoIp(addr))?;
    let has_pages = pages.is_some();
    std::thread::Builder::new()
        .name("http".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let auth = request
                    .headers()
                    .iter()
                    .find(|h| h.field.equiv("Authorization"))
                    .map(|h| h.value.as_str().to_string());
                let method = request.method().as_str().to_string();
                if let Some((code, content_type, body)) =
                    pages.as_mut().and_then(|p| p(&method, request.url(), auth.as_deref()))
                {
                    let mut response = tiny_http::Response::from_data(body).with_status_code(code).with_header(
                        tiny_http::Header::from_bytes("Content-Type", content_type)
                            .expect("a constant header is valid"),
                    );
                    // A refusal for want of a key lets a browser ask for one (as the password).
                    if code == 401 {
                        response.add_header(
                            tiny_http::Header::from_bytes("WWW-Authenticate", "Basic realm=\"dfs\"")
                                .expect("a constant header is valid"),
                        );
                    }
                    if let Err(e) = request.respond(response) {
                        tracing::debug!("HTTP response not sent: {e}");
                    }
                    continue;
                }
                let response = if request.url() == "/metrics" || (!has_pages && request.url() == "/") {
                    let mut body = Vec::new();
                    let encoder = prometheus::TextEncoder::new();
                    match prometheus::Encoder::encode(&encoder, &prometheus::gather(), &mut body) {
                        Ok(()) => tiny_http::Response::from_data(body).with_header(
                            tiny_http::Header::from_bytes("Content-Type", prometheus::TEXT_FORMAT)
                                .expect("a constant header is valid"),
                        ),
                        Err(e) => tiny_http::Response::from_string(format!("cannot encode metrics: {e}"))
                            .with_status_code(500),
                    }
                } else {
                    tiny_http::Response::from_string("not found: try /metrics").with_status_code(404)
                };
                if let Err(e) = request.respond(response) {
                    tracing::debug!("metrics response not sent: {e}");
                }
            }
        })
        .map_err(HttpError::Thread)?;
    if has_pages {
        tracing::info!("status page on http://{bound}/, metrics on http://{bound}/metrics");
    } else {
        tracing::info!("metrics on http://{bound}/metrics");
    }
    Ok(bound)
}

/// The names one server gives its per-request metrics.
pub struct RequestMetricNames {
    /// Counter by `op` and `result`.
    pub requests: &'static str,
    /// Latency histogram by `op`.
    pub seconds: &'static str,
    pub bytes_in: &'static str,
    pub bytes_out: &'static str,
    /// Who sends the requests, for the help texts ("Client", "Engine").
    pub peer: &'static str,
    /// The lowest latency bucket; each next one doubles it.
    pub first_bucket_secs: f64,
}

/// What engine and node both count per request: requests by kind and result, latency, bytes in
/// and out.
pub struct RequestMetrics {
    requests: prometheus::IntCounterVec,
    seconds: prometheus::HistogramVec,
    bytes_in: prometheus::IntCounter,
    bytes_out: prometheus::IntCounter,
}

impl RequestMetrics {
    /// Registers the metrics in the process-wide registry. Panics if a name is taken: each
    /// server registers once, at start-up.
    pub fn register(names: &RequestMetricNames) -> RequestMetrics {
        let registered = "metric registers once";
        let buckets = prometheus::exponential_buckets(names.first_bucket_secs, 2.0, 20).expect("valid buckets");
        RequestMetrics {
            requests: prometheus::register_int_counter_vec!(
                names.requests,
                format!("{} requests by kind and result", names.peer),
                &["op", "result"]
            )
            .expect(registered),
            seconds: prometheus::register_histogram_vec!(
                names.seconds,
                format!("{} request latency by kind", names.peer),
                &["op"],
                buckets
            )
            .expect(registered),
            bytes_in: prometheus::register_int_counter!(names.bytes_in, "Bytes received").expect(registered),
            bytes_out: prometheus::register_int_counter!(names.bytes_out, "Bytes sent").expect(registered),
        }
    }

    /// Counts one finished request and logs it at debug level.
    pub fn record(&self, op: &str, outcome: &str, bytes_in: u64, bytes_out: u64, elapsed: std::time::Duration) {
        self.bytes_in.inc_by(bytes_in);
        self.bytes_out.inc_by(bytes_out);
        self.requests.with_label_values(&[op, outcome]).inc();
        self.seconds.with_label_values(&[op]).observe(elapsed.as_secs_f64());
        tracing::debug!(op, outcome, bytes_in, bytes_out, "request took {elapsed:.2?}");
    }
}
