//! The engine's requests over the simulated cluster: the same decisions as the real engine
//! (`dfs_core`), driven by simulated I/O. Between two steps that the real engine takes on
//! different threads or across an await, this yields, so other requests can run in between.

use crate::exec::{self, yield_now};
use crate::world::{ChunkRec, Deleter, Node, NodeErr, Record, Unrecorded, World, Writing};
use dfs_core::gc::{Ask, Collected, GcIo, Listed};
use dfs_core::placement::{ring, up_first};
use dfs_core::repair::{CopyFailed, Found, Outcome, PassIo, PassStopped, Placed, QueueIo, Reason, RepairIo};
use dfs_core::upload::{CopyIo, PutFailed as Failed, PutIo, Upload};
use dfs_proto::layout::{chunk_spans, crc32, ChunkSpan, Chunking};
use dfs_proto::{ChunkId, FileId};
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::Duration;

fn all_nodes(w: &World) -> Vec<Node> {
    (0..w.config.n_nodes).collect()
}

/// One upload over the simulated cluster: what `dfs_core::upload::put`, the procedure the
/// engine runs, asks for. A STORE is opened as `open_store` opens it (the connection and the
/// handshake); its bytes and its acknowledgement are one simulated call ([`World::store`]),
/// run as a task of its own, as the engine awaits each acknowledgement.
struct SimPut<'a> {
    w: &'a Rc<World>,
    file_id: FileId,
    data: &'a [u8],
    spans: &'a [ChunkSpan],
    crcs: &'a [u32],
    /// Copies that may exist and are not recorded yet, for the invariants.
    unrecorded: RefCell<Unrecorded<'a>>,
    /// Every copy attempted, for the clean-up of a failed upload: a copy may exist though its
    /// reply was lost.
    written: RefCell<Vec<(ChunkId, Node)>>,
}

impl SimPut<'_> {
    fn chunk_id(&self, idx: usize) -> ChunkId {
        ChunkId { file_id: self.file_id, chunk_idx: idx as u32 }
    }

    fn will_write(&self, chunk: ChunkId, node: Node) {
        self.unrecorded.borrow_mut().add(chunk, node);
        self.written.borrow_mut().push((chunk, node));
    }

    fn bytes(&self, idx: usize) -> &[u8] {
        let span = &self.spans[idx];
        &self.data[span.offset as usize..(span.offset + span.length) as usize]
    }
}

/// Copying an upload's chunk node to node in the simulation: FETCH from the source, checked
/// against the chunk's crc32, then STORE on the destination.
impl CopyIo for SimPut<'_> {
    type Node = Node;
    type Id = u64;
    type Error = NodeErr;

    fn nodes_up_first(&self) -> Vec<Node> {
        up_first(&all_nodes(self.w), |n| self.w.is_up(n))
    }

    fn will_write(&self, idx: usize, node: Node) {
        SimPut::will_write(self, self.chunk_id(idx), node);
    }

    async fn copy(&self, idx: usize, source: Node, dest: Node, _block_crcs: &[u32]) -> Result<u64, NodeErr> {
        let chunk = self.chunk_id(idx);
        let bytes = match self.w.fetch(source, chunk).await {
            Ok(b) if crc32(&b) == self.crcs[idx] => b,
            Ok(_) => return Err(NodeErr::Corrupt),
            Err(e) => {
                self.w.note_failure(source, e);
                return Err(e);
            }
        };
        self.w.store(dest, chunk, &bytes, self.crcs[idx]).await.inspect_err(|&e| self.w.note_failure(dest, e))
    }
}

