//! PUT: the client streams the file once; the engine cuts the stream at chunk boundaries and
//! relays each chunk to its node as it arrives, so no file is ever held whole in memory. Each
//! node verifies the client's crc32, makes the chunk durable and answers with its block crc32s;
//! the metadata is committed only when every chunk has been acknowledged.
//!
//! The procedure (which nodes, how many acknowledgements in flight, completing copies a node
//! failed, when to commit) is `dfs_core::upload::put`, which `dfs-sim` runs as well; this file
//! is its I/O: [`EnginePut`] over the engine's node connections and metadata, with the bytes
//! from the client's connection ([`FromClient`]) or from a buffered request body ([`FromBody`]).

use crate::cluster::{
    self, await_store, open_store, relay, write_live, NodeError, RelayBuffers, Splicer, Target, RELAY_BYTES,
};
use crate::meta::{ChunkRecord, FileRecord, NodeSlot, Writer};
use crate::state::EngineState;
use dfs_core::upload::{CopyIo, PutFailed, PutIo, Refused, Upload as CoreUpload};
use dfs_proto::layout::{chunk_spans, ChunkSpan};
use dfs_proto::{ChunkId, Chunking, FileId, FrameError, Msg, NodeId, Origin, Status};
use dfs_runtime::conn::{Conn, COALESCE_BYTES};
use dfs_runtime::splice::SPLICE_MIN_BYTES;
use dfs_runtime::DataPath;
use std::net::SocketAddr;

/// Chunks whose durable-write acknowledgement may be outstanding at once: later chunks stream
/// while earlier ones fsync, but no more than this many node connections stay open per upload.
pub const MAX_INFLIGHT_CHUNKS: usize = 8;

/// The upload's copies, by node address and the ID each node proved.
type Upload = CoreUpload<SocketAddr, NodeId, NodeError>;

/// Why an upload failed, as `dfs_core::upload::put` reports it to the engine.
type Failed<S> = PutFailed<S, SocketAddr, NodeError, Msg>;

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
    // The copy path's relay buffers, sized to the largest chunk so small uploads stay cheap, and
    // allocated on first use: an upload of one piece never needs the second, the splice path
    // neither (unless it falls back to copying).
    let max_chunk = spans.iter().map(|s| s.length).max().unwrap_or(0);
    let splicer = match state.config.data_path {
        DataPath::Splice if max_chunk >= SPLICE_MIN_BYTES => Splicer::new(client, replicas)
            .map_err(|e| tracing::warn!("cannot set up splicing, copying this upload instead: {e}"))
            .ok(),
        _ => None,
    };
    let source = FromClient {
        client,
        spans: &spans,
        announced: chunk_crcs,
        bufs: RelayBuffers::new(max_chunk.min(RELAY_BYTES as u64) as usize),
        splicer,
        small: None,
    };
    let record = RecordInfo { name: name.clone(), size, chunking, origin };
    let mut io = EnginePut::new(state, &writer, &spans, source, record);
    match dfs_core::upload::put(&mut io, spans.len(), replicas, MAX_INFLIGHT_CHUNKS).await {
        Ok(()) => client.write_msg(&Msg::PutOk { file_id }).await,
        Err(Failed::Stopped(e)) => {
            tracing::info!("upload of {name:?} abandoned by the client: {e}");
            Err(e)
        }
        Err(Failed::Commit(reply)) => client.write_msg(&reply).await,
        Err(failed) => {
            let f = PutFailure::from_cluster(failed, replicas);
            tracing::warn!("upload of {name:?} failed at chunk {}: {}", f.chunk_idx, f.message);
            client.write_msg(&Msg::error(f.status, format!("cannot store {name:?}: {}", f.message))).await
        }
    }
}

impl PutFailure {
    /// The answer to an upload the cluster could not take: too few nodes took a chunk, or a
    /// chunk lost copies while it was written and no other node took one.
    fn from_cluster<S>(failed: Failed<S>, replicas: usize) -> PutFailure {
        let describe = |errors: &[(SocketAddr, NodeError)]| {
            errors.iter().map(|(_, e)| e.to_string()).collect::<Vec<_>>().join("; ")
        };
        match failed {
            Failed::Refused { chunk, refused: Refused { accepted, candidates, refusals } } => PutFailure {
                chunk_idx: chunk as u32,
                status: if refusals.is_empty() { Status::Internal } else { Status::Unavailable },
                message: format!(
                    "chunk {chunk} needs {replicas} copies on distinct nodes, but only {accepted} of {candidates} \
                     nodes accepted it ({})",
                    describe(&refusals)
                ),
            },
            Failed::Incomplete { chunk, copies: 0, errors } => PutFailure {
                chunk_idx: chunk as u32,
                status: errors.first().map_or(Status::Internal, |(_, e)| e.status()),
                message: format!(
                    "chunk {chunk} lost all of its {replicas} copies while they were written: {}",
                    describe(&errors)
                ),
            },
            Failed::Incomplete { chunk, copies, errors } => PutFailure {
                chunk_idx: chunk as u32,
                status: Status::Unavailable,
                message: format!(
                    "chunk {chunk} has {copies} of the {replicas} copies it needs and no other node took one: {}",
                    describe(&errors)
                ),
            },
            Failed::Stopped(_) | Failed::Commit(_) => {
                unreachable!("a stopped source and a failed commit are answered by the caller")
            }
        }
    }
}

