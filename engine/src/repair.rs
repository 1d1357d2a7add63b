//! Repair: brings every chunk back to the configured number of verified copies. For each chunk
//! it asks every recorded node whether it holds a sound copy (EXISTS checks the copy's sealed
//! footer against the recorded length and crc32); copies that are missing or corrupt on a live
//! node are copied back to that node, copies on a down node are made again on another live
//! node, and only then does the metadata point at the new copy. Copies are made only from
//! copies that verify block by block against the crc32s recorded at upload (see
//! [`crate::cluster::copy_chunk`]), so repair never spreads bad bytes.

use crate::cluster::{self, copy_chunk, CopyError, NodeError, NodeFailure};
use crate::meta::{
    ChunkRecord, FileRecord, MetaError, NodeDirectory, NodeSlot, Pass, PassError, PassLease, Placed, PlacementChange,
    Writer,
};
use crate::state::{EngineState, UploadGuard};
use dfs_core::repair::{
    CopyFailed, Found, Outcome, PassIo, PassStopped, Placed as CorePlaced, QueueIo, Reason, RepairIo, Said,
};
use dfs_proto::msg::push_report_line;
use dfs_proto::{ChunkId, FileId, Msg, NodeId, RepairSummary, Status};
use dfs_runtime::conn::Conn;
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Marks a repair pass as running in [`EngineState::repair_running`] while it lives.
struct Running<'a>(&'a AtomicBool);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// How often a pass reports progress to the client that asked for it.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// Runs one repair pass over every file. With `client`, sends it RepairProgress frames on the
/// way (best effort). Err: the pass could not run at all.
pub async fn run(state: &EngineState, client: Option<&Conn>) -> Result<RepairSummary, PassError> {
    if state.repair_running.swap(true, Ordering::AcqRel) {
        return Err(PassError::AlreadyRunning(Pass::Repair));
    }
    let _running = Running(&state.repair_running);
    // One repair at a time in the cluster: with engines sharing PostgreSQL, the one holding the
    // repair pass (a turn of its queue shares the hold).
    let lease = PassError::take(&state.meta, &state.passes, Pass::Repair).await?;
    // A turn of the queue may be running: wait for it, so that two repairs never write
    // placements from records read at different times.
    let _exclusive = state.repair_lock.lock().await;
    let started = Instant::now();
    let pass = EnginePass {
        state,
        lease: &lease,
        client,
        summary: RefCell::new(RepairSummary::default()),
        last_report: Cell::new(Instant::now()),
    };
    match dfs_core::repair::full_pass(&pass).await {
        Ok(_) => {}
        Err(PassStopped::Lost) => return Err(PassError::Lost(Pass::Repair)),
        Err(PassStopped::Failed(e)) => return Err(e.into()),
    }
    let summary = pass.summary.into_inner();
    tracing::info!(
        "repair: {} file(s), {} chunk(s) checked, {} cop(ies) made ({} bytes), {} lost, {} unavailable now, {} short of copies, in {:.1?}",
        summary.n_files,
        summary.n_chunks_checked,
        summary.n_copies_made,
        summary.bytes_copied,
        summary.n_chunks_unrecoverable,
        summary.n_chunks_unavailable,
        summary.n_chunks_degraded,
        started.elapsed()
    );
    Ok(summary)
}

/// A full pass over the engine's metadata and nodes: what [`dfs_core::repair::full_pass`] asks
/// for, with the pass's summary and the progress frames for the client that asked for it.
struct EnginePass<'a> {
    state: &'a EngineState,
    lease: &'a crate::meta::PassLease,
    client: Option<&'a Conn>,
    summary: RefCell<RepairSummary>,
    last_report: Cell<Instant>,
}

