//! STORE: the engine's side of writing one copy of a chunk to a node.

use super::conn::{Links, NodeConn, NodeError};
use dfs_proto::layout::{combine_block_crcs, n_blocks};
use dfs_proto::{ChunkId, Msg};
use std::net::SocketAddr;

/// Opens a STORE of `chunk_id` on `addr`: the request alone, the chunk's bytes to follow, or
/// with `data` the whole chunk in the same write.
pub async fn open_store(
    addr: SocketAddr,
    links: &Links,
    chunk_id: ChunkId,
    length: u64,
    crc32: u32,
    data: Option<&[u8]>,
) -> Result<NodeConn, NodeError> {
    let node = NodeConn::checkout(addr, links).await?;
    let store = Msg::Store { chunk_id, length, crc32 };
    match data {
        Some(data) => {
            assert_eq!(data.len() as u64, length, "a STORE sent whole carries its chunk");
            let mut frame = store.encode();
            frame.extend_from_slice(data);
            node.conn.write_all(frame).await.map_err(|e| NodeError::from_frame(addr, e))?;
        }
        None => node.send(&store).await?,
    }
    Ok(node)
}

/// Waits for a node's durable-write acknowledgement and checks its block crc32s add up to the
/// chunk crc32 the client announced.
pub async fn await_store(node: &NodeConn, length: u64, crc32: u32) -> Result<Vec<u32>, NodeError> {
    match node.recv().await? {
        Msg::StoreOk { block_crcs } => {
            if block_crcs.len() as u64 != n_blocks(length) {
                return Err(node.protocol(format!("{} block crcs for a chunk of {length} bytes", block_crcs.len())));
            }
            if combine_block_crcs(&block_crcs, length) != crc32 {
                return Err(node.protocol("acknowledged block crc32s do not add up to the chunk crc32"));
            }
            Ok(block_crcs)
        }
        other => Err(node.unexpected("StoreOk", &other)),
    }
}
