//! One connection from the engine: handshake, then requests until it hangs up. Every request
//! that reaches its end gets exactly one answer; a malformed frame gets a BadRequest answer and
//! the connection is closed, without disturbing any other connection.

use crate::metrics;
use crate::store::files::footer::{Footer, FooterError, FOOTER_FIXED_BYTES};
use crate::store::files::ChunkStore;
use crate::store::segments::{record_span, Kind, Location, RecordHeader, SegmentStore, WRITE_BYTES};
use crate::store::Stores;
use dfs_proto::auth::{self, ClusterSecret, Nonce, AUTH_CLUSTER, AUTH_NONE};
use dfs_proto::io_std::Frame;
use dfs_proto::layout::{block_len, n_blocks, BlockHasher};
use dfs_proto::limits::{BLOCK_SIZE_BYTES, MAX_FILE_SIZE_BYTES, MAX_LIST_ENTRIES};
use dfs_proto::{ChunkId, FrameError, FrameHeader, Hello, HelloOk, Msg, Role, Status, VERSION};
use dfs_runtime::aligned::{self, align_down, align_up, AlignedBuf, ALIGN};
use dfs_runtime::backend::fs::{File, OpenOptions};
use dfs_runtime::conn::Conn;
use dfs_runtime::splice::{dup_fd, splice_exact, End, Pipe, SPLICE_MIN_BYTES};
use dfs_runtime::DataPath;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_uring::buf::BoundedBuf;

/// Bytes moved per socket read or file write while receiving a chunk.
pub const STORE_IO_BYTES: usize = BLOCK_SIZE_BYTES as usize;
/// Blocks of a segment record being read while earlier ones are sent, in one FETCH.
const FETCH_READS_AHEAD: usize = 8;
/// Pieces of a segment record being written while the next is received, in one STORE.
const STORE_WRITES_IN_FLIGHT: usize = 4;

pub struct NodeState {
    /// Who this node is, whatever address it listens on (see `identity`).
    pub node_id: dfs_proto::NodeId,
    pub stores: Stores,
    pub idle_timeout: Duration,
    pub data_path: DataPath,
    /// Set with `--commit-sync grouped`: STOREs share file-system-wide syncs.
    pub group_sync: Option<crate::store::files::sync::GroupSync>,
    /// With a secret, only an engine that proves it knows the secret is served.
    pub cluster_secret: Option<ClusterSecret>,
}

/// Why a request failed; the connection itself is still usable.
#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error("chunk {0} not found")]
    NotFound(ChunkId),
    #[error("chunk {0}: {1}")]
    Corrupt(ChunkId, String),
    #[error("chunk {0} already exists")]
    AlreadyExists(ChunkId),
    #[error("chunk {0} was stored again after the time given; kept")]
    Newer(ChunkId),
    #[error("chunk {chunk}: received data has crc32 {actual:08x}, {announced:08x} was announced")]
    ChecksumMismatch { chunk: ChunkId, announced: u32, actual: u32 },
    #[error("chunk {0}: {1}")]
    BadRequest(ChunkId, String),
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

impl RequestError {
    fn status(&self) -> Status {
        match self {
            RequestError::NotFound(_) => Status::NotFound,
            RequestError::Corrupt(..) => Status::Corrupt,
            RequestError::AlreadyExists(_) | RequestError::Newer(_) => Status::AlreadyExists,
            RequestError::ChecksumMismatch { .. } => Status::ChecksumMismatch,
            RequestError::BadRequest(..) => Status::BadRequest,
            RequestError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC) => Status::NoSpace,
            RequestError::Io { .. } => Status::Internal,
        }
    }

    fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> RequestError {
        let context = context.into();
        move |source| RequestError::Io { context, source }
    }
}

pub async fn handle(state: Arc<NodeState>, stream: dfs_runtime::backend::net::TcpStream, peer: SocketAddr) {
    let conn = Conn::new(stream, state.idle_timeout, dfs_proto::Link::Node);
    match serve(&state, &conn).await {
        Ok(()) | Err(FrameError::Closed) => tracing::debug!(%peer, "connection closed"),
        Err(e) => tracing::warn!(%peer, "connection dropped: {e}"),
    }
}

