//! PUT: the client streams the file once; the engine cuts the stream at chunk boundaries and
//! relays each chunk to its node as it arrives, so no file is ever held whole in memory. Each
//! node verifies the client's crc32, makes the chunk durable and answers with its block crc32s;
//! the metadata is committed only when every chunk has been acknowledged.

use crate::cluster::{
    self, await_store, open_store, relay, write_live, NodeError, RelayBuffers, Splicer, Target, RELAY_BYTES,
};
use crate::meta::{ChunkRecord, FileRecord, NodeSlot};
use crate::state::EngineState;
use dfs_core::upload::{CopyIo, Incomplete, Next as UploadNext, OpenIo, Refused};
use dfs_proto::layout::chunk_spans;
use dfs_proto::{ChunkId, Chunking, FileId, FrameError, Msg, NodeId, Origin, Status};
use dfs_runtime::conn::Conn;
use dfs_runtime::splice::SPLICE_MIN_BYTES;
use dfs_runtime::DataPath;
use std::collections::VecDeque;
use std::net::SocketAddr;

/// Chunks whose durable-write acknowledgement may be outstanding at once: later chunks stream
/// while earlier ones fsync, but no more than this many node connections stay open per upload.
pub const MAX_INFLIGHT_CHUNKS: usize = 8;

struct Acked {
    chunk_idx: u32,
    addr: SocketAddr,
    /// The ID the node proved on the connection that wrote the copy.
    node_id: NodeId,
    result: Result<Vec<u32>, NodeError>,
}

/// The upload's copies, by node address and the ID each node proved.
type Upload = dfs_core::upload::Upload<SocketAddr, NodeId, NodeError>;

/// Why an upload cannot be acknowledged, as the client will read it.
struct PutFailure {
    chunk_idx: u32,
    status: Status,
    message: String,
}

