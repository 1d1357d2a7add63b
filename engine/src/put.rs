//! PUT: the client streams the file once; the engine cuts the stream at chunk boundaries and
//! relays each chunk to its node as it arrives, so no file is ever held whole in memory. Each
//! node verifies the client's crc32, makes the chunk durable and answers with its block crc32s;
//! the metadata is committed only when every chunk has been acknowledged.

use crate::meta::{ChunkRecord, FileRecord};
use crate::nodes::{NodeConn, NodeError, NodeFailure};
use crate::server::{delete_chunks_later, internal, EngineState};
use dfs_proto::io_uring::Conn;
use dfs_proto::layout::{chunk_spans, combine_block_crcs, n_blocks};
use dfs_proto::{ChunkId, Chunking, FileId, FrameError, Msg, Status};
use dfs_runtime::splice::{dup_fd, splice_exact, End, Pipe, SharedFd, SpliceError, SPLICE_MIN_BYTES};
use dfs_runtime::DataPath;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

/// Bytes relayed per socket read and write.
pub const RELAY_BYTES: usize = 1 << 20;
/// Chunks whose durable-write acknowledgement may be outstanding at once: later chunks stream
/// while earlier ones fsync, but no more than this many node connections stay open per upload.
pub const MAX_INFLIGHT_CHUNKS: usize = 8;

struct Acked {
    chunk_idx: u32,
    addr: SocketAddr,
    result: Result<Vec<u32>, NodeError>,
}

