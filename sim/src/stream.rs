//! Streamed downloads in the simulation: `dfs_core::stream`, the engine's own streaming code,
//! over simulated copies and a simulated client that may read slowly, stall or vanish. A
//! download must end soon after its client is gone, however it goes; one that never ends keeps
//! the run from finishing, and the seed fails with the tasks still waiting.

use crate::exec;
use crate::world::{violated, Node, NodeErr, Record, World};
use dfs_core::placement::up_first;
use dfs_core::stream::{self, BlockReader, Blocks, Ended, Runtime, Sink};
use dfs_proto::layout::crc32;
use dfs_proto::{ChunkId, FileId};
use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

/// Bytes per block in the simulation (the engine's are 1 MiB; files here are small).
pub const BLOCK: usize = 4096;
/// Blocks read ahead of the client, as in the engine.
pub const READ_AHEAD: usize = 4;
/// How long a node lets a fetch sit unread before it closes the connection; the engine's
/// reader lets a node go after half of it.
const NODE_IDLE: Duration = Duration::from_secs(2);
/// How long the engine waits for a client to take a block before it gives up on it.
pub const CLIENT_IDLE: Duration = Duration::from_secs(3);

struct SimBlocks {
    w: Rc<World>,
    file_id: FileId,
    record: Record,
    copies: Vec<Vec<Node>>,
}

impl Blocks for SimBlocks {
    type Reader = SimReader;
    type Error = NodeErr;

    fn n_chunks(&self) -> usize {
        self.record.chunks.len()
    }

    fn n_copies(&self, chunk: usize) -> usize {
        self.copies[chunk].len()
    }

    fn n_blocks(&self, chunk: usize) -> usize {
        (self.record.chunks[chunk].length as usize).div_ceil(BLOCK)
    }

    /// A FETCH from `first_block`: the node checks its copy; the engine checks the bytes
    /// against the recorded crc32 (as it checks every block).
    async fn open(&self, chunk: usize, copy: usize, first_block: usize) -> Result<SimReader, NodeErr> {
        let node = self.copies[chunk][copy];
        let id = ChunkId { file_id: self.file_id, chunk_idx: chunk as u32 };
        let c = &self.record.chunks[chunk];
        let bytes = self.w.fetch(node, id).await?;
        if bytes.len() as u64 != c.length || crc32(&bytes) != c.crc32 {
            return Err(NodeErr::Corrupt);
        }
        Ok(SimReader { bytes, next: first_block, last_read: exec::now() })
    }

    fn failed(&self, chunk: usize, copy: usize, e: &NodeErr) {
        let node = self.copies[chunk][copy];
        self.w.note_failure(node, *e);
        self.w.queue_notes.borrow_mut().insert(ChunkId { file_id: self.file_id, chunk_idx: chunk as u32 });
    }
}

struct SimReader {
    bytes: Vec<u8>,
    next: usize,
    last_read: Duration,
}

impl BlockReader for SimReader {
    type Error = NodeErr;

    fn next_block(&self) -> Option<usize> {
        (self.next * BLOCK < self.bytes.len()).then_some(self.next)
    }

    fn block_len(&self, block: usize) -> usize {
        (self.bytes.len() - block * BLOCK).min(BLOCK)
    }

    fn max_unread(&self) -> Duration {
        NODE_IDLE / 2
    }

    async fn read_block(&mut self, mut buf: Vec<u8>) -> Result<Vec<u8>, NodeErr> {
        // The node closed a connection left unread for longer than it allows.
        if exec::now() > self.last_read + NODE_IDLE {
            return Err(NodeErr::Unreachable);
        }
        exec::sleep(Duration::from_micros(exec::random_range(10..200))).await;
        let at = self.next * BLOCK;
        let len = self.block_len(self.next);
        buf[..len].copy_from_slice(&self.bytes[at..at + len]);
        self.next += 1;
        self.last_read = exec::now();
        Ok(buf)
    }

    async fn finish(self) -> Result<(), NodeErr> {
        Ok(())
    }
}

/// How a simulated client reads a streamed download.
#[derive(Debug, Clone, Copy)]
enum Reading {
    Fast,
    /// This long per block.
    Slow(Duration),
    /// Stops reading, and never comes back, after this many blocks.
    Stalls(usize),
    /// Goes away (its connection resets) after this many blocks.
    Vanishes(usize),
}

struct SimClient {
    reading: Reading,
    received: RefCell<Vec<u8>>,
    n_blocks: RefCell<usize>,
    /// When the engine found it could no longer send to the client.
    gone_at: RefCell<Option<Duration>>,
}