impl PutIo for SimPut<'_> {
    type Open = ();
    type Pending = exec::JoinHandle<(Node, Result<u64, NodeErr>)>;
    type Stopped = std::convert::Infallible;
    type CommitError = std::convert::Infallible;

    fn candidates(&self, idx: usize) -> Vec<Node> {
        up_first(&ring(&all_nodes(self.w), self.file_id, idx as u32), |n| self.w.is_up(n))
    }

    /// The simulated client sends nothing ahead of the STOREs.
    async fn prepare(&mut self, _idx: usize) -> Result<(), Self::Stopped> {
        Ok(())
    }

    async fn open(&self, idx: usize, node: Node) -> Result<(), NodeErr> {
        match self.w.call(node, Duration::ZERO, |_, _| Ok(())).await {
            Ok(()) => {
                self.w.mark(node, true);
                self.will_write(self.chunk_id(idx), node);
                Ok(())
            }
            Err(e) => {
                self.w.note_failure(node, e);
                Err(e)
            }
        }
    }

    /// The bytes go with the acknowledgement's call.
    async fn send(&mut self, _idx: usize, _open: &mut [()]) -> Result<(), Self::Stopped> {
        Ok(())
    }

    fn await_ack(&self, idx: usize, node: Node, (): ()) -> Result<Self::Pending, NodeErr> {
        let (w, chunk, bytes, crc) = (self.w.clone(), self.chunk_id(idx), self.bytes(idx).to_vec(), self.crcs[idx]);
        Ok(exec::spawn(
            format!("store {chunk} on {node}"),
            async move { (node, w.store(node, chunk, &bytes, crc).await) },
        ))
    }

    async fn acked(&self, pending: Self::Pending) -> Result<(u64, Vec<u32>), NodeErr> {
        let (node, stored) = pending.await;
        let identity = stored.inspect_err(|&e| self.w.note_failure(node, e))?;
        Ok((identity, vec![]))
    }

    async fn finish(&mut self) -> Result<(), Self::Stopped> {
        Ok(())
    }

    fn abandon(&self, _upload: &Upload<Node, u64, NodeErr>) {
        let w = self.w.clone();
        let written = std::mem::take(&mut *self.written.borrow_mut());
        exec::spawn("clean up a failed upload", async move {
            for (chunk, n) in written {
                let _ = w.delete(n, chunk, None, Deleter::Owner).await;
            }
        });
    }

    /// The commit goes through the metadata writer (another thread in the engine).
    async fn commit(&mut self, upload: &Upload<Node, u64, NodeErr>) -> Result<(), Self::CommitError> {
        let chunks: Vec<ChunkRec> = self
            .spans
            .iter()
            .enumerate()
            .map(|(idx, span)| ChunkRec {
                offset: span.offset,
                length: span.length,
                crc32: self.crcs[idx],
                placement: upload.copies(idx).iter().map(|k| k.node).collect(),
            })
            .collect();
        yield_now().await;
        let file_id = self.file_id;
        exec::trace(|| {
            format!("put {file_id}: committed {:?}", chunks.iter().map(|c| &c.placement).collect::<Vec<_>>())
        });
        self.w.answering.borrow_mut().insert(file_id);
        self.w.meta.borrow_mut().insert(file_id, Record { size: self.data.len() as u64, chunks });
        Ok(())
    }

    fn id_of(&self, node: Node) -> Option<u64> {
        self.w.heard.borrow()[node].id()
    }

    fn note_replaced(&self, idx: usize) {
        self.w.queue_notes.borrow_mut().insert(self.chunk_id(idx));
    }
}

/// Why a simulated PUT failed (counted, not an invariant broken).
#[derive(Debug, thiserror::Error)]
pub enum PutFailed {
    #[error("{0}")]
    Layout(dfs_proto::layout::LayoutError),
    /// Fewer nodes than R took the chunk's STORE.
    #[error("chunk {chunk}: {accepted} node(s) took its STORE")]
    Refused { chunk: usize, accepted: usize },
    /// A chunk lost copies while it was written and no other node took one.
    #[error("chunk {chunk}: {copies} copies")]
    Incomplete { chunk: usize, copies: usize },
}

