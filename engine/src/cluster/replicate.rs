//! Copying one chunk from a node that holds a verified copy to another node: used when a node
//! fails in the middle of an upload, and by repair. Every block is checked against the crc32s
//! recorded at upload before it is forwarded, and the destination's acknowledgement must match
//! them too, so a copy is never made from, or into, bad bytes.

use super::conn::{with_connection, Links, NodeConn, NodeError, Retryable};
use super::fetch::ChunkReader;
use super::store::await_store;
use crate::meta::ChunkRecord;
use dfs_proto::layout::block_len;
use dfs_proto::limits::BLOCK_SIZE_BYTES;
use dfs_proto::Msg;
use dfs_proto::{ChunkId, NodeId};
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

/// Failing to reach the destination at all is the destination's failure.
impl From<NodeError> for CopyError {
    fn from(e: NodeError) -> CopyError {
        CopyError::Destination(e)
    }
}

/// Only a broken destination connection is worth a new one: the source is read afresh anyway.
impl Retryable for CopyError {
    fn connection_broke(&self) -> bool {
        matches!(self, CopyError::Destination(e) if e.is_unreachable())
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

/// Copies chunk `chunk_id` from `source` to `dest`; returns, with the ID `dest` proved, once the
/// new copy is durable and its block crc32s match the recorded ones. A pooled destination connection that breaks is
/// retried once on a new one, as every request is.
pub async fn copy_chunk(
    source: SocketAddr,
    dest: SocketAddr,
    links: &Links,
    chunk_id: ChunkId,
    chunk: &ChunkRecord,
) -> Result<NodeId, CopyError> {
    with_connection(dest, links, move |writer| copy_once(source, writer, links, chunk_id, chunk)).await
}

async fn copy_once(
    source: SocketAddr,
    writer: NodeConn,
    links: &Links,
    chunk_id: ChunkId,
    chunk: &ChunkRecord,
) -> Result<NodeId, CopyError> {
    let dest = writer.addr;
    let mut reader = ChunkReader::open(source, links, chunk_id, chunk, 0).await.map_err(CopyError::Source)?;
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
    let node_id = writer.node_id;
    writer.checkin();
    Ok(node_id)
}