/// Handles one PUT. Returns Err only when the client connection is broken.
pub async fn put(
    state: &EngineState,
    client: &Conn,
    name: String,
    size: u64,
    chunking: Chunking,
    chunk_crcs: Vec<u32>,
    origin: Option<Origin>,
) -> Result<(), FrameError> {
    let spans = match chunk_spans(size, chunking, state.config.dynamic_chunk_cap_bytes) {
        Ok(s) => s,
        Err(e) => return refuse(client, size, Msg::error(Status::BadRequest, e.to_string())).await,
    };
    if chunk_crcs.len() != spans.len() {
        let msg = format!("{} chunk crc32s announced, the layout has {} chunks", chunk_crcs.len(), spans.len());
        return refuse(client, size, Msg::error(Status::BadRequest, msg)).await;
    }
    // A new file ID, registered as being written (in PostgreSQL, for every engine's gc).
    let writer = match state.meta.new_upload().await {
        Ok(w) => w,
        Err(e) => {
            let msg = Msg::error(Status::Unavailable, format!("cannot register the upload: {e}"));
            return refuse(client, size, msg).await;
        }
    };
    let file_id = writer.file_id;
    let _in_progress = state.uploads_in_progress.begin(file_id);
    let replicas = state.config.replicas;
    // Each chunk tries the nodes in its placement order, those believed down last.
    let candidates = |chunk_idx: u32| -> Vec<SocketAddr> {
        state.links.health.up_first(&dfs_core::placement::ring(&state.config.nodes, file_id, chunk_idx))
    };

    let mut inflight: VecDeque<tokio::task::JoinHandle<Acked>> = VecDeque::new();
    // Per chunk: the copies acknowledged durable, and what went wrong (dfs_core::upload).
    let mut upload: Upload = Upload::new(spans.len(), replicas);
    let mut failure: Option<PutFailure> = None;
    // The copy path's relay buffers, sized to the largest chunk so small uploads stay cheap, and
    // allocated on first use: an upload of one piece never needs the second, the splice path
    // neither (unless it falls back to copying).
    let max_chunk = spans.iter().map(|s| s.length).max().unwrap_or(0);
    let mut bufs = RelayBuffers::new(max_chunk.min(RELAY_BYTES as u64) as usize);
    let mut client_result: Result<(), FrameError> = Ok(());
    let mut splicer = match state.config.data_path {
        DataPath::Splice if max_chunk >= SPLICE_MIN_BYTES => Splicer::new(client, replicas)
            .map_err(|e| tracing::warn!("cannot set up splicing, copying this upload instead: {e}"))
            .ok(),
        _ => None,
    };

    for span in &spans {
        let chunk_id = ChunkId { file_id, chunk_idx: span.chunk_idx };
        let crc32 = chunk_crcs[span.chunk_idx as usize];
        let mut targets = Vec::new();
        if span.length as usize <= dfs_runtime::conn::COALESCE_BYTES {
            // A small chunk is read from the client first, then goes to each node with its
            // STORE request in one write: one wake-up of the node instead of two.
            let n = span.length as usize;
            let buf = match client.read_exact(bufs.take(0), 0, n, false).await {
                Ok(b) => b,
                Err(e) => {
                    client_result = Err(e);
                    break;
                }
            };
            if failure.is_none() {
                let data = Some(&buf[..n]);
                match open_targets(state, &candidates(span.chunk_idx), chunk_id, span.length, crc32, replicas, data)
                    .await
                {
                    Ok(t) => targets = t,
                    Err(f) => failure = Some(f),
                }
            }
            bufs.bufs[0] = buf;
        } else {
            if failure.is_none() {
                match open_targets(state, &candidates(span.chunk_idx), chunk_id, span.length, crc32, replicas, None)
                    .await
                {
                    Ok(t) => targets = t,
                    Err(f) => failure = Some(f),
                }
            }
            match relay(client, &mut targets, span.length, &mut bufs, &mut splicer).await {
                Ok(()) => {}
                Err(e) => {
                    client_result = Err(e);
                    break;
                }
            }
        }
        await_acks(state, targets, span, crc32, &mut upload, &mut inflight).await;
    }
    while let Some(h) = inflight.pop_front() {
        settle(state, Some(h), &mut upload).await;
    }

    // A chunk with some copies but fewer than asked (a node failed part-way) gets the missing
    // ones copied from a verified copy to other nodes before anything is committed.
    if client_result.is_ok() && failure.is_none() {
        failure = complete_copies(state, file_id, &spans, &chunk_crcs, &mut upload).await;
    }

    let cleanup = |upload: &Upload| delete_written(state, file_id, upload);
    if let Err(e) = client_result {
        tracing::info!("upload of {name:?} abandoned by the client: {e}");
        cleanup(&upload);
        return Err(e);
    }
    if let Some(f) = failure {
        tracing::warn!("upload of {name:?} failed at chunk {}: {}", f.chunk_idx, f.message);
        cleanup(&upload);
        return client.write_msg(&Msg::error(f.status, format!("cannot store {name:?}: {}", f.message))).await;
    }

    match commit(state, &writer, &spans, &chunk_crcs, &upload, name, size, chunking, origin).await {
        Ok(()) => client.write_msg(&Msg::PutOk { file_id }).await,
        Err(reply) => client.write_msg(&reply).await,
    }
}

/// Deletes, in the background, every copy an upload that will not be committed has written.
fn delete_written(state: &EngineState, file_id: FileId, upload: &Upload) {
    let written =
        upload.written().into_iter().map(|(i, addr)| (ChunkId { file_id, chunk_idx: i as u32 }, addr)).collect();
    cluster::delete_later(&state.links, written);
}

/// Spawns the wait for each live target's acknowledgement of chunk `span`, notes the targets
/// that already failed, and keeps at most [`MAX_INFLIGHT_CHUNKS`] chunks' acknowledgements
/// outstanding.
async fn await_acks(
    state: &EngineState,
    targets: Vec<Target>,
    span: &dfs_proto::layout::ChunkSpan,
    crc32: u32,
    upload: &mut Upload,
    inflight: &mut VecDeque<tokio::task::JoinHandle<Acked>>,
) {
    for target in targets {
        if let Some(e) = target.error {
            state.links.health.note_failure(&e);
            upload.failed(span.chunk_idx as usize, target.addr, e);
        }
        let Some(node) = target.node else { continue };
        let (chunk_idx, length, addr, node_id) = (span.chunk_idx, span.length, target.addr, node.node_id);
        inflight.push_back(dfs_runtime::backend::spawn(async move {
            let result = await_store(&node, length, crc32).await;
            if result.is_ok() {
                node.checkin();
            }
            Acked { chunk_idx, addr, node_id, result }
        }));
    }
    while inflight.len() >= MAX_INFLIGHT_CHUNKS * upload.replicas() {
        settle(state, inflight.pop_front(), upload).await;
    }
}