/// PUT, as the engine runs it (`dfs_core::upload::put`): each chunk to the first R nodes of its
/// ring that take its STORE, nodes believed up first; the record is committed only when every
/// chunk has R durable copies, and the file ID stays registered as being written until after
/// the commit.
pub async fn put(w: Rc<World>, data: Rc<Vec<u8>>) -> Result<FileId, PutFailed> {
    let mut id = [0u8; 16];
    exec::fill(&mut id);
    let file_id = FileId(id);
    let writing = w.begin_writing(file_id);
    let spans = chunk_spans(data.len() as u64, Chunking::Equal, 0).map_err(PutFailed::Layout)?;
    let crcs: Vec<u32> =
        spans.iter().map(|s| crc32(&data[s.offset as usize..(s.offset + s.length) as usize])).collect();
    let mut io = SimPut {
        w: &w,
        file_id,
        data: &data,
        spans: &spans,
        crcs: &crcs,
        unrecorded: RefCell::new(Unrecorded::new(&w)),
        written: RefCell::new(Vec::new()),
    };
    let put = dfs_core::upload::put(&mut io, spans.len(), w.config.replicas, MAX_INFLIGHT_CHUNKS).await;
    drop(io);
    match put {
        Ok(()) => {
            // The engine's handler ends after the commit: the upload stops being in progress.
            yield_now().await;
            drop(writing);
            Ok(file_id)
        }
        Err(Failed::Refused { chunk, refused }) => Err(PutFailed::Refused { chunk, accepted: refused.accepted }),
        Err(Failed::Incomplete { chunk, copies, .. }) => Err(PutFailed::Incomplete { chunk, copies }),
        Err(Failed::Stopped(never) | Failed::Commit(never)) => match never {},
    }
}

/// As the engine's `put::MAX_INFLIGHT_CHUNKS`.
const MAX_INFLIGHT_CHUNKS: usize = 8;

/// How a GET failed.
#[derive(Debug)]
pub enum GetErr {
    NotFound,
    Chunk(u32, Vec<(Node, NodeErr)>),
}

impl std::fmt::Display for GetErr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GetErr::NotFound => write!(f, "not found"),
            GetErr::Chunk(idx, errors) => write!(f, "chunk {idx} could not be read: {errors:?}"),
        }
    }
}

/// One chunk of a GET read from its copies ([`dfs_core::read::read_chunk`], as the engine's
/// buffered GET reads each chunk): every byte checked against the record before it counts.
struct SimChunkRead<'a> {
    w: &'a Rc<World>,
    chunk: ChunkId,
    c: &'a ChunkRec,
}

impl dfs_core::read::ChunkRead for SimChunkRead<'_> {
    type Node = Node;
    type Got = Vec<u8>;
    type Error = (Node, NodeErr);

    async fn read(&self, n: Node) -> Result<Vec<u8>, (Node, NodeErr)> {
        match self.w.fetch(n, self.chunk).await {
            Ok(bytes) if bytes.len() as u64 == self.c.length && crc32(&bytes) == self.c.crc32 => Ok(bytes),
            Ok(_) => Err((n, NodeErr::Corrupt)),
            Err(e) => Err((n, e)),
        }
    }

    fn served(&self, n: Node, _n_failed: usize) {
        self.w.mark(n, true);
    }

    fn failed(&self, _n: Node, &(n, e): &(Node, NodeErr)) {
        if e != NodeErr::Corrupt {
            self.w.note_failure(n, e);
        }
        self.w.queue_notes.borrow_mut().insert(self.chunk);
    }
}

/// GET: each chunk from its copies, nodes believed up first, every byte checked against the
/// recorded crc32 before it counts.
pub async fn get(w: Rc<World>, file_id: FileId) -> Result<Vec<u8>, GetErr> {
    let record = w.meta.borrow().get(&file_id).cloned().ok_or(GetErr::NotFound)?;
    let mut out = vec![0u8; record.size as usize];
    for (idx, c) in record.chunks.iter().enumerate() {
        let chunk = ChunkId { file_id, chunk_idx: idx as u32 };
        let order = up_first(&c.placement, |n| w.is_up(n));
        let bytes = dfs_core::read::read_chunk(&SimChunkRead { w: &w, chunk, c }, &order)
            .await
            .map_err(|errors| GetErr::Chunk(idx as u32, errors))?;
        out[c.offset as usize..(c.offset + c.length) as usize].copy_from_slice(&bytes);
    }
    Ok(out)
}

/// A delete over the simulated cluster: what `dfs_core::delete::delete_file`, the procedure the
/// engine runs, asks for.
struct SimDelete<'a>(&'a Rc<World>);

