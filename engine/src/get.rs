//! GET: every byte is checked against the block crc32s recorded at upload before it is sent.
//!
//! A file that fits the buffer budget is fetched with all chunks in parallel into one
//! preallocated buffer and sent only once all of it has verified, so a missing or corrupt chunk
//! is reported before the first byte. A larger file is streamed in chunk order, one block at a
//! time, with bounded read-ahead, reading from a node only as fast as the client drains; a
//! failure part-way ends the stream with an error frame, and the client discards what it
//! received.

use crate::buffer::{ChunkBuf, Reassembly};
use crate::cluster::{read_chunk, ChunkReader, Health, Links, NodeError, NodeFailure};
use crate::meta::{ChunkRecord, FileRecord, PlacementError};
use crate::repair_queue::RepairQueue;
use crate::state::{internal, not_found, EngineState};
use dfs_core::repair::Reason;
use dfs_proto::layout::block_len;
use dfs_proto::limits::BLOCK_SIZE_BYTES;
use dfs_proto::{ChunkId, FileId, FrameError, Msg, Status};
use dfs_runtime::conn::Conn;
use std::net::SocketAddr;
use std::rc::Rc;

/// Chunk fetches run at once for one buffered download.
pub const MAX_PARALLEL_FETCHES: usize = 8;

/// A chunk none of whose copies could be read, named for the client with what went wrong on
/// each node tried.
struct ChunkFailure {
    chunk_idx: u32,
    errors: Vec<NodeError>,
}

impl ChunkFailure {
    fn to_msg(&self, file_id: FileId) -> Msg {
        let (status, message) = self.describe(file_id);
        Msg::error(status, message)
    }

    fn describe(&self, file_id: FileId) -> (Status, String) {
        let idx = self.chunk_idx;
        let describe = |e: &NodeError| {
            let addr = &e.addr;
            match &e.failure {
                NodeFailure::Remote(Status::NotFound, _) => format!("is missing on node {addr}"),
                NodeFailure::Remote(Status::Corrupt, m) => format!("is corrupt on node {addr}: {m}"),
                NodeFailure::Remote(status, m) => format!("cannot be read from node {addr}: {status}: {m}"),
                NodeFailure::Unreachable(e) => format!("cannot be read: node {addr} is unreachable: {e}"),
                NodeFailure::Protocol(m) => format!("cannot be read: node {addr} broke the protocol: {m}"),
            }
        };
        let status = if self.errors.iter().any(|e| e.status() == Status::Corrupt) {
            Status::Corrupt
        } else {
            self.errors.first().map_or(Status::Internal, |e| e.status())
        };
        let message = match &self.errors[..] {
            [] => format!("file {file_id}: chunk {idx} has no copy recorded"),
            [one] => format!("file {file_id}: chunk {idx} {}", describe(one)),
            many => format!(
                "file {file_id}: chunk {idx} cannot be read from any of its {} copies: it {}",
                many.len(),
                many.iter().map(describe).collect::<Vec<_>>().join("; it ")
            ),
        };
        (status, message)
    }
}

/// The order in which a read tries the copies of `chunk`: each recorded node at the address its
/// ID answers at now (or where it last was), those believed up first, each group in placement
/// order. A read moves to the next copy only when one fails.
pub fn read_order(
    record: &FileRecord,
    chunk: &ChunkRecord,
    health: &Health,
) -> Result<Vec<SocketAddr>, PlacementError> {
    Ok(health.up_first(&record.copy_addrs(chunk, health)?))
}

/// Handles one GET. Returns Err only when the client connection is broken.
pub async fn get(state: &EngineState, client: &Conn, file_id: FileId) -> Result<(), FrameError> {
    let record = match state.meta.get(file_id) {
        Ok(Some(r)) => r,
        Ok(None) => return client.write_msg(&not_found(file_id)).await,
        Err(e) => return client.write_msg(&internal(e)).await,
    };
    let mut copies = Vec::with_capacity(record.chunks.len());
    for (chunk_idx, chunk) in record.chunks.iter().enumerate() {
        match read_order(&record, chunk, &state.links.health) {
            Ok(addrs) => copies.push(addrs),
            Err(e) => return client.write_msg(&internal(format!("file {file_id} chunk {chunk_idx}: {e}"))).await,
        }
    }
    match state.budget.try_reserve(record.size) {
        Some(_reservation) => get_buffered(state, client, file_id, &record, copies).await,
        None => get_streamed(state, client, file_id, &record, copies).await,
    }
}

