//! GET: every byte is checked against the block crc32s recorded at upload before it is sent.
//!
//! A file that fits the buffer budget is fetched with all chunks in parallel into one
//! preallocated buffer and sent only once all of it has verified, so a missing or corrupt chunk
//! is reported before the first byte. A larger file is streamed in chunk order, one block at a
//! time, with bounded read-ahead, reading from a node only as fast as the client drains
//! (`dfs_core::stream`, over the node connections and the client's here); a failure part-way
//! ends the stream with an error frame, and the client discards what it received.

use crate::buffer::{ChunkBuf, Reassembly};
use crate::cluster::{read_chunk, ChunkReader, Health, Links, NodeError, NodeFailure};
use crate::meta::{ChunkRecord, FileRecord, PlacementError};
use crate::repair_queue::RepairQueue;
use crate::state::{not_found, EngineState};
use dfs_core::repair::Reason;
use dfs_core::stream::{self, Ended};
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

/// What a read does when a copy fails, buffered or streamed: a node that did not answer is
/// marked down, and the chunk is noted for the repair queue.
fn copy_failed(links: &Links, queue: &RepairQueue, chunk_id: ChunkId, e: &NodeError) {
    tracing::debug!("{chunk_id}: {e}");
    links.health.note_failure(e);
    queue.note(chunk_id, Reason::ReadFailed);
}

/// One chunk of a buffered GET read from its copies ([`dfs_core::read::read_chunk`] over the
/// engine's nodes).
struct CopyReader {
    /// The chunk's window of the file's buffer, until a read keeps it.
    slot: crate::buffer::WindowSlot,
    links: Links,
    budget: std::sync::Arc<crate::buffer::Budget>,
    queue: std::sync::Arc<RepairQueue>,
    chunk_id: ChunkId,
    chunk: ChunkRecord,
}

impl dfs_core::read::ChunkRead for CopyReader {
    type Node = SocketAddr;
    /// None: the chunk is in the file's buffer; else in a buffer of its own.
    type Got = Option<ChunkBuf>;
    type Error = NodeError;

    async fn read(&self, addr: SocketAddr) -> Result<Option<ChunkBuf>, NodeError> {
        let (links, chunk_id, chunk) = (&self.links, self.chunk_id, &self.chunk);
        // Each copy is read into the chunk's window of the file's buffer. A failed read that is
        // still in flight (one that timed out completes later) keeps its window, and the kernel
        // may still write into it: then the next copy is read into a buffer of its own,
        // reserved against the budget like the file's buffer.
        match self.slot.take() {
            Some(w) => read_chunk(addr, links, chunk_id, chunk, w).await.map(|_| None),
            None => match self.budget.reserve_within(chunk.length, links.timeouts.idle).await {
                Some(reservation) => {
                    let ChunkBuf { bytes, hold } = ChunkBuf::zeroed(chunk.length as usize, reservation);
                    read_chunk(addr, links, chunk_id, chunk, bytes).await.map(|bytes| Some(ChunkBuf { bytes, hold }))
                }
                None => Err(NodeError::new(
                    addr,
                    NodeFailure::Remote(
                        Status::Unavailable,
                        "not read: the engine's download buffer budget stayed full".into(),
                    ),
                )),
            },
        }
    }

    fn served(&self, addr: SocketAddr, n_failed: usize) {
        self.links.health.mark_up(addr);
        if n_failed > 0 {
            tracing::info!("{}: read from {addr} after {n_failed} failed cop(ies)", self.chunk_id);
        }
    }

    fn failed(&self, _addr: SocketAddr, e: &NodeError) {
        copy_failed(&self.links, &self.queue, self.chunk_id, e);
    }
}

