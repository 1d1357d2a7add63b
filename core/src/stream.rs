//! A streamed download: a file's chunks in order, block by block, each block read from a copy
//! and handed to the client, with a bounded pool of buffers so that reading runs at most
//! `read_ahead` blocks ahead of the client. Generic over where blocks come from ([`Blocks`]),
//! where they go ([`Sink`]) and how tasks and timeouts are made ([`Runtime`]): the engine runs
//! it over node connections and the client's socket, `dfs-sim` over simulated ones, so the
//! simulator checks this very code for downloads that never end.
//!
//! Two tasks share the work. A reader task opens a copy only with a pool buffer in hand, reads
//! block after block into pool buffers and hands them on; when a copy fails it moves to the
//! next copy at the block that failed; when the client keeps the pool empty for longer than a
//! node lets a connection sit unread ([`BlockReader::max_unread`]) it lets the node go and
//! opens it again from the next block once a buffer comes back. The calling task sends the
//! blocks to the client and returns each buffer to the pool.
//!
//! However the download ends (done, a chunk with no readable copy, the client gone or
//! stalled), [`stream`] returns only after the reader has ended too: the reader may be waiting
//! for a pool buffer that will never come back (the client went away with one), so the pool's
//! sending end is dropped and the reader aborted first. Awaiting the reader while still holding
//! the pool is the download that never ends (fixed in issue 10; `dfs-sim` finds it again when
//! that order is reverted).

use std::future::Future;
use std::rc::Rc;
use std::time::Duration;
use tokio::sync::mpsc;

/// The copies of a download's chunks.
pub trait Blocks: 'static {
    type Reader: BlockReader<Error = Self::Error>;
    type Error;
    fn n_chunks(&self) -> usize;
    fn n_copies(&self, chunk: usize) -> usize;
    fn n_blocks(&self, chunk: usize) -> usize;
    /// Opens copy `copy` (in read order) of chunk `chunk` from block `first_block` on.
    fn open(
        &self,
        chunk: usize,
        copy: usize,
        first_block: usize,
    ) -> impl Future<Output = Result<Self::Reader, Self::Error>>;
    /// Copy `copy` of `chunk` failed with `e` (the engine marks a node that did not answer
    /// down, and notes the chunk for repair); the download goes on with the next copy.
    fn failed(&self, chunk: usize, copy: usize, e: &Self::Error);
}

/// One open copy, read block by block, each block checked against the crc32 recorded for it.
pub trait BlockReader {
    type Error;
    /// The next block this reader will read, if any is left.
    fn next_block(&self) -> Option<usize>;
    fn block_len(&self, block: usize) -> usize;
    /// How long the reader may sit unread before its node gives up on the connection.
    fn max_unread(&self) -> Duration;
    /// Reads the next block into `buf` (from its start).
    fn read_block(&mut self, buf: Vec<u8>) -> impl Future<Output = Result<Vec<u8>, Self::Error>>;
    /// After the last block: the copy's end, as the node sends it.
    fn finish(self) -> impl Future<Output = Result<(), Self::Error>>;
}

/// Where the blocks go: the client.
pub trait Sink {
    type Error;
    /// Sends the first `len` bytes of `buf`, and gives the buffer back.
    fn send(&self, buf: Vec<u8>, len: usize) -> impl Future<Output = Result<Vec<u8>, Self::Error>>;
}

/// Tasks and timeouts.
pub trait Runtime: 'static {
    type Handle: Future<Output = ()>;
    fn spawn(task: impl Future<Output = ()> + 'static) -> Self::Handle;
    /// Stops the task at its next await; its handle then completes.
    fn abort(handle: &Self::Handle);
    /// `future`'s output, or None once `d` has passed.
    fn timeout<F: Future>(d: Duration, future: F) -> impl Future<Output = Option<F::Output>>;
}

/// How a streamed download ended.
#[derive(Debug)]
pub enum Ended<BE, SE> {
    /// Every block was sent.
    Done,
    /// No copy of `chunk` could be read; `errors` has one entry per copy tried, in order.
    Failed { chunk: usize, errors: Vec<BE> },
    /// The client could not be sent to.
    SinkFailed(SE),
}

type Block<E> = Result<(Vec<u8>, usize), (usize, Vec<E>)>;

