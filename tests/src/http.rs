//! Plain HTTP/1.0 requests to the servers' HTTP listeners (metrics, the engine's status page),
//! and the address a server said it listens on.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

/// The address in the first `<what> on http://ADDR/` (or `https://`) line of a server's log
/// (`what`: `metrics`, `status page`, `S3 API`), waiting up to 10 s for it to appear.
pub fn logged_addr(log: &Path, what: &str) -> String {
    crate::wait_for(&format!("{} to log its {what} address", log.display()), Duration::from_secs(10), || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let rest = [format!("{what} on http://"), format!("{what} on https://")]
            .iter()
            .find_map(|marker| text.split(marker.as_str()).nth(1).map(str::to_string))?;
        Some(rest.split('/').next().expect("an address before the path").to_string())
    })
}

pub struct Response {
    pub code: u16,
    /// The status line and the headers.
    pub head: String,
    pub body: String,
}

/// `GET path` on `addr`, with extra header lines (`Name: value`).
pub fn get(addr: &str, path: &str, headers: &[&str]) -> Response {
    let mut s = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{extra}\r\n").expect("send request");
    let mut response = String::new();
    s.read_to_string(&mut response).expect("read response");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    assert!(head.starts_with("HTTP/1."), "not an HTTP response: {head:?}");
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Response { code, head: head.to_string(), body: body.to_string() }
}
