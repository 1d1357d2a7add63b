//! The integration-test harness: real `dfs-node` and `dfs-engine` processes on loopback, driven
//! through the real `dfs-client` binary. Each test owns one [`Cluster`], which owns one temp
//! directory (node data, engine metadata, inputs, downloads and process logs) and every process it
//! started. Ports are always picked by the kernel (`127.0.0.1:0`) and learned from the
//! `listening ADDR` line, so tests run in parallel without coordination.
//!
//! When a test panics, dropping its cluster prints every command it ran with its outputs, the tail
//! of every process log and a listing of the test directory, and keeps that directory on disk.
//!
//! The client's JSON output is read in one place, [`json`], so a renamed field is one edit.

pub use serde_json::Value;

pub mod browser;
pub mod certs;
pub mod http;
pub mod json;
pub mod netns;
pub mod pg;
pub mod segment_oracle;

mod client;
mod cluster;
mod data;
mod disk;
mod raw;

pub use client::*;
pub use cluster::*;
pub use data::*;
pub use disk::*;
pub use raw::*;

use std::time::{Duration, Instant};

/// How long a server may take to print its `listening` line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one client command may run before it is killed and the test fails.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a server may take to close a connection it was sent garbage on.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Lines of each process log printed when a test fails.
const LOG_TAIL_LINES: usize = 40;
/// Commands printed when a test fails (the most recent ones).
const HISTORY_REPORT_ENTRIES: usize = 80;
/// Bytes of a command's stdout kept in the history.
const HISTORY_STDOUT_BYTES: usize = 400;

/// How often [`wait_until`] and [`wait_for`] check.
const WAIT_POLL: Duration = Duration::from_millis(5);

/// Polls `check` every few milliseconds until it says yes; panics with "waited {deadline:?} for
/// {what}" if it has not within `deadline`.
#[track_caller]
pub fn wait_until(what: &str, deadline: Duration, mut check: impl FnMut() -> bool) {
    wait_for(what, deadline, || check().then_some(()))
}

/// Polls `check` every few milliseconds until it gives a value, and returns that value; panics
/// with "waited {deadline:?} for {what}" if it has given none within `deadline`.
#[track_caller]
pub fn wait_for<T>(what: &str, deadline: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + deadline;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < until, "waited {deadline:?} for {what}");
        std::thread::sleep(WAIT_POLL);
    }
}