async fn get_buffered(
    state: &EngineState,
    client: &Conn,
    file_id: FileId,
    record: &FileRecord,
    copies: Vec<Vec<SocketAddr>>,
) -> Result<(), FrameError> {
    let buf = Reassembly::zeroed(record.size as usize);
    let permits = Rc::new(tokio::sync::Semaphore::new(MAX_PARALLEL_FETCHES));
    let mut tasks = Vec::with_capacity(record.chunks.len());
    for ((chunk_idx, chunk), addrs) in record.chunks.iter().enumerate().zip(copies) {
        let slot = buf.slot(chunk.offset as usize, chunk.length as usize);
        let chunk = chunk.clone();
        let permits = permits.clone();
        let links = state.links.clone();
        let budget = state.budget.clone();
        let queue = state.repair_queue.clone();
        let chunk_id = ChunkId { file_id, chunk_idx: chunk_idx as u32 };
        tasks.push(dfs_runtime::backend::spawn(async move {
            let _permit = permits.acquire().await.expect("semaphore is never closed");
            let mut errors = Vec::new();
            for addr in addrs {
                // Each copy is read into the chunk's window of the file's buffer. A failed read
                // that is still in flight (one that timed out completes later) keeps its window,
                // and the kernel may still write into it: then the next copy is read into a
                // buffer of its own, reserved against the budget like the file's buffer.
                let result = match slot.take() {
                    Some(w) => read_chunk(addr, &links, chunk_id, &chunk, w).await.map(|_| None),
                    None => match budget.reserve_within(chunk.length, links.timeouts.idle).await {
                        Some(reservation) => {
                            let ChunkBuf { bytes, hold } = ChunkBuf::zeroed(chunk.length as usize, reservation);
                            read_chunk(addr, &links, chunk_id, &chunk, bytes)
                                .await
                                .map(|bytes| Some(ChunkBuf { bytes, hold }))
                        }
                        None => Err(NodeError::new(
                            addr,
                            NodeFailure::Remote(
                                Status::Unavailable,
                                "not read: the engine's download buffer budget stayed full".into(),
                            ),
                        )),
                    },
                };
                match result {
                    Ok(replacement) => {
                        links.health.mark_up(addr);
                        if !errors.is_empty() {
                            tracing::info!("{chunk_id}: read from {addr} after {} failed cop(ies)", errors.len());
                        }
                        return Ok(replacement);
                    }
                    Err(e) => {
                        tracing::debug!("{chunk_id}: {e}");
                        links.health.note_failure(&e);
                        queue.note(chunk_id, Reason::ReadFailed);
                        errors.push(e);
                    }
                }
            }
            Err(ChunkFailure { chunk_idx: chunk_idx as u32, errors })
        }));
    }
    let mut first_failure: Option<ChunkFailure> = None;
    let mut replacements: Vec<Option<ChunkBuf>> = Vec::with_capacity(tasks.len());
    for t in tasks {
        match t.await.expect("chunk fetch task panicked") {
            Ok(replacement) => replacements.push(replacement),
            Err(f) => {
                replacements.push(None);
                if first_failure.as_ref().is_none_or(|g| g.chunk_idx > f.chunk_idx) {
                    first_failure = Some(f);
                }
            }
        }
    }
    if let Some(f) = first_failure {
        tracing::warn!("GET {file_id}: {}", f.describe(file_id).1);
        return client.write_msg(&f.to_msg(file_id)).await;
    }
    if record.size as usize <= dfs_runtime::conn::COALESCE_BYTES {
        // A small file: the whole answer in one write, one Data frame per chunk.
        let windows: Vec<Option<crate::buffer::Window>> = record
            .chunks
            .iter()
            .zip(&replacements)
            .map(|(chunk, r)| r.is_none().then(|| buf.window(chunk.offset as usize, chunk.length as usize)))
            .collect();
        let data: Vec<&[u8]> = record
            .chunks
            .iter()
            .zip(replacements.iter().zip(&windows))
            .filter(|(chunk, _)| chunk.length > 0)
            .map(|(chunk, (r, w))| match r {
                Some(ChunkBuf { bytes, .. }) => &bytes[..chunk.length as usize],
                None => w.as_ref().expect("a window for every chunk without a replacement").as_ref(),
            })
            .collect();
        let answer =
            dfs_runtime::conn::frames(&[&Msg::GetOk(record.info(file_id, &*state.links.health))], &data, &[&Msg::End]);
        return client.write_all(answer).await.map(drop);
    }
    client.write_msg(&Msg::GetOk(record.info(file_id, &*state.links.health))).await?;
    for (chunk, replacement) in record.chunks.iter().zip(replacements) {
        let len = chunk.length as usize;
        match replacement {
            Some(ChunkBuf { mut bytes, hold: _hold }) => {
                let mut pos = 0usize;
                while pos < len {
                    let end = (pos + BLOCK_SIZE_BYTES as usize).min(len);
                    bytes = client.write_data(bytes, pos, end).await?;
                    pos = end;
                }
            }
            None => {
                let mut window = buf.window(chunk.offset as usize, len);
                let mut pos = 0usize;
                while pos < len {
                    let end = (pos + BLOCK_SIZE_BYTES as usize).min(len);
                    window = client.write_data(window, pos, end).await?;
                    pos = end;
                }
            }
        }
    }
    client.write_msg(&Msg::End).await
}

