//! Orphan collection: a chunk on a node that no committed file places there (an interrupted
//! upload, an engine killed mid-upload, a file deleted while the node was down, a copy repair
//! replaced) is deleted once it is older than the grace period. Uploads in progress are never
//! touched: their chunks are younger than any sensible grace period, and the engine also skips
//! every file ID it is uploading right now. The rule for one copy, and the order in which it
//! asks, is `dfs_core::gc::OrphanCheck`; this module answers its questions and deletes.

use crate::cluster::{self, NodeConn, NodeError};
use crate::meta::{FileRecord, MetaError, NodeDirectory, Pass, PassError};
use crate::state::{EngineState, GcClaim};
use dfs_core::gc::{Ask, GcIo, Listed};
use dfs_proto::limits::MAX_LIST_ENTRIES;
use dfs_proto::msg::push_report_line;
use dfs_proto::{ChunkId, FileId};

/// What a gc pass found and did.
pub use dfs_core::gc::Collected as GcOutcome;
use std::net::SocketAddr;
use std::time::Duration;

/// Whether `record` may place chunk `chunk_idx` on the node at `addr`: by that node's ID, by
/// an address that leads there, or by a node named by address alone (a placement not yet
/// upgraded to node IDs), which is taken to be anywhere: an address says where a node was, not
/// which node holds the copy now, and gc must never delete a copy a file may need.
fn places(record: &FileRecord, chunk_idx: u32, addr: SocketAddr, nodes: &dyn NodeDirectory) -> bool {
    let Some(chunk) = record.chunks.get(chunk_idx as usize) else { return false };
    let here = nodes.id_of(addr).map(|id| id.0);
    chunk.placement.iter().filter_map(|&i| record.nodes.get(i as usize)).any(|slot| match slot.id {
        None => true,
        Some(id) => Some(id) == here || slot.resolve(nodes) == Ok(addr),
    })
}

/// One gc pass over every node. Err: it could not run (another engine holds the cluster's gc
/// pass, or the metadata cannot say).
pub async fn run(state: &EngineState, dry_run: bool, grace: Duration) -> Result<GcOutcome, PassError> {
    let lease = PassError::take(&state.meta, &state.passes, Pass::Gc).await?;
    let mut out = GcOutcome::default();
    for &addr in &state.config.nodes {
        if lease.lost() {
            push_report_line(&mut out.lines, format!("node {addr} skipped: the gc pass was lost (its lease lapsed)"));
            continue;
        }
        if let Err(e) = collect_node(state, addr, dry_run, grace, &mut out).await {
            push_report_line(&mut out.lines, format!("node {addr} skipped: {e}"));
        }
    }
    tracing::info!(
        "gc{}: {} chunk(s) older than {grace:?} scanned, {} orphan(s), {} deleted",
        if dry_run { " (dry run)" } else { "" },
        out.n_scanned,
        out.n_orphans,
        out.n_deleted
    );
    Ok(out)
}

/// Why one of gc's requests failed: the node's or the metadata's.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error("{0}")]
    Node(NodeError),
    #[error("{0}")]
    Meta(#[from] MetaError),
}

impl From<NodeError> for GcError {
    fn from(e: NodeError) -> GcError {
        GcError::Node(e)
    }
}

/// gc of one node over the engine's connection to it and its metadata: what
/// [`dfs_core::gc::collect_node`] asks for, answered with real requests.
struct EngineGc<'a> {
    state: &'a EngineState,
    /// The connection the node's list is read on, page after page.
    node: NodeConn,
    grace: Duration,
}

impl<'a> GcIo for EngineGc<'a> {
    type Node = SocketAddr;
    type Record = FileRecord;
    type ListedAt = u64;
    type Claim = GcClaim<'a>;
    type Error = GcError;

    async fn list(&self, _node: SocketAddr, after: Option<ChunkId>) -> Result<Listed<u64>, GcError> {
        let page = cluster::chunk_list_page(&self.node, after, MAX_LIST_ENTRIES, self.grace).await?;
        Ok(Listed { chunk_ids: page.chunk_ids, more: page.more, at: page.listed_at_unix_ms })
    }

    /// On this engine, or registered by another in the metadata.
    async fn writing(&self, file_id: FileId) -> Result<bool, GcError> {
        Ok(self.state.uploads_in_progress.contains(file_id) || self.state.meta.writing_elsewhere(file_id).await?)
    }

    async fn record(&self, file_id: FileId) -> Result<Option<FileRecord>, GcError> {
        let record = self.state.meta.get(file_id).await?;
        dfs_runtime::failpoint::pause("gc-after-record-read").await;
        Ok(record)
    }

    fn places(&self, record: &FileRecord, chunk: ChunkId, node: SocketAddr) -> bool {
        places(record, chunk.chunk_idx, node, &*self.state.links.health)
    }

    fn claim(&self, chunk: ChunkId, node: SocketAddr) -> Option<GcClaim<'a>> {
        self.state.gc_claims.claim(chunk, node)
    }

    async fn delete(&self, node: SocketAddr, chunk: ChunkId, listed_at: u64) -> Result<bool, GcError> {
        Ok(cluster::delete_listed(node, &self.state.links, chunk, listed_at).await?)
    }

    async fn answered(&self, _ask: Ask) {}

    async fn deleting(&self) {
        dfs_runtime::failpoint::pause("gc-before-delete").await;
    }
}

async fn collect_node(
    state: &EngineState,
    addr: SocketAddr,
    dry_run: bool,
    grace: Duration,
    out: &mut GcOutcome,
) -> Result<(), GcError> {
    let io = EngineGc { state, node: NodeConn::checkout(addr, &state.links).await?, grace };
    dfs_core::gc::collect_node(&io, addr, dry_run, out).await?;
    io.node.checkin();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Health;
    use crate::meta::{ChunkRecord, NodeSlot};
    use dfs_proto::{Chunking, NodeId};

    /// The node table: node 1 answers at :7001 (recorded at :7101, where it was), node 2 at
    /// :7002.
    fn nodes() -> Health {
        let health = Health::new(&[addr(7001), addr(7002)]);
        health.learn(addr(7001), NodeId([1; 16])).expect("a fresh table");
        health.learn(addr(7002), NodeId([2; 16])).expect("a fresh table");
        health
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn record(nodes: Vec<NodeSlot>) -> FileRecord {
        let placement = (0..nodes.len() as u16).collect();
        FileRecord {
            name: "f".into(),
            size: 1,
            created_unix_ms: 0,
            chunking: Chunking::Equal,
            nodes,
            chunks: vec![ChunkRecord { offset: 0, length: 1, crc32: 0, block_crcs: vec![0], placement }],
            origin: None,
        }
    }

    #[test]
    fn a_copy_is_referenced_by_node_id_wherever_the_node_now_answers() {
        let moved = record(vec![NodeSlot { id: Some([1; 16]), addr: addr(7101).to_string() }]);
        let nodes = nodes();
        assert!(places(&moved, 0, addr(7001), &nodes), "node 1's copy, at its new address");
        assert!(!places(&moved, 0, addr(7002), &nodes), "node 2 holds no copy of it: an orphan there");
        assert!(!places(&moved, 1, addr(7001), &nodes), "no such chunk");
    }

    #[test]
    fn a_placement_by_address_alone_keeps_every_copy_of_its_chunk() {
        let legacy = record(vec![NodeSlot { id: None, addr: addr(7101).to_string() }]);
        let nodes = nodes();
        assert!(places(&legacy, 0, addr(7001), &nodes));
        assert!(places(&legacy, 0, addr(7002), &nodes));
    }
}