#[derive(Debug)]
pub enum ClientErr {
    Gone,
    Stalled,
}

impl Sink for SimClient {
    type Error = ClientErr;

    async fn send(&self, buf: Vec<u8>, len: usize) -> Result<Vec<u8>, ClientErr> {
        let n = *self.n_blocks.borrow();
        match self.reading {
            Reading::Fast => exec::sleep(Duration::from_micros(exec::random_range(5..100))).await,
            Reading::Slow(d) => exec::sleep(d).await,
            Reading::Stalls(k) if n >= k => {
                // The engine's write waits for the client's window until its idle deadline.
                exec::sleep(CLIENT_IDLE).await;
                *self.gone_at.borrow_mut() = Some(exec::now());
                return Err(ClientErr::Stalled);
            }
            Reading::Vanishes(k) if n >= k => {
                *self.gone_at.borrow_mut() = Some(exec::now());
                return Err(ClientErr::Gone);
            }
            _ => {}
        }
        self.received.borrow_mut().extend_from_slice(&buf[..len]);
        *self.n_blocks.borrow_mut() += 1;
        Ok(buf)
    }
}

struct SimRuntime;

impl Runtime for SimRuntime {
    type Handle = exec::Abortable;

    fn spawn(task: impl Future<Output = ()> + 'static) -> exec::Abortable {
        exec::spawn_abortable("stream reader", task)
    }

    fn abort(handle: &exec::Abortable) {
        handle.abort();
    }

    async fn timeout<F: Future>(d: Duration, future: F) -> Option<F::Output> {
        exec::timeout(d, future).await.ok()
    }
}

/// Why a streamed GET ended without the whole file (counted, unless the file should be there).
#[derive(Debug, thiserror::Error)]
pub enum StreamGetErr {
    #[error("not found")]
    NotFound,
    /// No copy of this chunk could be read; one error per copy tried.
    #[error("chunk {0}: {1:?}")]
    Chunk(usize, Vec<NodeErr>),
    /// The client went away or stalled, as the seed made it.
    #[error("client: {0:?}")]
    Client(ClientErr),
}

/// A streamed GET of `file_id`, whose bytes should be `expected`, by a client reading the way
/// the seed picks. Checks that no byte received differs from what was stored, and that a
/// download whose client went away ends at once.
pub async fn get(w: Rc<World>, file_id: FileId, expected: &[u8]) -> Result<(), StreamGetErr> {
    let Some(record) = w.meta.borrow().get(&file_id).cloned() else { return Err(StreamGetErr::NotFound) };
    let copies = record.chunks.iter().map(|c| up_first(&c.placement, |n| w.is_up(n))).collect();
    let n_blocks: usize = record.chunks.iter().map(|c| (c.length as usize).div_ceil(BLOCK)).sum();
    let reading = match exec::random_range(0..10) {
        0..5 => Reading::Fast,
        5 => Reading::Slow(Duration::from_millis(exec::random_range(100..1500))),
        6 | 7 => Reading::Stalls(exec::random_range(0..n_blocks as u64 + 1) as usize),
        _ => Reading::Vanishes(exec::random_range(0..n_blocks as u64 + 1) as usize),
    };
    let client = SimClient {
        reading,
        received: RefCell::new(Vec::new()),
        n_blocks: RefCell::new(0),
        gone_at: RefCell::new(None),
    };
    let blocks = Rc::new(SimBlocks { w: w.clone(), file_id, record, copies });
    let ended = stream::stream::<_, _, SimRuntime>(blocks, &client, BLOCK, READ_AHEAD).await;
    let received = client.received.borrow();
    if received[..] != expected[..received.len().min(expected.len())] || received.len() > expected.len() {
        violated(format!("streamed GET {file_id} sent bytes other than were stored"));
    }
    if let Some(gone) = *client.gone_at.borrow() {
        let late = exec::now() - gone;
        if late > Duration::from_millis(1) {
            violated(format!("streamed GET {file_id} ended {late:?} after its client was gone ({reading:?})"));
        }
    }
    match ended {
        Ended::Done if received.len() == expected.len() => Ok(()),
        Ended::Done => {
            violated(format!("streamed GET {file_id} ended after {} of {} bytes", received.len(), expected.len()))
        }
        Ended::Failed { chunk, errors } => Err(StreamGetErr::Chunk(chunk, errors)),
        Ended::SinkFailed(e) => Err(StreamGetErr::Client(e)),
    }
}
