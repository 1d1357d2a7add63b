//! What the engine believes about each node: its ID (learned from its handshake), up or down,
//! when it last answered, and what it reported holding. The node table is also where a node ID
//! found in the metadata is turned into the address the node answers at now. Requests mark a node down the moment it fails to answer and up when it
//! answers; a pinger thread keeps the picture fresh for nodes no request touches, so uploads
//! skip down nodes without waiting for a timeout and reads try live copies first.

use super::conn::{Links, NodeError, NodeFailure};
use dfs_core::health::{Heard, Proved};
use dfs_proto::NodeId;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use dfs_proto::StoreReport;

struct NodeHealth {
    addr: SocketAddr,
    up: AtomicBool,
    /// Unix milliseconds of the last answer; 0 = never.
    last_seen_unix_ms: AtomicU64,
    /// Unix milliseconds of the moment it was last marked down, while it is down; 0 while up.
    down_since_unix_ms: AtomicU64,
    report: Mutex<Option<StoreReport>>,
    last_error: Mutex<Option<String>>,
}

pub struct Health {
    nodes: Vec<NodeHealth>,
    /// What each node (same index) has said: the ID it last proved (None until it answers)
    /// and its last count of copies set aside (`dfs_core::health`). One lock over all, so that
    /// no two addresses can take one ID at once.
    heard: Mutex<Vec<Heard<NodeId>>>,
    /// IDs learned since the last [`Health::take_learned`]: each node's first answer, and a
    /// new ID at an address where another had answered.
    learned: Mutex<Vec<Learned>>,
    /// Nodes whose count of copies set aside has grown since the last look (the pinger reads
    /// it from NODESTAT): a background scrub or a FETCH found a corrupt copy there.
    quarantine_grew: Mutex<Vec<SocketAddr>>,
}