async fn serve(state: &NodeState, conn: &Conn) -> Result<(), FrameError> {
    match conn.read_frame().await {
        Ok(Frame::Msg(Msg::Hello(h))) if h.role == Role::Engine && h.version == VERSION => {
            if let Err(why) = authenticate(state, conn, &h).await? {
                tracing::warn!("refused an engine connection: {why}");
                let _ = conn.write_msg(&Msg::error(Status::Unauthorized, why)).await;
                return Ok(());
            }
        }
        Ok(Frame::Msg(Msg::Hello(h))) if h.version != VERSION => {
            let msg = format!("protocol version {} is not supported; this node speaks {VERSION}", h.version);
            conn.write_msg(&Msg::error(Status::VersionMismatch, msg)).await?;
            return Ok(());
        }
        Ok(other) => {
            let _ = conn.write_msg(&Msg::error(Status::BadRequest, "expected an engine Hello")).await;
            return Err(FrameError::Io(io::Error::other(format!("bad handshake: {other:?}"))));
        }
        Err(e) => return reject(conn, e).await,
    }
    conn.write_msg(&Msg::HelloOk(HelloOk {
        version: VERSION,
        block_size_bytes: BLOCK_SIZE_BYTES,
        dynamic_chunk_cap_bytes: 0,
        idle_timeout_ms: state.idle_timeout.as_millis().min(u32::MAX as u128) as u32,
        node_id: Some(state.node_id),
    }))
    .await?;
    loop {
        let frame = match conn.read_frame().await {
            Ok(f) => f,
            Err(FrameError::Closed) => return Ok(()),
            Err(e) => return reject(conn, e).await,
        };
        let op = match &frame {
            Frame::Msg(m) => m.kind().name(),
            Frame::Data(_) => "Data",
        };
        let started = std::time::Instant::now();
        let mark = conn.mark();
        metrics::INFLIGHT_REQUESTS.inc();
        let result: Result<(), FrameError> = async {
            let reply = match (frame, &state.stores) {
                // A length no chunk can have: the body cannot be read through, so the
                // connection ends after the answer.
                (Frame::Msg(Msg::Store { length, .. }), _) if length > MAX_FILE_SIZE_BYTES => {
                    let msg = format!("chunk length {length} is over the limit of {MAX_FILE_SIZE_BYTES} bytes");
                    conn.write_msg(&Msg::error(Status::BadRequest, msg)).await?;
                    return Err(FrameError::Io(io::Error::other("oversized STORE")));
                }
                (Frame::Msg(Msg::Store { chunk_id, length, crc32 }), Stores::Files(files)) => {
                    store(state, files, conn, chunk_id, length, crc32).await?
                }
                (Frame::Msg(Msg::Store { chunk_id, length, crc32 }), Stores::Segments(segs)) => {
                    segment_store(segs, conn, chunk_id, length, crc32).await?
                }
                (Frame::Msg(Msg::Fetch { chunk_id, first_block }), stores) => {
                    let fetched = match stores {
                        Stores::Files(files) => fetch(state, files, conn, chunk_id, first_block).await?,
                        Stores::Segments(segs) => segment_fetch(segs, conn, chunk_id, first_block).await?,
                    };
                    match fetched {
                        Ok(()) => return Ok(()),
                        Err(e) => Err(e),
                    }
                }
                (Frame::Msg(Msg::Exists { chunk_id }), Stores::Files(files)) => exists(files, chunk_id).await,
                (Frame::Msg(Msg::Exists { chunk_id }), Stores::Segments(segs)) => match segs.get(&chunk_id) {
                    Some(l) => Ok(Msg::ExistsOk { length: l.length, crc32: l.crc32 }),
                    None => Err(RequestError::NotFound(chunk_id)),
                },
                (Frame::Msg(Msg::ChunkDelete { chunk_id, written_before_unix_ms }), Stores::Files(files)) => {
                    delete(files, chunk_id, written_before_unix_ms).await
                }
                (Frame::Msg(Msg::ChunkDelete { chunk_id, written_before_unix_ms }), Stores::Segments(segs)) => {
                    match segs.remove_if_written_before(chunk_id, written_before_unix_ms).await {
                        Ok(true) => Ok(Msg::Ok),
                        Ok(false) => Err(RequestError::Newer(chunk_id)),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(RequestError::NotFound(chunk_id)),
                        Err(e) => Err(RequestError::io(format!("cannot delete chunk {chunk_id}"))(e)),
                    }
                }
                (Frame::Msg(Msg::ChunkList { after, limit, min_age_secs }), stores) => {
                    let limit = limit.min(MAX_LIST_ENTRIES) as usize;
                    // Taken before the listing: every copy listed was stored before it.
                    let listed_at_unix_ms = dfs_runtime::unix_ms();
                    let min_age = (min_age_secs > 0).then(|| Duration::from_secs(min_age_secs));
                    match stores {
                        Stores::Files(files) => files.list(after, limit, min_age),
                        Stores::Segments(segs) => Ok(segs.list(after, limit, min_age)),
                    }
                    .map(|(chunk_ids, more)| Msg::ChunkListOk { chunk_ids, more, listed_at_unix_ms })
                    .map_err(RequestError::io("cannot list chunks"))
                }
                (Frame::Msg(Msg::NodeStat), stores) => match stores {
                    Stores::Files(files) => files.report(),
                    Stores::Segments(segs) => segs.report(),
                }
                .inspect(metrics::record_store)
                .map(Msg::NodeStatOk)
                .map_err(RequestError::io("cannot read store report")),
                (Frame::Msg(Msg::Scrub), stores) => {
                    crate::scrub::scrub_now(stores).await.map_err(RequestError::io("scrub failed"))
                }
                (other, _) => {
                    let _ = conn.write_msg(&Msg::error(Status::BadRequest, "unexpected frame")).await;
                    return Err(FrameError::Io(io::Error::other(format!("unexpected frame {other:?}"))));
                }
            };
            match reply {
                Ok(msg) => conn.write_msg(&msg).await?,
                Err(e) => {
                    tracing::warn!("{e}");
                    conn.write_msg(&Msg::error(e.status(), e.to_string())).await?
                }
            }
            Ok(())
        }
        .await;
        metrics::INFLIGHT_REQUESTS.dec();
        metrics::record(op, &conn.tally(&mark, &result), started.elapsed());
        result?;
    }
}

