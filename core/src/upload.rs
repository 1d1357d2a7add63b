//! An upload's bookkeeping: per chunk, the copies acknowledged durable (the node, the ID it
//! proved on the connection that wrote the copy, the block crc32s it acknowledged) and the
//! copies that failed; what the upload needs next (a copy made from a verified one where a
//! node failed part-way, a failure, or the commit); and, after the commit, which copies sit on
//! nodes that have been replaced since they wrote them.
//!
//! The engine's `put.rs` streams the bytes and makes the copies; this decides. `dfs-sim` runs
//! the same decisions over simulated nodes.

/// One acknowledged copy of a chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acked<N, I> {
    pub node: N,
    /// The ID the node proved on the connection that wrote the copy.
    pub id: I,
    pub block_crcs: Vec<u32>,
}

#[derive(Debug)]
struct Chunk<N, I, E> {
    copies: Vec<Acked<N, I>>,
    errors: Vec<(N, E)>,
}

/// What an upload needs next, once every chunk's bytes have been sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Next<N> {
    /// Every chunk has its R copies: commit the record.
    Commit,
    /// Chunk `chunk` has copies, but fewer than R: copy it from `source` (a node holding an
    /// acknowledged copy) to `need` more nodes, none of `exclude` (they hold a copy, or failed
    /// this chunk).
    Complete { chunk: usize, source: N, need: usize, exclude: Vec<N> },
    /// Chunk `chunk` has no copy left: the upload fails.
    Lost { chunk: usize },
}

/// The copies of an upload in progress.
#[derive(Debug)]
pub struct Upload<N, I, E> {
    replicas: usize,
    chunks: Vec<Chunk<N, I, E>>,
}

impl<N: Copy + PartialEq + std::fmt::Debug, I: Copy + PartialEq, E> Upload<N, I, E> {
    pub fn new(n_chunks: usize, replicas: usize) -> Self {
        assert!(replicas >= 1, "at least one copy of each chunk");
        Upload { replicas, chunks: (0..n_chunks).map(|_| Chunk { copies: Vec::new(), errors: Vec::new() }).collect() }
    }

    pub fn replicas(&self) -> usize {
        self.replicas
    }

    pub fn n_chunks(&self) -> usize {
        self.chunks.len()
    }

    /// `node` acknowledged its copy of `chunk` as durable.
    pub fn acked(&mut self, chunk: usize, node: N, id: I, block_crcs: Vec<u32>) {
        let c = &mut self.chunks[chunk];
        assert!(!c.copies.iter().any(|k| k.node == node), "chunk {chunk}: a second copy on node {node:?}");
        assert!(c.copies.len() < self.replicas, "chunk {chunk}: more than {} copies", self.replicas);
        c.copies.push(Acked { node, id, block_crcs });
    }

    /// `node`'s copy of `chunk` failed with `e`.
    pub fn failed(&mut self, chunk: usize, node: N, e: E) {
        assert!(chunk < self.chunks.len(), "chunk {chunk} of an upload of {}", self.chunks.len());
        assert!(
            !self.chunks[chunk].copies.iter().any(|k| k.node == node),
            "a copy acknowledged on {node:?} cannot also fail"
        );
        self.chunks[chunk].errors.push((node, e));
    }

    pub fn copies(&self, chunk: usize) -> &[Acked<N, I>] {
        &self.chunks[chunk].copies
    }

    pub fn errors(&self, chunk: usize) -> &[(N, E)] {
        &self.chunks[chunk].errors
    }

    /// Chunk `chunk`'s errors, taken out (for the report of a failed upload).
    pub fn take_errors(&mut self, chunk: usize) -> Vec<(N, E)> {
        std::mem::take(&mut self.chunks[chunk].errors)
    }