/// A node ID the table learned: `previous` is the ID that answered at `addr` before (its data
/// directory was replaced), None at a node's first answer since the engine started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Learned {
    pub addr: SocketAddr,
    pub id: NodeId,
    pub previous: Option<NodeId>,
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
                down_since_unix_ms: AtomicU64::new(0),
                report: Mutex::new(None),
                last_error: Mutex::new(None),
            })
            .collect();
        Health {
            nodes,
            heard: Mutex::new(vec![Heard::default(); addrs.len()]),
            learned: Mutex::new(Vec::new()),
            quarantine_grew: Mutex::new(Vec::new()),
        }
    }

    /// The IDs learned since the last call (first answers and replaced nodes), for the repair
    /// queue: a replaced node no longer holds the copies its previous ID held, and a node's
    /// first answer may come after it was replaced while the engine was not looking.
    pub fn take_learned(&self) -> Vec<Learned> {
        std::mem::take(&mut *lock(&self.learned))
    }

    /// The nodes whose count of copies set aside grew since the last call.
    pub fn take_quarantine_grew(&self) -> Vec<SocketAddr> {
        std::mem::take(&mut *lock(&self.quarantine_grew))
    }

    /// Each node believed down, with how long it has been down.
    pub fn down_for(&self) -> Vec<(SocketAddr, Duration)> {
        let now = dfs_runtime::unix_ms();
        self.nodes
            .iter()
            .filter(|n| !n.up.load(Ordering::Acquire))
            .map(|n| (n.addr, Duration::from_millis(now.saturating_sub(n.down_since_unix_ms.load(Ordering::Acquire)))))
            .collect()
    }

    fn find(&self, addr: SocketAddr) -> Option<&NodeHealth> {
        self.nodes.iter().find(|n| n.addr == addr)
    }

    /// False for a node currently believed down, and for an address that is not one of the
    /// engine's nodes (a placement recorded at an address the node has since left).
    pub fn is_up(&self, addr: SocketAddr) -> bool {
        self.find(addr).is_some_and(|n| n.up.load(Ordering::Acquire))
    }

    /// The ID the node at `addr` proved, once it has answered.
    pub fn id_of(&self, addr: SocketAddr) -> Option<NodeId> {
        let i = self.nodes.iter().position(|n| n.addr == addr)?;
        lock(&self.heard)[i].id()
    }

    /// Where node `id` answers now, if one of the engine's nodes has proved that ID.
    pub fn addr_of(&self, id: NodeId) -> Option<SocketAddr> {
        let i = lock(&self.heard).iter().position(|held| held.id() == Some(id))?;
        Some(self.nodes[i].addr)
    }

    /// Records that the node at `addr` proved `id`. Refused (with why) if another of the
    /// engine's addresses holds that ID and is up: two nodes running on copies of one data
    /// directory must not both be taken for the node. If that other address is down, the node
    /// has moved, and the ID goes with it.
    pub fn learn(&self, addr: SocketAddr, id: NodeId) -> Result<(), SharedIdentity> {
        let Some(i) = self.nodes.iter().position(|n| n.addr == addr) else {
            // Not one of the engine's nodes (a recorded address being tried): nothing to keep.
            return Ok(());
        };
        let mut heard = lock(&self.heard);
        if let Some(j) = heard.iter().position(|held| held.id() == Some(id)).filter(|&j| j != i) {
            let other = &self.nodes[j];
            if other.up.load(Ordering::Acquire) {
                return Err(SharedIdentity { addr, id, holder: other.addr });
            }
            tracing::warn!("node {id} moved from {} to {addr}", other.addr);
            heard[j].forget_id();
        }
        let previous = match heard[i].proved(id) {
            Proved::Known => return Ok(()),
            Proved::First => None,
            Proved::Replaced { previous } => {
                tracing::warn!(
                    "the node at {addr} is now node {id}, not {previous}: its data directory was replaced; repair \
                     re-makes the copies {previous} held"
                );
                Some(previous)
            }
        };
        lock(&self.learned).push(Learned { addr, id, previous });
        Ok(())
    }

    /// The node answered.
    pub fn mark_up(&self, addr: SocketAddr) {
        if let Some(n) = self.find(addr) {
            n.last_seen_unix_ms.store(dfs_runtime::unix_ms(), Ordering::Release);
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
                n.down_since_unix_ms.store(dfs_runtime::unix_ms(), Ordering::Release);
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

    pub fn record_report(&self, addr: SocketAddr, report: StoreReport) {
        let node = addr.to_string();
        crate::metrics::NODE_CHUNKS.with_label_values(&[&node]).set(report.n_chunks as i64);
        crate::metrics::NODE_BYTES_USED.with_label_values(&[&node]).set(report.bytes_used as i64);
        crate::metrics::NODE_BYTES_FREE.with_label_values(&[&node]).set(report.bytes_free as i64);
        if let Some(i) = self.nodes.iter().position(|n| n.addr == addr) {
            *self.nodes[i].report.lock().unwrap_or_else(|e| e.into_inner()) = Some(report);
            if lock(&self.heard)[i].set_aside(report.n_quarantined) {
                lock(&self.quarantine_grew).push(addr);
            }
        }
        self.mark_up(addr);
    }

    /// `addrs` reordered so that nodes believed up come first, each group keeping its order.
    pub fn up_first(&self, addrs: &[SocketAddr]) -> Vec<SocketAddr> {
        dfs_core::placement::up_first(addrs, |a| self.is_up(a))
    }

    pub fn view(&self) -> Vec<dfs_proto::NodeStatus> {
        let ids: Vec<Option<NodeId>> = lock(&self.heard).iter().map(Heard::id).collect();
        self.nodes
            .iter()
            .zip(ids)
            .map(|(n, id)| dfs_proto::NodeStatus {
                id,
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

/// A node presented an ID that another of the engine's nodes, still up, holds.
#[derive(Debug, thiserror::Error)]
#[error(
    "the node at {addr} presents ID {id}, which the node at {holder} holds: two nodes must not share a data \
     directory's identity"
)]
pub struct SharedIdentity {
    pub addr: SocketAddr,
    pub id: NodeId,
    pub holder: SocketAddr,
}

impl crate::meta::NodeDirectory for Health {
    fn addr_of(&self, id: NodeId) -> Option<SocketAddr> {
        Health::addr_of(self, id)
    }
    fn id_of(&self, addr: SocketAddr) -> Option<NodeId> {
        Health::id_of(self, addr)
    }
}

/// Starts the pinger thread: every `interval`, all nodes at once are asked for their store
/// reports (on a runtime of its own, through the same connections and handshake as every other
/// request) and marked up or down by the outcome.
pub fn start_pinger(links: &Links, interval: Duration) -> std::io::Result<()> {
    // A ping waits no longer for an answer than for a connection.
    let links = links.with_idle(links.timeouts.connect);
    std::thread::Builder::new().name("pinger".into()).spawn(move || {
        dfs_runtime::backend::start(async move {
            loop {
                ping_all(&links).await;
                tokio::time::sleep(interval).await;
            }
        })
    })?;
    Ok(())
}

/// Asks `addr` for its store report and records what it says: up with its report, or down
/// with the reason, even an error answer (a node that cannot report its store is not one to
/// send copies to).
pub async fn ping(links: &Links, addr: SocketAddr) {
    let health = &links.health;
    match super::node_stat(addr, links).await {
        Ok(report) => health.record_report(addr, report),
        Err(NodeError { failure: NodeFailure::Unreachable(why), .. }) => health.mark_down(addr, &why),
        Err(e) => health.mark_down(addr, &e.to_string()),
    }
}

/// Pings every node at once and returns when each has answered or failed.
pub async fn ping_all(links: &Links) {
    let health = &links.health;
    let addrs: Vec<SocketAddr> = health.nodes.iter().map(|n| n.addr).collect();
    futures_util::future::join_all(addrs.into_iter().map(|addr| ping(links, addr))).await;
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repair_queue_hears_of_first_answers_replaced_nodes_and_copies_set_aside() {
        let addrs: Vec<SocketAddr> = (0..2).map(|i| SocketAddr::from(([127, 0, 0, 1], 9200 + i))).collect();
        let h = Health::new(&addrs);
        let (x, y) = (NodeId([1; 16]), NodeId([2; 16]));
        h.learn(addrs[0], x).unwrap();
        h.learn(addrs[0], x).unwrap();
        assert_eq!(h.take_learned(), [Learned { addr: addrs[0], id: x, previous: None }], "a first answer, once");
        h.learn(addrs[0], y).unwrap();
        assert_eq!(h.take_learned(), [Learned { addr: addrs[0], id: y, previous: Some(x) }], "a replaced node");
        assert!(h.take_learned().is_empty());
        let report = |n_quarantined| StoreReport { n_quarantined, ..StoreReport::default() };
        h.record_report(addrs[1], report(3));
        assert!(h.take_quarantine_grew().is_empty(), "the first count is where counting starts");
        h.record_report(addrs[1], report(3));
        h.record_report(addrs[1], report(0));
        assert!(h.take_quarantine_grew().is_empty(), "a restarted node counts from zero");
        h.record_report(addrs[1], report(1));
        assert_eq!(h.take_quarantine_grew(), [addrs[1]]);
    }

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

    #[test]
    fn an_id_follows_its_node_to_a_new_address_but_is_never_shared_by_two_live_nodes() {
        let addrs: Vec<SocketAddr> = (0..3).map(|i| SocketAddr::from(([127, 0, 0, 1], 9100 + i))).collect();
        let h = Health::new(&addrs);
        let (x, y) = (NodeId([1; 16]), NodeId([2; 16]));
        assert_eq!(h.addr_of(x), None);
        h.learn(addrs[0], x).unwrap();
        assert_eq!((h.addr_of(x), h.id_of(addrs[0])), (Some(addrs[0]), Some(x)));
        // A second live node presenting the same ID is refused, and nothing changes.
        let err = h.learn(addrs[1], x).unwrap_err().to_string();
        assert!(err.contains("two nodes must not share"), "{err}");
        assert_eq!((h.addr_of(x), h.id_of(addrs[1])), (Some(addrs[0]), None));
        // Once the first is down, the ID has moved.
        h.mark_down(addrs[0], "refused");
        h.learn(addrs[1], x).unwrap();
        assert_eq!((h.addr_of(x), h.id_of(addrs[0])), (Some(addrs[1]), None));
        // A replaced data directory: the address now names another node.
        h.learn(addrs[2], y).unwrap();
        h.learn(addrs[2], NodeId([3; 16])).unwrap();
        assert_eq!(h.addr_of(y), None);
        // Addresses outside the node list are tried but never up, and learn nothing.
        let stranger = SocketAddr::from(([127, 0, 0, 1], 9999));
        assert!(!h.is_up(stranger));
        h.learn(stranger, y).unwrap();
        assert_eq!(h.addr_of(y), None);
        assert_eq!(h.view()[1].id, Some(x));
    }
}