impl dfs_core::delete::DeleteIo for SimDelete<'_> {
    type Node = Node;
    type Error = std::convert::Infallible;

    /// The metadata answers after a yield (the engine awaits its writer).
    async fn remove_record(&self, file_id: FileId) -> Result<Option<Vec<(ChunkId, Node)>>, Self::Error> {
        yield_now().await;
        let Some(record) = self.0.meta.borrow_mut().remove(&file_id) else { return Ok(None) };
        let copies = record
            .chunks
            .iter()
            .enumerate()
            .flat_map(|(idx, c)| c.placement.iter().map(move |&n| (ChunkId { file_id, chunk_idx: idx as u32 }, n)));
        Ok(Some(copies.collect()))
    }

    /// In the background, one after the other, as `cluster::delete_later` deletes them.
    fn delete_copies(&self, copies: Vec<(ChunkId, Node)>) {
        let w = self.0.clone();
        exec::spawn("delete a file's copies", async move {
            for (chunk, n) in copies {
                let _ = w.delete(n, chunk, None, Deleter::Owner).await;
            }
        });
    }
}

/// DELETE: the record goes first, then its copies (best effort; gc gets the rest).
pub async fn delete(w: Rc<World>, file_id: FileId) -> bool {
    match dfs_core::delete::delete_file(&SimDelete(&w), file_id).await {
        Ok(deleted) => deleted,
        Err(never) => match never {},
    }
}

/// gc of one node over the simulated cluster: what `dfs_core::gc::collect_node`, the procedure
/// the engine runs, asks for.
struct SimGc<'a> {
    w: &'a Rc<World>,
    grace: Duration,
}

/// gc's claim on one copy, released when dropped.
struct SimClaim<'a>(&'a World, ChunkId, Node);

impl Drop for SimClaim<'_> {
    fn drop(&mut self) {
        let removed = self.0.gc_claims.borrow_mut().remove(&(self.1, self.2));
        assert!(removed, "a held claim is in the set until it is released");
    }
}

impl<'a> GcIo for SimGc<'a> {
    type Node = Node;
    type Record = Record;
    type ListedAt = Duration;
    type Claim = SimClaim<'a>;
    type Error = NodeErr;

    /// The whole list in one page.
    async fn list(&self, node: Node, after: Option<ChunkId>) -> Result<Listed<Duration>, NodeErr> {
        assert!(after.is_none(), "one page: nothing comes after it");
        let (chunk_ids, at) = self.w.chunk_list(node, self.grace).await?;
        Ok(Listed { chunk_ids, more: false, at })
    }

    async fn writing(&self, file_id: FileId) -> Result<bool, NodeErr> {
        Ok(self.w.is_writing(file_id))
    }

    async fn record(&self, file_id: FileId) -> Result<Option<Record>, NodeErr> {
        Ok(self.w.meta.borrow().get(&file_id).cloned())
    }

    fn places(&self, record: &Record, chunk: ChunkId, node: Node) -> bool {
        record.chunks.get(chunk.chunk_idx as usize).is_some_and(|c| c.placement.contains(&node))
    }

    fn claim(&self, chunk: ChunkId, node: Node) -> Option<SimClaim<'a>> {
        let fresh = self.w.gc_claims.borrow_mut().insert((chunk, node));
        fresh.then(|| SimClaim(self.w, chunk, node))
    }

    async fn delete(&self, node: Node, chunk: ChunkId, listed_at: Duration) -> Result<bool, NodeErr> {
        let deleted = self.w.delete(node, chunk, Some(listed_at), Deleter::Gc).await;
        if deleted == Ok(true) {
            self.w.counts.borrow_mut().gc_deleted += 1;
        }
        deleted
    }

    /// The engine's threads go on between two questions.
    async fn answered(&self, _ask: Ask) {
        yield_now().await;
    }

    async fn deleting(&self) {}
}

/// One gc pass over every node.
pub async fn gc(w: Rc<World>, grace: Duration) -> u64 {
    let mut out = Collected::default();
    let io = SimGc { w: &w, grace };
    for node in all_nodes(&w) {
        // A node that does not answer is skipped, as the engine skips it.
        let _ = dfs_core::gc::collect_node(&io, node, false, &mut out).await;
    }
    exec::trace(|| format!("gc: {out:?}"));
    out.n_deleted
}