/// Handles one PUT. Returns Err only when the client connection is broken.
pub async fn put(
    state: &EngineState,
    client: &Conn,
    name: String,
    size: u64,
    chunking: Chunking,
    chunk_crcs: Vec<u32>,
) -> Result<(), FrameError> {
    let spans = match chunk_spans(size, chunking, state.config.dynamic_chunk_cap_bytes) {
        Ok(s) => s,
        Err(e) => return refuse(client, size, Msg::error(Status::BadRequest, e.to_string())).await,
    };
    if chunk_crcs.len() != spans.len() {
        let msg = format!("{} chunk crc32s announced, the layout has {} chunks", chunk_crcs.len(), spans.len());
        return refuse(client, size, Msg::error(Status::BadRequest, msg)).await;
    }
    let file_id = match FileId::random() {
        Ok(id) => id,
        Err(e) => return refuse(client, size, internal(format!("cannot draw a file ID: {e}"))).await,
    };
    let nodes = &state.config.nodes;
    // Start the round-robin at a node picked by the ID, so load spreads when there are more
    // nodes than chunks.
    let first_node = file_id.0[0] as usize % nodes.len();
    let place = |chunk_idx: u32| nodes[(first_node + chunk_idx as usize) % nodes.len()];

    let mut inflight: VecDeque<tokio::task::JoinHandle<Acked>> = VecDeque::new();
    let mut acked: Vec<Option<Vec<u32>>> = vec![None; spans.len()];
    let mut failure: Option<(u32, NodeError)> = None;
    // The copy path's relay buffer, sized to the largest chunk so small uploads stay cheap; the
    // splice path never touches it.
    let max_chunk = spans.iter().map(|s| s.length).max().unwrap_or(0);
    let mut buf =
        vec![
            0u8;
            if state.config.data_path == DataPath::Copy { max_chunk.min(RELAY_BYTES as u64) as usize } else { 0 }
        ];
    let mut client_result: Result<(), FrameError> = Ok(());
    let mut splicer = match state.config.data_path {
        DataPath::Splice if max_chunk >= SPLICE_MIN_BYTES => Splicer::new(client)
            .map_err(|e| tracing::warn!("cannot set up splicing, copying this upload instead: {e}"))
            .ok(),
        _ => None,
    };

    for span in &spans {
        let addr = place(span.chunk_idx);
        let chunk_id = ChunkId { file_id, chunk_idx: span.chunk_idx };
        let crc32 = chunk_crcs[span.chunk_idx as usize];
        let mut node = None;
        if failure.is_none() {
            match open_store(addr, state, chunk_id, span.length, crc32).await {
                Ok(n) => node = Some(n),
                Err(e) => failure = Some((span.chunk_idx, e)),
            }
        }
        match relay(client, node.as_ref(), span.length, buf, &mut splicer).await {
            Ok((b, write_error)) => {
                buf = b;
                if let Some(e) = write_error {
                    failure.get_or_insert((span.chunk_idx, e));
                    node = None;
                }
            }
            Err(e) => {
                client_result = Err(e);
                break;
            }
        }
        if let Some(node) = node {
            let chunk_idx = span.chunk_idx;
            let length = span.length;
            inflight.push_back(tokio_uring::spawn(async move {
                let result = await_store(&node, length, crc32).await;
                if result.is_ok() {
                    node.checkin();
                }
                Acked { chunk_idx, addr, result }
            }));
        }
        while inflight.len() >= MAX_INFLIGHT_CHUNKS {
            settle(inflight.pop_front(), &mut acked, &mut failure).await;
        }
    }
    while let Some(h) = inflight.pop_front() {
        settle(Some(h), &mut acked, &mut failure).await;
    }

    let cleanup = |acked: &Vec<Option<Vec<u32>>>| {
        let written = acked
            .iter()
            .enumerate()
            .filter(|(_, a)| a.is_some())
            .map(|(i, _)| (ChunkId { file_id, chunk_idx: i as u32 }, place(i as u32)))
            .collect();
        delete_chunks_later(state.config.node_timeouts, written);
    };
    if let Err(e) = client_result {
        tracing::info!("upload of {name:?} abandoned by the client: {e}");
        cleanup(&acked);
        return Err(e);
    }
    if let Some((chunk_idx, e)) = failure {
        tracing::warn!("upload of {name:?} failed at chunk {chunk_idx}: {e}");
        cleanup(&acked);
        let msg = format!("cannot store chunk {chunk_idx} of {name:?}: {e}");
        return client.write_msg(&Msg::error(e.status(), msg)).await;
    }

    let mut used: Vec<SocketAddr> = Vec::new();
    let chunks = spans
        .iter()
        .zip(acked)
        .zip(&chunk_crcs)
        .map(|((span, block_crcs), &crc32)| {
            let addr = place(span.chunk_idx);
            let node_idx = used.iter().position(|a| *a == addr).unwrap_or_else(|| {
                used.push(addr);
                used.len() - 1
            });
            ChunkRecord {
                offset: span.offset,
                length: span.length,
                crc32,
                block_crcs: block_crcs.expect("every chunk acknowledged"),
                placement: vec![node_idx as u16],
            }
        })
        .collect();
    let record = FileRecord {
        name,
        size,
        created_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        chunking,
        nodes: used.iter().map(|a| a.to_string()).collect(),
        chunks,
    };
    match state.meta.insert(file_id, record).await {
        Ok(()) => client.write_msg(&Msg::PutOk { file_id }).await,
        Err(e) => {
            cleanup(&spans.iter().map(|_| Some(Vec::new())).collect());
            client.write_msg(&internal(format!("cannot record file: {e}"))).await
        }
    }
}

async fn open_store(
    addr: SocketAddr,
    state: &EngineState,
    chunk_id: ChunkId,
    length: u64,
    crc32: u32,
) -> Result<NodeConn, NodeError> {
    let node = NodeConn::checkout(addr, state.config.node_timeouts).await?;
    node.send(&Msg::Store { chunk_id, length, crc32 }).await?;
    Ok(node)
}

/// What splicing an upload needs: the client socket as a descriptor of its own, and a pipe.
struct Splicer {
    client_fd: SharedFd,
    pipe: Pipe,
    timeout: std::time::Duration,
}