/// Records a file every chunk of which has all its copies, and settles a commit that answered
/// an error. Err: the reply for the client (the copies are then gone, or kept when whether the
/// record exists cannot be told).
#[allow(clippy::too_many_arguments)]
async fn commit(
    state: &EngineState,
    writer: &crate::meta::Writer,
    spans: &[dfs_proto::layout::ChunkSpan],
    chunk_crcs: &[u32],
    upload: &Upload,
    name: String,
    size: u64,
    chunking: Chunking,
    origin: Option<Origin>,
) -> Result<(), Msg> {
    let file_id = writer.file_id;
    let replicas = upload.replicas();
    let cleanup = |upload: &Upload| delete_written(state, file_id, upload);
    // The nodes the record names, each by the ID it proved on the connection that wrote there.
    let mut used: Vec<(SocketAddr, NodeId)> = Vec::new();
    let mut index_of = |addr: SocketAddr, node_id: NodeId| -> u16 {
        let node_idx = used.iter().position(|u| *u == (addr, node_id)).unwrap_or_else(|| {
            used.push((addr, node_id));
            used.len() - 1
        });
        node_idx as u16
    };
    assert_eq!(upload.next(), UploadNext::Commit, "an upload is committed only with every copy");
    let chunks = spans
        .iter()
        .zip(chunk_crcs)
        .map(|(span, &crc32)| {
            let chunk_copies = upload.copies(span.chunk_idx as usize);
            assert_eq!(chunk_copies.len(), replicas, "chunk {} committed without all its copies", span.chunk_idx);
            ChunkRecord {
                offset: span.offset,
                length: span.length,
                crc32,
                block_crcs: chunk_copies[0].block_crcs.clone(),
                placement: chunk_copies.iter().map(|k| index_of(k.node, k.id)).collect(),
            }
        })
        .collect();
    let record = FileRecord {
        name,
        size,
        created_unix_ms: dfs_runtime::unix_ms(),
        chunking,
        nodes: used.iter().map(|(addr, id)| NodeSlot { id: Some(id.0), addr: addr.to_string() }).collect(),
        chunks,
        origin: origin.map(|o| o.0),
    };
    // Tests hold an upload here, its copies written and not yet recorded.
    dfs_runtime::failpoint::pause("put-before-commit").await;
    match state.meta.insert(writer, record.clone()).await {
        Ok(()) => {
            note_replaced_since_written(state, file_id, upload);
            Ok(())
        }
        // An error from a commit does not prove that nothing was committed (an fsync can fail
        // after the data reached the disk; a statement whose answer timed out can still commit
        // on the database): settle it, then look, before deleting chunks a record may point at.
        Err(e) => match state.meta.settle_failed_insert(writer).await {
            Ok(Some(stored)) if stored == record => {
                tracing::warn!(
                    "upload of {:?}: the metadata commit reported {e}, but the record is there",
                    record.name
                );
                Ok(())
            }
            Ok(_) => {
                cleanup(upload);
                Err(state.meta_failed(format!("cannot record file: {e}")))
            }
            Err(e2) => {
                // Whether the record exists is unknown: keep the chunks (gc removes them after
                // the grace period if the record really is absent).
                tracing::error!(
                    "upload of {:?}: commit failed ({e}) and the record cannot be read back: {e2}",
                    record.name
                );
                Err(state.internal(format!("cannot tell whether the file was recorded: {e}; {e2}")))
            }
        },
    }
}

/// Where a buffered upload's bytes come from: a request body (the S3 front door), read a chunk
/// at a time.
pub trait BodySource {
    type Error;
    /// Fills all of `buf` with the body's next bytes. Err: the body ended early or broke.
    fn fill(&mut self, buf: &mut [u8]) -> impl std::future::Future<Output = Result<(), Self::Error>>;
    /// After the last byte, before anything is committed: whether the body is whole and what
    /// the client said it is (its digests). Err: nothing is stored.
    fn finish(&mut self) -> impl std::future::Future<Output = Result<(), Self::Error>>;
}