/// Checks that the engine knows the cluster secret, if this node has one (see
/// `dfs_proto::auth`). Inner error: why the engine is refused.
async fn authenticate(state: &NodeState, conn: &Conn, hello: &Hello) -> Result<Result<(), String>, FrameError> {
    let Some(secret) = &state.cluster_secret else {
        return Ok(match hello.auth_method {
            AUTH_NONE => Ok(()),
            _ => Err("this node has no cluster secret (--cluster-secret-file) and cannot prove one".into()),
        });
    };
    let engine_nonce: Nonce = match (hello.auth_method, hello.auth.as_slice().try_into()) {
        (AUTH_CLUSTER, Ok(n)) => n,
        _ => {
            return Ok(Err("this node requires the cluster secret: start the engine with --cluster-secret-file".into()))
        }
    };
    let node_nonce = auth::nonce().map_err(FrameError::Io)?;
    let proof = secret.node_proof(&engine_nonce, &node_nonce, &state.node_id);
    conn.write_msg(&Msg::AuthChallenge { nonce: node_nonce, node_id: state.node_id, proof }).await?;
    Ok(match conn.read_frame().await? {
        Frame::Msg(Msg::AuthProof { proof }) if secret.check_engine(&engine_nonce, &node_nonce, &proof) => Ok(()),
        Frame::Msg(Msg::AuthProof { .. }) => Err("the engine's proof of the cluster secret is wrong".into()),
        _ => Err("expected the engine's AuthProof".into()),
    })
}

/// Answers a malformed frame with BadRequest (best effort) and ends the connection.
async fn reject(conn: &Conn, e: FrameError) -> Result<(), FrameError> {
    if let FrameError::Decode(d) = &e {
        let _ = conn.write_msg(&Msg::error(Status::BadRequest, format!("malformed frame: {d}"))).await;
    }
    Err(e)
}

/// Removes a temp file unless the chunk was committed.
struct TempGuard<'a> {
    path: &'a Path,
    armed: bool,
}

impl Drop for TempGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = std::fs::remove_file(self.path) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!("cannot remove temp file {}: {e}", self.path.display());
                }
            }
        }
    }
}

