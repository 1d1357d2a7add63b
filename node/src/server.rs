//! One connection from the engine: handshake, then requests until it hangs up. Every request
//! that reaches its end gets exactly one answer; a malformed frame gets a BadRequest answer and
//! the connection is closed, without disturbing any other connection.

use crate::metrics;
use crate::store::files::sync::GroupSync;
use crate::store::files::ChunkStore;
use crate::store::segments::SegmentStore;
use crate::store::{ChunkError, Stores};
use dfs_proto::auth::{self, ClusterSecret, Nonce, AUTH_CLUSTER, AUTH_NONE};
use dfs_proto::io_std::Frame;
use dfs_proto::layout::{block_len, n_blocks};
use dfs_proto::limits::{BLOCK_SIZE_BYTES, MAX_FILE_SIZE_BYTES, MAX_LIST_ENTRIES};
use dfs_proto::{ChunkId, FrameError, FrameHeader, Hello, HelloOk, Msg, Role, Status, VERSION};
use dfs_runtime::aligned;
use dfs_runtime::conn::Conn;
use dfs_runtime::splice::{dup_fd, splice_exact, End, Pipe, SPLICE_MIN_BYTES};
use dfs_runtime::DataPath;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

/// Bytes moved per socket read or file write while receiving a chunk into a chunk file.
const STORE_IO_BYTES: usize = BLOCK_SIZE_BYTES as usize;
/// Blocks of a segment record being read while earlier ones are sent, in one FETCH.
const FETCH_READS_AHEAD: usize = 8;

pub struct NodeState {
    /// Who this node is, whatever address it listens on (see `identity`).
    pub node_id: dfs_proto::NodeId,
    pub stores: Stores,
    pub idle_timeout: Duration,
    pub data_path: DataPath,
    /// Set with `--commit-sync grouped`: STOREs share file-system-wide syncs.
    pub group_sync: Option<GroupSync>,
    /// With a secret, only an engine that proves it knows the secret is served.
    pub cluster_secret: Option<ClusterSecret>,
}

