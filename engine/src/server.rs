//! One client connection: handshake, then requests until the client hangs up. Malformed input
//! gets a BadRequest answer and the connection is closed; other connections are not affected.

use crate::buffer::Budget;
use crate::meta::MetaStore;
use crate::metrics;
use crate::nodes::{NodeConn, NodeFailure, NodeTimeouts};
use dfs_proto::io_std::Frame;
use dfs_proto::io_uring::Conn;
use dfs_proto::limits::{BLOCK_SIZE_BYTES, MAX_LIST_ENTRIES};
use dfs_proto::{ChunkId, FileId, FrameError, HelloOk, Msg, Role, Status, VERSION};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub struct EngineConfig {
    pub nodes: Vec<SocketAddr>,
    /// Copies of each chunk, on distinct nodes.
    pub replicas: usize,
    pub data_path: dfs_runtime::DataPath,
    pub dynamic_chunk_cap_bytes: u64,
    pub client_idle_timeout: Duration,
    pub node_timeouts: NodeTimeouts,
    /// Age below which a chunk no file references is not yet an orphan.
    pub gc_grace: Duration,
}

/// File IDs whose chunks are being written right now (an upload, or repair making a copy),
/// which garbage collection must not touch: a copy may exist before the metadata points at it.
/// Counted, so that two writers of one file each keep it protected.
#[derive(Default)]
pub struct Uploads(std::sync::Mutex<std::collections::HashMap<FileId, usize>>);

/// Releases its file ID in [`Uploads`] when the writing ends, however it ends.
pub struct UploadGuard<'a>(&'a Uploads, FileId);

impl Uploads {
    pub fn begin(&self, file_id: FileId) -> UploadGuard<'_> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()).entry(file_id).or_default() += 1;
        UploadGuard(self, file_id)
    }

    pub fn contains(&self, file_id: FileId) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&file_id)
    }
}

impl Drop for UploadGuard<'_> {
    fn drop(&mut self) {
        let mut writers = self.0 .0.lock().unwrap_or_else(|e| e.into_inner());
        if let std::collections::hash_map::Entry::Occupied(mut n) = writers.entry(self.1) {
            *n.get_mut() -= 1;
            if *n.get() == 0 {
                n.remove();
            }
        }
    }
}

pub struct EngineState {
    /// With keys, only clients presenting one are served.
    pub access_keys: Option<dfs_proto::auth::AccessKeys>,
    pub uploads_in_progress: Uploads,
    pub config: EngineConfig,
    pub meta: MetaStore,
    pub health: Arc<crate::health::Health>,
    pub budget: Arc<Budget>,
}

pub async fn handle(state: Arc<EngineState>, stream: dfs_runtime::backend::net::TcpStream, peer: SocketAddr) {
    let conn = Conn::new(stream, state.config.client_idle_timeout);
    metrics::CONNECTIONS.inc();
    let served = serve(&state, &conn).await;
    metrics::CONNECTIONS.dec();
    match served {
        Ok(()) | Err(FrameError::Closed) => tracing::debug!(%peer, "client disconnected"),
        Err(e) => tracing::info!(%peer, "client connection dropped: {e}"),
    }
}

