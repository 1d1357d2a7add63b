//! GET: every byte is checked against the block crc32s recorded at upload before it is sent.
//!
//! A file that fits the buffer budget is fetched with all chunks in parallel into one
//! preallocated buffer and sent only once all of it has verified, so a missing or corrupt chunk
//! is reported before the first byte. A larger file is streamed in chunk order, one block at a
//! time, with the next chunk's fetch already under way (bounded read-ahead); a failure part-way
//! ends the stream with an error frame, and the client discards what it received.

use crate::buffer::Reassembly;
use crate::health::Health;
use crate::meta::{ChunkRecord, FileRecord};
use crate::nodes::{NodeConn, NodeError, NodeFailure};
use crate::server::{internal, not_found, EngineState};
use dfs_proto::io_std::Frame;
use dfs_proto::io_uring::Conn;
use dfs_proto::layout::{block_len, n_blocks};
use dfs_proto::limits::BLOCK_SIZE_BYTES;
use dfs_proto::{ChunkId, FileId, FrameError, Msg, Status};
use std::net::SocketAddr;
use std::rc::Rc;
use tokio_uring::buf::IoBufMut;

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

/// Handles one GET. Returns Err only when the client connection is broken.
pub async fn get(state: &EngineState, client: &Conn, file_id: FileId) -> Result<(), FrameError> {
    let record = match state.meta.get(file_id) {
        Ok(Some(r)) => r,
        Ok(None) => return client.write_msg(&not_found(file_id)).await,
        Err(e) => return client.write_msg(&internal(e)).await,
    };
    let mut copies = Vec::with_capacity(record.chunks.len());
    for (chunk_idx, chunk) in record.chunks.iter().enumerate() {
        match chunk_addrs(&record, chunk) {
            Ok(addrs) => copies.push(state.health.up_first(&addrs)),
            Err(e) => return client.write_msg(&internal(format!("file {file_id} chunk {chunk_idx}: {e}"))).await,
        }
    }
    match state.budget.try_reserve(record.size) {
        Some(_reservation) => get_buffered(state, client, file_id, &record, copies).await,
        None => get_streamed(state, client, file_id, &record, copies).await,
    }
}

/// Where chunk `chunk`'s copies live, in placement order.
pub fn chunk_addrs(record: &FileRecord, chunk: &ChunkRecord) -> Result<Vec<SocketAddr>, String> {
    if chunk.placement.is_empty() {
        return Err("chunk has no placement".into());
    }
    chunk
        .placement
        .iter()
        .map(|&node_idx| {
            let addr = record.nodes.get(node_idx as usize).ok_or("placement names an unknown node")?;
            addr.parse().map_err(|e| format!("stored node address {addr:?} is invalid: {e}"))
        })
        .collect()
}

/// Marks a node down when a read failure says it did not answer.
fn note_failure(health: &Health, e: &NodeError) {
    if let (NodeFailure::Unreachable(why), Ok(addr)) = (&e.failure, e.addr.parse::<SocketAddr>()) {
        health.mark_down(addr, why);
    }
}

