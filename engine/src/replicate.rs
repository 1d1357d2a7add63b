//! Copying one chunk from a node that holds a verified copy to another node: used when a node
//! fails in the middle of an upload, and by repair. Every block is checked against the crc32s
//! recorded at upload before it is forwarded, and the destination's acknowledgement must match
//! them too, so a copy is never made from, or into, bad bytes.

use crate::get::ChunkReader;
use crate::meta::ChunkRecord;
use crate::nodes::{NodeConn, NodeError, NodeTimeouts};
use crate::put::await_store;
use dfs_proto::layout::block_len;
use dfs_proto::limits::BLOCK_SIZE_BYTES;
use dfs_proto::ChunkId;
use dfs_proto::Msg;
use std::net::SocketAddr;

/// Which side of a copy failed.
#[derive(Debug)]
pub enum CopyError {
    Source(NodeError),
    Destination(NodeError),
}

impl CopyError {
    pub fn into_node_error(self) -> NodeError {
        match self {
            CopyError::Source(e) | CopyError::Destination(e) => e,
        }
    }
}

impl std::fmt::Display for CopyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CopyError::Source(e) => write!(f, "reading the source copy: {e}"),
            CopyError::Destination(e) => write!(f, "writing the new copy: {e}"),
        }
    }
}

/// Where a copy's destination connection comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DestConn {
    /// The pool, or a new connection if it has none.
    Pooled,
    /// Always a new connection: for a second attempt after a pooled one failed, which may only
    /// mean the node closed it or was restarted meanwhile.
    Fresh,
}

/// Copies chunk `chunk_id` from `source` to `dest`; returns once the new copy is durable and
/// its block crc32s match the recorded ones. If the destination breaks the connection, the
/// copy is tried once more on a new one before the failure counts: a pooled connection can
/// break only because the node closed it or was restarted since, which says nothing about
/// whether it is down.
pub async fn copy_chunk(
    source: SocketAddr,
    dest: SocketAddr,
    timeouts: NodeTimeouts,
    chunk_id: ChunkId,
    chunk: &ChunkRecord,
) -> Result<(), CopyError> {
    match copy_once(source, dest, timeouts, chunk_id, chunk, DestConn::Pooled).await {
        Err(CopyError::Destination(e)) if e.is_unreachable() => {
            tracing::debug!("{chunk_id}: copy to {dest} failed ({e}); trying once more on a new connection");
            copy_once(source, dest, timeouts, chunk_id, chunk, DestConn::Fresh).await
        }
        other => other,
    }
}

async fn copy_once(
    source: SocketAddr,
    dest: SocketAddr,
    timeouts: NodeTimeouts,
    chunk_id: ChunkId,
    chunk: &ChunkRecord,
    dest_conn: DestConn,
) -> Result<(), CopyError> {
    let mut reader = ChunkReader::open(source, timeouts, chunk_id, chunk, 0).await.map_err(CopyError::Source)?;
    let writer = match dest_conn {
        DestConn::Pooled => NodeConn::checkout(dest, timeouts).await,
        DestConn::Fresh => NodeConn::connect(dest, timeouts).await,
    }
    .map_err(CopyError::Destination)?;
    writer
        .send(&Msg::Store { chunk_id, length: chunk.length, crc32: chunk.crc32 })
        .await
        .map_err(CopyError::Destination)?;
    let mut buf = vec![0u8; chunk.length.min(BLOCK_SIZE_BYTES as u64) as usize];
    while let Some(block_idx) = reader.next_block() {
        let len = block_len(chunk.length, block_idx as u64) as usize;
        buf = reader.read_block(buf, 0).await.map_err(CopyError::Source)?;
        buf = writer
            .conn
            .write_range(buf, 0, len)
            .await
            .map_err(|e| CopyError::Destination(NodeError::from_frame(dest, e)))?;
    }
    reader.finish().await.map_err(CopyError::Source)?;
    let block_crcs = await_store(&writer, chunk.length, chunk.crc32).await.map_err(CopyError::Destination)?;
    if block_crcs != chunk.block_crcs {
        return Err(CopyError::Destination(
            writer.protocol("the new copy's block crc32s differ from the recorded ones"),
        ));
    }
    writer.checkin();
    Ok(())
}