/// One repair pass over every file, with `dfs_core::repair::plan` deciding each chunk. One pass
/// at a time, as in the engine (a pass asked for while one runs is refused): two passes
/// working from records read at different times would each write their own placement.
pub async fn repair(w: Rc<World>) -> bool {
    if w.repair_running.replace(true) {
        return false;
    }
    // A turn of the queue may be running: wait for it.
    while w.repair_lock.replace(true) {
        exec::sleep(Duration::from_millis(10)).await;
    }
    repair_pass(&w).await;
    w.repair_lock.set(false);
    w.repair_running.set(false);
    true
}

/// Asks every node believed down whether it is back.
async fn probe_down_nodes(w: &Rc<World>) {
    for node in all_nodes(w) {
        if !w.is_up(node) {
            ping(w, node).await;
        }
    }
}

/// A full repair pass over the simulated cluster: what `dfs_core::repair::full_pass`, the
/// procedure the engine runs, asks for. This engine always holds the repair pass.
struct SimPass<'a>(&'a Rc<World>);

impl PassIo for SimPass<'_> {
    type Record = Record;
    type Error = std::convert::Infallible;

    async fn probe_down_nodes(&self) {
        probe_down_nodes(self.0).await;
    }

    async fn list(&self, after: Option<FileId>) -> Result<(Vec<(FileId, u64)>, bool), Self::Error> {
        // A few files a page, so that the pass reads its list in several steps, as the engine's.
        const PAGE: usize = 7;
        let meta = self.0.meta.borrow();
        let mut page: Vec<(FileId, u64)> = match after {
            Some(a) => meta.range((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            None => meta.range(..),
        }
        .map(|(id, r)| (*id, r.chunks.len() as u64))
        .take(PAGE + 1)
        .collect();
        let more = page.len() > PAGE;
        page.truncate(PAGE);
        Ok((page, more))
    }

    async fn record(&self, file_id: FileId) -> Result<Option<Record>, Self::Error> {
        Ok(self.0.meta.borrow().get(&file_id).cloned())
    }

    fn n_chunks(record: &Record) -> usize {
        record.chunks.len()
    }

    async fn repair_chunk(&self, record: &Record, chunk: ChunkId) -> bool {
        repair_chunk(self.0, chunk, &record.chunks[chunk.chunk_idx as usize]).await.settled()
    }

    fn note_unsettled(&self, chunk: ChunkId) {
        self.0.queue_notes.borrow_mut().insert(chunk);
    }

    fn lost(&self) -> bool {
        false
    }

    async fn progress(&self, _n_done: u64, _n_total: u64) {}
}

async fn repair_pass(w: &Rc<World>) {
    match dfs_core::repair::full_pass(&SimPass(w)).await {
        Ok(_) => {}
        Err(PassStopped::Lost) => unreachable!("the simulated engine never loses its pass"),
        Err(PassStopped::Failed(never)) => match never {},
    }
}

/// How long a node must stay down before the queue re-makes its copies elsewhere.
pub const AFTER_DOWN: Duration = Duration::from_secs(5);

/// A turn of the repair queue over the simulated cluster: what `dfs_core::repair::queue_turn`,
/// the procedure the engine runs, asks for. The queue is the world's (the engine keeps it in
/// its metadata); this engine always holds the repair pass.
struct SimQueue<'a> {
    w: &'a Rc<World>,
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

impl QueueIo for SimQueue<'_> {
    type Node = Node;
    type Error = NodeErr;

    fn now_ms(&self) -> u64 {
        ms(exec::now())
    }

    fn take_notes(&self) -> Vec<(ChunkId, Reason)> {
        std::mem::take(&mut *self.w.queue_notes.borrow_mut()).into_iter().map(|c| (c, Reason::ReadFailed)).collect()
    }

    /// The engine queues only the chunks recorded under another ID; the simulation's
    /// placements do not record IDs, so a node replaced or answering for the first time has
    /// all its chunks queued, which costs checks, not copies.
    async fn take_news(&self) -> Result<Vec<(ChunkId, Reason)>, NodeErr> {
        let news = std::mem::take(&mut *self.w.node_news.borrow_mut());
        Ok(news.into_iter().flat_map(|(node, why)| self.w.chunks_on(node).into_iter().map(move |c| (c, why))).collect())
    }

    fn down_for(&self) -> Vec<(Node, Duration)> {
        let now = exec::now();
        self.w.down_since.borrow().iter().enumerate().filter_map(|(n, since)| since.map(|t| (n, now - t))).collect()
    }

    async fn chunks_on(&self, node: Node) -> Result<Vec<ChunkId>, NodeErr> {
        Ok(self.w.chunks_on(node))
    }

    async fn add(&self, entries: &[(ChunkId, Reason, u64)], _now_ms: u64) -> Result<u64, NodeErr> {
        let mut queue = self.w.queue.borrow_mut();
        let mut n_new = 0;
        for &(chunk, _, at) in entries {
            let entry = queue.entry(chunk).or_insert_with(|| {
                n_new += 1;
                (0, at)
            });
            entry.1 = entry.1.min(at);
        }
        Ok(n_new)
    }

    fn may_repair(&self) -> bool {
        true
    }

    async fn due(&self, now_ms: u64, limit: usize) -> Result<Vec<(ChunkId, u32)>, NodeErr> {
        let queue = self.w.queue.borrow();
        Ok(queue.iter().filter(|(_, (_, at))| *at <= now_ms).map(|(c, (tries, _))| (*c, *tries)).take(limit).collect())
    }

    async fn probe_down_nodes(&self) {
        probe_down_nodes(self.w).await;
    }

    async fn repair(&self, chunk: ChunkId) -> Result<Outcome, NodeErr> {
        let record = self.w.meta.borrow().get(&chunk.file_id).cloned();
        let outcome = match record.as_ref().and_then(|r| r.chunks.get(chunk.chunk_idx as usize)) {
            Some(c) => repair_chunk(self.w, chunk, c).await,
            None => Outcome::Gone,
        };
        exec::trace(|| format!("repair queue: {chunk}: {outcome:?}"));
        Ok(outcome)
    }

    async fn settle(&self, settled: &[ChunkId], retry: &[(ChunkId, u32, u64)]) -> Result<(), NodeErr> {
        let mut queue = self.w.queue.borrow_mut();
        for c in settled {
            queue.remove(c);
        }
        for &(c, tries, at) in retry {
            // A chunk settled by a full pass meanwhile is not brought back.
            if let Some(entry) = queue.get_mut(&c) {
                *entry = (tries, at);
            }
        }
        Ok(())
    }
}

