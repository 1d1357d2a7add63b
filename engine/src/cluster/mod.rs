//! The cluster layer: everything the engine knows about its nodes and every way it talks to
//! them. Request handlers (`put`, `get`, `repair`, `gc`, the server's SCRUB) call the functions
//! here and never frame a node request themselves.
//!
//! - `conn`: connections (connect, handshake, the per-thread pool), [`NodeError`], and the
//!   one rule for retrying a request whose pooled connection broke.
//! - `health`: up or down per node, the pinger, and the store reports nodes send.
//! - `store` (STORE, and the relay of an upload's bytes into the nodes' sockets), `fetch` (FETCH, block by block, verified), `replicate` (one chunk
//!   copied node to node), and the one-frame requests below.

mod conn;
mod fetch;
mod health;
mod replicate;
mod store;

pub use conn::{Links, NodeConn, NodeError, NodeFailure, NodeTimeouts};
pub use fetch::{read_chunk, ChunkReader};
pub use health::{ping, ping_all, start_pinger, Health, Learned};
pub use replicate::{copy_chunk, CopyError};
pub use store::{
    await_store, open_store, relay, write_live, RelayBuffers, Splicer, Target, RELAY_BUFFERS, RELAY_BYTES,
};

use dfs_proto::{ChunkId, Msg, Status, StoreReport};
use std::net::SocketAddr;
use std::time::Duration;

/// How long one node may take to scrub its whole store.
pub const SCRUB_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// The length and crc32 of the copy of `chunk_id` that `addr` holds (EXISTS).
pub async fn exists(addr: SocketAddr, links: &Links, chunk_id: ChunkId) -> Result<(u64, u32), NodeError> {
    match NodeConn::request(addr, links, &Msg::Exists { chunk_id }).await? {
        Msg::ExistsOk { length, crc32 } => Ok((length, crc32)),
        other => Err(NodeError::unexpected(addr, "ExistsOk", &other)),
    }
}

/// Deletes `addr`'s copy of `chunk_id`; a copy that is already gone counts as deleted.
pub async fn delete(addr: SocketAddr, links: &Links, chunk_id: ChunkId) -> Result<(), NodeError> {
    chunk_delete(addr, links, chunk_id, None).await.map(drop)
}

/// Deletes the copy of `chunk_id` on `addr` only if the node stored it before
/// `listed_at_unix_ms` (the node's clock, from the listing gc found it in). Ok(false): the
/// node holds a copy written since (a repair's), which it kept.
pub async fn delete_listed(
    addr: SocketAddr,
    links: &Links,
    chunk_id: ChunkId,
    listed_at_unix_ms: u64,
) -> Result<bool, NodeError> {
    chunk_delete(addr, links, chunk_id, Some(listed_at_unix_ms)).await
}

/// CHUNKDELETE, with or without a time: Ok(true) when no copy is left (a missing one counts),
/// Ok(false) when the node kept a copy written at or after `written_before_unix_ms`.
async fn chunk_delete(
    addr: SocketAddr,
    links: &Links,
    chunk_id: ChunkId,
    written_before_unix_ms: Option<u64>,
) -> Result<bool, NodeError> {
    match NodeConn::request(addr, links, &Msg::ChunkDelete { chunk_id, written_before_unix_ms }).await {
        Ok(_) | Err(NodeError { failure: NodeFailure::Remote(Status::NotFound, _), .. }) => Ok(true),
        Err(NodeError { failure: NodeFailure::Remote(Status::AlreadyExists, _), .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// What `addr` holds and has room for (NODESTAT).
pub async fn node_stat(addr: SocketAddr, links: &Links) -> Result<StoreReport, NodeError> {
    match NodeConn::request(addr, links, &Msg::NodeStat).await? {
        Msg::NodeStatOk(report) => Ok(report),
        other => Err(NodeError::unexpected(addr, "NodeStatOk", &other)),
    }
}

/// One page of the chunks `node` holds that are at least `min_age` old, after `after` in chunk
/// ID order (CHUNKLIST), and whether more follow.
/// One page of a node's chunk list, with the node's clock when it was taken.
pub struct ChunkListPage {
    pub chunk_ids: Vec<ChunkId>,
    pub more: bool,
    pub listed_at_unix_ms: u64,
}

pub async fn chunk_list_page(
    node: &NodeConn,
    after: Option<ChunkId>,
    limit: u32,
    min_age: Duration,
) -> Result<ChunkListPage, NodeError> {
    node.send(&Msg::ChunkList { after, limit, min_age_secs: min_age.as_secs() }).await?;
    match node.recv().await? {
        Msg::ChunkListOk { chunk_ids, more, listed_at_unix_ms } => {
            Ok(ChunkListPage { chunk_ids, more, listed_at_unix_ms })
        }
        other => Err(node.unexpected("ChunkListOk", &other)),
    }
}

/// Deletes copies in the background, best effort: a copy left behind on a node that is down
/// is an orphan for garbage collection, never a dangling reference.
pub fn delete_later(links: &Links, copies: Vec<(ChunkId, SocketAddr)>) {
    if copies.is_empty() {
        return;
    }
    let links = links.clone();
    dfs_runtime::backend::spawn(async move {
        for (chunk_id, addr) in copies {
            match delete(addr, &links, chunk_id).await {
                Ok(()) => tracing::debug!("deleted chunk {chunk_id} on {addr}"),
                Err(e) => tracing::warn!("chunk {chunk_id} left on {addr}: {e}"),
            }
        }
    });
}

/// Has every node re-verify its chunks, all at once, and sums up what they found (the reply for
/// the client), with the chunks the nodes' report lines name as set aside. A node that cannot
/// scrub is reported as a line, not as a failure of the whole request.
pub async fn scrub_all(nodes: &[SocketAddr], links: &Links) -> (Msg, Vec<ChunkId>) {
    let links = &links.with_idle(SCRUB_TIMEOUT);
    let scrubs = nodes.iter().map(|&addr| async move {
        let node = NodeConn::connect(addr, links).await?;
        node.send(&Msg::Scrub).await?;
        node.recv().await.map(|m| (addr, m))
    });
    let (mut n_checked, mut n_corrupt, mut lines, mut quarantined) = (0, 0, Vec::new(), Vec::new());
    for result in futures_util::future::join_all(scrubs).await {
        match result {
            Ok((addr, Msg::ScrubOk { n_checked: c, n_corrupt: k, corrupt })) => {
                n_checked += c;
                n_corrupt += k;
                quarantined.extend(corrupt.iter().filter_map(|l| quarantined_chunk(l)));
                for line in corrupt {
                    dfs_proto::msg::push_report_line(&mut lines, format!("node {addr}: {line}"));
                }
            }
            Ok((addr, other)) => dfs_proto::msg::push_report_line(
                &mut lines,
                format!("node {addr}: answered {} to SCRUB", other.kind().name()),
            ),
            Err(e) => dfs_proto::msg::push_report_line(&mut lines, format!("not scrubbed: {e}")),
        }
    }
    (Msg::ScrubOk { n_checked, n_corrupt, corrupt: lines }, quarantined)
}

/// The chunk a node's scrub report line names (`chunk <id> is corrupt ...`), if any.
pub fn quarantined_chunk(line: &str) -> Option<ChunkId> {
    line.strip_prefix("chunk ")?.split_whitespace().next()?.parse().ok()
}