    /// The first chunk short of copies and what it needs, or the commit.
    pub fn next(&self) -> Next<N> {
        for (chunk, c) in self.chunks.iter().enumerate() {
            if c.copies.len() >= self.replicas {
                continue;
            }
            let Some(source) = c.copies.first() else { return Next::Lost { chunk } };
            let exclude: Vec<N> = c.copies.iter().map(|k| k.node).chain(c.errors.iter().map(|(n, _)| *n)).collect();
            assert!(exclude.contains(&source.node), "the source holds a copy: no new copy goes there");
            return Next::Complete { chunk, source: source.node, need: self.replicas - c.copies.len(), exclude };
        }
        Next::Commit
    }

    /// Every copy acknowledged, as (chunk, node): what to delete if the upload is abandoned.
    pub fn written(&self) -> Vec<(usize, N)> {
        self.chunks.iter().enumerate().flat_map(|(i, c)| c.copies.iter().map(move |k| (i, k.node))).collect()
    }

    /// After the commit: the chunks with a copy on a node that answers with another ID than the
    /// one that wrote the copy (`current`), whose data directory was replaced meanwhile. Their
    /// copy is gone though acknowledged: they go to the repair queue.
    pub fn replaced_since_written(&self, current: impl Fn(N) -> Option<I>) -> Vec<usize> {
        assert!(matches!(self.next(), Next::Commit), "asked of an upload that cannot commit");
        self.chunks
            .iter()
            .enumerate()
            .filter(|(_, c)| c.copies.iter().any(|k| current(k.node).is_some_and(|now| now != k.id)))
            .map(|(i, _)| i)
            .collect()
    }
}

/// Opening the STOREs of one chunk: the engine implements it over its node connections
/// (`engine/src/put.rs`), `dfs-sim` over its simulated nodes; [`open_copies`] is the procedure
/// both run.
#[allow(async_fn_in_trait)]
pub trait OpenIo {
    type Node: Copy + PartialEq + std::fmt::Debug;
    type Error;
    /// A STORE in progress on one node (its bytes follow on the caller's path).
    type Open;

    /// Opens a STORE of the chunk on `node`. Err: the node cannot take it (unreachable, refused
    /// the connection or the request).
    async fn open(&self, node: Self::Node) -> Result<Self::Open, Self::Error>;
}

/// Copying a chunk of an upload from a node holding an acknowledged copy to another, verified
/// on the way: the engine implements it over its node connections, `dfs-sim` over its simulated
/// nodes; [`complete`] is the procedure both run.
#[allow(async_fn_in_trait)]
pub trait CopyIo {
    type Node: Copy + PartialEq + std::fmt::Debug;
    /// What a node proves on the connection that wrote a copy (its ID).
    type Id: Copy + PartialEq;
    type Error;

    /// Every node of the cluster, those believed up first.
    fn nodes_up_first(&self) -> Vec<Self::Node>;
    /// A copy of `chunk` is about to be written on `node`.
    fn will_write(&self, chunk: usize, node: Self::Node);
    /// Copies `chunk` from `source` to `dest`, every block checked against `block_crcs` (the
    /// source's acknowledged ones); the destination's ID once the new copy is durable.
    async fn copy(
        &self,
        chunk: usize,
        source: Self::Node,
        dest: Self::Node,
        block_crcs: &[u32],
    ) -> Result<Self::Id, Self::Error>;
}

/// Fewer nodes took a chunk's STOREs than it needs copies.
#[derive(Debug)]
pub struct Refused<N, E> {
    pub accepted: usize,
    pub candidates: usize,
    pub refusals: Vec<(N, E)>,
}

/// Opens `replicas` STOREs of one chunk on the first of `candidates` (its placement order,
/// those believed up first) that take one, skipping those that cannot.
pub async fn open_copies<O: OpenIo>(
    io: &O,
    candidates: &[O::Node],
    replicas: usize,
) -> Result<Vec<(O::Node, O::Open)>, Refused<O::Node, O::Error>> {
    assert!(replicas >= 1, "at least one copy of each chunk");
    let mut open = Vec::with_capacity(replicas);
    let mut refusals = Vec::new();
    for &node in candidates {
        if open.len() == replicas {
            break;
        }
        assert!(!open.iter().any(|(n, _)| *n == node), "node {node:?} is a candidate twice");
        match io.open(node).await {
            Ok(o) => open.push((node, o)),
            Err(e) => refusals.push((node, e)),
        }
    }
    if open.len() < replicas {
        return Err(Refused { accepted: open.len(), candidates: candidates.len(), refusals });
    }
    Ok(open)
}