/// Why a buffered upload stored nothing.
#[derive(Debug)]
pub enum BufferedPutError<E> {
    /// The body broke, ended early, or is not what its client said.
    Body(E),
    /// The cluster or the metadata refused it: the status and message to answer.
    Store(Status, String),
}

/// Stores `size` bytes read from `body` as a new file, each chunk read whole into memory first
/// (at most `chunk_cap` bytes, held against the engine's buffer budget) so that its crc32 is
/// known before it goes to its nodes; from there on the path is the native upload's: the same
/// placement, STORE requests, acknowledgements, completion of copies and commit. Returns the
/// new file's ID, or the error (status and message) to answer.
pub async fn put_buffered<B: BodySource>(
    state: &EngineState,
    name: String,
    size: u64,
    chunk_cap: u64,
    body: &mut B,
) -> Result<FileId, BufferedPutError<B::Error>> {
    use BufferedPutError::{Body, Store};
    let chunking = Chunking::Dynamic;
    let spans = chunk_spans(size, chunking, chunk_cap).map_err(|e| Store(Status::BadRequest, e.to_string()))?;
    let writer = state
        .meta
        .new_upload()
        .await
        .map_err(|e| Store(Status::Unavailable, format!("cannot register the upload: {e}")))?;
    let file_id = writer.file_id;
    let _in_progress = state.uploads_in_progress.begin(file_id);
    let replicas = state.config.replicas;
    let max_chunk = spans.iter().map(|s| s.length).max().unwrap_or(0);
    let _held = match state.budget.reserve_within(max_chunk, state.config.client_idle_timeout).await {
        Some(r) => r,
        None => return Err(Store(Status::Unavailable, "the engine's buffer budget stayed full; try again".into())),
    };
    // Two chunk buffers: while one chunk is written to its nodes, the next is read from the
    // body into the other. (Both are held against the budget above.)
    let _held_next = match spans.len() > 1 {
        true => state.budget.reserve_within(max_chunk, state.config.client_idle_timeout).await,
        false => None,
    };
    let fresh = || vec![0u8; max_chunk as usize];
    let (mut cur, mut next) = (fresh(), if spans.len() > 1 { fresh() } else { Vec::new() });
    let mut chunk_crcs = Vec::with_capacity(spans.len());
    let mut inflight: VecDeque<tokio::task::JoinHandle<Acked>> = VecDeque::new();
    let mut upload: Upload = Upload::new(spans.len(), replicas);
    let mut failure: Option<PutFailure> = None;
    let mut body_error: Option<B::Error> = None;
    let mut filled = body.fill(&mut cur[..spans.first().map_or(0, |s| s.length as usize)]).await;
    for (i, span) in spans.iter().enumerate() {
        if let Err(e) = filled {
            body_error = Some(e);
            break;
        }
        let chunk_id = ChunkId { file_id, chunk_idx: span.chunk_idx };
        let n = span.length as usize;
        let next_len = spans.get(i + 1).map(|s| s.length as usize);
        if next.len() < next_len.unwrap_or(0) {
            next = fresh();
        }
        let crc32 = crc32fast::hash(&cur[..n]);
        chunk_crcs.push(crc32);
        let mut targets = Vec::new();
        if failure.is_none() {
            let candidates =
                state.links.health.up_first(&dfs_core::placement::ring(&state.config.nodes, file_id, span.chunk_idx));
            let data = (n <= dfs_runtime::conn::COALESCE_BYTES).then(|| &cur[..n]);
            match open_targets(state, &candidates, chunk_id, span.length, crc32, replicas, data).await {
                Ok(t) => targets = t,
                Err(f) => failure = Some(f),
            }
        }
        let fill_next = async {
            match next_len {
                Some(m) => body.fill(&mut next[..m]).await,
                None => Ok(()),
            }
        };
        if !targets.is_empty() && n > dfs_runtime::conn::COALESCE_BYTES {
            let (written, read) =
                futures_util::future::join(write_live(&mut targets, std::mem::take(&mut cur), n), fill_next).await;
            cur = written;
            filled = read;
        } else {
            filled = fill_next.await;
        }
        if failure.is_none() {
            await_acks(state, targets, span, crc32, &mut upload, &mut inflight).await;
        }
        // The buffer just filled holds the next chunk; the one written goes back to be filled
        // (a write that failed or timed out kept it: `next` is then empty, made anew above).
        std::mem::swap(&mut cur, &mut next);
        assert!(cur.len() >= next_len.unwrap_or(0), "the next chunk was read into a whole buffer");
    }
    while let Some(h) = inflight.pop_front() {
        settle(state, Some(h), &mut upload).await;
    }
    if body_error.is_none() {
        if let Err(e) = body.finish().await {
            body_error = Some(e);
        }
    }
    if body_error.is_none() && failure.is_none() {
        failure = complete_copies(state, file_id, &spans, &chunk_crcs, &mut upload).await;
    }
    let cleanup = |upload: &Upload| delete_written(state, file_id, upload);
    if let Some(e) = body_error {
        tracing::info!("upload of {name:?} stored nothing: its body broke or did not match");
        cleanup(&upload);
        return Err(Body(e));
    }
    if let Some(f) = failure {
        tracing::warn!("upload of {name:?} failed at chunk {}: {}", f.chunk_idx, f.message);
        cleanup(&upload);
        return Err(Store(f.status, format!("cannot store {name:?}: {}", f.message)));
    }
    match commit(state, &writer, &spans, &chunk_crcs, &upload, name, size, chunking, None).await {
        Ok(()) => Ok(file_id),
        Err(Msg::Error { status, message }) => Err(Store(status, message)),
        Err(other) => Err(Store(Status::Internal, format!("{other:?}"))),
    }
}

