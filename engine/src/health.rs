//! What the engine believes about each node: up or down, when it last answered, and what it
//! reported holding. Requests mark a node down the moment it fails to answer and up when it
//! answers; a pinger thread keeps the picture fresh for nodes no request touches, so uploads
//! skip down nodes without waiting for a timeout and reads try live copies first.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
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

/// Asks one node for its store report over `conn`, connecting first if needed.
fn ping(
    conn: &mut Option<std::net::TcpStream>,
    addr: SocketAddr,
    timeouts: crate::nodes::NodeTimeouts,
) -> Result<StoreReport, String> {
    use dfs_proto::io_std::{read_frame, write_msg, Frame};
    use dfs_proto::Msg;
    if conn.is_none() {
        let s = std::net::TcpStream::connect_timeout(&addr, timeouts.connect).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(timeouts.connect)).map_err(|e| e.to_string())?;
        s.set_write_timeout(Some(timeouts.connect)).map_err(|e| e.to_string())?;
        let _ = s.set_nodelay(true);
        let mut s = s;
        let (hello, engine_nonce) = crate::nodes::engine_hello().map_err(|e| e.to_string())?;
        write_msg(&mut s, &Msg::Hello(hello)).map_err(|e| e.to_string())?;
        let mut answer = read_frame(&mut s).map_err(|e| e.to_string())?;
        if let Frame::Msg(Msg::AuthChallenge { nonce, proof }) = &answer {
            let reply = crate::nodes::answer_challenge(engine_nonce, nonce, proof)?;
            write_msg(&mut s, &reply).map_err(|e| e.to_string())?;
            answer = read_frame(&mut s).map_err(|e| e.to_string())?;
        } else if engine_nonce.is_some() {
            return Err("the node did not prove the cluster secret: it runs without --cluster-secret-file".into());
        }
        match answer {
            Frame::Msg(Msg::HelloOk(_)) => {}
            Frame::Msg(Msg::Error { status, message }) => return Err(format!("{status}: {message}")),
            other => return Err(format!("expected HelloOk, got {other:?}")),
        }
        *conn = Some(s);
    }
    let s = conn.as_mut().expect("connected above");
    write_msg(s, &Msg::NodeStat).map_err(|e| e.to_string())?;
    match read_frame(s).map_err(|e| e.to_string())? {
        Frame::Msg(Msg::NodeStatOk(report)) => Ok(report),
        Frame::Msg(Msg::Error { status, message }) => Err(format!("{status}: {message}")),
        other => Err(format!("expected NodeStatOk, got {other:?}")),
    }
}

/// Starts the pinger thread: every `interval`, each node is asked for its store report and
/// marked up or down by the outcome.
pub fn start_pinger(
    health: std::sync::Arc<Health>,
    timeouts: crate::nodes::NodeTimeouts,
    interval: Duration,
) -> std::io::Result<()> {
    std::thread::Builder::new().name("pinger".into()).spawn(move || {
        let mut conns: Vec<Option<std::net::TcpStream>> = health.nodes.iter().map(|_| None).collect();
        loop {
            for (node, conn) in health.nodes.iter().zip(conns.iter_mut()) {
                let reused = conn.is_some();
                let answer = match ping(conn, node.addr, timeouts) {
                    // The connection kept from the last round may only have died with a node
                    // process that was restarted since: ask once more on a new one.
                    Err(why) if reused => {
                        *conn = None;
                        ping(conn, node.addr, timeouts)
                            .map_err(|again| format!("{again} (on a new connection, after {why})"))
                    }
                    answer => answer,
                };
                match answer {
                    Ok(report) => health.record_report(node.addr, report),
                    Err(why) => {
                        *conn = None;
                        health.mark_down(node.addr, &why);
                    }
                }
            }
            std::thread::sleep(interval);
        }
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
