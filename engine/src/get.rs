//! GET: every byte is checked against the block crc32s recorded at upload before it is sent.
//!
//! A file that fits the buffer budget is fetched with all chunks in parallel into one
//! preallocated buffer and sent only once all of it has verified, so a missing or corrupt chunk
//! is reported before the first byte. A larger file is streamed in chunk order, one block at a
//! time, with the next chunk's fetch already under way (bounded read-ahead); a failure part-way
//! ends the stream with an error frame, and the client discards what it received.

use crate::buffer::Reassembly;
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

/// A chunk that could not be read, named for the client.
struct ChunkFailure {
    chunk_idx: u32,
    error: NodeError,
}

impl ChunkFailure {
    fn to_msg(&self, file_id: FileId) -> Msg {
        let (idx, addr) = (self.chunk_idx, &self.error.addr);
        let what = match &self.error.failure {
            NodeFailure::Remote(Status::NotFound, _) => format!("is missing on node {addr}"),
            NodeFailure::Remote(Status::Corrupt, m) => format!("is corrupt on node {addr}: {m}"),
            NodeFailure::Remote(status, m) => format!("cannot be read from node {addr}: {status}: {m}"),
            NodeFailure::Unreachable(e) => format!("cannot be read: node {addr} is unreachable: {e}"),
            NodeFailure::Protocol(m) => format!("cannot be read: node {addr} broke the protocol: {m}"),
        };
        Msg::error(self.error.status(), format!("file {file_id}: chunk {idx} {what}"))
    }
}

/// Handles one GET. Returns Err only when the client connection is broken.
pub async fn get(state: &EngineState, client: &Conn, file_id: FileId) -> Result<(), FrameError> {
    let record = match state.meta.get(file_id) {
        Ok(Some(r)) => r,
        Ok(None) => return client.write_msg(&not_found(file_id)).await,
        Err(e) => return client.write_msg(&internal(e)).await,
    };
    match state.budget.try_reserve(record.size) {
        Some(_reservation) => get_buffered(state, client, file_id, &record).await,
        None => get_streamed(state, client, file_id, &record).await,
    }
}

/// Where chunk `chunk_idx`'s first copy lives.
fn chunk_addr(record: &FileRecord, chunk: &ChunkRecord) -> Result<SocketAddr, String> {
    let node_idx = *chunk.placement.first().ok_or("chunk has no placement")? as usize;
    let addr = record.nodes.get(node_idx).ok_or("placement names an unknown node")?;
    addr.parse().map_err(|e| format!("stored node address {addr:?} is invalid: {e}"))
}

async fn get_buffered(
    state: &EngineState,
    client: &Conn,
    file_id: FileId,
    record: &FileRecord,
) -> Result<(), FrameError> {
    let buf = Reassembly::zeroed(record.size as usize);
    let permits = Rc::new(tokio::sync::Semaphore::new(MAX_PARALLEL_FETCHES));
    let mut tasks = Vec::with_capacity(record.chunks.len());
    for (chunk_idx, chunk) in record.chunks.iter().enumerate() {
        let addr = match chunk_addr(record, chunk) {
            Ok(a) => a,
            Err(e) => return client.write_msg(&internal(format!("file {file_id} chunk {chunk_idx}: {e}"))).await,
        };
        let window = buf.window(chunk.offset as usize, chunk.length as usize);
        let chunk = chunk.clone();
        let permits = permits.clone();
        let timeouts = state.config.node_timeouts;
        let chunk_id = ChunkId { file_id, chunk_idx: chunk_idx as u32 };
        tasks.push(tokio_uring::spawn(async move {
            let _permit = permits.acquire().await.expect("semaphore is never closed");
            let result = async {
                let mut reader = ChunkReader::open(addr, timeouts, chunk_id, &chunk).await?;
                let mut window = window;
                while let Some(block_idx) = reader.next_block() {
                    window = reader.read_block(window, block_idx * BLOCK_SIZE_BYTES as usize).await?;
                }
                reader.finish().await
            }
            .await;
            result.map_err(|error| ChunkFailure { chunk_idx: chunk_idx as u32, error })
        }));
    }
    let mut first_failure: Option<ChunkFailure> = None;
    for t in tasks {
        if let Err(f) = t.await.expect("chunk fetch task panicked") {
            if first_failure.as_ref().is_none_or(|g| g.chunk_idx > f.chunk_idx) {
                first_failure = Some(f);
            }
        }
    }
    if let Some(f) = first_failure {
        tracing::warn!("GET {file_id}: chunk {}: {}", f.chunk_idx, f.error);
        return client.write_msg(&f.to_msg(file_id)).await;
    }
    client.write_msg(&Msg::GetOk(record.info(file_id))).await?;
    let mut whole = buf.whole();
    let mut pos = 0usize;
    while pos < record.size as usize {
        let end = (pos + BLOCK_SIZE_BYTES as usize).min(record.size as usize);
        whole = client.write_data(whole, pos, end).await?;
        pos = end;
    }
    client.write_msg(&Msg::End).await
}

