//! One client connection: handshake, then requests until the client hangs up. Malformed input
//! gets a BadRequest answer and the connection is closed; other connections are not affected.

use crate::cluster;
use crate::metrics;
use crate::state::{not_found, EngineState};
use dfs_proto::io_std::Frame;
use dfs_proto::limits::{BLOCK_SIZE_BYTES, MAX_LIST_ENTRIES};
use dfs_proto::{ChunkId, FrameError, HelloOk, Msg, Role, Status, VERSION};
use dfs_runtime::conn::Conn;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// How long a status request waits for every node's fresh counts.
const STATUS_PING_WAIT: Duration = Duration::from_millis(500);

/// Removes a file's record, then its copies in the background (`dfs_core::delete`). False: no
/// such file.
pub async fn delete_file(state: &EngineState, file_id: dfs_proto::FileId) -> Result<bool, crate::meta::MetaError> {
    dfs_core::delete::delete_file(&EngineDelete(state), file_id).await
}

/// A delete over the engine's metadata and node connections.
struct EngineDelete<'a>(&'a EngineState);

impl dfs_core::delete::DeleteIo for EngineDelete<'_> {
    type Node = SocketAddr;
    type Error = crate::meta::MetaError;

    /// The copies at the addresses their nodes answer at now (a node no longer known is left
    /// to gc).
    async fn remove_record(
        &self,
        file_id: dfs_proto::FileId,
    ) -> Result<Option<Vec<(ChunkId, SocketAddr)>>, Self::Error> {
        let Some(record) = self.0.meta.delete(file_id).await? else { return Ok(None) };
        let copies = record
            .chunks
            .iter()
            .enumerate()
            .flat_map(|(i, c)| {
                let id = ChunkId { file_id, chunk_idx: i as u32 };
                c.placement.iter().map(move |&p| (id, p))
            })
            .filter_map(|(id, p)| Some((id, record.nodes.get(p as usize)?.resolve(&*self.0.links.health).ok()?)))
            .collect();
        Ok(Some(copies))
    }

    fn delete_copies(&self, copies: Vec<(ChunkId, SocketAddr)>) {
        cluster::delete_later(&self.0.links, copies);
    }
}

/// Why a client's handshake was refused.
#[derive(Debug, thiserror::Error)]
enum KeyRefused {
    #[error(
        "a valid access key is required: dfs-client --token-file FILE (or DFS_TOKEN_FILE), or --token KEY (or DFS_TOKEN)"
    )]
    NoKey,
    #[error("this engine holds no such access key")]
    UnknownKey,
    #[error("the client's proof of its access key is wrong")]
    WrongProof,
    #[error("expected the client's KeyProof")]
    NoProof,
}

/// The client's proof of an access key, by challenge and response (`dfs_proto::auth`): the key
/// its Hello names, the engine's challenge with the engine's own proof, and the client's
/// proof. Ok(Err): refused, with why. Err: the connection broke.
async fn check_access_key(
    keys: &dfs_proto::auth::AccessKeys,
    conn: &Conn,
    hello: &dfs_proto::Hello,
) -> Result<Result<(), KeyRefused>, FrameError> {
    use dfs_proto::auth::{AccessKey, AUTH_KEY_PROOF};
    if hello.auth_method != AUTH_KEY_PROOF {
        return Ok(Err(KeyRefused::NoKey));
    }
    let Some((id, client_nonce)) = AccessKey::parse_hello_auth(&hello.auth) else { return Ok(Err(KeyRefused::NoKey)) };
    let Some(key) = keys.by_id(&id) else { return Ok(Err(KeyRefused::UnknownKey)) };
    let engine_nonce = dfs_proto::auth::nonce().map_err(FrameError::Io)?;
    let proof = key.engine_proof(&client_nonce, &engine_nonce);
    conn.write_msg(&Msg::KeyChallenge { nonce: engine_nonce, proof }).await?;
    Ok(match conn.read_frame().await? {
        Frame::Msg(Msg::KeyProof { proof }) if key.check_client(&client_nonce, &engine_nonce, &proof) => Ok(()),
        Frame::Msg(Msg::KeyProof { .. }) => Err(KeyRefused::WrongProof),
        _ => Err(KeyRefused::NoProof),
    })
}