/// After the commit: a copy whose node has since answered with another ID (its data directory
/// was replaced while the upload went on) is gone, though acknowledged. The repair queue learns
/// of replaced nodes from the node table, but finds only chunks already committed; this covers
/// the ones committed after, so that either way the chunk is queued. (Found by `dfs-sim`.)
fn note_replaced_since_written(state: &EngineState, file_id: FileId, upload: &Upload) {
    for chunk_idx in upload.replaced_since_written(|addr| state.links.health.id_of(addr)) {
        let chunk = ChunkId { file_id, chunk_idx: chunk_idx as u32 };
        tracing::warn!("{chunk}: a node was replaced after it acknowledged its copy; queued for repair");
        state.repair_queue.note(chunk, dfs_core::repair::Reason::NodeReplaced);
    }
}

/// Opening one chunk's STOREs over the engine's node connections (`dfs_core::upload::open_copies`
/// chooses the nodes).
struct EngineOpen<'a> {
    state: &'a EngineState,
    chunk_id: ChunkId,
    length: u64,
    crc32: u32,
    /// A small chunk's bytes, sent with the request.
    data: Option<&'a [u8]>,
}

impl OpenIo for EngineOpen<'_> {
    type Node = SocketAddr;
    type Error = NodeError;
    type Open = Target;

    async fn open(&self, addr: SocketAddr) -> Result<Target, NodeError> {
        match open_store(addr, &self.state.links, self.chunk_id, self.length, self.crc32, self.data).await {
            Ok(node) => {
                self.state.links.health.mark_up(addr);
                Ok(Target { addr, node: Some(node), error: None })
            }
            Err(e) => {
                self.state.links.health.note_failure(&e);
                Err(e)
            }
        }
    }
}

/// Opens `replicas` STOREs for one chunk on the first candidates that accept, skipping nodes
/// that cannot be reached.
async fn open_targets(
    state: &EngineState,
    candidates: &[SocketAddr],
    chunk_id: ChunkId,
    length: u64,
    crc32: u32,
    replicas: usize,
    data: Option<&[u8]>,
) -> Result<Vec<Target>, PutFailure> {
    let io = EngineOpen { state, chunk_id, length, crc32, data };
    match dfs_core::upload::open_copies(&io, candidates, replicas).await {
        Ok(open) => Ok(open.into_iter().map(|(_, target)| target).collect()),
        Err(Refused { accepted, candidates, refusals }) => Err(PutFailure {
            chunk_idx: chunk_id.chunk_idx,
            status: if refusals.is_empty() { Status::Internal } else { Status::Unavailable },
            message: format!(
                "chunk {} needs {replicas} copies on distinct nodes, but only {accepted} of {candidates} nodes accepted it ({})",
                chunk_id.chunk_idx,
                refusals.iter().map(|(_, e)| e.to_string()).collect::<Vec<_>>().join("; ")
            ),
        }),
    }
}