/// Streams every block of `blocks` to `sink`, reading at most `read_ahead` blocks of
/// `block_size` bytes ahead of it. Returns once both tasks have ended.
pub async fn stream<B: Blocks, S: Sink, R: Runtime>(
    blocks: Rc<B>,
    sink: &S,
    block_size: usize,
    read_ahead: usize,
) -> Ended<B::Error, S::Error> {
    assert!(read_ahead >= 1 && block_size >= 1, "a pool of at least one buffer");
    let (blocks_tx, mut blocks_rx) = mpsc::channel::<Block<B::Error>>(read_ahead);
    let (free_tx, free_rx) = mpsc::channel(read_ahead + 1);
    for _ in 0..read_ahead {
        free_tx.try_send(vec![0u8; block_size]).expect("the pool has room for every buffer");
    }
    let reader = R::spawn(read_in_order::<B, R>(blocks, blocks_tx, free_rx, block_size));
    let mut ended = Ended::Done;
    while let Some(block) = blocks_rx.recv().await {
        match block {
            Ok((buf, len)) => match sink.send(buf, len).await {
                // The reader may have finished and dropped its end of the pool; that is fine.
                Ok(buf) => drop(free_tx.try_send(buf)),
                Err(e) => {
                    ended = Ended::SinkFailed(e);
                    break;
                }
            },
            Err((chunk, errors)) => {
                ended = Ended::Failed { chunk, errors };
                break;
            }
        }
    }
    // However the download ended, the reader ends with it, before this returns: it may be
    // waiting for a pool buffer that will never come back, or on a node.
    drop(blocks_rx);
    drop(free_tx);
    R::abort(&reader);
    reader.await;
    ended
}

/// How streaming one copy of a chunk ended.
enum Streamed<E> {
    /// Every block was handed on and the node ended the fetch cleanly.
    Done,
    /// The sending side is gone: stop quietly.
    Stopped,
    /// The client fell so far behind that the node would have given up on the connection: it
    /// was let go, to be opened again from the next block once the client catches up.
    Paused,
    Failed(E),
}

async fn read_in_order<B: Blocks, R: Runtime>(
    blocks: Rc<B>,
    tx: mpsc::Sender<Block<B::Error>>,
    mut free: mpsc::Receiver<Vec<u8>>,
    block_size: usize,
) {
    let mut held: Option<Vec<u8>> = None;
    for chunk in 0..blocks.n_chunks() {
        let mut errors = Vec::new();
        // Blocks of this chunk already handed on.
        let mut n_sent = 0usize;
        let mut copy = 0usize;
        loop {
            if copy >= blocks.n_copies(chunk) {
                let _ = tx.send(Err((chunk, errors))).await;
                return;
            }
            if held.is_none() && n_sent < blocks.n_blocks(chunk) {
                match free.recv().await {
                    Some(b) => held = Some(b),
                    None => return,
                }
            }
            match stream_copy::<B, R>(&blocks, chunk, copy, &mut n_sent, &mut held, &tx, &mut free, block_size).await {
                Streamed::Done => break,
                Streamed::Stopped => return,
                Streamed::Paused => {}
                Streamed::Failed(e) => {
                    blocks.failed(chunk, copy, &e);
                    errors.push(e);
                    copy += 1;
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn stream_copy<B: Blocks, R: Runtime>(
    blocks: &B,
    chunk: usize,
    copy: usize,
    n_sent: &mut usize,
    held: &mut Option<Vec<u8>>,
    tx: &mpsc::Sender<Block<B::Error>>,
    free: &mut mpsc::Receiver<Vec<u8>>,
    block_size: usize,
) -> Streamed<B::Error> {
    let mut reader = match blocks.open(chunk, copy, *n_sent).await {
        Ok(r) => r,
        Err(e) => return Streamed::Failed(e),
    };
    while let Some(block) = reader.next_block() {
        assert_eq!(block, *n_sent, "a copy is read from the first block not yet handed on");
        let buf = match held.take() {
            Some(b) => b,
            None => match R::timeout(reader.max_unread(), free.recv()).await {
                Some(Some(b)) => b,
                Some(None) => return Streamed::Stopped,
                None => return Streamed::Paused,
            },
        };
        let buf = match reader.read_block(buf).await {
            Ok(b) => b,
            Err(e) => {
                // The buffer went with the failed read: replace it so the pool never shrinks.
                *held = Some(vec![0u8; block_size]);
                return Streamed::Failed(e);
            }
        };
        let len = reader.block_len(block);
        assert!(len <= buf.len(), "block {block} of {len} bytes does not fit a {} byte buffer", buf.len());
        if tx.send(Ok((buf, len))).await.is_err() {
            return Streamed::Stopped;
        }
        *n_sent = block + 1;
    }
    match reader.finish().await {
        Ok(()) => Streamed::Done,
        Err(e) => Streamed::Failed(e),
    }
}