/// Receives a chunk of `length` bytes. The body is always read to its end, so the engine gets a
/// clean answer even when the chunk is refused. Outer error: the connection broke.
async fn store(
    state: &NodeState,
    files: &ChunkStore,
    conn: &Conn,
    chunk_id: ChunkId,
    length: u64,
    crc32: u32,
) -> Result<Result<Msg, RequestError>, FrameError> {
    let final_path = files.chunk_path(&chunk_id);
    let temp_path = files.temp_path(&chunk_id).map_err(FrameError::Io)?;
    let mut guard = TempGuard { path: &temp_path, armed: false };
    let mut failed: Option<RequestError> = None;
    let mut file = None;
    if final_path.exists() {
        failed = Some(RequestError::AlreadyExists(chunk_id));
    } else {
        guard.armed = true;
        match OpenOptions::new().write(true).create_new(true).open(&temp_path).await {
            Ok(f) => file = Some(f),
            Err(e) => failed = Some(RequestError::io(format!("cannot create {}", temp_path.display()))(e)),
        }
    }
    let mut hasher = BlockHasher::new();
    // Sized to the chunk: a small chunk must not pay for zeroing a whole 1 MiB buffer.
    let mut buf = vec![0u8; (length as usize).min(STORE_IO_BYTES)];
    let mut pos = 0u64;
    // The last piece is written together with the footer, after the crc32 check, so a chunk
    // that fits one buffer costs one write.
    let mut last_len = 0usize;
    while pos < length {
        let n = (length - pos).min(STORE_IO_BYTES as u64) as usize;
        buf = conn.read_exact(buf, 0, n, false).await?;
        let is_last = pos + n as u64 == length;
        if let (None, Some(f)) = (&failed, &file) {
            hasher.update(&buf[..n]);
            if is_last {
                last_len = n;
            } else {
                let (res, slice) = f.write_all_at(buf.slice(0..n), pos).await;
                buf = slice.into_inner();
                if let Err(e) = res {
                    failed = Some(RequestError::io(format!("cannot write chunk {chunk_id}"))(e));
                }
            }
        }
        pos += n as u64;
    }
    if let Some(e) = failed {
        return Ok(Err(e));
    }
    let file = file.expect("no failure means the temp file is open");
    let (actual, block_crcs) = hasher.finish();
    if actual != crc32 {
        return Ok(Err(RequestError::ChecksumMismatch { chunk: chunk_id, announced: crc32, actual }));
    }
    let footer = Footer { chunk_id, length, crc32, block_crcs };
    let mut tail = Vec::with_capacity(last_len + Footer::encoded_len(length) as usize);
    tail.extend_from_slice(&buf[..last_len]);
    tail.extend_from_slice(&footer.encode());
    let tail_at = length - last_len as u64;
    let res = commit(state, files, file, chunk_id, tail, tail_at, &temp_path).await;
    if res.is_ok() {
        guard.armed = false;
    }
    Ok(res.map(|()| Msg::StoreOk { block_crcs: footer.block_crcs }))
}

/// Last data and footer, fdatasync, no-replace rename, directory fsync: the chunk exists only
/// once durable.
async fn commit(
    state: &NodeState,
    files: &ChunkStore,
    file: File,
    id: ChunkId,
    tail: Vec<u8>,
    tail_at: u64,
    temp: &Path,
) -> Result<(), RequestError> {
    let tail_len = tail.len() as u64;
    let (res, _) = file.write_all_at(tail, tail_at).await;
    res.map_err(RequestError::io(format!("cannot write chunk {id}")))?;
    if state.group_sync.is_none() {
        file.sync_data().await.map_err(RequestError::io(format!("cannot sync chunk {id}")))?;
    }
    file.close().await.map_err(RequestError::io(format!("cannot close chunk {id}")))?;
    let dir = files.chunk_dir_fd(&id);
    let temp_name = temp.file_name().and_then(|n| n.to_str()).expect("temp names are ASCII");
    match dfs_runtime::ops::rename_noreplace(dir, temp_name, dir, &id.file_name()).await {
        Ok(()) => files.note_added(tail_at + tail_len),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => return Err(RequestError::AlreadyExists(id)),
        Err(e) => return Err(RequestError::io(format!("cannot rename chunk {id} into place"))(e)),
    }
    match &state.group_sync {
        // The file's data and its new name are durable once a sync that started after the
        // rename has finished.
        Some(group) => group.sync().await.map_err(RequestError::io(format!("cannot sync chunk {id}"))),
        None => {
            dfs_runtime::ops::fsync(dir).await.map_err(RequestError::io(format!("cannot sync directory of chunk {id}")))
        }
    }
}

/// Opens a committed chunk without following symlinks, and reads and checks its footer.
async fn open_chunk(files: &ChunkStore, chunk_id: ChunkId) -> Result<(File, Footer), RequestError> {
    let path = files.chunk_path(&chunk_id);
    let file = match OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(RequestError::NotFound(chunk_id)),
        Err(e) => return Err(RequestError::io(format!("cannot open chunk {chunk_id}"))(e)),
    };
    let corrupt = |e: FooterError| RequestError::Corrupt(chunk_id, e.to_string());
    let file_len = file.len().await.map_err(RequestError::io(format!("cannot stat chunk {chunk_id}")))?;
    if file_len < FOOTER_FIXED_BYTES as u64 {
        return Err(corrupt(FooterError::TooShort(file_len)));
    }
    let tail_at = file_len - FOOTER_FIXED_BYTES as u64;
    let (res, tail) = file.read_exact_at(vec![0u8; FOOTER_FIXED_BYTES], tail_at).await;
    res.map_err(RequestError::io(format!("cannot read chunk {chunk_id}")))?;
    let (length, _) = Footer::parse_tail(&tail, file_len).map_err(corrupt)?;
    let footer_len = Footer::encoded_len(length);
    let (res, bytes) = file.read_exact_at(vec![0u8; footer_len as usize], length).await;
    res.map_err(RequestError::io(format!("cannot read chunk {chunk_id}")))?;
    let footer = Footer::decode(&bytes, chunk_id).map_err(corrupt)?;
    Ok((file, footer))
}