/// Why an upload cannot be committed after its bytes were sent: chunk `chunk` has `copies` of
/// the copies it needs (0: every copy failed while it was written); its errors are in the upload.
#[derive(Debug, PartialEq, Eq)]
pub struct Incomplete {
    pub chunk: usize,
    pub copies: usize,
}

/// Completes every chunk a node failed part-way: copies it from an acknowledged copy to other
/// nodes, as [`Upload::next`] says, until every chunk has its copies (Ok: commit) or one cannot
/// have them.
pub async fn complete<C: CopyIo>(io: &C, upload: &mut Upload<C::Node, C::Id, C::Error>) -> Result<(), Incomplete> {
    let replicas = upload.replicas();
    assert!(upload.written().len() <= replicas * upload.n_chunks(), "no chunk has more copies than it needs");
    loop {
        let (chunk, source, exclude) = match upload.next() {
            Next::Commit => return Ok(()),
            Next::Lost { chunk } => return Err(Incomplete { chunk, copies: 0 }),
            Next::Complete { chunk, source, exclude, .. } => (chunk, source, exclude),
        };
        let block_crcs = upload.copies(chunk)[0].block_crcs.clone();
        for dest in io.nodes_up_first() {
            if upload.copies(chunk).len() >= replicas {
                break;
            }
            if exclude.contains(&dest) {
                continue;
            }
            io.will_write(chunk, dest);
            match io.copy(chunk, source, dest, &block_crcs).await {
                Ok(id) => upload.acked(chunk, dest, id, block_crcs.clone()),
                Err(e) => upload.failed(chunk, dest, e),
            }
        }
        let copies = upload.copies(chunk).len();
        if copies < replicas {
            return Err(Incomplete { chunk, copies });
        }
        assert_eq!(copies, replicas, "chunk {chunk} completed with exactly its copies");
    }
}

/// An upload as the engine runs it, for [`put`]: the bytes from their source (a client
/// connection, a request body) to each chunk's nodes, the acknowledgements awaited while later
/// chunks stream, the copies completed where a node failed, then the commit. The engine
/// implements it over its client and node connections and its metadata (`engine/src/put.rs`),
/// `dfs-sim` over simulated ones.
#[allow(async_fn_in_trait)]
pub trait PutIo: CopyIo {
    /// A STORE opened on a node, its bytes still to send.
    type Open;
    /// A STORE whose bytes are sent and whose acknowledgement is awaited (by a task of its own,
    /// so that later chunks stream meanwhile).
    type Pending;
    /// Why the source of the bytes stopped (the client went away, the body broke or is not
    /// what its client said).
    type Stopped;
    /// Why the commit failed.
    type CommitError;