/// The queue's turns, every second, as the engine's background thread takes them (skipped
/// while a full pass holds the repair lock).
pub async fn repair_queue(w: Rc<World>) {
    let mut down_queued = BTreeSet::new();
    loop {
        exec::sleep(Duration::from_secs(1)).await;
        if w.repair_lock.replace(true) {
            continue;
        }
        let turn = dfs_core::repair::queue_turn(&SimQueue { w: &w }, AFTER_DOWN, &mut down_queued).await;
        exec::trace(|| format!("repair queue turn: {turn:?}"));
        w.repair_lock.set(false);
    }
}

/// A ping as the pinger sends it: up or down. A node found replaced (another ID at its
/// address), answering for the first time, or with more copies set aside than before, is news
/// for the repair queue's next turn.
async fn ping(w: &Rc<World>, node: Node) {
    match w.ping(node).await {
        Some((identity, n_quarantined)) => {
            w.mark(node, true);
            let grew = w.heard.borrow_mut()[node].set_aside(n_quarantined);
            if w.learn(node, identity) {
                w.node_news.borrow_mut().push((node, Reason::NodeReplaced));
            }
            if grew {
                w.node_news.borrow_mut().push((node, Reason::Quarantined));
            }
        }
        None => w.mark(node, false),
    }
}

/// Repair of one chunk over the simulated cluster: what `dfs_core::repair::repair_chunk`, the
/// procedure the engine runs, asks for.
struct SimRepair<'a> {
    w: &'a Rc<World>,
    c: &'a ChunkRec,
}

impl<'a> RepairIo for SimRepair<'a> {
    type Node = Node;
    type Proof = u64;
    type Writing = (Writing<'a>, Unrecorded<'a>);
    type Error = NodeErr;