async fn get_streamed(
    state: &EngineState,
    client: &Conn,
    file_id: FileId,
    record: &FileRecord,
) -> Result<(), FrameError> {
    let mut addrs = Vec::with_capacity(record.chunks.len());
    for (chunk_idx, chunk) in record.chunks.iter().enumerate() {
        match chunk_addr(record, chunk) {
            Ok(a) => addrs.push(a),
            Err(e) => return client.write_msg(&internal(format!("file {file_id} chunk {chunk_idx}: {e}"))).await,
        }
    }
    client.write_msg(&Msg::GetOk(record.info(file_id))).await?;
    // A reader task fetches and verifies blocks in file order while this task sends earlier ones
    // to the client; the two channels bound the read-ahead to READ_AHEAD_BLOCKS buffers.
    let (blocks_tx, mut blocks_rx) = tokio::sync::mpsc::channel(READ_AHEAD_BLOCKS);
    let (free_tx, free_rx) = tokio::sync::mpsc::channel(READ_AHEAD_BLOCKS + 1);
    for _ in 0..READ_AHEAD_BLOCKS {
        free_tx.try_send(vec![0u8; BLOCK_SIZE_BYTES as usize]).expect("the pool channel has room for every buffer");
    }
    let reader = tokio_uring::spawn(read_in_order(
        state.config.node_timeouts,
        file_id,
        record.chunks.clone(),
        addrs,
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
            tracing::warn!("GET {file_id}: chunk {}: {}", f.chunk_idx, f.error);
            client.write_msg(&f.to_msg(file_id)).await
        }
    }
}

/// Blocks of a streamed download read ahead of the client.
pub const READ_AHEAD_BLOCKS: usize = 4;

type Block = Result<(Vec<u8>, usize), ChunkFailure>;

/// Reads every chunk in order, block by block, each verified, into buffers from `free` and
/// hands them to `blocks`. The next chunk's connection is opened while the current one streams.
async fn read_in_order(
    timeouts: crate::nodes::NodeTimeouts,
    file_id: FileId,
    chunks: Vec<ChunkRecord>,
    addrs: Vec<SocketAddr>,
    blocks: tokio::sync::mpsc::Sender<Block>,
    mut free: tokio::sync::mpsc::Receiver<Vec<u8>>,
) {
    let open = |chunk_idx: usize| {
        let chunk = chunks[chunk_idx].clone();
        let addr = addrs[chunk_idx];
        let chunk_id = ChunkId { file_id, chunk_idx: chunk_idx as u32 };
        tokio_uring::spawn(async move { ChunkReader::open(addr, timeouts, chunk_id, &chunk).await })
    };
    let mut next = Some(open(0));
    for chunk_idx in 0..chunks.len() {
        let opening = next.take().expect("the next chunk is always being opened");
        if chunk_idx + 1 < chunks.len() {
            next = Some(open(chunk_idx + 1));
        }
        let result = async {
            let mut reader = opening.await.expect("chunk open task panicked")?;
            while let Some(block_idx) = reader.next_block() {
                let Some(buf) = free.recv().await else { return Ok(false) };
                let buf = reader.read_block(buf, 0).await?;
                let len = block_len(reader.length, block_idx as u64) as usize;
                if blocks.send(Ok((buf, len))).await.is_err() {
                    return Ok(false);
                }
            }
            reader.finish().await.map(|()| true)
        }
        .await;
        match result {
            Ok(true) => {}
            // The sender of the download gave up (client gone): stop quietly.
            Ok(false) => return,
            Err(error) => {
                let _ = blocks.send(Err(ChunkFailure { chunk_idx: chunk_idx as u32, error })).await;
                return;
            }
        }
    }
}

/// Reads one chunk from a node, block by block, checking each block against the crc32 that was
/// recorded at upload (not the one the node holds).
struct ChunkReader {
    node: NodeConn,
    length: u64,
    block_crcs: Vec<u32>,
    next_block_idx: usize,
}

impl ChunkReader {
    async fn open(
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

    fn next_block(&self) -> Option<usize> {
        (self.next_block_idx < self.block_crcs.len()).then_some(self.next_block_idx)
    }

    /// Reads the next block's data frame into `buf[begin..]` and verifies it.
    async fn read_block<B: IoBufMut + AsRef<[u8]>>(&mut self, buf: B, begin: usize) -> Result<B, NodeError> {
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

    async fn finish(self) -> Result<(), NodeError> {
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
