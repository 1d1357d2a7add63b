//! Raw TCP: connections a test writes arbitrary bytes to, and how the server closed them.

use crate::client::preview;
use crate::CLOSE_TIMEOUT;
use dfs_proto::io_std::{self, Frame};
use dfs_proto::Msg;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

/// How a server ended a connection it was sent garbage on.
#[derive(Debug)]
pub enum Closed {
    /// Clean EOF, after these bytes (possibly an Error frame).
    Eof(Vec<u8>),
    /// Connection reset (the server closed with unread input).
    Reset(Vec<u8>),
    /// An Error frame arrived and the connection was still open when the wait ended.
    ErrorFrame(String),
}

/// Connects with read and write timeouts set.
pub fn raw_connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_millis(250))).expect("set read timeout");
    s.set_write_timeout(Some(CLOSE_TIMEOUT)).expect("set write timeout");
    s
}

/// Sends `bytes` (a write failure is fine: the server may already have closed), optionally
/// half-closes, then waits up to [`CLOSE_TIMEOUT`] for the server to close the connection or
/// answer with an Error frame. Panics, naming `what`, if neither happens.
#[track_caller]
pub fn send_and_expect_close(addr: &str, bytes: &[u8], half_close: bool, what: &str) -> Closed {
    let mut s = raw_connect(addr);
    let _ = s.write_all(bytes);
    if half_close {
        let _ = s.shutdown(Shutdown::Write);
    }
    expect_closed(&mut s, what)
}

#[track_caller]
pub fn expect_closed(s: &mut TcpStream, what: &str) -> Closed {
    let deadline = Instant::now() + CLOSE_TIMEOUT;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Closed::Eof(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Closed::Reset(got),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(e) => panic!("{what}: unexpected read error {e}"),
        }
        if Instant::now() >= deadline {
            if let Some(message) = error_frame_in(&got) {
                return Closed::ErrorFrame(message);
            }
            panic!(
                "{what}: the server neither closed the connection nor sent an Error frame within {CLOSE_TIMEOUT:?} (received {} bytes: {})",
                got.len(),
                preview(&got, 200)
            );
        }
    }
}

/// The message of the first frame in `bytes` if it is an Error frame.
pub fn error_frame_in(bytes: &[u8]) -> Option<String> {
    match io_std::read_frame(&mut &bytes[..]) {
        Ok(Frame::Msg(Msg::Error { status, message })) => Some(format!("{status}: {message}")),
        _ => None,
    }
}

/// A frame header: body length (big-endian), then kind.
pub fn frame_header(body_len: u32, kind: u8) -> Vec<u8> {
    let mut h = body_len.to_be_bytes().to_vec();
    h.push(kind);
    h
}

/// Per connection through a [`Tap`]: what the connecting side sent, and what it got.
type Captured = std::sync::Arc<std::sync::Mutex<Vec<(Vec<u8>, Vec<u8>)>>>;

/// A recording TCP forwarder: every connection made to [`Tap::addr`] is forwarded to the
/// target, and every byte crossing it, either way, is kept: what a capture on the wire between
/// the two would hold.
pub struct Tap {
    pub addr: String,
    /// Per connection, in the order accepted: what the connecting side sent, and what it got.
    captured: Captured,
}

impl Tap {
    /// Listens on a free loopback port and forwards to `target`, until the test process ends.
    pub fn start(target: &str) -> Tap {
        Tap::start_on("127.0.0.1", target)
    }

    /// [`Tap::start`] on another loopback address (any of 127.0.0.0/8), for a peer reached by
    /// an address its certificate does not name.
    pub fn start_on(ip: &str, target: &str) -> Tap {
        use std::sync::Arc;
        let listener = std::net::TcpListener::bind((ip, 0)).expect("bind the tap");
        let addr = listener.local_addr().expect("the tap's address").to_string();
        let captured: Captured = Arc::default();
        let (target, shared) = (target.to_string(), captured.clone());
        std::thread::spawn(move || {
            for down in listener.incoming() {
                let Ok(down) = down else { continue };
                let Ok(up) = TcpStream::connect(&target) else { continue };
                let k = {
                    let mut all = shared.lock().unwrap_or_else(|e| e.into_inner());
                    all.push((Vec::new(), Vec::new()));
                    all.len() - 1
                };
                let pump = |mut from: TcpStream, mut to: TcpStream, sent: bool, shared: Captured| {
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 64 << 10];
                        loop {
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            {
                                let mut all = shared.lock().unwrap_or_else(|e| e.into_inner());
                                let side = if sent { &mut all[k].0 } else { &mut all[k].1 };
                                side.extend_from_slice(&buf[..n]);
                            }
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Write);
                    })
                };
                let (down2, up2) = (down.try_clone().expect("clone a socket"), up.try_clone().expect("clone a socket"));
                pump(down, up2, true, shared.clone());
                pump(up, down2, false, shared.clone());
            }
        });
        Tap { addr, captured }
    }

    /// Everything captured so far, per connection: (sent by the connecting side, received).
    pub fn captured(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.captured.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Whether `needle` occurs in `haystack`.
pub fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}