async fn get_streamed(
    state: &EngineState,
    client: &Conn,
    file_id: FileId,
    record: &FileRecord,
    copies: Vec<Vec<SocketAddr>>,
) -> Result<(), FrameError> {
    client.write_msg(&Msg::GetOk(record.info(file_id, &*state.links.health))).await?;
    // A reader task fetches and verifies blocks in file order while this task sends earlier ones
    // to the client; the two channels bound the read-ahead to READ_AHEAD_BLOCKS buffers.
    let (blocks_tx, mut blocks_rx) = tokio::sync::mpsc::channel(READ_AHEAD_BLOCKS);
    let (free_tx, free_rx) = tokio::sync::mpsc::channel(READ_AHEAD_BLOCKS + 1);
    for _ in 0..READ_AHEAD_BLOCKS {
        free_tx.try_send(vec![0u8; BLOCK_SIZE_BYTES as usize]).expect("the pool channel has room for every buffer");
    }
    let reader = dfs_runtime::backend::spawn(read_in_order(
        state.links.clone(),
        state.repair_queue.clone(),
        file_id,
        record.chunks.clone(),
        copies,
        blocks_tx,
        free_rx,
    ));
    let mut failure = None;
    let mut client_result = Ok(());
    while let Some(block) = blocks_rx.recv().await {
        match block {
            Ok((buf, len)) => match client.write_data(buf, 0, len).await {
                // The reader may have finished and dropped its end of the pool; that is fine.
                Ok(buf) => drop(free_tx.try_send(buf)),
                Err(e) => {
                    client_result = Err(e);
                    break;
                }
            },
            Err(f) => {
                failure = Some(f);
                break;
            }
        }
    }
    // However the download ended, the reader ends with it and lets go of its node connections:
    // it may be waiting for a pool buffer that will never come back (the client went away with
    // one), or on a node. Aborting a reader that has already finished does nothing.
    drop(blocks_rx);
    drop(free_tx);
    reader.abort();
    if let Err(e) = reader.await {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
    }
    client_result?;
    match failure {
        None => client.write_msg(&Msg::End).await,
        Some(f) => {
            tracing::warn!("GET {file_id}: {}", f.describe(file_id).1);
            client.write_msg(&f.to_msg(file_id)).await
        }
    }
}

/// Blocks of a streamed download read ahead of the client.
pub const READ_AHEAD_BLOCKS: usize = 4;

type Block = Result<(Vec<u8>, usize), ChunkFailure>;

/// How streaming one copy of a chunk ended.
enum Streamed {
    /// Every block was handed on and the node ended the fetch cleanly.
    Done,
    /// The sending side is gone (client gone or download over): stop quietly.
    Stopped,
    /// The client fell so far behind that the node would have given up on the connection: it
    /// was let go, to be opened again from the next block once the client catches up.
    Paused,
    Failed(NodeError),
}

/// Reads every chunk in order, block by block, each verified, into buffers from `free` and
/// hands them to `blocks`. A node connection is opened only with a pool buffer in hand, and let
/// go (not failed) when the client keeps the pool empty for half of what the node lets a
/// connection wait, so a slow client never makes a healthy node time out. When a copy fails
/// part-way, the next copy is opened at the block that failed.
async fn read_in_order(
    links: Links,
    queue: std::sync::Arc<RepairQueue>,
    file_id: FileId,
    chunks: Vec<ChunkRecord>,
    copies: Vec<Vec<SocketAddr>>,
    blocks: tokio::sync::mpsc::Sender<Block>,
    mut free: tokio::sync::mpsc::Receiver<Vec<u8>>,
) {
    let mut held: Option<Vec<u8>> = None;
    for (chunk_idx, (chunk, chunk_copies)) in chunks.iter().zip(&copies).enumerate() {
        let chunk_id = ChunkId { file_id, chunk_idx: chunk_idx as u32 };
        let mut errors = Vec::new();
        // Blocks of this chunk already handed to the sender.
        let mut n_sent = 0usize;
        let mut copy_idx = 0usize;
        loop {
            let Some(&addr) = chunk_copies.get(copy_idx) else {
                let _ = blocks.send(Err(ChunkFailure { chunk_idx: chunk_idx as u32, errors })).await;
                return;
            };
            if held.is_none() && n_sent < chunk.block_crcs.len() {
                match free.recv().await {
                    Some(b) => held = Some(b),
                    None => return,
                }
            }
            match stream_copy(addr, &links, chunk_id, chunk, &mut n_sent, &mut held, &blocks, &mut free).await {
                Streamed::Done => break,
                Streamed::Stopped => return,
                Streamed::Paused => tracing::debug!("{chunk_id}: client behind, let {addr} go at block {n_sent}"),
                Streamed::Failed(e) => {
                    tracing::debug!("{chunk_id}: {e}");
                    links.health.note_failure(&e);
                    queue.note(chunk_id, Reason::ReadFailed);
                    errors.push(e);
                    copy_idx += 1;
                }
            }
        }
        if !errors.is_empty() {
            tracing::info!("{chunk_id}: streamed after {} failed cop(ies)", errors.len());
        }
    }
}