/// Sends a chunk block by block from `first_block` on, each block checked against its stored
/// crc32 before it leaves. Inner error: answered before any data. A block that fails mid-stream
/// ends the stream with a Corrupt error frame instead of its bytes.
async fn fetch(
    state: &NodeState,
    files: &ChunkStore,
    conn: &Conn,
    chunk_id: ChunkId,
    first_block: u32,
) -> Result<Result<(), RequestError>, FrameError> {
    let (file, footer) = match open_chunk(files, chunk_id).await {
        Ok(x) => x,
        Err(e) => return Ok(Err(e)),
    };
    if u64::from(first_block) > n_blocks(footer.length) {
        let _ = file.close().await;
        let why = format!("first block {first_block} is past the end of a chunk of {} blocks", n_blocks(footer.length));
        return Ok(Err(RequestError::BadRequest(chunk_id, why)));
    }
    conn.write_msg(&Msg::FetchOk { length: footer.length, crc32: footer.crc32, block_size_bytes: BLOCK_SIZE_BYTES })
        .await?;
    // With splice, each block is read once to be verified, then sent from the page cache through
    // a pipe, saving the copy into the socket. A splicing set-up failure falls back to copying.
    let splice = match state.data_path {
        DataPath::Splice if footer.length >= SPLICE_MIN_BYTES => {
            match (Pipe::new(), dup_fd(conn.stream.as_raw_fd()), dup_fd(file.as_raw_fd())) {
                (Ok(pipe), Ok(sock), Ok(fd)) => Some((pipe, End::Stream(sock), fd)),
                (p, s, f) => {
                    let e = p.err().or(s.err()).or(f.err()).map(|e| e.to_string()).unwrap_or_default();
                    tracing::warn!("cannot set up splicing, copying chunk {chunk_id} instead: {e}");
                    None
                }
            }
        }
        _ => None,
    };
    let mut buf = vec![0u8; (footer.length as usize).min(BLOCK_SIZE_BYTES as usize)];
    for block_idx in u64::from(first_block)..n_blocks(footer.length) {
        let len = block_len(footer.length, block_idx) as usize;
        let offset = block_idx * BLOCK_SIZE_BYTES as u64;
        let (res, slice) = file.read_exact_at(buf.slice(0..len), offset).await;
        buf = slice.into_inner();
        let checked = res
            .map_err(RequestError::io(format!("cannot read chunk {chunk_id}")))
            .and_then(|()| check_block(chunk_id, block_idx, &buf[..len], footer.block_crcs[block_idx as usize]));
        if let Err(e) = checked {
            if matches!(e, RequestError::Corrupt(..)) {
                // Set aside as scrub would: repair then finds it missing and makes it again.
                match files.quarantine(&chunk_id) {
                    Ok(to) => {
                        tracing::warn!("chunk {chunk_id} failed a block check on FETCH; moved to {}", to.display())
                    }
                    Err(q) => {
                        tracing::warn!("chunk {chunk_id} failed a block check on FETCH; cannot set it aside: {q}")
                    }
                }
            }
            return end_fetch(conn, e).await;
        }
        match &splice {
            Some((pipe, sock, fd)) => {
                conn.write_all(FrameHeader::data(len).encode().to_vec()).await?;
                // A failure here leaves the frame half sent: the connection cannot continue.
                splice_exact(&End::File(fd.clone(), offset), sock, pipe, len as u64, conn.idle_timeout)
                    .await
                    .map_err(|e| FrameError::Io(io::Error::other(format!("splicing chunk {chunk_id}: {e}"))))?;
                conn.note_written(len as u64);
            }
            None => buf = conn.write_data(buf, 0, len).await?,
        }
    }
    let _ = file.close().await;
    conn.write_msg(&Msg::End).await?;
    Ok(Ok(()))
}