/// Copies of an upload's chunks made node to node over the engine's connections, every block
/// verified ([`cluster::copy_chunk`]); `dfs_core::upload::complete` decides which.
struct EngineCopy<'a> {
    state: &'a EngineState,
    file_id: FileId,
    spans: &'a [dfs_proto::layout::ChunkSpan],
    chunk_crcs: &'a [u32],
}

impl CopyIo for EngineCopy<'_> {
    type Node = SocketAddr;
    type Id = NodeId;
    type Error = NodeError;

    fn nodes_up_first(&self) -> Vec<SocketAddr> {
        self.state.links.health.up_first(&self.state.config.nodes)
    }

    fn will_write(&self, _chunk: usize, _node: SocketAddr) {}

    async fn copy(
        &self,
        chunk_idx: usize,
        source: SocketAddr,
        dest: SocketAddr,
        block_crcs: &[u32],
    ) -> Result<NodeId, NodeError> {
        let span = &self.spans[chunk_idx];
        let chunk = ChunkRecord {
            offset: span.offset,
            length: span.length,
            crc32: self.chunk_crcs[chunk_idx],
            block_crcs: block_crcs.to_vec(),
            placement: Vec::new(),
        };
        let chunk_id = ChunkId { file_id: self.file_id, chunk_idx: span.chunk_idx };
        match cluster::copy_chunk(source, dest, &self.state.links, chunk_id, &chunk).await {
            Ok(node_id) => {
                tracing::info!("{chunk_id}: copied from {source} to {dest} after a node failed mid-upload");
                Ok(node_id)
            }
            Err(e) => {
                let e = e.into_node_error();
                self.state.links.health.note_failure(&e);
                Err(e)
            }
        }
    }
}

/// Completes every chunk a node failed part-way (`dfs_core::upload::complete`), or says which
/// chunk cannot have its copies.
async fn complete_copies(
    state: &EngineState,
    file_id: FileId,
    spans: &[dfs_proto::layout::ChunkSpan],
    chunk_crcs: &[u32],
    upload: &mut Upload,
) -> Option<PutFailure> {
    let replicas = upload.replicas();
    let io = EngineCopy { state, file_id, spans, chunk_crcs };
    let Incomplete { chunk, copies } = dfs_core::upload::complete(&io, upload).await.err()?;
    let errors = upload.errors(chunk);
    let describe = errors.iter().map(|(_, e)| e.to_string()).collect::<Vec<_>>().join("; ");
    Some(if copies == 0 {
        PutFailure {
            chunk_idx: chunk as u32,
            status: errors.first().map_or(Status::Internal, |(_, e)| e.status()),
            message: format!("chunk {chunk} lost all of its {replicas} copies while they were written: {describe}"),
        }
    } else {
        PutFailure {
            chunk_idx: chunk as u32,
            status: Status::Unavailable,
            message: format!(
                "chunk {chunk} has {copies} of the {replicas} copies it needs and no other node took one: {describe}"
            ),
        }
    })
}

async fn settle(state: &EngineState, handle: Option<tokio::task::JoinHandle<Acked>>, upload: &mut Upload) {
    let Some(handle) = handle else { return };
    let a = handle.await.expect("store acknowledgement task panicked");
    match a.result {
        Ok(block_crcs) => upload.acked(a.chunk_idx as usize, a.addr, a.node_id, block_crcs),
        Err(e) => {
            tracing::debug!("chunk {} on {}: {e}", a.chunk_idx, a.addr);
            state.links.health.note_failure(&e);
            upload.failed(a.chunk_idx as usize, a.addr, e);
        }
    }
}

/// Refuses a PUT before relaying anything: answers, then reads and drops the announced body so
/// the connection stays usable.
async fn refuse(client: &Conn, size: u64, reply: Msg) -> Result<(), FrameError> {
    client.write_msg(&reply).await?;
    let mut buf = vec![0u8; size.min(RELAY_BYTES as u64) as usize];
    let mut left = size;
    while left > 0 {
        let n = left.min(RELAY_BYTES as u64) as usize;
        buf = client.read_exact(buf, 0, n, false).await?;
        left -= n as u64;
    }
    Ok(())
}