/// Streams chunk `chunk_id` from `addr`, from block `n_sent` on, into `blocks`.
#[allow(clippy::too_many_arguments)]
async fn stream_copy(
    addr: SocketAddr,
    links: &Links,
    chunk_id: ChunkId,
    chunk: &ChunkRecord,
    n_sent: &mut usize,
    held: &mut Option<Vec<u8>>,
    blocks: &tokio::sync::mpsc::Sender<Block>,
    free: &mut tokio::sync::mpsc::Receiver<Vec<u8>>,
) -> Streamed {
    let mut reader = match ChunkReader::open(addr, links, chunk_id, chunk, *n_sent).await {
        Ok(r) => r,
        Err(e) => return Streamed::Failed(e),
    };
    while let Some(block_idx) = reader.next_block() {
        let buf = match held.take() {
            Some(b) => b,
            None => match tokio::time::timeout(reader.max_unread(), free.recv()).await {
                Ok(Some(b)) => b,
                Ok(None) => return Streamed::Stopped,
                Err(_) => return Streamed::Paused,
            },
        };
        let buf = match reader.read_block(buf, 0).await {
            Ok(b) => b,
            Err(e) => {
                // The buffer went with the failed read: replace it so the pool never shrinks.
                *held = Some(vec![0u8; BLOCK_SIZE_BYTES as usize]);
                return Streamed::Failed(e);
            }
        };
        let len = block_len(reader.length(), block_idx as u64) as usize;
        if blocks.send(Ok((buf, len))).await.is_err() {
            return Streamed::Stopped;
        }
        *n_sent = block_idx + 1;
    }
    match reader.finish().await {
        Ok(()) => Streamed::Done,
        Err(e) => Streamed::Failed(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::NodeSlot;
    use dfs_proto::{Chunking, NodeId};

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn reads_try_live_copies_first_in_placement_order_and_find_moved_nodes_by_id() {
        // Nodes 1, 2, 3 were at :7001, :7002, :7003 when the file was stored; node 2 has since
        // moved to :7012, and node 1 is down.
        let health = Health::new(&[addr(7001), addr(7012), addr(7003)]);
        health.learn(addr(7001), NodeId([1; 16])).unwrap();
        health.learn(addr(7012), NodeId([2; 16])).unwrap();
        health.learn(addr(7003), NodeId([3; 16])).unwrap();
        health.mark_down(addr(7001), "refused");
        let slot = |id: u8, port: u16| NodeSlot { id: Some([id; 16]), addr: addr(port).to_string() };
        let chunk =
            |placement: Vec<u16>| ChunkRecord { offset: 0, length: 1, crc32: 0, block_crcs: vec![0], placement };
        let record = FileRecord {
            name: "f".into(),
            size: 2,
            created_unix_ms: 0,
            chunking: Chunking::Equal,
            nodes: vec![slot(1, 7001), slot(2, 7002), slot(3, 7003)],
            chunks: vec![chunk(vec![0, 1, 2]), chunk(vec![2, 1])],
            origin: None,
        };
        assert_eq!(read_order(&record, &record.chunks[0], &health).unwrap(), [addr(7012), addr(7003), addr(7001)]);
        assert_eq!(read_order(&record, &record.chunks[1], &health).unwrap(), [addr(7003), addr(7012)]);
        // Node 1 back up: placement order again.
        health.mark_up(addr(7001));
        assert_eq!(read_order(&record, &record.chunks[0], &health).unwrap(), [addr(7001), addr(7012), addr(7003)]);
        // A chunk without placement is an error, not an empty list to try.
        assert!(read_order(&record, &chunk(vec![]), &health).is_err());
    }
}