/// A record FETCH found not to hold the bytes stored is set aside as scrub would (a tombstone,
/// counted as quarantined), so that repair finds the copy missing and makes it again.
async fn set_aside_if_corrupt(segs: &SegmentStore, chunk_id: ChunkId, loc: &Location, e: &RequestError) {
    if !matches!(e, RequestError::Corrupt(..)) {
        return;
    }
    match segs.quarantine_record(chunk_id, loc).await {
        Ok(()) => tracing::warn!("chunk {chunk_id} failed a block check on FETCH; set aside"),
        Err(q) => tracing::warn!("chunk {chunk_id} failed a block check on FETCH; cannot set it aside: {q}"),
    }
}

/// A block read for FETCH against the crc32 stored for it.
fn check_block(chunk_id: ChunkId, block_idx: u64, bytes: &[u8], expected: u32) -> Result<(), RequestError> {
    dfs_proto::layout::check_block(block_idx, bytes, expected)
        .map_err(|mismatch| RequestError::Corrupt(chunk_id, mismatch.to_string()))
}

/// Ends a FETCH stream with an Error frame in place of a block that cannot be sent (unreadable,
/// or not the bytes stored); the connection stays usable.
async fn end_fetch(conn: &Conn, e: RequestError) -> Result<Result<(), RequestError>, FrameError> {
    match e {
        RequestError::Corrupt(..) => tracing::error!("{e}"),
        _ => tracing::warn!("{e}"),
    }
    conn.write_msg(&Msg::error(e.status(), e.to_string())).await?;
    Ok(Ok(()))
}

async fn exists(files: &ChunkStore, chunk_id: ChunkId) -> Result<Msg, RequestError> {
    let (file, footer) = open_chunk(files, chunk_id).await?;
    let _ = file.close().await;
    Ok(Msg::ExistsOk { length: footer.length, crc32: footer.crc32 })
}