impl PassIo for EnginePass<'_> {
    type Record = FileRecord;
    type Error = MetaError;

    async fn probe_down_nodes(&self) {
        probe_down_nodes(self.state).await;
    }

    async fn list(&self, after: Option<FileId>) -> Result<(Vec<(FileId, u64)>, bool), MetaError> {
        let (page, more) = self.state.meta.list(after, 1000).await?;
        Ok((page.iter().map(|f| (f.file_id, f.n_chunks as u64)).collect(), more))
    }

    async fn record(&self, file_id: FileId) -> Result<Option<FileRecord>, MetaError> {
        let record = self.state.meta.get(file_id).await?;
        if record.is_some() {
            self.summary.borrow_mut().n_files += 1;
        }
        Ok(record)
    }

    fn n_chunks(record: &FileRecord) -> usize {
        record.chunks.len()
    }

    async fn repair_chunk(&self, record: &FileRecord, chunk: ChunkId) -> bool {
        let c = &record.chunks[chunk.chunk_idx as usize];
        let mut summary = std::mem::take(&mut *self.summary.borrow_mut());
        let settled = repair_chunk(self.state, record, chunk, c, &mut summary).await.settled();
        *self.summary.borrow_mut() = summary;
        settled
    }

    fn note_unsettled(&self, chunk: ChunkId) {
        self.state.repair_queue.note(chunk, Reason::Audit);
    }

    fn lost(&self) -> bool {
        self.lease.lost()
    }

    async fn progress(&self, n_done: u64, n_total: u64) {
        if let Some(conn) = self.client.filter(|_| self.last_report.get().elapsed() >= PROGRESS_EVERY) {
            let _ = conn.write_msg(&Msg::RepairProgress { n_done, n_total }).await;
            self.last_report.set(Instant::now());
        }
    }
}

pub use dfs_core::repair::{QueueTurn, QUEUE_BATCH};

/// One turn of the repair queue ([`dfs_core::repair::queue_turn`] over the engine's metadata and
/// nodes): queues what the request paths noted, the copies of nodes found replaced or setting
/// copies aside and of nodes down for longer than `after_down`, then, holding the cluster's
/// repair pass (`lease`, None: another engine holds it), tries the chunks that are due,
/// settling or rescheduling each. Skipped (Ok, nothing done) while a full pass runs.
/// `down_queued` holds the nodes whose copies were queued for the down spell they are in.
pub async fn run_queue(
    state: &EngineState,
    after_down: Duration,
    down_queued: &mut std::collections::BTreeSet<SocketAddr>,
    lease: Option<&PassLease>,
) -> Result<QueueTurn, RepairError> {
    let Ok(_exclusive) = state.repair_lock.try_lock() else { return Ok(QueueTurn::default()) };
    let io = EngineQueue { state, lease, summary: std::cell::RefCell::new(RepairSummary::default()) };
    let turn = dfs_core::repair::queue_turn(&io, after_down, down_queued).await?;
    let n_copies_made = io.summary.borrow().n_copies_made;
    state.repair_queue.n_settled.fetch_add(turn.n_settled, Ordering::Relaxed);
    state.repair_queue.n_copies_made.fetch_add(n_copies_made, Ordering::Relaxed);
    if turn.n_tried > 0 {
        tracing::info!(
            "repair queue: {} tried, {} settled, {} to try again, {n_copies_made} cop(ies) made",
            turn.n_tried,
            turn.n_settled,
            turn.n_tried - turn.n_settled,
        );
    }
    Ok(turn)
}

/// A turn of the repair queue over the engine's metadata (the queue's table) and nodes.
struct EngineQueue<'a> {
    state: &'a EngineState,
    lease: Option<&'a PassLease>,
    /// What the turn's repairs did, for the log and the status counters.
    summary: std::cell::RefCell<RepairSummary>,
}