    fn replicas(&self) -> usize {
        self.w.config.replicas
    }

    fn nodes_up_first(&self) -> Vec<Node> {
        up_first(&all_nodes(self.w), |n| self.w.is_up(n))
    }

    fn is_up(&self, node: Node) -> bool {
        self.w.is_up(node)
    }

    fn mark_down(&self, node: Node, _why: &str) {
        self.w.mark(node, false);
    }

    async fn check(&self, node: Node, chunk: ChunkId) -> Found<NodeErr> {
        match self.w.exists(node, chunk).await {
            Ok((len, crc)) if len == self.c.length && crc == self.c.crc32 => Found::Sound,
            Ok((len, crc)) => Found::Corrupt(format!("holds {len} bytes with crc32 {crc:08x}")),
            Err(NodeErr::Corrupt) => Found::Corrupt("its block check failed".into()),
            Err(NodeErr::NotFound) => Found::Missing,
            Err(e @ (NodeErr::Unreachable | NodeErr::TimedOut)) => Found::Down(e),
            Err(e @ (NodeErr::Io | NodeErr::Full)) => Found::Unknown(e),
        }
    }

    async fn begin_writing(&self, file_id: FileId) -> Result<Self::Writing, NodeErr> {
        Ok((self.w.begin_writing(file_id), Unrecorded::new(self.w)))
    }

    fn will_write(&self, writing: &mut Self::Writing, chunk: ChunkId, node: Node) {
        writing.1.add(chunk, node);
    }

    fn claimed_by_gc(&self, chunk: ChunkId, node: Node) -> bool {
        self.w.gc_claims.borrow().contains(&(chunk, node))
    }

    async fn delete(&self, node: Node, chunk: ChunkId) -> Result<(), NodeErr> {
        self.w.delete(node, chunk, None, Deleter::Repair).await.map(|_| ())
    }

    /// FETCH from the source, checked against the record, then STORE on the destination.
    async fn copy(&self, source: Node, dest: Node, chunk: ChunkId) -> Result<u64, CopyFailed<NodeErr>> {
        let bytes = match self.w.fetch(source, chunk).await {
            Ok(bytes) if bytes.len() as u64 == self.c.length && crc32(&bytes) == self.c.crc32 => bytes,
            Ok(_) => return Err(CopyFailed::Source { proven_bad: true, error: NodeErr::Corrupt }),
            Err(e) => {
                self.w.note_failure(source, e);
                return Err(CopyFailed::Source {
                    proven_bad: matches!(e, NodeErr::Corrupt | NodeErr::NotFound),
                    error: e,
                });
            }
        };
        self.w.store(dest, chunk, &bytes, self.c.crc32).await.map_err(|e| {
            self.w.note_failure(dest, e);
            CopyFailed::Destination(e)
        })
    }

    async fn copied(&self) {
        self.w.counts.borrow_mut().copies_made += 1;
    }

    /// Compare and set, as `MetaStore::set_placement` does, after a yield (the engine awaits
    /// the metadata).
    async fn set_placement(
        &self,
        chunk: ChunkId,
        recorded: &[Node],
        placement: &[Node],
        _made: &[(Node, u64)],
    ) -> Placed<NodeErr> {
        yield_now().await;
        let mut meta = self.w.meta.borrow_mut();
        match meta.get_mut(&chunk.file_id).map(|r| &mut r.chunks[chunk.chunk_idx as usize].placement) {
            Some(current) if current == recorded => {
                exec::trace(|| format!("repair: {chunk} placed on {placement:?} (was {recorded:?})"));
                *current = placement.to_vec();
                Placed::Set
            }
            Some(_) => Placed::Changed,
            None => Placed::FileGone,
        }
    }
}

async fn repair_chunk(w: &Rc<World>, chunk: ChunkId, c: &ChunkRec) -> Outcome {
    dfs_core::repair::repair_chunk(&SimRepair { w, c }, chunk, &c.placement).await.outcome
}

/// The pinger: every node, every half second.
pub async fn pinger(w: Rc<World>) {
    loop {
        exec::sleep(Duration::from_millis(500)).await;
        for n in all_nodes(&w) {
            ping(&w, n).await;
        }
    }
}