    /// Chunk `chunk`'s candidate nodes: its placement order, those believed up first.
    fn candidates(&self, chunk: usize) -> Vec<Self::Node>;
    /// Before chunk `chunk`'s STOREs open: reads from the source what the requests carry (a
    /// small chunk's bytes, a buffered chunk's crc32).
    async fn prepare(&mut self, chunk: usize) -> Result<(), Self::Stopped>;
    /// Opens a STORE of `chunk` on `node`. Err: the node cannot take it.
    async fn open(&self, chunk: usize, node: Self::Node) -> Result<Self::Open, Self::Error>;
    /// Sends `chunk`'s bytes from the source into every STORE in `open`. A STORE whose node
    /// fails is marked so, and the others go on. With none open (the upload has failed), the
    /// chunk is still read from the source, so that its client can be answered.
    async fn send(&mut self, chunk: usize, open: &mut [Self::Open]) -> Result<(), Self::Stopped>;
    /// Starts the wait for `node`'s acknowledgement of its copy of `chunk`. Err: that STORE
    /// already failed while its bytes were sent.
    fn await_ack(&self, chunk: usize, node: Self::Node, open: Self::Open) -> Result<Self::Pending, Self::Error>;
    /// The acknowledgement: the ID the node proved on the connection and the copy's block
    /// crc32s, or why the copy failed.
    async fn acked(&self, pending: Self::Pending) -> Result<(Self::Id, Vec<u32>), Self::Error>;
    /// After the last chunk: whether the source is whole and what its client said it is.
    async fn finish(&mut self) -> Result<(), Self::Stopped>;
    /// The upload will not be committed: the copies it wrote go.
    fn abandon(&self, upload: &Upload<Self::Node, Self::Id, Self::Error>);
    /// Records the file, every chunk with its copies. Err: not recorded (the implementation
    /// settles what happens to the copies).
    async fn commit(&mut self, upload: &Upload<Self::Node, Self::Id, Self::Error>) -> Result<(), Self::CommitError>;
    /// The ID the node `node` answers with now, if it has answered.
    fn id_of(&self, node: Self::Node) -> Option<Self::Id>;
    /// After the commit: a copy of `chunk` sits on a node replaced since it wrote it, so the
    /// chunk is short of a copy though acknowledged; it goes to the repair queue.
    fn note_replaced(&self, chunk: usize);
}

/// Why [`put`] recorded nothing.
#[derive(Debug)]
pub enum PutFailed<S, N, E, C> {
    /// The source of the bytes stopped.
    Stopped(S),
    /// Fewer nodes took chunk `chunk`'s STOREs than it needs copies.
    Refused { chunk: usize, refused: Refused<N, E> },
    /// After its bytes were sent, chunk `chunk` has `copies` of the copies it needs (0: every
    /// copy failed while it was written), and no other node took one; what failed.
    Incomplete { chunk: usize, copies: usize, errors: Vec<(N, E)> },
    /// The commit failed.
    Commit(C),
}

/// One PUT: for each chunk in order, the STOREs opened on the first `replicas` candidates that
/// take them ([`open_copies`]), its bytes sent, and its acknowledgements awaited with at most
/// `max_inflight_chunks` chunks' acknowledgements outstanding; then every chunk a node failed
/// part-way completed from an acknowledged copy ([`complete`]), and the record committed only
/// when every chunk has `replicas` durable copies. A failed upload's copies are abandoned; a
/// chunk whose node was replaced after it acknowledged goes to the repair queue.
pub async fn put<P: PutIo>(
    io: &mut P,
    n_chunks: usize,
    replicas: usize,
    max_inflight_chunks: usize,
) -> Result<(), PutFailed<P::Stopped, P::Node, P::Error, P::CommitError>> {
    assert!(max_inflight_chunks >= 1, "at least one chunk's acknowledgements in flight");
    let mut upload: Upload<P::Node, P::Id, P::Error> = Upload::new(n_chunks, replicas);
    let mut inflight: std::collections::VecDeque<(usize, P::Node, P::Pending)> = Default::default();
    // The first chunk too few nodes took, and their answers.
    let mut refused: Option<RefusedAt<P::Node, P::Error>> = None;
    let mut stopped: Option<P::Stopped> = None;
    for chunk in 0..n_chunks {
        if let Err(s) = io.prepare(chunk).await {
            stopped = Some(s);
            break;
        }
        let (mut nodes, mut open) = (Vec::new(), Vec::new());
        if refused.is_none() {
            let candidates = io.candidates(chunk);
            match open_copies(&OpenChunk { io: &*io, chunk }, &candidates, replicas).await {
                Ok(opened) => (nodes, open) = opened.into_iter().unzip(),
                Err(r) => refused = Some((chunk, r)),
            }
        }
        if let Err(s) = io.send(chunk, &mut open).await {
            stopped = Some(s);
            break;
        }
        assert_eq!(nodes.len(), open.len(), "send keeps every STORE it was given");
        for (node, o) in nodes.into_iter().zip(open) {
            match io.await_ack(chunk, node, o) {
                Ok(pending) => inflight.push_back((chunk, node, pending)),
                Err(e) => upload.failed(chunk, node, e),
            }
        }
        while inflight.len() >= max_inflight_chunks * replicas {
            settle_ack(&*io, &mut upload, inflight.pop_front()).await;
        }
    }
    while let Some(pending) = inflight.pop_front() {
        settle_ack(&*io, &mut upload, Some(pending)).await;
    }
    if stopped.is_none() {
        stopped = io.finish().await.err();
    }
    let failed = match (stopped, refused) {
        (Some(s), _) => Some(PutFailed::Stopped(s)),
        (None, Some((chunk, refused))) => Some(PutFailed::Refused { chunk, refused }),
        (None, None) => match complete(&*io, &mut upload).await {
            Ok(()) => None,
            Err(Incomplete { chunk, copies }) => {
                Some(PutFailed::Incomplete { chunk, copies, errors: upload.take_errors(chunk) })
            }
        },
    };
    if let Some(failed) = failed {
        io.abandon(&upload);
        return Err(failed);
    }
    assert_eq!(upload.next(), Next::Commit, "an upload is committed only with every copy");
    io.commit(&upload).await.map_err(PutFailed::Commit)?;
    for chunk in upload.replaced_since_written(|n| io.id_of(n)) {
        io.note_replaced(chunk);
    }
    Ok(())
}