pub async fn handle(state: Arc<EngineState>, stream: dfs_runtime::backend::net::TcpStream, peer: SocketAddr) {
    let conn = Conn::new(stream, state.config.client_idle_timeout, dfs_proto::Link::Client);
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
                if let Err(why) = check_access_key(keys, conn, &h).await? {
                    let _ = conn.write_msg(&Msg::error(Status::Unauthorized, why.to_string())).await;
                    return Err(FrameError::Io(std::io::Error::other(format!("client refused: {why}"))));
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
        node_id: None,
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
                    let _counted = crate::activity::InProgress::upload(&state.activity);
                    crate::put::put(state, conn, name, size, chunking, chunk_crcs, origin).await?
                }
                Msg::Get { file_id } => {
                    let _counted = crate::activity::InProgress::download(&state.activity);
                    crate::get::get(state, conn, file_id).await?
                }
                Msg::Stat { file_id } => {
                    let reply = match state.meta.get(file_id).await {
                        Ok(Some(record)) => Msg::StatOk(record.info(file_id, &*state.links.health)),
                        Ok(None) => not_found(file_id),
                        Err(e) => state.meta_failed(e),
                    };
                    conn.write_msg(&reply).await?
                }
                Msg::List { after, limit } => {
                    let reply = match state.meta.list(after, limit.min(MAX_LIST_ENTRIES) as usize).await {
                        Ok((files, more)) => Msg::ListOk { files, more },
                        Err(e) => state.meta_failed(e),
                    };
                    conn.write_msg(&reply).await?
                }
                Msg::Delete { file_id } => {
                    let reply = match delete_file(state, file_id).await {
                        Ok(true) => Msg::Ok,
                        Ok(false) => not_found(file_id),
                        Err(e) => state.meta_failed(e),
                    };
                    conn.write_msg(&reply).await?
                }
                Msg::ClusterStatus => {
                    // Each node's counts as of now, not as of the pinger's last round (a file
                    // put a moment ago is counted); a node slow to answer keeps its last report.
                    let _ = tokio::time::timeout(STATUS_PING_WAIT, crate::cluster::ping_all(&state.links)).await;
                    let queue = &state.repair_queue;
                    let reply = Msg::ClusterStatusOk {
                        replicas: state.config.replicas as u32,
                        nodes: state.links.health.view(),
                        repair_queue: dfs_proto::msg::RepairQueueStatus {
                            n_queued: state.meta.queue_len().await.unwrap_or(0) + queue.n_notes(),
                            n_settled: queue.settled(),
                            n_copies_made: queue.n_copies_made.load(std::sync::atomic::Ordering::Relaxed),
                        },
                    };
                    conn.write_msg(&reply).await?
                }
                Msg::Repair => {
                    let reply = match crate::repair::run(state, Some(conn)).await {
                        Ok(summary) => Msg::RepairOk(summary),
                        Err(e) => Msg::error(Status::Unavailable, e.to_string()),
                    };
                    conn.write_msg(&reply).await?
                }
                Msg::Scrub => {
                    let reply = match state.meta.take_pass(&state.passes, crate::meta::Pass::Scrub).await {
                        Ok(Ok(_lease)) => {
                            let (reply, quarantined) = cluster::scrub_all(&state.config.nodes, &state.links).await;
                            for chunk in quarantined {
                                state.repair_queue.note(chunk, dfs_core::repair::Reason::Quarantined);
                            }
                            reply
                        }
                        Ok(Err(held)) => {
                            Msg::error(Status::Unavailable, crate::meta::PassError::Held(held).to_string())
                        }
                        Err(e) => Msg::error(Status::Unavailable, format!("cannot take the scrub pass: {e}")),
                    };
                    conn.write_msg(&reply).await?
                }
                Msg::Gc { dry_run, grace_secs } => {
                    let grace = grace_secs.map(Duration::from_secs).unwrap_or(state.config.gc_grace);
                    let reply = match crate::gc::run(state, dry_run, grace).await {
                        Ok(out) => Msg::GcOk {
                            n_scanned: out.n_scanned,
                            n_orphans: out.n_orphans,
                            n_deleted: out.n_deleted,
                            orphans: out.lines,
                        },
                        Err(e) => Msg::error(Status::Unavailable, e.to_string()),
                    };
                    conn.write_msg(&reply).await?
                }
                Msg::BucketCreate { name } => conn.write_msg(&crate::buckets::create(state, &name).await).await?,
                Msg::BucketDelete { name } => conn.write_msg(&crate::buckets::delete(state, &name).await).await?,
                Msg::BucketList { after, limit } => {
                    conn.write_msg(&crate::buckets::list(state, after.as_deref(), limit).await).await?
                }
                Msg::BucketKeys { bucket, prefix, after, limit } => {
                    let reply = crate::buckets::keys(state, &bucket, &prefix, after.as_deref(), limit).await;
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
        let tally = conn.tally(&mark, &result);
        metrics::record(op, &tally, started.elapsed());
        state.activity.record(&tally, started.elapsed());
        result?;
    }
}

/// Answers a malformed frame with BadRequest (best effort) and ends the connection.
async fn reject(conn: &Conn, e: FrameError) -> Result<(), FrameError> {
    if let FrameError::Decode(d) = &e {
        let _ = conn.write_msg(&Msg::error(Status::BadRequest, format!("malformed frame: {d}"))).await;
    }
    Err(e)
}