impl QueueIo for EngineQueue<'_> {
    type Node = SocketAddr;
    type Error = RepairError;

    fn now_ms(&self) -> u64 {
        dfs_runtime::unix_ms()
    }

    fn take_notes(&self) -> Vec<(ChunkId, Reason)> {
        self.state.repair_queue.take_notes()
    }

    /// A replaced node no longer holds what its previous ID held; a node answering for the
    /// first time since start-up may have been replaced while the engine was not looking: its
    /// address's copies recorded under another ID are queued (one scan for all of them). A node
    /// that set copies aside (a background scrub, a FETCH that found rot) does not say which:
    /// every chunk with a copy there is checked, one EXISTS per copy.
    async fn take_news(&self) -> Result<Vec<(ChunkId, Reason)>, RepairError> {
        let (state, health) = (self.state, &*self.state.links.health);
        let mut news = Vec::new();
        let learned = health.take_learned();
        if !learned.is_empty() {
            let addrs: Vec<(String, &cluster::Learned)> = learned.iter().map(|l| (l.addr.to_string(), l)).collect();
            let chunks = state
                .meta
                .chunks_placed(|slot| {
                    addrs.iter().any(|(addr, l)| match l.previous {
                        Some(previous) => slot.id == Some(previous.0),
                        None => slot.addr == *addr && slot.id.is_some_and(|id| id != l.id.0),
                    })
                })
                .await?;
            if !chunks.is_empty() {
                tracing::info!(
                    "repair queue: {} chunk(s) recorded under an ID their node no longer answers with",
                    chunks.len()
                );
            }
            news.extend(chunks.into_iter().map(|c| (c, Reason::NodeReplaced)));
        }
        let mut grew = health.take_quarantine_grew();
        grew.sort();
        grew.dedup();
        for addr in grew {
            let chunks = state.meta.chunks_placed(placed_on(health, addr)).await?;
            tracing::info!("repair queue: node {addr} set copies aside: {} chunk(s) with a copy there", chunks.len());
            news.extend(chunks.into_iter().map(|c| (c, Reason::Quarantined)));
        }
        Ok(news)
    }

    fn down_for(&self) -> Vec<(SocketAddr, Duration)> {
        self.state.links.health.down_for()
    }

    async fn chunks_on(&self, addr: SocketAddr) -> Result<Vec<ChunkId>, RepairError> {
        let chunks = self.state.meta.chunks_placed(placed_on(&self.state.links.health, addr)).await?;
        tracing::info!("repair queue: node {addr} down for long: {} chunk(s) with a copy there", chunks.len());
        Ok(chunks)
    }

    async fn add(&self, entries: &[(ChunkId, Reason, u64)], now_ms: u64) -> Result<u64, RepairError> {
        Ok(self.state.meta.queue_add(entries, now_ms).await?)
    }

    fn may_repair(&self) -> bool {
        self.lease.is_some_and(|l| !l.lost())
    }

    async fn due(&self, now_ms: u64, limit: usize) -> Result<Vec<(ChunkId, u32)>, RepairError> {
        let due = self.state.meta.queue_due(now_ms, limit).await?;
        Ok(due.into_iter().map(|(c, q)| (c, q.attempts)).collect())
    }

    async fn probe_down_nodes(&self) {
        probe_down_nodes(self.state).await;
    }

    async fn repair(&self, chunk_id: ChunkId) -> Result<Outcome, RepairError> {
        let Some(record) = self.state.meta.get(chunk_id.file_id).await? else { return Ok(Outcome::Gone) };
        let Some(chunk) = record.chunks.get(chunk_id.chunk_idx as usize) else { return Ok(Outcome::Gone) };
        let mut summary = std::mem::take(&mut *self.summary.borrow_mut());
        let outcome = repair_chunk(self.state, &record, chunk_id, chunk, &mut summary).await;
        *self.summary.borrow_mut() = summary;
        Ok(outcome)
    }

    async fn settle(&self, settled: &[ChunkId], retry: &[(ChunkId, u32, u64)]) -> Result<(), RepairError> {
        Ok(self.state.meta.queue_settle(settled, retry).await?)
    }
}

/// Whether a recorded slot names the node at `addr`: by the ID it answers with, or by address
/// where either ID is unknown.
fn placed_on(health: &cluster::Health, addr: SocketAddr) -> impl Fn(&NodeSlot) -> bool {
    let (id, here) = (health.id_of(addr).map(|id| id.0), addr.to_string());
    move |slot| match (slot.id, id) {
        (Some(recorded), Some(id)) => recorded == id,
        _ => slot.addr == here,
    }
}

/// Asks every node believed down whether it is back, so that a node restarted a moment ago is
/// not taken for lost before the pinger's next round.
async fn probe_down_nodes(state: &EngineState) {
    for &addr in &state.config.nodes {
        if state.links.health.is_up(addr) {
            continue;
        }
        cluster::ping(&state.links, addr).await;
    }
}

/// Why one of repair's requests failed: a node's answer or the metadata's.
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error("{0}")]
    Node(NodeError),
    #[error("{0}")]
    Meta(#[from] MetaError),
}

impl From<NodeError> for RepairError {
    fn from(e: NodeError) -> RepairError {
        RepairError::Node(e)
    }
}

/// Repair of one chunk over the engine's nodes and metadata: what [`dfs_core::repair::repair_chunk`]
/// asks for, answered with real requests.
struct EngineRepair<'a> {
    state: &'a EngineState,
    chunk: &'a ChunkRecord,
    recorded_slots: Vec<&'a NodeSlot>,
}

