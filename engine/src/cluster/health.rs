//! What the engine believes about each node: up or down, when it last answered, and what it
//! reported holding. Requests mark a node down the moment it fails to answer and up when it
//! answers; a pinger thread keeps the picture fresh for nodes no request touches, so uploads
//! skip down nodes without waiting for a timeout and reads try live copies first.

use super::conn::{NodeError, NodeFailure, NodeTimeouts};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dfs_proto::StoreReport;

struct NodeHealth {
    addr: SocketAddr,
    up: AtomicBool,
    /// Unix milliseconds of the last answer; 0 = never.
    last_seen_unix_ms: AtomicU64,
    report: Mutex<Option<StoreReport>>,
    last_error: Mutex<Option<String>>,
}

pub struct Health {
    nodes: Vec<NodeHealth>,
}

fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Health {
    /// Every node starts up: nothing is known against it yet.
    pub fn new(addrs: &[SocketAddr]) -> Health {
        let nodes = addrs
            .iter()
            .map(|&addr| NodeHealth {
                addr,
                up: AtomicBool::new(true),
                last_seen_unix_ms: AtomicU64::new(0),
                report: Mutex::new(None),
                last_error: Mutex::new(None),
            })
            .collect();
        Health { nodes }
    }

    fn find(&self, addr: SocketAddr) -> Option<&NodeHealth> {
        self.nodes.iter().find(|n| n.addr == addr)
    }

    /// False only for a configured node currently believed down.
    pub fn is_up(&self, addr: SocketAddr) -> bool {
        self.find(addr).is_none_or(|n| n.up.load(Ordering::Acquire))
    }

    /// The node answered.
    pub fn mark_up(&self, addr: SocketAddr) {
        if let Some(n) = self.find(addr) {
            n.last_seen_unix_ms.store(now_unix_ms(), Ordering::Release);
            crate::metrics::NODE_UP.with_label_values(&[&addr.to_string()]).set(1);
            if !n.up.swap(true, Ordering::AcqRel) {
                tracing::info!("node {addr} is up again");
            }
        }
    }

    /// The node did not answer (connection refused, reset or timed out). Logged once per
    /// transition, not per failed request.
    pub fn mark_down(&self, addr: SocketAddr, why: &str) {
        if let Some(n) = self.find(addr) {
            *n.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.to_string());
            crate::metrics::NODE_UP.with_label_values(&[&addr.to_string()]).set(0);
            if n.up.swap(false, Ordering::AcqRel) {
                tracing::warn!("node {addr} is down: {why}");
            }
        }
    }

    /// Marks a node down when a failure says it did not answer. Every request that fails on a
    /// node reports it here.
    pub fn note_failure(&self, e: &NodeError) {
        if let (NodeFailure::Unreachable(why), Ok(addr)) = (&e.failure, e.addr.parse::<SocketAddr>()) {
            self.mark_down(addr, why);
        }
    }

    /// Asks `addr` for its store report and records what it says: up with its report, or down
    /// with the reason, even an error answer (a node that cannot report its store is not one to
    /// send copies to).
    pub async fn ping(&self, addr: SocketAddr, timeouts: NodeTimeouts) {
        match super::node_stat(addr, timeouts).await {
            Ok(report) => self.record_report(addr, report),
            Err(NodeError { failure: NodeFailure::Unreachable(why), .. }) => self.mark_down(addr, &why),
            Err(e) => self.mark_down(addr, &e.to_string()),
        }
    }

    pub fn record_report(&self, addr: SocketAddr, report: StoreReport) {
        let node = addr.to_string();
        crate::metrics::NODE_CHUNKS.with_label_values(&[&node]).set(report.n_chunks as i64);
        crate::metrics::NODE_BYTES_USED.with_label_values(&[&node]).set(report.bytes_used as i64);
        crate::metrics::NODE_BYTES_FREE.with_label_values(&[&node]).set(report.bytes_free as i64);
        if let Some(n) = self.find(addr) {
            *n.report.lock().unwrap_or_else(|e| e.into_inner()) = Some(report);
        }
        self.mark_up(addr);
    }

    /// `addrs` reordered so that nodes believed up come first, each group keeping its order.
    pub fn up_first(&self, addrs: &[SocketAddr]) -> Vec<SocketAddr> {
        let (mut up, down): (Vec<_>, Vec<_>) = addrs.iter().partition(|a| self.is_up(**a));
        up.extend(down);
        up
    }

    pub fn view(&self) -> Vec<dfs_proto::NodeStatus> {
        self.nodes
            .iter()
            .map(|n| dfs_proto::NodeStatus {
                addr: n.addr.to_string(),
                up: n.up.load(Ordering::Acquire),
                last_seen_unix_ms: n.last_seen_unix_ms.load(Ordering::Acquire),
                report: *n.report.lock().unwrap_or_else(|e| e.into_inner()),
                last_error: n.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone().map(|mut e| {
                    let mut lines = Vec::new();
                    dfs_proto::msg::push_report_line(&mut lines, std::mem::take(&mut e));
                    lines.pop().unwrap_or_default()
                }),
            })
            .collect()
    }
}

/// Starts the pinger thread: every `interval`, all nodes at once are asked for their store
/// reports (on a runtime of its own, through the same connections and handshake as every other
/// request) and marked up or down by the outcome.
pub fn start_pinger(health: Arc<Health>, timeouts: NodeTimeouts, interval: Duration) -> std::io::Result<()> {
    // A ping waits no longer for an answer than for a connection.
    let ping_timeouts = NodeTimeouts { connect: timeouts.connect, idle: timeouts.connect };
    std::thread::Builder::new().name("pinger".into()).spawn(move || {
        dfs_runtime::backend::start(async move {
            loop {
                let addrs: Vec<SocketAddr> = health.nodes.iter().map(|n| n.addr).collect();
                futures_util::future::join_all(addrs.into_iter().map(|addr| health.ping(addr, ping_timeouts))).await;
                tokio::time::sleep(interval).await;
            }
        })
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_nodes_go_last_and_come_back_when_they_answer() {
        let addrs: Vec<SocketAddr> = (0..3).map(|i| SocketAddr::from(([127, 0, 0, 1], 9000 + i))).collect();
        let h = Health::new(&addrs);
        h.mark_down(addrs[0], "refused");
        assert!(!h.is_up(addrs[0]));
        assert_eq!(h.up_first(&addrs), vec![addrs[1], addrs[2], addrs[0]]);
        h.mark_up(addrs[0]);
        assert_eq!(h.up_first(&addrs), addrs);
        assert!(h.view()[0].last_seen_unix_ms > 0);
    }
}