async fn serve(state: &EngineState, conn: &Conn) -> Result<(), FrameError> {
    match conn.read_frame().await {
        Ok(Frame::Msg(Msg::Hello(h))) if h.role == Role::Client && h.version == VERSION => {
            if let Some(keys) = &state.access_keys {
                if h.auth_method != dfs_proto::auth::AUTH_ACCESS_KEY || !keys.accepts(&h.auth) {
                    let why = "a valid access key is required: dfs-client --token-file FILE (or DFS_TOKEN_FILE), or --token KEY (or DFS_TOKEN)";
                    let _ = conn.write_msg(&Msg::error(Status::Unauthorized, why)).await;
                    return Err(FrameError::Io(std::io::Error::other("client presented no valid access key")));
                }
            }
        }
        Ok(Frame::Msg(Msg::Hello(h))) if h.version != VERSION => {
            let msg = format!("protocol version {} is not supported; this engine speaks {VERSION}", h.version);
            return conn.write_msg(&Msg::error(Status::VersionMismatch, msg)).await;
        }
        Ok(_) => {
            let _ = conn.write_msg(&Msg::error(Status::BadRequest, "expected a client Hello")).await;
            return Err(FrameError::Io(std::io::Error::other("bad handshake")));
        }
        Err(e) => return reject(conn, e).await,
    }
    conn.write_msg(&Msg::HelloOk(HelloOk {
        version: VERSION,
        block_size_bytes: BLOCK_SIZE_BYTES,
        dynamic_chunk_cap_bytes: state.config.dynamic_chunk_cap_bytes,
        idle_timeout_ms: conn.idle_timeout.as_millis().min(u32::MAX as u128) as u32,
    }))
    .await?;
    loop {
        let msg = match conn.read_frame().await {
            Ok(Frame::Msg(m)) => m,
            Ok(Frame::Data(_)) => {
                let _ = conn.write_msg(&Msg::error(Status::BadRequest, "unexpected data frame")).await;
                return Err(FrameError::Io(std::io::Error::other("unexpected data frame")));
            }
            Err(FrameError::Closed) => return Ok(()),
            Err(e) => return reject(conn, e).await,
        };
        let op = msg.kind().name();
        let started = std::time::Instant::now();
        let mark = conn.mark();
        let upload_bytes = match &msg {
            Msg::Put { size, .. } => *size as i64,
            _ => 0,
        };
        metrics::INFLIGHT_REQUESTS.inc();
        metrics::INFLIGHT_BYTES.add(upload_bytes);
        let result: Result<(), FrameError> = async {
            match msg {
                Msg::Put { name, size, chunking, chunk_crcs, origin } => {
                    crate::put::put(state, conn, name, size, chunking, chunk_crcs, origin).await?
                }
                Msg::Get { file_id } => crate::get::get(state, conn, file_id).await?,
                Msg::Stat { file_id } => {
                    let reply = match state.meta.get(file_id) {
                        Ok(Some(record)) => Msg::StatOk(record.info(file_id)),
                        Ok(None) => not_found(file_id),
                        Err(e) => internal(e),
                    };
                    conn.write_msg(&reply).await?
                }
                Msg::List { after, limit } => {
                    let reply = match state.meta.list(after, limit.min(MAX_LIST_ENTRIES) as usize) {
                        Ok((files, more)) => Msg::ListOk { files, more },
                        Err(e) => internal(e),
                    };
                    conn.write_msg(&reply).await?
                }
                Msg::Delete { file_id } => {
                    let reply = match state.meta.delete(file_id).await {
                        Ok(Some(record)) => {
                            let chunks = record
                                .chunks
                                .iter()
                                .enumerate()
                                .flat_map(|(i, c)| {
                                    let id = ChunkId { file_id, chunk_idx: i as u32 };
                                    c.placement.iter().map(move |&p| (id, p))
                                })
                                .filter_map(|(id, p)| Some((id, record.nodes[p as usize].parse().ok()?)))
                                .collect();
                            delete_chunks_later(state.config.node_timeouts, chunks);
                            Msg::Ok
                        }
                        Ok(None) => not_found(file_id),
                        Err(e) => internal(e),
                    };
                    conn.write_msg(&reply).await?
                }
                Msg::ClusterStatus => {
                    let reply =
                        Msg::ClusterStatusOk { replicas: state.config.replicas as u32, nodes: state.health.view() };
                    conn.write_msg(&reply).await?
                }
                Msg::Repair => {
                    let reply = match crate::repair::run(state, Some(conn)).await {
                        Ok(summary) => Msg::RepairOk(summary),
                        Err(e) => Msg::error(Status::Unavailable, e),
                    };
                    conn.write_msg(&reply).await?
                }
                Msg::Scrub => conn.write_msg(&scrub_all(state).await).await?,
                Msg::Gc { dry_run, grace_secs } => {
                    let grace = grace_secs.map(Duration::from_secs).unwrap_or(state.config.gc_grace);
                    let out = crate::gc::run(state, dry_run, grace).await;
                    let reply = Msg::GcOk {
                        n_scanned: out.n_scanned,
                        n_orphans: out.n_orphans,
                        n_deleted: out.n_deleted,
                        orphans: out.lines,
                    };
                    conn.write_msg(&reply).await?
                }
                other => {
                    let what = format!("unexpected {} frame", other.kind().name());
                    let _ = conn.write_msg(&Msg::error(Status::BadRequest, &what)).await;
                    return Err(FrameError::Io(std::io::Error::other(what)));
                }
            }
            Ok(())
        }
        .await;
        metrics::INFLIGHT_REQUESTS.dec();
        metrics::INFLIGHT_BYTES.sub(upload_bytes);
        metrics::record(op, &conn.tally(&mark, &result), started.elapsed());
        result?;
    }
}