/// Reads a whole chunk from one node into `buf[0..length]`, every block verified.
async fn read_chunk<B: IoBufMut + AsRef<[u8]>>(
    addr: SocketAddr,
    timeouts: crate::nodes::NodeTimeouts,
    chunk_id: ChunkId,
    chunk: &ChunkRecord,
    mut buf: B,
) -> Result<B, NodeError> {
    let mut reader = ChunkReader::open(addr, timeouts, chunk_id, chunk).await?;
    while let Some(block_idx) = reader.next_block() {
        buf = reader.read_block(buf, block_idx * BLOCK_SIZE_BYTES as usize).await?;
    }
    reader.finish().await?;
    Ok(buf)
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
        let window = buf.window(chunk.offset as usize, chunk.length as usize);
        let chunk = chunk.clone();
        let permits = permits.clone();
        let timeouts = state.config.node_timeouts;
        let health = state.health.clone();
        let chunk_id = ChunkId { file_id, chunk_idx: chunk_idx as u32 };
        tasks.push(dfs_runtime::backend::spawn(async move {
            let _permit = permits.acquire().await.expect("semaphore is never closed");
            let mut errors = Vec::new();
            let mut window = Some(window);
            for addr in addrs {
                // The first copy is read into the file's buffer. A failed read may leave an
                // operation in flight on that window (a timed-out read completes later), so any
                // further copy is read into a buffer of its own and sent from there.
                let result = match window.take() {
                    Some(w) => read_chunk(addr, timeouts, chunk_id, &chunk, w).await.map(|_| None),
                    None => {
                        read_chunk(addr, timeouts, chunk_id, &chunk, vec![0u8; chunk.length as usize]).await.map(Some)
                    }
                };
                match result {
                    Ok(replacement) => {
                        health.mark_up(addr);
                        if !errors.is_empty() {
                            tracing::info!("{chunk_id}: read from {addr} after {} failed cop(ies)", errors.len());
                        }
                        return Ok(replacement);
                    }
                    Err(e) => {
                        tracing::debug!("{chunk_id}: {e}");
                        note_failure(&health, &e);
                        errors.push(e);
                    }
                }
            }
            Err(ChunkFailure { chunk_idx: chunk_idx as u32, errors })
        }));
    }
    let mut first_failure: Option<ChunkFailure> = None;
    let mut replacements: Vec<Option<Vec<u8>>> = Vec::with_capacity(tasks.len());
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
    client.write_msg(&Msg::GetOk(record.info(file_id))).await?;
    for (chunk, replacement) in record.chunks.iter().zip(replacements) {
        let len = chunk.length as usize;
        match replacement {
            Some(mut bytes) => {
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
    client.write_msg(&Msg::GetOk(record.info(file_id))).await?;
    // A reader task fetches and verifies blocks in file order while this task sends earlier ones
    // to the client; the two channels bound the read-ahead to READ_AHEAD_BLOCKS buffers.
    let (blocks_tx, mut blocks_rx) = tokio::sync::mpsc::channel(READ_AHEAD_BLOCKS);
    let (free_tx, free_rx) = tokio::sync::mpsc::channel(READ_AHEAD_BLOCKS + 1);
    for _ in 0..READ_AHEAD_BLOCKS {
        free_tx.try_send(vec![0u8; BLOCK_SIZE_BYTES as usize]).expect("the pool channel has room for every buffer");
    }
    let reader = dfs_runtime::backend::spawn(read_in_order(
        state.config.node_timeouts,
        state.health.clone(),
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
    // Dropping the receiver stops the reader at its next block if the client went away.
    drop(blocks_rx);
    reader.await.expect("block reader task panicked");
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

/// Reads every chunk in order, block by block, each verified, into buffers from `free` and
/// hands them to `blocks`. The next chunk's first copy is opened while the current one streams.
/// When a copy fails part-way, the next copy is opened, the blocks already sent are read past
/// (and verified), and the stream goes on from the block that failed.
async fn read_in_order(
    timeouts: crate::nodes::NodeTimeouts,
    health: std::sync::Arc<Health>,
    file_id: FileId,
    chunks: Vec<ChunkRecord>,
    copies: Vec<Vec<SocketAddr>>,
    blocks: tokio::sync::mpsc::Sender<Block>,
    mut free: tokio::sync::mpsc::Receiver<Vec<u8>>,
) {
    let open = |chunk_idx: usize, copy_idx: usize| {
        let chunk = chunks[chunk_idx].clone();
        let addr = copies[chunk_idx][copy_idx];
        let chunk_id = ChunkId { file_id, chunk_idx: chunk_idx as u32 };
        dfs_runtime::backend::spawn(async move { ChunkReader::open(addr, timeouts, chunk_id, &chunk).await })
    };
    // Buffers that replace ones lost with a failed read, so the pool never shrinks.
    let mut spare: Vec<Vec<u8>> = Vec::new();
    let mut next = Some(open(0, 0));
    for (chunk_idx, chunk_copies) in copies.iter().enumerate() {
        let mut opening = next.take();
        if chunk_idx + 1 < copies.len() {
            next = Some(open(chunk_idx + 1, 0));
        }
        let mut errors = Vec::new();
        // Blocks of this chunk already handed to the sender.
        let mut n_sent = 0usize;
        let mut done = false;
        for copy_idx in 0..chunk_copies.len() {
            let result = async {
                let mut reader = match opening.take() {
                    Some(task) => task.await.expect("chunk open task panicked")?,
                    None => open(chunk_idx, copy_idx).await.expect("chunk open task panicked")?,
                };
                let mut scratch = Vec::new();
                while let Some(block_idx) = reader.next_block() {
                    if block_idx < n_sent {
                        if scratch.is_empty() {
                            scratch = vec![0u8; BLOCK_SIZE_BYTES as usize];
                        }
                        scratch = reader.read_block(scratch, 0).await?;
                        continue;
                    }
                    let buf = match spare.pop() {
                        Some(b) => b,
                        None => match free.recv().await {
                            Some(b) => b,
                            None => return Ok(false),
                        },
                    };
                    let buf = match reader.read_block(buf, 0).await {
                        Ok(b) => b,
                        Err(e) => {
                            spare.push(vec![0u8; BLOCK_SIZE_BYTES as usize]);
                            return Err(e);
                        }
                    };
                    let len = block_len(reader.length, block_idx as u64) as usize;
                    if blocks.send(Ok((buf, len))).await.is_err() {
                        return Ok(false);
                    }
                    n_sent = block_idx + 1;
                }
                reader.finish().await.map(|()| true)
            }
            .await;
            match result {
                Ok(true) => {
                    done = true;
                    break;
                }
                // The sender of the download gave up (client gone): stop quietly.
                Ok(false) => return,
                Err(e) => {
                    tracing::debug!("{file_id} chunk {chunk_idx}: {e}");
                    note_failure(&health, &e);
                    errors.push(e);
                }
            }
        }
        if !done {
            let _ = blocks.send(Err(ChunkFailure { chunk_idx: chunk_idx as u32, errors })).await;
            return;
        }
    }
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
    pub async fn open(
        addr: SocketAddr,
        timeouts: crate::nodes::NodeTimeouts,
        chunk_id: ChunkId,
        chunk: &ChunkRecord,
    ) -> Result<ChunkReader, NodeError> {
        let node = NodeConn::checkout(addr, timeouts).await?;
        node.send(&Msg::Fetch { chunk_id }).await?;
        match node.recv().await? {
            Msg::FetchOk { length, crc32, block_size_bytes }
                if length == chunk.length && crc32 == chunk.crc32 && block_size_bytes == BLOCK_SIZE_BYTES => {}
            Msg::FetchOk { length, crc32, .. } => {
                let detail = format!(
                    "node holds {length} bytes with crc32 {crc32:08x}, {} bytes with crc32 {:08x} were stored",
                    chunk.length, chunk.crc32
                );
                return Err(NodeError::new(addr, NodeFailure::Remote(Status::Corrupt, detail)));
            }
            other => return Err(node.unexpected("FetchOk", &other)),
        }
        assert_eq!(chunk.block_crcs.len() as u64, n_blocks(chunk.length), "metadata block count");
        Ok(ChunkReader { node, length: chunk.length, block_crcs: chunk.block_crcs.clone(), next_block_idx: 0 })
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
        let actual = dfs_proto::layout::crc32(&buf.as_ref()[begin..begin + len]);
        let expected = self.block_crcs[block_idx];
        if actual != expected {
            let detail = format!("block {block_idx} arrived with crc32 {actual:08x}, {expected:08x} was recorded");
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