impl<'a> RepairIo for EngineRepair<'a> {
    type Node = SocketAddr;
    type Proof = NodeId;
    type Writing = (UploadGuard<'a>, Writer);
    type Error = RepairError;

    fn replicas(&self) -> usize {
        self.state.config.replicas
    }

    fn nodes_up_first(&self) -> Vec<SocketAddr> {
        self.state.links.health.up_first(&self.state.config.nodes)
    }

    fn is_up(&self, node: SocketAddr) -> bool {
        self.state.links.health.is_up(node)
    }

    fn mark_down(&self, node: SocketAddr, why: &str) {
        self.state.links.health.mark_down(node, why);
    }

    /// EXISTS checks the copy's sealed footer against the recorded length and crc32.
    async fn check(&self, node: SocketAddr, chunk_id: ChunkId) -> Found<RepairError> {
        let chunk = self.chunk;
        match cluster::exists(node, &self.state.links, chunk_id).await {
            Ok((length, crc32)) if length == chunk.length && crc32 == chunk.crc32 => Found::Sound,
            Ok((length, crc32)) => Found::Corrupt(format!(
                "holds {length} bytes with crc32 {crc32:08x}, {} bytes with crc32 {:08x} were stored",
                chunk.length, chunk.crc32
            )),
            Err(e @ NodeError { failure: NodeFailure::Unreachable(_), .. }) => Found::Down(e.into()),
            Err(NodeError { failure: NodeFailure::Remote(Status::NotFound, _), .. }) => Found::Missing,
            Err(NodeError { failure: NodeFailure::Remote(Status::Corrupt, why), .. }) => Found::Corrupt(why),
            Err(e) => Found::Unknown(e.into()),
        }
    }

    /// Registered here, and with every engine sharing the metadata.
    async fn begin_writing(&self, file_id: FileId) -> Result<Self::Writing, RepairError> {
        let local = self.state.uploads_in_progress.begin(file_id);
        Ok((local, self.state.meta.register_writer(file_id).await?))
    }

    fn will_write(&self, _writing: &mut Self::Writing, _chunk: ChunkId, _node: SocketAddr) {}

    fn claimed_by_gc(&self, chunk: ChunkId, node: SocketAddr) -> bool {
        self.state.gc_claims.is_claimed(chunk, node)
    }

    async fn delete(&self, node: SocketAddr, chunk: ChunkId) -> Result<(), RepairError> {
        Ok(cluster::delete(node, &self.state.links, chunk).await?)
    }

    /// Every block of the source is verified against the recorded crc32s on the way
    /// ([`copy_chunk`]).
    async fn copy(
        &self,
        source: SocketAddr,
        dest: SocketAddr,
        chunk_id: ChunkId,
    ) -> Result<NodeId, CopyFailed<RepairError>> {
        match copy_chunk(source, dest, &self.state.links, chunk_id, self.chunk).await {
            Ok(node_id) => Ok(node_id),
            Err(CopyError::Source(e)) => Err(CopyFailed::Source {
                proven_bad: matches!(e.failure, NodeFailure::Remote(Status::NotFound | Status::Corrupt, _)),
                error: e.into(),
            }),
            Err(CopyError::Destination(e)) => {
                self.state.links.health.note_failure(&e);
                Err(CopyFailed::Destination(e.into()))
            }
        }
    }

    async fn copied(&self) {
        self.state.repair_pace.after(self.chunk.length).await;
        crate::metrics::REPAIR_COPIES.inc();
    }

    async fn set_placement(
        &self,
        chunk_id: ChunkId,
        recorded: &[SocketAddr],
        placement: &[SocketAddr],
        made: &[(SocketAddr, NodeId)],
    ) -> CorePlaced<RepairError> {
        let change = PlacementChange {
            file_id: chunk_id.file_id,
            chunk_idx: chunk_id.chunk_idx,
            expected: self.recorded_slots.iter().map(|&s| s.clone()).collect(),
            nodes: slots_for(placement, made, recorded, &self.recorded_slots, &*self.state.links.health),
        };
        match self.state.meta.set_placement(change).await {
            Ok(Placed::Set) => CorePlaced::Set,
            Ok(Placed::FileGone) => CorePlaced::FileGone,
            Ok(Placed::Changed) => CorePlaced::Changed,
            Err(e) => CorePlaced::Failed(e.into()),
        }
    }
}

/// Repairs one chunk ([`dfs_core::repair::repair_chunk`] over the engine's I/O), and adds what it
/// did and found to the pass's summary and the log.
async fn repair_chunk(
    state: &EngineState,
    record: &FileRecord,
    chunk_id: ChunkId,
    chunk: &ChunkRecord,
    summary: &mut RepairSummary,
) -> Outcome {
    summary.n_chunks_checked += 1;
    let (recorded, recorded_slots) =
        match record.copy_addrs(chunk, &*state.links.health).and_then(|a| Ok((a, record.copy_slots(chunk)?))) {
            Ok(a) => a,
            Err(e) => {
                summary.n_chunks_unrecoverable += 1;
                push_report_line(&mut summary.problems, format!("{chunk_id}: unreadable metadata: {e}"));
                return Outcome::Lost;
            }
        };
    let io = EngineRepair { state, chunk, recorded_slots };
    let repaired = dfs_core::repair::repair_chunk(&io, chunk_id, &recorded).await;
    summary.n_copies_made += repaired.copies_made;
    summary.bytes_copied += repaired.copies_made * chunk.length;
    for said in repaired.said {
        match said {
            Said::Lost(line) => {
                summary.n_chunks_unrecoverable += 1;
                tracing::error!("repair: {line}");
                push_report_line(&mut summary.problems, line);
            }
            Said::Unavailable(line) => {
                summary.n_chunks_unavailable += 1;
                tracing::error!("repair: {line}");
                push_report_line(&mut summary.problems, line);
            }
            Said::Short(line) => {
                summary.n_chunks_degraded += 1;
                tracing::warn!("repair: {line}");
                push_report_line(&mut summary.problems, line);
            }
            Said::Unsettled(line) => push_report_line(&mut summary.problems, line),
            Said::Placed(line) => tracing::info!("repair: {line}"),
            Said::CorruptKept(line) => tracing::warn!("repair: {line}"),
        }
    }
    repaired.outcome
}

/// The nodes of a new placement as the metadata names them: a new copy by the ID its node
/// proved on the connection that wrote it (`made`), a kept copy by the ID its node answers
/// with now, or, on a node that has not answered since start-up, as it was recorded.
fn slots_for(
    placement: &[SocketAddr],
    made: &[(SocketAddr, NodeId)],
    recorded: &[SocketAddr],
    recorded_slots: &[&NodeSlot],
    nodes: &dyn NodeDirectory,
) -> Vec<NodeSlot> {
    assert_eq!(recorded.len(), recorded_slots.len(), "one slot per recorded copy");
    placement
        .iter()
        .map(|&addr| {
            let proven = made.iter().find(|(a, _)| *a == addr).map(|(_, id)| *id).or_else(|| nodes.id_of(addr));
            match (proven, recorded.iter().position(|&r| r == addr)) {
                (Some(id), _) => NodeSlot { id: Some(id.0), addr: addr.to_string() },
                (None, Some(k)) => recorded_slots[k].clone(),
                (None, None) => NodeSlot { id: None, addr: addr.to_string() },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(i: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 7700 + i))
    }

    #[test]
    fn new_placements_name_new_copies_by_their_proven_id_and_keep_unanswered_ones_as_recorded() {
        let (x, y, z) = (NodeId([1; 16]), NodeId([2; 16]), NodeId([3; 16]));
        // n(1) answers as x; n(2) has not answered (recorded as z); a new copy went to n(3),
        // whose connection proved y, though the table now says n(3) is someone else.
        let table = crate::cluster::Health::new(&[n(1), n(2), n(3)]);
        table.learn(n(1), x).expect("a fresh table");
        table.learn(n(3), NodeId([9; 16])).expect("a fresh table");
        let recorded_slots =
            [NodeSlot { id: Some(x.0), addr: n(1).to_string() }, NodeSlot { id: Some(z.0), addr: n(2).to_string() }];
        let slots = slots_for(
            &[n(1), n(2), n(3)],
            &[(n(3), y)],
            &[n(1), n(2)],
            &recorded_slots.iter().collect::<Vec<_>>(),
            &table,
        );
        assert_eq!(
            slots,
            [
                NodeSlot { id: Some(x.0), addr: n(1).to_string() },
                NodeSlot { id: Some(z.0), addr: n(2).to_string() },
                NodeSlot { id: Some(y.0), addr: n(3).to_string() },
            ]
        );
    }
}