/// Deletes a chunk file; with `written_before_unix_ms`, only one last modified before then.
async fn delete(
    files: &ChunkStore,
    chunk_id: ChunkId,
    written_before_unix_ms: Option<u64>,
) -> Result<Msg, RequestError> {
    let path = files.chunk_path(&chunk_id);
    let meta = std::fs::symlink_metadata(&path);
    if let (Some(before), Ok(m)) = (written_before_unix_ms, &meta) {
        let modified_ms = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(u64::MAX, |d| d.as_millis() as u64);
        if modified_ms >= before {
            return Err(RequestError::Newer(chunk_id));
        }
    }
    let file_bytes = meta.map(|m| m.len()).unwrap_or(0);
    match dfs_runtime::backend::fs::remove_file(&path).await {
        Ok(()) => files.note_removed(file_bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(RequestError::NotFound(chunk_id)),
        Err(e) => return Err(RequestError::io(format!("cannot delete chunk {chunk_id}"))(e)),
    }
    dfs_runtime::ops::fsync(files.chunk_dir_fd(&chunk_id))
        .await
        .map_err(RequestError::io(format!("cannot sync directory of chunk {chunk_id}")))?;
    Ok(Msg::Ok)
}

/// Receives a chunk into a segment record: header, data and trailer go to disk in aligned
/// pieces of [`WRITE_BYTES`] with direct I/O as they arrive, then one shared fdatasync of the
/// segment makes it durable, and only then does the index point at it. The body is always read
/// to its end. Outer error: the connection broke.
async fn segment_store(
    segs: &SegmentStore,
    conn: &Conn,
    chunk_id: ChunkId,
    length: u64,
    crc32: u32,
) -> Result<Result<Msg, RequestError>, FrameError> {
    let mut failed: Option<RequestError> = None;
    let mut reservation = None;
    if segs.contains(&chunk_id) {
        failed = Some(RequestError::AlreadyExists(chunk_id));
    } else {
        match segs.reserve(record_span(length)) {
            Ok(r) => reservation = Some(r),
            Err(e) => failed = Some(RequestError::io(format!("cannot make room for chunk {chunk_id}"))(e)),
        }
    }
    let created_unix_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let lsn = reservation.as_ref().map_or(0, |r| r.lsn);
    let header = RecordHeader { kind: Kind::Chunk, chunk_id, length, crc32, created_unix_ms, lsn }.encode();
    // Staging buffers: each sized to the record when it is small (one write at the end), else
    // holding a write's worth plus the part of a block left over from the previous write (from
    // the thread's pool).
    let stage_bytes = (record_span(length) as usize).min(WRITE_BYTES + ALIGN);
    let mut stage = aligned::for_io(stage_bytes);
    stage.extend_from_slice(&header);
    let mut write_at = reservation.as_ref().map_or(0, |r| r.offset);
    let mut hasher = BlockHasher::new();
    let mut pos = 0u64;
    // Writes under way, oldest first, each a task of its own on this thread, so the next piece
    // is received while up to STORE_WRITES_IN_FLIGHT earlier ones are written; and their
    // buffers, once done.
    let mut writes = std::collections::VecDeque::new();
    let mut free: Vec<AlignedBuf> = Vec::new();
    let note_written = |done: Result<(io::Result<()>, AlignedBuf), tokio::task::JoinError>,
                        failed: &mut Option<RequestError>,
                        free: &mut Vec<AlignedBuf>| {
        let res = match done {
            Ok((res, buf)) => {
                free.push(buf);
                res
            }
            Err(e) => Err(io::Error::other(e)),
        };
        if let Err(e) = res {
            failed.get_or_insert(RequestError::io(format!("cannot write chunk {chunk_id}"))(e));
        }
    };
    while pos < length {
        let begin = if failed.is_some() { 0 } else { stage.len() };
        let n = (length - pos).min((stage_bytes - begin) as u64) as usize;
        stage = match conn.read_exact(stage, begin, begin + n, false).await {
            Ok(buf) => buf,
            Err(e) => {
                // The engine went away mid-chunk: once the writes under way are done, mark the
                // reserved space dead, so start-up passes it at once instead of searching it
                // for records.
                for w in writes.drain(..) {
                    let _ = w.await;
                }
                if let Some(r) = &reservation {
                    segs.abandon(r).await;
                }
                return Err(e);
            }
        };
        pos += n as u64;
        if failed.is_some() {
            stage.set_len(0);
            continue;
        }
        hasher.update(&stage[begin..begin + n]);
        stage.set_len(begin + n);
        if stage.len() >= WRITE_BYTES {
            let r = reservation.as_ref().expect("no failure means space was reserved");
            if writes.len() >= STORE_WRITES_IN_FLIGHT {
                let done = writes.pop_front().expect("writes are under way").await;
                note_written(done, &mut failed, &mut free);
            }
            if write_at == r.offset {
                // Tests hold a large record here, its space reserved and its first piece on
                // the way, while other records are written and checkpoints taken.
                dfs_runtime::failpoint::pause("segment-store-large-record").await;
            }
            let full = stage.len();
            let aligned = align_down(full as u64) as usize;
            let mut next = free.pop().unwrap_or_else(|| aligned::for_io(stage_bytes));
            next.set_len(0);
            next.extend_from_slice(&stage[aligned..full]);
            stage.set_len(aligned);
            let to_write = std::mem::replace(&mut stage, next);
            let fd = r.segment.fd.clone();
            let at = write_at;
            writes.push_back(dfs_runtime::backend::spawn(async move {
                dfs_runtime::ops::write_all_at(&fd, to_write, at).await
            }));
            write_at += aligned as u64;
        }
    }
    for w in writes.drain(..) {
        note_written(w.await, &mut failed, &mut free);
    }
    for buf in free {
        aligned::give_back(buf);
    }
    let Some(r) = reservation else {
        return Ok(Err(failed.expect("no reservation means a failure")));
    };
    if let Some(e) = failed {
        segs.abandon(&r).await;
        return Ok(Err(e));
    }
    let (actual, block_crcs) = hasher.finish();
    if actual != crc32 {
        segs.abandon(&r).await;
        return Ok(Err(RequestError::ChecksumMismatch { chunk: chunk_id, announced: crc32, actual }));
    }
    stage.extend_from_slice(&crate::store::segments::encode_trailer(&header, &block_crcs));
    stage.pad_to_alignment();
    assert_eq!(write_at + stage.len() as u64, r.offset + r.span, "a record fills its reservation exactly");
    let (res, stage) = dfs_runtime::ops::write_all_at(r.segment.fd_for(length), stage, write_at).await;
    aligned::give_back(stage);
    if let Err(e) = res {
        segs.abandon(&r).await;
        return Ok(Err(RequestError::io(format!("cannot write chunk {chunk_id}"))(e)));
    }
    if let Err(e) = segs.sync(&r.segment).await {
        return Ok(Err(RequestError::io(format!("cannot sync chunk {chunk_id}"))(e)));
    }
    let location = Location {
        segment: r.segment.clone(),
        offset: r.offset,
        length,
        crc32,
        created_unix_ms,
        lsn,
        block_crcs: block_crcs.clone().into(),
    };
    if !segs.publish(chunk_id, location) {
        segs.abandon(&r).await;
        return Ok(Err(RequestError::AlreadyExists(chunk_id)));
    }
    Ok(Ok(Msg::StoreOk { block_crcs }))
}

/// Sends a chunk's record block by block from `first_block` on, each read with direct I/O and
/// checked against its crc32 before it leaves.
async fn segment_fetch(
    segs: &SegmentStore,
    conn: &Conn,
    chunk_id: ChunkId,
    first_block: u32,
) -> Result<Result<(), RequestError>, FrameError> {
    let Some(loc) = segs.get(&chunk_id) else { return Ok(Err(RequestError::NotFound(chunk_id))) };
    let n = n_blocks(loc.length);
    if u64::from(first_block) > n {
        let why = format!("first block {first_block} is past the end of a chunk of {n} blocks");
        return Ok(Err(RequestError::BadRequest(chunk_id, why)));
    }
    let fetch_ok = Msg::FetchOk { length: loc.length, crc32: loc.crc32, block_size_bytes: BLOCK_SIZE_BYTES };
    let buf_bytes = align_up(loc.length.min(BLOCK_SIZE_BYTES as u64)) as usize + 2 * ALIGN;
    let fd = loc.segment.fd_for(loc.length);
    // Where block `block_idx` lies: the aligned span read, and its data's place in that span.
    let span = |block_idx: u64| {
        let len = block_len(loc.length, block_idx);
        let at = loc.data_offset() + block_idx * BLOCK_SIZE_BYTES as u64;
        (align_down(at), align_up(at + len), (at - align_down(at)) as usize, len as usize)
    };
    // A block as read: sound, or why not.
    let check = |block_idx: u64, res: io::Result<()>, buf: &AlignedBuf| {
        let (_, _, from, len) = span(block_idx);
        res.map_err(RequestError::io(format!("cannot read chunk {chunk_id}")))
            .and_then(|()| check_block(chunk_id, block_idx, &buf[from..from + len], loc.block_crcs[block_idx as usize]))
    };
    if first_block == 0 && n == 1 && loc.length as usize <= dfs_runtime::conn::COALESCE_BYTES {
        // A small chunk: read and checked first, then the whole answer in one write.
        let (start, end, from, len) = span(0);
        let (res, buf) =
            dfs_runtime::ops::read_exact_at(fd, aligned::for_io(buf_bytes), (end - start) as usize, start).await;
        if let Err(e) = check(0, res, &buf) {
            set_aside_if_corrupt(segs, chunk_id, &loc, &e).await;
            return end_fetch(conn, e).await;
        }
        conn.write_small(&[&fetch_ok], &buf[from..from + len], &[&Msg::End]).await?;
        return Ok(Ok(()));
    }
    conn.write_msg(&fetch_ok).await?;
    // Direct reads have a long latency on some disks, so up to FETCH_READS_AHEAD blocks are
    // being read while earlier ones are sent; each runs as a task of its own on this thread.
    let read = |block_idx: u64, buf: AlignedBuf| {
        let (start, end, _, _) = span(block_idx);
        let fd = fd.clone();
        dfs_runtime::backend::spawn(async move {
            dfs_runtime::ops::read_exact_at(&fd, buf, (end - start) as usize, start).await
        })
    };
    let mut reads = std::collections::VecDeque::new();
    let mut next_read = u64::from(first_block);
    let mut last = None;
    for block_idx in u64::from(first_block)..n {
        while next_read < n && reads.len() < FETCH_READS_AHEAD {
            let buf = last.take().unwrap_or_else(|| aligned::for_io(buf_bytes));
            reads.push_back(read(next_read, buf));
            next_read += 1;
        }
        if let Some(unused) = last.take() {
            aligned::give_back(unused);
        }
        let (res, buf) = match reads.pop_front().expect("a read is under way for every block not sent").await {
            Ok(done) => done,
            Err(e) => {
                return end_fetch(conn, RequestError::io(format!("cannot read chunk {chunk_id}"))(io::Error::other(e)))
                    .await
            }
        };
        if let Err(e) = check(block_idx, res, &buf) {
            set_aside_if_corrupt(segs, chunk_id, &loc, &e).await;
            return end_fetch(conn, e).await;
        }
        let (_, _, from, len) = span(block_idx);
        last = Some(conn.write_data(buf, from, from + len).await?);
    }
    if let Some(buf) = last {
        aligned::give_back(buf);
    }
    conn.write_msg(&Msg::End).await?;
    Ok(Ok(()))
}