/// What the record of an upload says besides its chunks.
struct RecordInfo {
    name: String,
    size: u64,
    chunking: Chunking,
    origin: Option<Origin>,
}

/// Where an upload's bytes come from, chunk by chunk: the client's connection
/// ([`FromClient`]) or a request body read a chunk at a time ([`FromBody`]).
#[allow(async_fn_in_trait)]
trait Source {
    /// Why the source stopped.
    type Stopped;
    /// Reads what chunk `idx`'s STORE requests carry; its crc32.
    async fn prepare(&mut self, idx: usize) -> Result<u32, Self::Stopped>;
    /// Chunk `idx`'s bytes when they go with the STORE request (a small chunk).
    fn with_request(&self, idx: usize) -> Option<&[u8]>;
    /// Moves chunk `idx`'s bytes into every live target (or reads and drops them when there
    /// is none).
    async fn send(&mut self, idx: usize, targets: &mut [Target]) -> Result<(), Self::Stopped>;
    /// After the last chunk: whether the source is whole.
    async fn finish(&mut self) -> Result<(), Self::Stopped>;
}

/// The native PUT's bytes: the client's connection. A small chunk is read from the client
/// first and goes to each node with its STORE request in one write (one wake-up of the node
/// instead of two); a larger one is relayed as it arrives, spliced or copied.
struct FromClient<'a> {
    client: &'a Conn,
    spans: &'a [ChunkSpan],
    /// The chunk crc32s the client announced.
    announced: Vec<u32>,
    bufs: RelayBuffers,
    splicer: Option<Splicer>,
    /// The small chunk read ahead of its STOREs.
    small: Option<Vec<u8>>,
}

impl Source for FromClient<'_> {
    type Stopped = FrameError;

    async fn prepare(&mut self, idx: usize) -> Result<u32, FrameError> {
        let n = self.spans[idx].length as usize;
        if n <= COALESCE_BYTES {
            self.small = Some(self.client.read_exact(self.bufs.take(0), 0, n, false).await?);
        }
        Ok(self.announced[idx])
    }

    fn with_request(&self, idx: usize) -> Option<&[u8]> {
        self.small.as_deref().map(|b| &b[..self.spans[idx].length as usize])
    }

    async fn send(&mut self, idx: usize, targets: &mut [Target]) -> Result<(), FrameError> {
        match self.small.take() {
            // Sent with the requests.
            Some(buf) => {
                self.bufs.bufs[0] = buf;
                Ok(())
            }
            None => relay(self.client, targets, self.spans[idx].length, &mut self.bufs, &mut self.splicer).await,
        }
    }

    async fn finish(&mut self) -> Result<(), FrameError> {
        Ok(())
    }
}

/// A buffered upload's bytes: a request body, each chunk read whole into one of two buffers
/// so that its crc32 is known before it goes to its nodes; while one chunk is written to its
/// nodes, the next is read from the body into the other.
struct FromBody<'a, B: BodySource> {
    body: &'a mut B,
    spans: &'a [ChunkSpan],
    max_chunk: usize,
    /// The chunk about to be sent, and the buffer the next is read into.
    cur: Vec<u8>,
    next: Vec<u8>,
    /// How the read of the chunk in `cur` went.
    filled: Result<(), B::Error>,
}

