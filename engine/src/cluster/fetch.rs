//! FETCH: the engine's side of reading one copy of a chunk from a node, every block checked
//! against the crc32s recorded at upload (not the ones the node holds).

use super::conn::{with_connection, Links, NodeConn, NodeError, NodeFailure};
use crate::meta::ChunkRecord;
use dfs_proto::io_std::Frame;
use dfs_proto::layout::{block_len, check_block, n_blocks};
use dfs_proto::limits::BLOCK_SIZE_BYTES;
use dfs_proto::{ChunkId, Msg, Status};
use std::net::SocketAddr;
use tokio_uring::buf::IoBufMut;

/// Reads a whole chunk from one node into `buf[0..length]`, every block verified.
pub async fn read_chunk<B: IoBufMut + AsRef<[u8]>>(
    addr: SocketAddr,
    links: &Links,
    chunk_id: ChunkId,
    chunk: &ChunkRecord,
    mut buf: B,
) -> Result<B, NodeError> {
    let mut reader = ChunkReader::open(addr, links, chunk_id, chunk, 0).await?;
    while let Some(block_idx) = reader.next_block() {
        buf = reader.read_block(buf, block_idx * BLOCK_SIZE_BYTES as usize).await?;
    }
    reader.finish().await?;
    Ok(buf)
}

/// Reads one chunk from a node, block by block, checking each block against the crc32 that was
/// recorded at upload (not the one the node holds).
pub struct ChunkReader {
    node: NodeConn,
    length: u64,
    block_crcs: Vec<u32>,
    next_block_idx: usize,
}

impl ChunkReader {
    /// Asks `addr` for the chunk from block `first_block` on.
    pub async fn open(
        addr: SocketAddr,
        links: &Links,
        chunk_id: ChunkId,
        chunk: &ChunkRecord,
        first_block: usize,
    ) -> Result<ChunkReader, NodeError> {
        with_connection(addr, links, move |node| ChunkReader::open_on(node, chunk_id, chunk, first_block)).await
    }

    async fn open_on(
        node: NodeConn,
        chunk_id: ChunkId,
        chunk: &ChunkRecord,
        first_block: usize,
    ) -> Result<ChunkReader, NodeError> {
        assert_eq!(chunk.block_crcs.len() as u64, n_blocks(chunk.length), "metadata block count");
        assert!(first_block <= chunk.block_crcs.len(), "fetch from block {first_block} of {}", chunk.block_crcs.len());
        node.send(&Msg::Fetch { chunk_id, first_block: first_block as u32 }).await?;
        match node.recv().await? {
            Msg::FetchOk { length, crc32, block_size_bytes }
                if length == chunk.length && crc32 == chunk.crc32 && block_size_bytes == BLOCK_SIZE_BYTES => {}
            Msg::FetchOk { length, crc32, .. } => {
                let detail = format!(
                    "node holds {length} bytes with crc32 {crc32:08x}, {} bytes with crc32 {:08x} were stored",
                    chunk.length, chunk.crc32
                );
                return Err(NodeError::new(node.addr, NodeFailure::Remote(Status::Corrupt, detail)));
            }
            other => return Err(node.unexpected("FetchOk", &other)),
        }
        Ok(ChunkReader {
            node,
            length: chunk.length,
            block_crcs: chunk.block_crcs.clone(),
            next_block_idx: first_block,
        })
    }

    /// The longest this reader may leave the node's stream unread: half of what the node
    /// allows, so the node never closes the connection for the engine's own delay.
    pub fn max_unread(&self) -> std::time::Duration {
        (self.node.node_idle_timeout / 2).max(std::time::Duration::from_millis(100))
    }

    /// The chunk's length in bytes.
    pub fn length(&self) -> u64 {
        self.length
    }

    pub fn next_block(&self) -> Option<usize> {
        (self.next_block_idx < self.block_crcs.len()).then_some(self.next_block_idx)
    }

    /// Reads the next block's data frame into `buf[begin..]` and verifies it.
    pub async fn read_block<B: IoBufMut + AsRef<[u8]>>(&mut self, buf: B, begin: usize) -> Result<B, NodeError> {
        let block_idx = self.next_block_idx;
        let expected_len = block_len(self.length, block_idx as u64) as usize;
        let len = match self.node.conn.read_frame().await {
            Ok(Frame::Data(len)) => len as usize,
            Ok(Frame::Msg(Msg::Error { status, message })) => {
                return Err(NodeError::new(self.node.addr, NodeFailure::Remote(status, message)))
            }
            Ok(Frame::Msg(other)) => return Err(self.node.unexpected("Data", &other)),
            Err(e) => return Err(NodeError::from_frame(self.node.addr, e)),
        };
        if len != expected_len {
            return Err(self.node.protocol(format!("block {block_idx} is {len} bytes, expected {expected_len}")));
        }
        let buf = self
            .node
            .conn
            .read_exact(buf, begin, begin + len, false)
            .await
            .map_err(|e| NodeError::from_frame(self.node.addr, e))?;
        let expected = self.block_crcs[block_idx];
        if let Err(mismatch) = check_block(block_idx as u64, &buf.as_ref()[begin..begin + len], expected) {
            let detail = format!("{mismatch} (as it arrived)");
            return Err(NodeError::new(self.node.addr, NodeFailure::Remote(Status::Corrupt, detail)));
        }
        self.next_block_idx += 1;
        Ok(buf)
    }

    pub async fn finish(self) -> Result<(), NodeError> {
        assert_eq!(self.next_block_idx, self.block_crcs.len(), "finish before the last block");
        match self.node.recv().await? {
            Msg::End => {
                self.node.checkin();
                Ok(())
            }
            other => Err(self.node.unexpected("End", &other)),
        }
    }
}