/// The answer's status for a request on a chunk that failed.
fn status(e: &ChunkError) -> Status {
    match e {
        ChunkError::NotFound(_) => Status::NotFound,
        ChunkError::Corrupt(..) => Status::Corrupt,
        ChunkError::AlreadyExists(_) | ChunkError::Newer(_) => Status::AlreadyExists,
        ChunkError::ChecksumMismatch { .. } => Status::ChecksumMismatch,
        ChunkError::BadRequest(..) => Status::BadRequest,
        ChunkError::Io { source, .. } if crate::store::is_full(source) => Status::NoSpace,
        ChunkError::Io { .. } => Status::Internal,
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
                let _ = conn.write_msg(&Msg::error(Status::Unauthorized, why.to_string())).await;
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
                (Frame::Msg(Msg::Exists { chunk_id }), stores) => {
                    stores.exists(chunk_id).await.map(|(length, crc32)| Msg::ExistsOk { length, crc32 })
                }
                (Frame::Msg(Msg::ChunkDelete { chunk_id, written_before_unix_ms }), stores) => {
                    stores.delete(chunk_id, written_before_unix_ms).await.map(|()| Msg::Ok)
                }
                (Frame::Msg(Msg::ChunkList { after, limit, min_age_secs }), stores) => {
                    let limit = limit.min(MAX_LIST_ENTRIES) as usize;
                    // Taken before the listing: every copy listed was stored before it.
                    let listed_at_unix_ms = dfs_runtime::unix_ms();
                    let min_age = (min_age_secs > 0).then(|| Duration::from_secs(min_age_secs));
                    stores
                        .list(after, limit, min_age)
                        .map(|(chunk_ids, more)| Msg::ChunkListOk { chunk_ids, more, listed_at_unix_ms })
                        .map_err(ChunkError::io("cannot list chunks"))
                }
                (Frame::Msg(Msg::NodeStat), stores) => stores
                    .report()
                    .inspect(metrics::record_store)
                    .map(Msg::NodeStatOk)
                    .map_err(ChunkError::io("cannot read store report")),
                (Frame::Msg(Msg::Scrub), stores) => {
                    crate::scrub::scrub_now(stores).await.map_err(ChunkError::io("scrub failed"))
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
                    conn.write_msg(&Msg::error(status(&e), e.to_string())).await?
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

/// Why a node refuses an engine's handshake.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("this node has no cluster secret (--cluster-secret-file) and cannot prove one")]
    NoSecretHere,
    #[error("this node requires the cluster secret: start the engine with --cluster-secret-file")]
    SecretRequired,
    #[error("the engine's proof of the cluster secret is wrong")]
    WrongProof,
    #[error("expected the engine's AuthProof")]
    NoProof,
}

/// Checks that the engine knows the cluster secret, if this node has one (see
/// `dfs_proto::auth`). Inner error: why the engine is refused.
async fn authenticate(state: &NodeState, conn: &Conn, hello: &Hello) -> Result<Result<(), Refused>, FrameError> {
    let Some(secret) = &state.cluster_secret else {
        return Ok(match hello.auth_method {
            AUTH_NONE => Ok(()),
            _ => Err(Refused::NoSecretHere),
        });
    };
    let engine_nonce: Nonce = match (hello.auth_method, hello.auth.as_slice().try_into()) {
        (AUTH_CLUSTER, Ok(n)) => n,
        _ => return Ok(Err(Refused::SecretRequired)),
    };
    let node_nonce = auth::nonce().map_err(FrameError::Io)?;
    let proof = secret.node_proof(&engine_nonce, &node_nonce, &state.node_id);
    conn.write_msg(&Msg::AuthChallenge { nonce: node_nonce, node_id: state.node_id, proof }).await?;
    Ok(match conn.read_frame().await? {
        Frame::Msg(Msg::AuthProof { proof }) if secret.check_engine(&engine_nonce, &node_nonce, &proof) => Ok(()),
        Frame::Msg(Msg::AuthProof { .. }) => Err(Refused::WrongProof),
        _ => Err(Refused::NoProof),
    })
}

/// Answers a malformed frame with BadRequest (best effort) and ends the connection.
async fn reject(conn: &Conn, e: FrameError) -> Result<(), FrameError> {
    if let FrameError::Decode(d) = &e {
        let _ = conn.write_msg(&Msg::error(Status::BadRequest, format!("malformed frame: {d}"))).await;
    }
    Err(e)
}

/// Receives a chunk of `length` bytes into a chunk file. The body is always read to its end, so
/// the engine gets a clean answer even when the chunk is refused. Outer error: the connection
/// broke.
async fn store(
    state: &NodeState,
    files: &ChunkStore,
    conn: &Conn,
    chunk_id: ChunkId,
    length: u64,
    crc32: u32,
) -> Result<Result<Msg, ChunkError>, FrameError> {
    let mut incoming = files.receive(chunk_id, length, crc32).await.map_err(FrameError::Io)?;
    // Sized to the chunk: a small chunk must not pay for zeroing a whole 1 MiB buffer.
    let mut buf = vec![0u8; (length as usize).min(STORE_IO_BYTES)];
    let mut pos = 0u64;
    while pos < length {
        let n = (length - pos).min(STORE_IO_BYTES as u64) as usize;
        buf = conn.read_exact(buf, 0, n, false).await?;
        buf = incoming.received(buf, n, pos).await;
        pos += n as u64;
    }
    Ok(incoming.finish(state.group_sync.as_ref()).await.map(|block_crcs| Msg::StoreOk { block_crcs }))
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
) -> Result<Result<(), ChunkError>, FrameError> {
    let chunk = match files.open_chunk(chunk_id).await {
        Ok(x) => x,
        Err(e) => return Ok(Err(e)),
    };
    let (length, crc32) = (chunk.footer().length, chunk.footer().crc32);
    if u64::from(first_block) > n_blocks(length) {
        chunk.close().await;
        let why = format!("first block {first_block} is past the end of a chunk of {} blocks", n_blocks(length));
        return Ok(Err(ChunkError::BadRequest(chunk_id, why)));
    }
    conn.write_msg(&Msg::FetchOk { length, crc32, block_size_bytes: BLOCK_SIZE_BYTES }).await?;
    // With splice, each block is read once to be verified, then sent from the page cache through
    // a pipe, saving the copy into the socket. A splicing set-up failure falls back to copying.
    let splice = match state.data_path {
        DataPath::Splice if length >= SPLICE_MIN_BYTES => {
            match (Pipe::new(), dup_fd(conn.stream.as_raw_fd()), chunk.dup_fd()) {
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
    let mut buf = vec![0u8; (length as usize).min(BLOCK_SIZE_BYTES as usize)];
    for block_idx in u64::from(first_block)..n_blocks(length) {
        let len = block_len(length, block_idx) as usize;
        let (checked, read) = chunk.read_block(buf, block_idx).await;
        buf = read;
        if let Err(e) = checked {
            if matches!(e, ChunkError::Corrupt(..)) {
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
                // A chunk file holds its data from offset 0 (the footer follows it).
                let offset = block_idx * BLOCK_SIZE_BYTES as u64;
                // A failure here leaves the frame half sent: the connection cannot continue.
                splice_exact(&End::File(fd.clone(), offset), sock, pipe, len as u64, conn.idle_timeout)
                    .await
                    .map_err(|e| FrameError::Io(io::Error::other(format!("splicing chunk {chunk_id}: {e}"))))?;
                conn.note_written(len as u64);
            }
            None => buf = conn.write_data(buf, 0, len).await?,
        }
    }
    chunk.close().await;
    conn.write_msg(&Msg::End).await?;
    Ok(Ok(()))
}

/// Ends a FETCH stream with an Error frame in place of a block that cannot be sent (unreadable,
/// or not the bytes stored); the connection stays usable.
async fn end_fetch(conn: &Conn, e: ChunkError) -> Result<Result<(), ChunkError>, FrameError> {
    match e {
        ChunkError::Corrupt(..) => tracing::error!("{e}"),
        _ => tracing::warn!("{e}"),
    }
    conn.write_msg(&Msg::error(status(&e), e.to_string())).await?;
    Ok(Ok(()))
}

/// Receives a chunk into a segment record (see `store/segments/receive.rs`): the body is always
/// read to its end, each piece into the buffer the record lends for it. Outer error: the
/// connection broke.
async fn segment_store(
    segs: &SegmentStore,
    conn: &Conn,
    chunk_id: ChunkId,
    length: u64,
    crc32: u32,
) -> Result<Result<Msg, ChunkError>, FrameError> {
    let mut incoming = segs.receive(chunk_id, length, crc32);
    let mut pos = 0u64;
    while pos < length {
        let (stage, begin, end) = incoming.next_piece(length - pos);
        let stage = match conn.read_exact(stage, begin, end, false).await {
            Ok(buf) => buf,
            Err(e) => {
                // The engine went away mid-chunk.
                incoming.abandon().await;
                return Err(e);
            }
        };
        pos += (end - begin) as u64;
        incoming.received(stage, begin, end).await;
    }
    Ok(incoming.finish().await.map(|block_crcs| Msg::StoreOk { block_crcs }))
}

/// Sends a chunk's record block by block from `first_block` on, each block checked against its
/// crc32 before it leaves.
async fn segment_fetch(
    segs: &SegmentStore,
    conn: &Conn,
    chunk_id: ChunkId,
    first_block: u32,
) -> Result<Result<(), ChunkError>, FrameError> {
    let Some(loc) = segs.get(&chunk_id) else { return Ok(Err(ChunkError::NotFound(chunk_id))) };
    let n = n_blocks(loc.length);
    if u64::from(first_block) > n {
        let why = format!("first block {first_block} is past the end of a chunk of {n} blocks");
        return Ok(Err(ChunkError::BadRequest(chunk_id, why)));
    }
    let fetch_ok = Msg::FetchOk { length: loc.length, crc32: loc.crc32, block_size_bytes: BLOCK_SIZE_BYTES };
    let buf_bytes = loc.block_buf_bytes();
    if first_block == 0 && n == 1 && loc.length as usize <= dfs_runtime::conn::COALESCE_BYTES {
        // A small chunk: read and checked first, then the whole answer in one write.
        let (res, buf) = loc.read_block(0, aligned::for_io(buf_bytes)).await;
        let block = match loc.check_block(chunk_id, 0, res, &buf) {
            Ok(block) => block,
            Err(e) => {
                segs.set_aside_if_corrupt(chunk_id, &loc, &e).await;
                return end_fetch(conn, e).await;
            }
        };
        conn.write_small(&[&fetch_ok], &buf[block], &[&Msg::End]).await?;
        return Ok(Ok(()));
    }
    conn.write_msg(&fetch_ok).await?;
    // Direct reads have a long latency on some disks, so up to FETCH_READS_AHEAD blocks are
    // being read while earlier ones are sent; each runs as a task of its own on this thread.
    let mut reads = std::collections::VecDeque::new();
    let mut next_read = u64::from(first_block);
    let mut last = None;
    for block_idx in u64::from(first_block)..n {
        while next_read < n && reads.len() < FETCH_READS_AHEAD {
            let buf = last.take().unwrap_or_else(|| aligned::for_io(buf_bytes));
            reads.push_back(dfs_runtime::backend::spawn(loc.read_block(next_read, buf)));
            next_read += 1;
        }
        if let Some(unused) = last.take() {
            aligned::give_back(unused);
        }
        let (res, buf) = match reads.pop_front().expect("a read is under way for every block not sent").await {
            Ok(done) => done,
            Err(e) => {
                return end_fetch(conn, ChunkError::io(format!("cannot read chunk {chunk_id}"))(io::Error::other(e)))
                    .await
            }
        };
        let block = match loc.check_block(chunk_id, block_idx, res, &buf) {
            Ok(block) => block,
            Err(e) => {
                segs.set_aside_if_corrupt(chunk_id, &loc, &e).await;
                return end_fetch(conn, e).await;
            }
        };
        last = Some(conn.write_data(buf, block.start, block.end).await?);
    }
    if let Some(buf) = last {
        aligned::give_back(buf);
    }
    conn.write_msg(&Msg::End).await?;
    Ok(Ok(()))
}
