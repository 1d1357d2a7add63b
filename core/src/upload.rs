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

    /// The first chunk short of copies and what it needs, or the commit.
    pub fn next(&self) -> Next<N> {
        for (chunk, c) in self.chunks.iter().enumerate() {
            if c.copies.len() >= self.replicas {
                continue;
            }
            let Some(source) = c.copies.first() else { return Next::Lost { chunk } };
            let exclude = c.copies.iter().map(|k| k.node).chain(c.errors.iter().map(|(n, _)| *n)).collect();
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
}