impl Splicer {
    fn new(client: &Conn) -> std::io::Result<Splicer> {
        Ok(Splicer { client_fd: dup_fd(client.stream.as_raw_fd())?, pipe: Pipe::new()?, timeout: client.idle_timeout })
    }
}

/// Moves `length` bytes from the client to the node: spliced through a pipe when `splicer` is
/// set, else copied through `buf`. If writing to the node fails, the rest is still read from the
/// client (and dropped) so the client can be answered on this connection. Outer error: the
/// client connection broke.
async fn relay(
    client: &Conn,
    node: Option<&NodeConn>,
    length: u64,
    mut buf: Vec<u8>,
    splicer: &mut Option<Splicer>,
) -> Result<(Vec<u8>, Option<NodeError>), FrameError> {
    let mut node = node;
    let mut node_error = None;
    let mut left = length;
    if let (Some(sp), Some(nc)) = (splicer.as_ref(), node) {
        let spliced = match dup_fd(nc.conn.stream.as_raw_fd()) {
            Ok(node_fd) => {
                let from = End::Stream(sp.client_fd.clone());
                splice_exact(&from, &End::Stream(node_fd), &sp.pipe, length, sp.timeout).await
            }
            Err(source) => Err(SpliceError::Write { consumed: 0, source }),
        };
        match spliced {
            Ok(()) => return Ok((buf, None)),
            Err(SpliceError::Read(e)) => return Err(FrameError::Io(e)),
            Err(SpliceError::SourceEnded { .. }) => return Err(FrameError::ClosedMidFrame),
            Err(SpliceError::Write { consumed, source }) => {
                // The pipe may hold bytes of this chunk: drop it, and copy what is left.
                *splicer = None;
                node_error = Some(NodeError::new(nc.addr, NodeFailure::Unreachable(source.to_string())));
                node = None;
                left = length - consumed;
            }
        }
    }
    if left > 0 && buf.is_empty() {
        buf = vec![0u8; left.min(RELAY_BYTES as u64) as usize];
    }
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        buf = client.read_exact(buf, 0, n, false).await?;
        if let Some(nc) = node {
            match nc.conn.write_range(buf, 0, n).await {
                Ok(b) => buf = b,
                Err(e) => {
                    node_error = Some(NodeError::from_frame(nc.addr, e));
                    node = None;
                    // The failed write kept the buffer: take a new one for draining the rest.
                    buf = vec![0u8; left.min(RELAY_BYTES as u64) as usize];
                }
            }
        }
        left -= n as u64;
    }
    Ok((buf, node_error))
}

/// Waits for a node's durable-write acknowledgement and checks its block crc32s add up to the
/// chunk crc32 the client announced.
async fn await_store(node: &NodeConn, length: u64, crc32: u32) -> Result<Vec<u32>, NodeError> {
    match node.recv().await? {
        Msg::StoreOk { block_crcs } => {
            if block_crcs.len() as u64 != n_blocks(length) {
                return Err(node.protocol(format!("{} block crcs for a chunk of {length} bytes", block_crcs.len())));
            }
            if combine_block_crcs(&block_crcs, length) != crc32 {
                return Err(node.protocol("acknowledged block crc32s do not add up to the chunk crc32"));
            }
            Ok(block_crcs)
        }
        other => Err(node.unexpected("StoreOk", &other)),
    }
}

async fn settle(
    handle: Option<tokio::task::JoinHandle<Acked>>,
    acked: &mut [Option<Vec<u32>>],
    failure: &mut Option<(u32, NodeError)>,
) {
    let Some(handle) = handle else { return };
    let a = handle.await.expect("store acknowledgement task panicked");
    match a.result {
        Ok(block_crcs) => acked[a.chunk_idx as usize] = Some(block_crcs),
        Err(e) => {
            tracing::debug!("chunk {} on {}: {e}", a.chunk_idx, a.addr);
            if failure.as_ref().is_none_or(|(i, _)| *i > a.chunk_idx) {
                *failure = Some((a.chunk_idx, e));
            }
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