/// A chunk that fewer nodes took than it needs copies, and their answers.
type RefusedAt<N, E> = (usize, Refused<N, E>);

/// [`OpenIo`] for one chunk of a [`PutIo`].
struct OpenChunk<'a, P> {
    io: &'a P,
    chunk: usize,
}

impl<P: PutIo> OpenIo for OpenChunk<'_, P> {
    type Node = P::Node;
    type Error = P::Error;
    type Open = P::Open;

    async fn open(&self, node: P::Node) -> Result<P::Open, P::Error> {
        self.io.open(self.chunk, node).await
    }
}

/// Records the outcome of one awaited acknowledgement.
async fn settle_ack<P: PutIo>(
    io: &P,
    upload: &mut Upload<P::Node, P::Id, P::Error>,
    pending: Option<(usize, P::Node, P::Pending)>,
) {
    let Some((chunk, node, pending)) = pending else { return };
    match io.acked(pending).await {
        Ok((id, block_crcs)) => upload.acked(chunk, node, id, block_crcs),
        Err(e) => upload.failed(chunk, node, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upload() -> Upload<u8, u32, &'static str> {
        Upload::new(3, 2)
    }

    #[test]
    fn an_upload_commits_once_every_chunk_has_its_copies() {
        let mut u = upload();
        for chunk in 0..3 {
            assert_ne!(u.next(), Next::Commit);
            u.acked(chunk, 1, 10, vec![7]);
            u.acked(chunk, 2, 20, vec![7]);
        }
        assert_eq!(u.next(), Next::Commit);
        assert_eq!(u.written().len(), 6);
    }

    #[test]
    fn a_chunk_a_node_failed_is_completed_from_a_copy_elsewhere() {
        let mut u = upload();
        for chunk in 0..3 {
            u.acked(chunk, 1, 10, vec![7]);
        }
        u.acked(0, 2, 20, vec![7]);
        u.acked(2, 2, 20, vec![7]);
        u.failed(1, 2, "reset");
        assert_eq!(u.next(), Next::Complete { chunk: 1, source: 1, need: 1, exclude: vec![1, 2] });
        u.acked(1, 3, 30, vec![7]);
        assert_eq!(u.next(), Next::Commit);
    }

    #[test]
    fn a_chunk_with_no_copy_fails_the_upload() {
        let mut u = upload();
        u.failed(0, 1, "full");
        u.failed(0, 2, "down");
        assert_eq!(u.next(), Next::Lost { chunk: 0 });
        assert_eq!(u.errors(0).len(), 2);
    }

    #[test]
    fn copies_on_nodes_replaced_since_they_wrote_are_found_after_the_commit() {
        let mut u = upload();
        for chunk in 0..3 {
            u.acked(chunk, 1, 10, vec![7]);
            u.acked(chunk, 2 + chunk as u8, 20, vec![7]);
        }
        // Node 3 answers with another ID now; node 4 has not answered since.
        let now = |n: u8| match n {
            1 => Some(10),
            2 => Some(20),
            3 => Some(99),
            _ => None,
        };
        assert_eq!(u.replaced_since_written(now), vec![1]);
    }

    #[test]
    #[should_panic(expected = "a second copy on node")]
    fn two_copies_of_a_chunk_on_one_node_are_refused() {
        let mut u = upload();
        u.acked(0, 1, 10, vec![7]);
        u.acked(0, 1, 10, vec![7]);
    }

    /// Nodes 0..6: `refuse` cannot take a STORE, `broken` fails every copy made to it.
    struct Fake {
        refuse: Vec<u8>,
        broken: Vec<u8>,
        writes: std::cell::RefCell<Vec<(usize, u8)>>,
    }

    impl OpenIo for Fake {
        type Node = u8;
        type Error = &'static str;
        type Open = ();
        async fn open(&self, node: u8) -> Result<(), &'static str> {
            if self.refuse.contains(&node) {
                Err("refused")
            } else {
                Ok(())
            }
        }
    }

    impl CopyIo for Fake {
        type Node = u8;
        type Id = u32;
        type Error = &'static str;
        fn nodes_up_first(&self) -> Vec<u8> {
            (0..6).collect()
        }
        fn will_write(&self, chunk: usize, node: u8) {
            self.writes.borrow_mut().push((chunk, node));
        }
        async fn copy(&self, _chunk: usize, _source: u8, dest: u8, _crcs: &[u32]) -> Result<u32, &'static str> {
            if self.broken.contains(&dest) {
                Err("broken")
            } else {
                Ok(dest as u32 * 10)
            }
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().expect("a test runtime").block_on(f)
    }

    #[test]
    fn a_chunk_s_copies_go_to_the_first_nodes_that_take_them() {
        let fake = Fake { refuse: vec![1, 3], broken: vec![], writes: Default::default() };
        let open = block_on(open_copies(&fake, &[1, 2, 3, 4, 5], 2)).expect("two nodes take it");
        assert_eq!(open.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [2, 4], "refusing nodes are skipped, in order");
        let refused = block_on(open_copies(&fake, &[1, 2, 3], 2)).expect_err("one node takes it");
        assert_eq!((refused.accepted, refused.candidates, refused.refusals.len()), (1, 3, 2));
    }

    #[test]
    fn copies_a_node_failed_are_made_elsewhere_or_the_chunk_is_named() {
        let fake = Fake { refuse: vec![], broken: vec![2], writes: Default::default() };
        let mut u: Upload<u8, u32, &'static str> = Upload::new(2, 2);
        u.acked(0, 0, 0, vec![7]);
        u.acked(0, 1, 10, vec![7]);
        u.acked(1, 1, 10, vec![7]);
        u.failed(1, 0, "reset");
        block_on(complete(&fake, &mut u)).expect("chunk 1 completed");
        // Node 0 failed chunk 1 and node 1 holds it: node 2 is tried (and breaks), then node 3.
        assert_eq!(u.copies(1).iter().map(|k| k.node).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(*fake.writes.borrow(), [(1, 2), (1, 3)]);
        let fake = Fake { refuse: vec![], broken: vec![2, 3, 4, 5], writes: Default::default() };
        let mut u: Upload<u8, u32, &'static str> = Upload::new(1, 2);
        u.acked(0, 1, 10, vec![7]);
        u.failed(0, 0, "reset");
        assert_eq!(block_on(complete(&fake, &mut u)), Err(Incomplete { chunk: 0, copies: 1 }));
    }

    /// A [`PutIo`] over nodes 0..6 that logs every call: `refuse` cannot take a STORE, `cut`
    /// fails the STOREs it is sent (`(chunk, node)`), `stop_at` is the chunk whose read fails,
    /// `replaced` answers with another ID after the upload.
    #[derive(Default)]
    struct FakePut {
        refuse: Vec<u8>,
        cut: Vec<(usize, u8)>,
        stop_at: Option<usize>,
        replaced: Vec<u8>,
        log: std::cell::RefCell<Vec<String>>,
        noted: std::cell::RefCell<Vec<usize>>,
        committed: Option<Vec<Vec<u8>>>,
    }

    impl FakePut {
        fn log(&self, line: String) {
            self.log.borrow_mut().push(line);
        }
        fn logged(&self) -> Vec<String> {
            self.log.borrow().clone()
        }
    }

    impl CopyIo for FakePut {
        type Node = u8;
        type Id = u32;
        type Error = &'static str;
        fn nodes_up_first(&self) -> Vec<u8> {
            (0..6).collect()
        }
        fn will_write(&self, chunk: usize, node: u8) {
            self.log(format!("copy {chunk} to {node}"));
        }
        async fn copy(&self, _chunk: usize, _source: u8, dest: u8, _crcs: &[u32]) -> Result<u32, &'static str> {
            Ok(dest as u32)
        }
    }

    impl PutIo for FakePut {
        type Open = u8;
        type Pending = (u8, bool);
        type Stopped = usize;
        type CommitError = ();
        fn candidates(&self, chunk: usize) -> Vec<u8> {
            (0..6).map(|k| ((chunk + k) % 6) as u8).collect()
        }
        async fn prepare(&mut self, chunk: usize) -> Result<(), usize> {
            self.log(format!("prepare {chunk}"));
            if self.stop_at == Some(chunk) {
                return Err(chunk);
            }
            Ok(())
        }
        async fn open(&self, _chunk: usize, node: u8) -> Result<u8, &'static str> {
            if self.refuse.contains(&node) {
                return Err("refused");
            }
            Ok(node)
        }
        async fn send(&mut self, chunk: usize, open: &mut [u8]) -> Result<(), usize> {
            self.log(format!("send {chunk} to {open:?}"));
            Ok(())
        }
        fn await_ack(&self, chunk: usize, node: u8, open: u8) -> Result<(u8, bool), &'static str> {
            assert_eq!(node, open);
            Ok((node, !self.cut.contains(&(chunk, node))))
        }
        async fn acked(&self, (node, ok): (u8, bool)) -> Result<(u32, Vec<u32>), &'static str> {
            self.log(format!("ack from {node}"));
            if ok {
                Ok((node as u32, vec![7]))
            } else {
                Err("reset")
            }
        }
        async fn finish(&mut self) -> Result<(), usize> {
            self.log("finish".into());
            Ok(())
        }
        fn abandon(&self, upload: &Upload<u8, u32, &'static str>) {
            self.log(format!("abandon {:?}", upload.written()));
        }
        async fn commit(&mut self, upload: &Upload<u8, u32, &'static str>) -> Result<(), ()> {
            let placements = (0..upload.n_chunks()).map(|c| upload.copies(c).iter().map(|k| k.node).collect());
            self.committed = Some(placements.collect());
            Ok(())
        }
        fn id_of(&self, node: u8) -> Option<u32> {
            Some(if self.replaced.contains(&node) { 99 } else { node as u32 })
        }
        fn note_replaced(&self, chunk: usize) {
            self.noted.borrow_mut().push(chunk);
        }
    }

    #[test]
    fn a_put_commits_every_chunk_on_the_first_nodes_that_take_it_and_notes_replaced_nodes() {
        let mut io = FakePut { refuse: vec![1], replaced: vec![3], ..Default::default() };
        block_on(put(&mut io, 3, 2, 8)).expect("committed");
        // Chunk 0 tries 0, 1 (refuses), 2; chunk 1 tries 1 (refuses), 2, 3; chunk 2 tries 2, 3.
        assert_eq!(io.committed, Some(vec![vec![0, 2], vec![2, 3], vec![2, 3]]));
        assert_eq!(*io.noted.borrow(), [1, 2], "the chunks with a copy on node 3, replaced since");
        assert!(!io.logged().iter().any(|l| l.starts_with("abandon")));
    }

    #[test]
    fn acknowledgements_stay_in_flight_up_to_the_window_while_later_chunks_stream() {
        let mut io = FakePut::default();
        block_on(put(&mut io, 3, 1, 2)).expect("committed");
        let log = io.logged();
        let at = |line: &str| log.iter().position(|l| l == line).unwrap_or_else(|| panic!("{line} in {log:?}"));
        // Two chunks' acknowledgements may be outstanding: chunk 0's is awaited once chunk 1 is
        // sent, before chunk 2 is read.
        assert!(at("send 1 to [1]") < at("ack from 0") && at("ack from 0") < at("prepare 2"), "{log:?}");
        assert!(at("ack from 2") < at("finish"), "{log:?}");
    }

    #[test]
    fn a_refused_chunk_fails_the_upload_but_its_source_is_read_to_the_end() {
        // Only node 0 takes STOREs.
        let mut io = FakePut { refuse: vec![1, 2, 3, 4, 5], ..Default::default() };
        let failed = block_on(put(&mut io, 3, 2, 8)).expect_err("one node takes STOREs, two are needed");
        match failed {
            PutFailed::Refused { chunk: 0, refused } => assert_eq!((refused.accepted, refused.refusals.len()), (1, 5)),
            other => panic!("{other:?}"),
        }
        let log = io.logged();
        assert!(log.contains(&"send 2 to []".to_string()), "the rest is still read: {log:?}");
        assert!(log.contains(&"finish".to_string()), "{log:?}");
        assert_eq!(log.last().map(String::as_str), Some("abandon []"));
        assert_eq!(io.committed, None);
    }

    #[test]
    fn a_copy_cut_while_sent_is_made_again_elsewhere_before_the_commit() {
        let mut io = FakePut { cut: vec![(1, 2)], ..Default::default() };
        block_on(put(&mut io, 2, 2, 8)).expect("committed");
        // Chunk 1 went to 1 and 2; 2 failed, so it is copied to the first node not tried: 0.
        assert_eq!(io.committed, Some(vec![vec![0, 1], vec![1, 0]]));
        assert!(io.logged().contains(&"copy 1 to 0".to_string()));
        let mut io = FakePut { cut: vec![(0, 0), (0, 1)], ..Default::default() };
        match block_on(put(&mut io, 1, 2, 8)) {
            Err(PutFailed::Incomplete { chunk: 0, copies: 0, errors }) => {
                assert_eq!(errors, [(0, "reset"), (1, "reset")])
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(io.committed, None);
    }

    #[test]
    fn a_source_that_stops_ends_the_upload_after_the_acknowledgements_in_flight() {
        let mut io = FakePut { stop_at: Some(2), ..Default::default() };
        assert!(matches!(block_on(put(&mut io, 4, 2, 8)), Err(PutFailed::Stopped(2))));
        let log = io.logged();
        assert!(!log.iter().any(|l| l == "finish" || l.starts_with("send 2")), "{log:?}");
        // The copies of chunks 0 and 1 were acknowledged before the upload was abandoned, so
        // they are deleted.
        assert_eq!(log.last().map(String::as_str), Some("abandon [(0, 0), (0, 1), (1, 1), (1, 2)]"));
        assert_eq!(io.committed, None);
    }
}
