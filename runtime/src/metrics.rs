//! The optional metrics endpoint: Prometheus text format over HTTP (`GET /metrics`), served by
//! a thread of its own from the process-wide default registry, where engine and node register
//! their counters, gauges and histograms.

use std::net::SocketAddr;

/// Starts serving `GET /metrics` on `addr`; returns the bound address.
pub fn serve(addr: SocketAddr) -> Result<SocketAddr, String> {
    let server = tiny_http::Server::http(addr).map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
    let bound = server.server_addr().to_ip().ok_or_else(|| format!("metrics server on {addr} has no IP address"))?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let response = if request.url() == "/metrics" || request.url() == "/" {
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
        .map_err(|e| format!("cannot start the metrics thread: {e}"))?;
    tracing::info!("metrics on http://{bound}/metrics");
    Ok(bound)
}