impl<B: BodySource> Source for FromBody<'_, B> {
    type Stopped = B::Error;

    async fn prepare(&mut self, idx: usize) -> Result<u32, B::Error> {
        std::mem::replace(&mut self.filled, Ok(()))?;
        let next_len = self.spans.get(idx + 1).map_or(0, |s| s.length as usize);
        if self.next.len() < next_len {
            self.next = vec![0u8; self.max_chunk];
        }
        Ok(crc32fast::hash(&self.cur[..self.spans[idx].length as usize]))
    }

    fn with_request(&self, idx: usize) -> Option<&[u8]> {
        let n = self.spans[idx].length as usize;
        (n <= COALESCE_BYTES).then(|| &self.cur[..n])
    }

    async fn send(&mut self, idx: usize, targets: &mut [Target]) -> Result<(), B::Error> {
        let n = self.spans[idx].length as usize;
        let next_len = self.spans.get(idx + 1).map(|s| s.length as usize);
        let (body, next) = (&mut *self.body, &mut self.next);
        let fill_next = async move {
            match next_len {
                Some(m) => body.fill(&mut next[..m]).await,
                None => Ok(()),
            }
        };
        if !targets.is_empty() && n > COALESCE_BYTES {
            let (written, read) =
                futures_util::future::join(write_live(targets, std::mem::take(&mut self.cur), n), fill_next).await;
            self.cur = written;
            self.filled = read;
        } else {
            self.filled = fill_next.await;
        }
        // The buffer just filled holds the next chunk; the one written goes back to be filled
        // (a write that failed or timed out kept it: it is then empty, made anew in `prepare`).
        std::mem::swap(&mut self.cur, &mut self.next);
        assert!(self.cur.len() >= next_len.unwrap_or(0), "the next chunk was read into a whole buffer");
        // A body that broke is reported at the next chunk (or by `finish`), as the client's
        // connection is: the copies of this one are awaited meanwhile.
        Ok(())
    }

    async fn finish(&mut self) -> Result<(), B::Error> {
        std::mem::replace(&mut self.filled, Ok(()))?;
        self.body.finish().await
    }
}

/// One upload over the engine's node connections and metadata, its bytes from `S`:
/// what `dfs_core::upload::put` asks for.
struct EnginePut<'a, S> {
    state: &'a EngineState,
    writer: &'a Writer,
    spans: &'a [ChunkSpan],
    /// Each chunk's crc32, once prepared.
    crcs: Vec<u32>,
    source: S,
    record: RecordInfo,
}

impl<'a, S: Source> EnginePut<'a, S> {
    fn new(state: &'a EngineState, writer: &'a Writer, spans: &'a [ChunkSpan], source: S, record: RecordInfo) -> Self {
        EnginePut { state, writer, spans, crcs: Vec::with_capacity(spans.len()), source, record }
    }

    fn chunk_id(&self, idx: usize) -> ChunkId {
        ChunkId { file_id: self.writer.file_id, chunk_idx: self.spans[idx].chunk_idx }
    }
}