/// Reads `chunks` (chunk `first_idx` and those after it) into `buf`, each at its offset less
/// `base`, each from the first of its copies that reads sound, at most
/// `MAX_PARALLEL_FETCHES` chunks at once. A chunk read into a buffer of its own instead (its
/// window was kept by a failed read still in flight) comes back in that buffer; None: it is in
/// `buf`. The lowest chunk none of whose copies could be read fails the whole read.
async fn read_chunks(
    state: &EngineState,
    file_id: FileId,
    chunks: &[ChunkRecord],
    first_idx: usize,
    copies: Vec<Vec<SocketAddr>>,
    buf: &Rc<Reassembly>,
    base: u64,
) -> Result<Vec<Option<ChunkBuf>>, ChunkFailure> {
    let permits = Rc::new(tokio::sync::Semaphore::new(MAX_PARALLEL_FETCHES));
    let mut tasks = Vec::with_capacity(chunks.len());
    for ((i, chunk), addrs) in chunks.iter().enumerate().zip(copies) {
        let chunk_idx = first_idx + i;
        let slot = buf.slot((chunk.offset - base) as usize, chunk.length as usize);
        let chunk = chunk.clone();
        let permits = permits.clone();
        let links = state.links.clone();
        let budget = state.budget.clone();
        let queue = state.repair_queue.clone();
        let chunk_id = ChunkId { file_id, chunk_idx: chunk_idx as u32 };
        tasks.push(dfs_runtime::backend::spawn(async move {
            let _permit = permits.acquire().await.expect("semaphore is never closed");
            let io = CopyReader { slot, links, budget, queue, chunk_id, chunk };
            dfs_core::read::read_chunk(&io, &addrs)
                .await
                .map_err(|errors| ChunkFailure { chunk_idx: chunk_idx as u32, errors })
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
    match first_failure {
        Some(f) => Err(f),
        None => Ok(replacements),
    }
}

/// Handles one GET. Returns Err only when the client connection is broken.
pub async fn get(state: &EngineState, client: &Conn, file_id: FileId) -> Result<(), FrameError> {
    let record = match state.meta.get(file_id).await {
        Ok(Some(r)) => r,
        Ok(None) => return client.write_msg(&not_found(file_id)).await,
        Err(e) => return client.write_msg(&state.meta_failed(e)).await,
    };
    let mut copies = Vec::with_capacity(record.chunks.len());
    for (chunk_idx, chunk) in record.chunks.iter().enumerate() {
        match read_order(&record, chunk, &state.links.health) {
            Ok(addrs) => copies.push(addrs),
            Err(e) => return client.write_msg(&state.internal(format!("file {file_id} chunk {chunk_idx}: {e}"))).await,
        }
    }
    match state.budget.try_reserve(record.size) {
        Some(_reservation) => {
            crate::metrics::DOWNLOADS.with_label_values(&["buffered"]).inc();
            get_buffered(state, client, file_id, &record, copies).await
        }
        None => {
            crate::metrics::DOWNLOADS.with_label_values(&["streamed"]).inc();
            get_streamed(state, client, file_id, &record, copies).await
        }
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
    let replacements = match read_chunks(state, file_id, &record.chunks, 0, copies, &buf, 0).await {
        Ok(r) => r,
        Err(f) => {
            let line = format!("GET {file_id}: {}", f.describe(file_id).1);
            tracing::warn!("{line}");
            state.errors.note(&line);
            return client.write_msg(&f.to_msg(file_id)).await;
        }
    };
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
    for (chunk_idx, (chunk, replacement)) in record.chunks.iter().zip(replacements).enumerate() {
        if chunk_idx == 1 {
            // Tests hold a download here, its first chunk sent.
            dfs_runtime::failpoint::pause("get-after-first-chunk").await;
        }
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
    let blocks = Rc::new(NodeBlocks {
        links: state.links.clone(),
        queue: state.repair_queue.clone(),
        file_id,
        first_chunk: 0,
        chunks: record.chunks.clone(),
        copies,
    });
    let sink = ClientSink(client);
    let (block_size, read_ahead) = stream_buffers(&record.chunks);
    match stream::stream::<_, _, EngineRuntime>(blocks, &sink, block_size, read_ahead).await {
        Ended::Done => client.write_msg(&Msg::End).await,
        Ended::SinkFailed(e) => Err(e),
        Ended::Failed { chunk, errors } => {
            let f = ChunkFailure { chunk_idx: chunk as u32, errors };
            let line = format!("GET {file_id}: {}", f.describe(file_id).1);
            tracing::warn!("{line}");
            state.errors.note(&line);
            client.write_msg(&f.to_msg(file_id)).await
        }
    }
}

/// Blocks of a streamed download read ahead of the client.
pub const READ_AHEAD_BLOCKS: usize = 4;

/// A range of at most this many bytes of chunks is read whole, its chunks in parallel, and
/// handed on in one piece (`stream_range`).
const SMALL_RANGE_BYTES: u64 = BLOCK_SIZE_BYTES as u64;

/// The buffers a streamed download of `chunks` reads into: each as large as the largest block
/// (a block, at most `BLOCK_SIZE_BYTES`, never exceeds its chunk), and no more of them than
/// there are blocks. A 4 KiB object then takes one 1 KiB buffer, not four zeroed MiBs.
fn stream_buffers(chunks: &[ChunkRecord]) -> (usize, usize) {
    let block = BLOCK_SIZE_BYTES as u64;
    let largest = chunks.iter().map(|c| c.length.min(block)).max().unwrap_or(1).max(1);
    let n_blocks: u64 = chunks.iter().map(|c| c.length.div_ceil(block)).sum();
    (largest as usize, (n_blocks as usize).clamp(1, READ_AHEAD_BLOCKS))
}

/// A streamed download's copies, on the nodes (`dfs_core::stream` does the streaming).
struct NodeBlocks {
    links: Links,
    queue: std::sync::Arc<RepairQueue>,
    file_id: FileId,
    /// The file's index of `chunks[0]` (a range read starts at the chunk it begins in).
    first_chunk: usize,
    chunks: Vec<ChunkRecord>,
    /// Per chunk, its copies in read order.
    copies: Vec<Vec<SocketAddr>>,
}

impl stream::Blocks for NodeBlocks {
    type Reader = NodeReader;
    type Error = NodeError;

    fn n_chunks(&self) -> usize {
        self.chunks.len()
    }

    fn n_copies(&self, chunk: usize) -> usize {
        self.copies[chunk].len()
    }

    fn n_blocks(&self, chunk: usize) -> usize {
        self.chunks[chunk].block_crcs.len()
    }

    async fn open(&self, chunk: usize, copy: usize, first_block: usize) -> Result<NodeReader, NodeError> {
        let chunk_id = ChunkId { file_id: self.file_id, chunk_idx: (self.first_chunk + chunk) as u32 };
        ChunkReader::open(self.copies[chunk][copy], &self.links, chunk_id, &self.chunks[chunk], first_block)
            .await
            .map(NodeReader)
    }

    fn failed(&self, chunk: usize, _copy: usize, e: &NodeError) {
        let chunk_id = ChunkId { file_id: self.file_id, chunk_idx: (self.first_chunk + chunk) as u32 };
        copy_failed(&self.links, &self.queue, chunk_id, e);
    }
}

struct NodeReader(ChunkReader);

impl stream::BlockReader for NodeReader {
    type Error = NodeError;

    fn next_block(&self) -> Option<usize> {
        self.0.next_block()
    }

    fn block_len(&self, block: usize) -> usize {
        block_len(self.0.length(), block as u64) as usize
    }

    fn max_unread(&self) -> std::time::Duration {
        self.0.max_unread()
    }

    async fn read_block(&mut self, buf: Vec<u8>) -> Result<Vec<u8>, NodeError> {
        self.0.read_block(buf, 0).await
    }

    async fn finish(self) -> Result<(), NodeError> {
        self.0.finish().await
    }
}

/// The client's connection, as a streamed download's sink.
struct ClientSink<'a>(&'a Conn);

impl stream::Sink for ClientSink<'_> {
    type Error = FrameError;

    async fn send(&self, buf: Vec<u8>, len: usize) -> Result<Vec<u8>, FrameError> {
        self.0.write_data(buf, 0, len).await
    }
}

/// Bytes of a download as they leave the engine, for a front door that is not a dfs
/// connection (S3): each item is verified bytes, in order, or the error that ends the download.
pub type ByteSender = tokio::sync::mpsc::Sender<Result<bytes::Bytes, std::io::Error>>;

/// Streams bytes `start..end` of a file into `tx`, block by block, every block checked against
/// its crc32 before it goes (the streamed download's path, `dfs_core::stream`): only the chunks
/// the range touches are read, and reading stops once the range is sent. A chunk none of whose
/// copies reads ends the stream with an error item naming it. Returns true once the whole
/// range is sent; false when it failed (an error item was sent) or `tx`'s receiver went away.
pub async fn stream_range(
    state: &EngineState,
    file_id: FileId,
    record: &FileRecord,
    start: u64,
    end: u64,
    tx: ByteSender,
) -> bool {
    assert!(start <= end && end <= record.size, "a range inside the file");
    if start == end {
        return true;
    }
    let touched: Vec<usize> = (0..record.chunks.len())
        .filter(|&i| {
            let c = &record.chunks[i];
            c.length > 0 && c.offset < end && c.offset + c.length > start
        })
        .collect();
    let (Some(&first), Some(&last)) = (touched.first(), touched.last()) else { return true };
    let mut copies = Vec::with_capacity(last + 1 - first);
    for i in first..=last {
        match read_order(record, &record.chunks[i], &state.links.health) {
            Ok(addrs) => copies.push(addrs),
            Err(e) => {
                let _ = tx.send(Err(std::io::Error::other(format!("file {file_id} chunk {i}: {e}")))).await;
                return false;
            }
        }
    }
    // A small range: its chunks are read at once, in parallel, and sent as one piece, rather
    // than block after block and chunk after chunk, a round trip to a node each.
    let base = record.chunks[first].offset;
    let span = record.chunks[last].offset + record.chunks[last].length - base;
    if span <= SMALL_RANGE_BYTES {
        if let Some(_reservation) = state.budget.try_reserve(span) {
            let chunks = &record.chunks[first..=last];
            let buf = Reassembly::zeroed(span as usize);
            return match read_chunks(state, file_id, chunks, first, copies, &buf, base).await {
                Ok(replacements) => {
                    let mut out = Vec::with_capacity((end - start) as usize);
                    for (chunk, replacement) in chunks.iter().zip(&replacements) {
                        let (from, to) = (start.max(chunk.offset), end.min(chunk.offset + chunk.length));
                        if from >= to {
                            continue;
                        }
                        let (a, b) = ((from - chunk.offset) as usize, (to - chunk.offset) as usize);
                        match replacement {
                            Some(ChunkBuf { bytes, .. }) => out.extend_from_slice(&bytes[a..b]),
                            None => out.extend_from_slice(
                                &buf.window((chunk.offset - base) as usize, chunk.length as usize).as_ref()[a..b],
                            ),
                        }
                    }
                    assert_eq!(out.len() as u64, end - start, "a small range assembled whole");
                    tx.send(Ok(out.into())).await.is_ok()
                }
                Err(f) => {
                    let line = format!("GET {file_id}: {}", f.describe(file_id).1);
                    tracing::warn!("{line}");
                    state.errors.note(&line);
                    let _ = tx.send(Err(std::io::Error::other(line))).await;
                    false
                }
            };
        }
    }
    let blocks = Rc::new(NodeBlocks {
        links: state.links.clone(),
        queue: state.repair_queue.clone(),
        file_id,
        first_chunk: first,
        chunks: record.chunks[first..=last].to_vec(),
        copies,
    });
    let sink = RangeSink { tx: tx.clone(), at: std::cell::Cell::new(record.chunks[first].offset), start, end };
    let (block_size, read_ahead) = stream_buffers(&record.chunks[first..=last]);
    match stream::stream::<_, _, EngineRuntime>(blocks, &sink, block_size, read_ahead).await {
        // The sink ends the stream itself once past the range's end.
        Ended::Done | Ended::SinkFailed(_) => sink.at.get() >= end && !tx.is_closed(),
        Ended::Failed { chunk, errors } => {
            let f = ChunkFailure { chunk_idx: (first + chunk) as u32, errors };
            let line = format!("GET {file_id}: {}", f.describe(file_id).1);
            tracing::warn!("{line}");
            state.errors.note(&line);
            let _ = tx.send(Err(std::io::Error::other(line))).await;
            false
        }
    }
}

/// Sends what of each block lies in `start..end`; `at` is the file offset of the next block's
/// first byte. Ends the stream (an error, which the caller takes for done) once past `end`.
struct RangeSink {
    tx: ByteSender,
    at: std::cell::Cell<u64>,
    start: u64,
    end: u64,
}

impl stream::Sink for RangeSink {
    type Error = &'static str;

    async fn send(&self, buf: Vec<u8>, len: usize) -> Result<Vec<u8>, &'static str> {
        let at = self.at.get();
        self.at.set(at + len as u64);
        let from = self.start.max(at);
        let to = self.end.min(at + len as u64);
        if from < to {
            let piece = bytes::Bytes::copy_from_slice(&buf[(from - at) as usize..(to - at) as usize]);
            self.tx.send(Ok(piece)).await.map_err(|_| "the receiver went away")?;
        }
        if at + len as u64 >= self.end {
            return Err("the range is sent");
        }
        Ok(buf)
    }
}

/// Tasks on the connection's runtime thread, and tokio's timer.
struct EngineRuntime;

/// A spawned task; completes when the task ends or is aborted, and passes a panic on.
struct TaskHandle(tokio::task::JoinHandle<()>);

impl std::future::Future for TaskHandle {
    type Output = ();

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        std::pin::Pin::new(&mut self.0).poll(cx).map(|r| {
            if let Err(e) = r {
                if e.is_panic() {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
        })
    }
}

impl stream::Runtime for EngineRuntime {
    type Handle = TaskHandle;

    fn spawn(task: impl std::future::Future<Output = ()> + 'static) -> TaskHandle {
        TaskHandle(dfs_runtime::backend::spawn(task))
    }

    fn abort(handle: &TaskHandle) {
        handle.0.abort();
    }

    async fn timeout<F: std::future::Future>(d: std::time::Duration, future: F) -> Option<F::Output> {
        tokio::time::timeout(d, future).await.ok()
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
    fn stream_buffers_fit_the_blocks_and_no_more() {
        let chunk =
            |length: u64| ChunkRecord { offset: 0, length, crc32: 0, block_crcs: Vec::new(), placement: Vec::new() };
        let mib = BLOCK_SIZE_BYTES as u64;
        assert_eq!(stream_buffers(&[chunk(1024), chunk(1024), chunk(1024), chunk(1000)]), (1024, 4));
        assert_eq!(stream_buffers(&[chunk(0), chunk(0), chunk(0), chunk(7)]), (7, 1));
        assert_eq!(stream_buffers(&[chunk(3 * mib + 5)]), (mib as usize, 4));
        assert_eq!(stream_buffers(&[chunk(mib + 1)]), (mib as usize, 2));
        assert_eq!(stream_buffers(&[chunk(0)]), (1, 1));
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
