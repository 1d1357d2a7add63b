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

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Tasks on the test's local set, timeouts on tokio's (paused) clock.
    struct Local;

    struct Task(tokio::task::JoinHandle<()>);

    impl Future for Task {
        type Output = ();
        fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
            std::pin::Pin::new(&mut self.0).poll(cx).map(drop)
        }
    }

    impl Runtime for Local {
        type Handle = Task;
        fn spawn(task: impl Future<Output = ()> + 'static) -> Task {
            Task(tokio::task::spawn_local(task))
        }
        fn abort(handle: &Task) {
            handle.0.abort();
        }
        async fn timeout<F: Future>(d: Duration, future: F) -> Option<F::Output> {
            tokio::time::timeout(d, future).await.ok()
        }
    }

    const BLOCK: usize = 4;

    /// Chunks of blocks, each copy the same bytes; a copy may fail at a block (read error) and
    /// every open is logged.
    struct Copies {
        chunks: Vec<Vec<u8>>,
        n_copies: usize,
        /// (chunk, copy) → the block whose read fails.
        fail_at: Vec<((usize, usize), usize)>,
        opens: RefCell<Vec<(usize, usize, usize)>>,
        failed: RefCell<Vec<(usize, usize)>>,
    }

    impl Copies {
        fn new(chunks: Vec<Vec<u8>>, n_copies: usize) -> Copies {
            Copies { chunks, n_copies, fail_at: Vec::new(), opens: RefCell::default(), failed: RefCell::default() }
        }
    }

    struct Reader {
        bytes: Vec<u8>,
        next: usize,
        fail_at: Option<usize>,
    }

    impl Blocks for Copies {
        type Reader = Reader;
        type Error = String;
        fn n_chunks(&self) -> usize {
            self.chunks.len()
        }
        fn n_copies(&self, _chunk: usize) -> usize {
            self.n_copies
        }
        fn n_blocks(&self, chunk: usize) -> usize {
            self.chunks[chunk].len().div_ceil(BLOCK)
        }
        async fn open(&self, chunk: usize, copy: usize, first_block: usize) -> Result<Reader, String> {
            self.opens.borrow_mut().push((chunk, copy, first_block));
            let fail_at = self.fail_at.iter().find(|(k, _)| *k == (chunk, copy)).map(|(_, b)| *b);
            Ok(Reader { bytes: self.chunks[chunk].clone(), next: first_block, fail_at })
        }
        fn failed(&self, chunk: usize, copy: usize, _e: &String) {
            self.failed.borrow_mut().push((chunk, copy));
        }
    }

    impl BlockReader for Reader {
        type Error = String;
        fn next_block(&self) -> Option<usize> {
            (self.next * BLOCK < self.bytes.len()).then_some(self.next)
        }
        fn block_len(&self, block: usize) -> usize {
            (self.bytes.len() - block * BLOCK).min(BLOCK)
        }
        fn max_unread(&self) -> Duration {
            Duration::from_secs(10)
        }
        async fn read_block(&mut self, mut buf: Vec<u8>) -> Result<Vec<u8>, String> {
            if self.fail_at == Some(self.next) {
                return Err(format!("block {} unreadable", self.next));
            }
            let len = self.block_len(self.next);
            buf[..len].copy_from_slice(&self.bytes[self.next * BLOCK..self.next * BLOCK + len]);
            self.next += 1;
            Ok(buf)
        }
        async fn finish(self) -> Result<(), String> {
            Ok(())
        }
    }

    /// A client that keeps what it is sent, fails after `fail_after` sends, and takes `delay`
    /// over each.
    #[derive(Default)]
    struct Client {
        got: RefCell<Vec<u8>>,
        fail_after: Option<usize>,
        delay: Duration,
        n_sent: RefCell<usize>,
    }

    impl Sink for Client {
        type Error = &'static str;
        async fn send(&self, buf: Vec<u8>, len: usize) -> Result<Vec<u8>, &'static str> {
            tokio::time::sleep(self.delay).await;
            if self.fail_after.is_some_and(|n| *self.n_sent.borrow() >= n) {
                return Err("client gone");
            }
            *self.n_sent.borrow_mut() += 1;
            self.got.borrow_mut().extend_from_slice(&buf[..len]);
            Ok(buf)
        }
    }

    fn bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    async fn run(copies: Copies, client: &Client, read_ahead: usize) -> (Ended<String, &'static str>, Rc<Copies>) {
        let copies = Rc::new(copies);
        let local = tokio::task::LocalSet::new();
        let ended = local.run_until(stream::<Copies, Client, Local>(copies.clone(), client, BLOCK, read_ahead)).await;
        (ended, copies)
    }

    #[tokio::test(start_paused = true)]
    async fn every_block_reaches_the_client_in_order() {
        let chunks = vec![bytes(10, 1), bytes(0, 2), bytes(8, 3), bytes(1, 4)];
        let want: Vec<u8> = chunks.concat();
        let client = Client::default();
        let (ended, copies) = run(Copies::new(chunks, 2), &client, 2).await;
        assert!(matches!(ended, Ended::Done), "{ended:?}");
        assert_eq!(*client.got.borrow(), want);
        assert!(copies.failed.borrow().is_empty());
        assert!(copies.opens.borrow().iter().all(|&(_, copy, first)| copy == 0 && first == 0), "one open per chunk");
    }

    #[tokio::test(start_paused = true)]
    async fn a_copy_that_fails_mid_chunk_is_left_for_the_next_at_the_block_that_failed() {
        let chunks = vec![bytes(12, 1), bytes(16, 2)];
        let want: Vec<u8> = chunks.concat();
        let mut copies = Copies::new(chunks, 3);
        copies.fail_at = vec![((1, 0), 2), ((1, 1), 3)];
        let client = Client::default();
        let (ended, copies) = run(copies, &client, 3).await;
        assert!(matches!(ended, Ended::Done), "{ended:?}");
        assert_eq!(*client.got.borrow(), want, "no block lost or repeated across the failovers");
        assert_eq!(*copies.failed.borrow(), [(1, 0), (1, 1)]);
        assert_eq!(copies.opens.borrow()[1..], [(1, 0, 0), (1, 1, 2), (1, 2, 3)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_chunk_with_no_readable_copy_ends_the_download_with_every_copy_s_error() {
        let chunks = vec![bytes(8, 1), bytes(8, 2), bytes(8, 3)];
        let mut copies = Copies::new(chunks.clone(), 2);
        copies.fail_at = vec![((1, 0), 0), ((1, 1), 1)];
        let client = Client::default();
        let (ended, _) = run(copies, &client, 2).await;
        match ended {
            Ended::Failed { chunk: 1, errors } => assert_eq!(errors.len(), 2, "{errors:?}"),
            other => panic!("{other:?}"),
        }
        let got = client.got.borrow();
        assert!(got.len() <= 12 && got[..] == chunks.concat()[..got.len()], "only bytes before the lost block");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_goes_away_ends_the_download_and_its_reader() {
        let client = Client { fail_after: Some(2), ..Client::default() };
        let (ended, copies) = run(Copies::new(vec![bytes(64, 1), bytes(64, 2)], 2), &client, 2).await;
        assert!(matches!(ended, Ended::SinkFailed("client gone")), "{ended:?}");
        assert_eq!(client.got.borrow().len(), 2 * BLOCK);
        assert!(copies.opens.borrow().len() <= 2, "the reader stopped: {:?}", copies.opens.borrow());
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_slower_than_the_node_waits_is_served_from_a_copy_opened_again() {
        // Each send takes longer than a reader may sit unread: the reader lets the copy go and
        // opens it again from the next block, and every byte still arrives once, in order.
        let chunks = vec![bytes(24, 7)];
        let client = Client { delay: Duration::from_secs(11), ..Client::default() };
        let (ended, copies) = run(Copies::new(chunks.clone(), 1), &client, 1).await;
        assert!(matches!(ended, Ended::Done), "{ended:?}");
        assert_eq!(*client.got.borrow(), chunks[0]);
        let opens = copies.opens.borrow();
        assert!(opens.len() > 1, "the copy was opened again: {opens:?}");
        assert!(opens.windows(2).all(|w| w[0].2 < w[1].2), "each reopening starts further on: {opens:?}");
        assert!(copies.failed.borrow().is_empty(), "letting a node go is not a failure");
    }
}