/// A chunk's copies completed node to node over the engine's connections, every block
/// verified ([`cluster::copy_chunk`]); `dfs_core::upload::complete` decides which.
impl<S: Source> CopyIo for EnginePut<'_, S> {
    type Node = SocketAddr;
    type Id = NodeId;
    type Error = NodeError;

    fn nodes_up_first(&self) -> Vec<SocketAddr> {
        self.state.links.health.up_first(&self.state.config.nodes)
    }

    fn will_write(&self, _chunk: usize, _node: SocketAddr) {}

    async fn copy(
        &self,
        idx: usize,
        source: SocketAddr,
        dest: SocketAddr,
        block_crcs: &[u32],
    ) -> Result<NodeId, NodeError> {
        let span = &self.spans[idx];
        let chunk = ChunkRecord {
            offset: span.offset,
            length: span.length,
            crc32: self.crcs[idx],
            block_crcs: block_crcs.to_vec(),
            placement: Vec::new(),
        };
        let chunk_id = self.chunk_id(idx);
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

impl<S: Source> PutIo for EnginePut<'_, S> {
    type Open = Target;
    type Pending = tokio::task::JoinHandle<Result<(NodeId, Vec<u32>), NodeError>>;
    type Stopped = S::Stopped;
    type CommitError = Msg;

    fn candidates(&self, idx: usize) -> Vec<SocketAddr> {
        let ring = dfs_core::placement::ring(&self.state.config.nodes, self.writer.file_id, self.spans[idx].chunk_idx);
        self.state.links.health.up_first(&ring)
    }

    async fn prepare(&mut self, idx: usize) -> Result<(), S::Stopped> {
        let crc32 = self.source.prepare(idx).await?;
        assert_eq!(self.crcs.len(), idx, "chunks are prepared once each, in order");
        self.crcs.push(crc32);
        Ok(())
    }

    async fn open(&self, idx: usize, addr: SocketAddr) -> Result<Target, NodeError> {
        let (chunk_id, length, crc32) = (self.chunk_id(idx), self.spans[idx].length, self.crcs[idx]);
        match open_store(addr, &self.state.links, chunk_id, length, crc32, self.source.with_request(idx)).await {
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

    async fn send(&mut self, idx: usize, targets: &mut [Target]) -> Result<(), S::Stopped> {
        self.source.send(idx, targets).await
    }

    fn await_ack(&self, idx: usize, addr: SocketAddr, target: Target) -> Result<Self::Pending, NodeError> {
        assert_eq!(target.addr, addr, "a target is its node's");
        if let Some(e) = target.error {
            self.state.links.health.note_failure(&e);
            return Err(e);
        }
        let node = target.node.expect("a target that has not failed has its connection");
        let (length, crc32) = (self.spans[idx].length, self.crcs[idx]);
        Ok(dfs_runtime::backend::spawn(async move {
            let block_crcs = await_store(&node, length, crc32).await?;
            let node_id = node.node_id;
            node.checkin();
            Ok((node_id, block_crcs))
        }))
    }

    async fn acked(&self, pending: Self::Pending) -> Result<(NodeId, Vec<u32>), NodeError> {
        let acked = pending.await.expect("store acknowledgement task panicked");
        if let Err(e) = &acked {
            tracing::debug!("a copy of upload {} failed: {e}", self.writer.file_id);
            self.state.links.health.note_failure(e);
        }
        acked
    }

    async fn finish(&mut self) -> Result<(), S::Stopped> {
        self.source.finish().await
    }

    fn abandon(&self, upload: &Upload) {
        delete_written(self.state, self.writer.file_id, upload);
    }

    async fn commit(&mut self, upload: &Upload) -> Result<(), Msg> {
        let RecordInfo { name, size, chunking, origin } = &mut self.record;
        let name = std::mem::take(name);
        commit(self.state, self.writer, self.spans, &self.crcs, upload, name, *size, *chunking, origin.take()).await
    }

    fn id_of(&self, addr: SocketAddr) -> Option<NodeId> {
        self.state.links.health.id_of(addr)
    }

    /// A copy whose node has since answered with another ID (its data directory was replaced
    /// while the upload went on) is gone, though acknowledged. The repair queue learns of
    /// replaced nodes from the node table, but finds only chunks already committed; this
    /// covers the ones committed after, so that either way the chunk is queued. (Found by
    /// `dfs-sim`.)
    fn note_replaced(&self, idx: usize) {
        let chunk = self.chunk_id(idx);
        tracing::warn!("{chunk}: a node was replaced after it acknowledged its copy; queued for repair");
        self.state.repair_queue.note(chunk, dfs_core::repair::Reason::NodeReplaced);
    }
}

/// Deletes, in the background, every copy an upload that will not be committed has written.
fn delete_written(state: &EngineState, file_id: FileId, upload: &Upload) {
    let written =
        upload.written().into_iter().map(|(i, addr)| (ChunkId { file_id, chunk_idx: i as u32 }, addr)).collect();
    cluster::delete_later(&state.links, written);
}

/// Records a file every chunk of which has all its copies, and settles a commit that answered
/// an error. Err: the reply for the client (the copies are then gone, or kept when whether the
/// record exists cannot be told).
#[allow(clippy::too_many_arguments)]
async fn commit(
    state: &EngineState,
    writer: &Writer,
    spans: &[ChunkSpan],
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
    assert_eq!(upload.next(), dfs_core::upload::Next::Commit, "an upload is committed only with every copy");
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
        Ok(()) => Ok(()),
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
    let max_chunk = max_chunk as usize;
    let mut cur = vec![0u8; max_chunk];
    let filled = body.fill(&mut cur[..spans.first().map_or(0, |s| s.length as usize)]).await;
    let next = if spans.len() > 1 { vec![0u8; max_chunk] } else { Vec::new() };
    let source = FromBody { body, spans: &spans, max_chunk, cur, next, filled };
    let record = RecordInfo { name: name.clone(), size, chunking, origin: None };
    let mut io = EnginePut::new(state, &writer, &spans, source, record);
    match dfs_core::upload::put(&mut io, spans.len(), replicas, MAX_INFLIGHT_CHUNKS).await {
        Ok(()) => Ok(file_id),
        Err(Failed::Stopped(e)) => {
            tracing::info!("upload of {name:?} stored nothing: its body broke or did not match");
            Err(Body(e))
        }
        Err(Failed::Commit(Msg::Error { status, message })) => Err(Store(status, message)),
        Err(Failed::Commit(other)) => Err(Store(Status::Internal, format!("{other:?}"))),
        Err(failed) => {
            let f = PutFailure::from_cluster(failed, replicas);
            tracing::warn!("upload of {name:?} failed at chunk {}: {}", f.chunk_idx, f.message);
            Err(Store(f.status, format!("cannot store {name:?}: {}", f.message)))
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