/// How long one node may take to scrub its whole store.
pub const SCRUB_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Has every node re-verify its chunks, all at once, and sums up what they found. A node that
/// cannot scrub is reported as a line, not as a failure of the whole request.
async fn scrub_all(state: &EngineState) -> Msg {
    let timeouts = NodeTimeouts { connect: state.config.node_timeouts.connect, idle: SCRUB_TIMEOUT };
    let scrubs = state.config.nodes.iter().map(|&addr| async move {
        let node = NodeConn::connect(addr, timeouts).await?;
        node.send(&Msg::Scrub).await?;
        node.recv().await.map(|m| (addr, m))
    });
    let (mut n_checked, mut n_corrupt, mut lines) = (0, 0, Vec::new());
    for result in futures_util::future::join_all(scrubs).await {
        match result {
            Ok((addr, Msg::ScrubOk { n_checked: c, n_corrupt: k, corrupt })) => {
                n_checked += c;
                n_corrupt += k;
                for line in corrupt {
                    dfs_proto::msg::push_report_line(&mut lines, format!("node {addr}: {line}"));
                }
            }
            Ok((addr, other)) => dfs_proto::msg::push_report_line(
                &mut lines,
                format!("node {addr}: answered {} to SCRUB", other.kind().name()),
            ),
            Err(e) => dfs_proto::msg::push_report_line(&mut lines, format!("not scrubbed: {e}")),
        }
    }
    Msg::ScrubOk { n_checked, n_corrupt, corrupt: lines }
}

/// Answers a malformed frame with BadRequest (best effort) and ends the connection.
async fn reject(conn: &Conn, e: FrameError) -> Result<(), FrameError> {
    if let FrameError::Decode(d) = &e {
        let _ = conn.write_msg(&Msg::error(Status::BadRequest, format!("malformed frame: {d}"))).await;
    }
    Err(e)
}

pub fn not_found(file_id: FileId) -> Msg {
    Msg::error(Status::NotFound, format!("file {file_id} not found"))
}

pub fn internal(e: impl std::fmt::Display) -> Msg {
    tracing::error!("{e}");
    Msg::error(Status::Internal, e.to_string())
}

/// Deletes chunks on their nodes in the background, best effort: a chunk left behind on a node
/// that is down is an orphan for garbage collection, never a dangling reference.
pub fn delete_chunks_later(timeouts: NodeTimeouts, chunks: Vec<(ChunkId, SocketAddr)>) {
    if chunks.is_empty() {
        return;
    }
    dfs_runtime::backend::spawn(async move {
        for (chunk_id, addr) in chunks {
            match NodeConn::request(addr, timeouts, &Msg::ChunkDelete { chunk_id }).await {
                Ok(_) => tracing::debug!("deleted chunk {chunk_id} on {addr}"),
                Err(e) if matches!(e.failure, NodeFailure::Remote(Status::NotFound, _)) => {
                    tracing::debug!("chunk {chunk_id} was already gone from {addr}")
                }
                Err(e) => tracing::warn!("chunk {chunk_id} left on {addr}: {e}"),
            }
        }
    });
}
