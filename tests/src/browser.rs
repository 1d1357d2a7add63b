//! A headless Chromium of a test's own (the distribution's `chromium`, started with a fresh
//! profile and no network beyond what the page asks for), driven over the DevTools protocol:
//! open a page, evaluate JavaScript in it, take a screenshot. Tests check the page as the
//! browser rendered it, not only the HTML the server sent.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

pub struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    /// `host:port` of the DevTools endpoint.
    devtools: String,
}

/// A page open in the browser.
pub struct Tab {
    socket: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

fn executable() -> String {
    for path in ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"] {
        if std::path::Path::new(path).is_file() {
            return path.to_string();
        }
    }
    panic!("no Chromium (/usr/bin/chromium): scripts/deps.sh installs the distribution's package")
}

impl Browser {
    pub fn start() -> Browser {
        let profile = tempfile::Builder::new().prefix("dfs-chromium-").tempdir().expect("profile dir");
        let mut child = Command::new(executable())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--remote-debugging-port=0",
                "--window-size=1280,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start chromium");
        // It says where DevTools listen on stderr; the rest of stderr is drained so it never
        // blocks.
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("DevTools listening on ws://").nth(1) {
                    let _ = tx.send(rest.split('/').next().unwrap_or("").to_string());
                }
            }
        });
        let devtools = rx.recv_timeout(Duration::from_secs(30)).expect("chromium never said where DevTools listen");
        Browser { child, _profile: profile, devtools }
    }

    /// Opens `url` in a new tab.
    pub fn open(&self, url: &str) -> Tab {
        let target: Value = http_json(&self.devtools, "PUT", &format!("/json/new?{url}"));
        let ws = target["webSocketDebuggerUrl"].as_str().expect("a page target has a WebSocket URL");
        let (socket, _) = tungstenite::connect(ws).expect("connect to the page's DevTools socket");
        let mut tab = Tab { socket, next_id: 1 };
        tab.call("Page.enable", json!({}));
        tab
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP request to the DevTools endpoint, its JSON answer (read to its
/// Content-Length: the endpoint keeps the connection open).
fn http_json(host: &str, method: &str, path: &str) -> Value {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(host).expect("connect to DevTools");
    s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n").expect("send");
    let mut reader = BufReader::new(s);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("read a header");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().expect("a length");
            }
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).expect("read the body");
    serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("DevTools answered {:?}: {e}", String::from_utf8_lossy(&body)))
}

impl Tab {
    /// Sends a DevTools command and returns its result (events in between are skipped).
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({ "id": id, "method": method, "params": params });
        self.socket.send(Message::text(msg.to_string())).expect("send a DevTools command");
        loop {
            let reply = self.socket.read().expect("read from DevTools");
            let Message::Text(text) = reply else { continue };
            let v: Value = serde_json::from_str(text.as_str()).expect("DevTools sends JSON");
            if v["id"] == id {
                if let Some(e) = v.get("error") {
                    panic!("{method}: {e}");
                }
                return v["result"].clone();
            }
        }
    }

    /// Evaluates `expression` in the page; its value.
    pub fn eval(&mut self, expression: &str) -> Value {
        let r = self.call("Runtime.evaluate", json!({ "expression": expression, "returnByValue": true }));
        r["result"]["value"].clone()
    }

    /// Evaluates `expression` until `done` says yes, for at most `limit`; the last value.
    pub fn wait_for(&mut self, expression: &str, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.eval(expression);
            if done(&v) || Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A PNG of the page as rendered.
    pub fn screenshot(&mut self) -> Vec<u8> {
        use base64::Engine as _;
        let r = self.call("Page.captureScreenshot", json!({ "format": "png", "captureBeyondViewport": true }));
        base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("screenshot data"))
            .expect("screenshot is base64")
    }
}
