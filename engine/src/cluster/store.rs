//! STORE: the engine's side of writing one copy of a chunk to a node: the request's framing,
//! the relay of an upload's bytes from the client into the nodes' sockets (spliced or copied),
//! and the wait for the durable-write acknowledgement.

use super::conn::{Links, NodeConn, NodeError, NodeFailure};
use dfs_proto::layout::{combine_block_crcs, n_blocks};
use dfs_proto::{ChunkId, FrameError, Msg};
use dfs_runtime::conn::Conn;
use dfs_runtime::splice::{dup_fd, FanOut, FanOutError, SharedFd, SPLICE_MIN_BYTES};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

/// Bytes relayed per socket read and write.
pub const RELAY_BYTES: usize = 1 << 20;
/// Relay buffers per upload on the copy path: while the nodes are written from one, the next
/// piece is read from the client into the other (ping-pong), so the two sockets never wait for
/// each other within a chunk. Two is enough: a third would only help if client reads and node
/// writes alternated in speed, and it would cost another [`RELAY_BYTES`] per upload.
pub const RELAY_BUFFERS: usize = 2;
/// One copy of a chunk being written: the node, and its connection while the copy is alive.
pub struct Target {
    pub addr: SocketAddr,
    pub node: Option<NodeConn>,
    pub error: Option<NodeError>,
}

impl Target {
    pub fn fail(&mut self, e: NodeError) {
        self.node = None;
        self.error.get_or_insert(e);
    }
}

/// Opens a STORE of `chunk_id` on `addr`: the request alone, the chunk's bytes to follow, or
/// with `data` the whole chunk in the same write.
pub async fn open_store(
    addr: SocketAddr,
    links: &Links,
    chunk_id: ChunkId,
    length: u64,
    crc32: u32,
    data: Option<&[u8]>,
) -> Result<NodeConn, NodeError> {
    let node = NodeConn::checkout(addr, links).await?;
    let store = Msg::Store { chunk_id, length, crc32 };
    match data {
        Some(data) => {
            assert_eq!(data.len() as u64, length, "a STORE sent whole carries its chunk");
            let mut frame = store.encode();
            frame.extend_from_slice(data);
            node.conn.write_all(frame).await.map_err(|e| NodeError::from_frame(addr, e))?;
        }
        None => node.send(&store).await?,
    }
    Ok(node)
}

/// Waits for a node's durable-write acknowledgement and checks its block crc32s add up to the
/// chunk crc32 the client announced.
pub async fn await_store(node: &NodeConn, length: u64, crc32: u32) -> Result<Vec<u32>, NodeError> {
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

/// What splicing an upload needs: the client socket as a descriptor of its own, and a fan-out
/// with one pipe per copy.
pub struct Splicer {
    client_fd: SharedFd,
    fan_out: FanOut,
    timeout: std::time::Duration,
}

impl Splicer {
    pub fn new(client: &Conn, replicas: usize) -> std::io::Result<Splicer> {
        Ok(Splicer {
            client_fd: dup_fd(client.stream.as_raw_fd())?,
            fan_out: FanOut::new(replicas)?,
            timeout: client.idle_timeout,
        })
    }
}

/// The copy path's buffers, [`RELAY_BUFFERS`] of `bytes` each at most, kept from chunk to chunk
/// of one upload.
pub struct RelayBuffers {
    bytes: usize,
    pub bufs: [Vec<u8>; RELAY_BUFFERS],
}

impl RelayBuffers {
    pub fn new(bytes: usize) -> RelayBuffers {
        RelayBuffers { bytes, bufs: Default::default() }
    }

    /// Buffer `k`, allocated if this is its first use (or a failed write kept it).
    pub fn take(&mut self, k: usize) -> Vec<u8> {
        match std::mem::take(&mut self.bufs[k]) {
            b if b.is_empty() => vec![0u8; self.bytes],
            b => b,
        }
    }
}

/// Moves `length` bytes from the client to every live target: spliced through pipes (one per
/// target, filled by tee) when `splicer` is set and the chunk is large enough, else copied
/// through `bufs`, reading the next piece from the client while the previous one is written to
/// the nodes. A target that fails is marked so and the others go on; the rest is still read
/// from the client (and dropped) so the client can be answered on this connection. Error: the
/// client connection broke.
pub async fn relay(
    client: &Conn,
    targets: &mut [Target],
    length: u64,
    bufs: &mut RelayBuffers,
    splicer: &mut Option<Splicer>,
) -> Result<(), FrameError> {
    let mut left = length;
    let any_live = targets.iter().any(|t| t.node.is_some());
    if let Some(sp) = splicer.as_ref().filter(|_| any_live && length >= SPLICE_MIN_BYTES) {
        let mut fds = Vec::with_capacity(targets.len());
        for t in targets.iter_mut() {
            let fd = match t.node.as_ref().map(|nc| dup_fd(nc.conn.stream.as_raw_fd())) {
                Some(Ok(fd)) => Some(fd),
                Some(Err(e)) => {
                    t.fail(NodeError::new(t.addr, NodeFailure::Unreachable(format!("cannot splice to it: {e}"))));
                    None
                }
                None => None,
            };
            fds.push(fd);
        }
        let copied = sp.fan_out.copy(&sp.client_fd, &fds, length, sp.timeout).await;
        client.note_read(match &copied {
            Ok(_) => length,
            Err(FanOutError::Broken { consumed, .. }) => *consumed,
            Err(_) => 0,
        });
        match copied {
            Ok(failed) => {
                for (t, e) in targets.iter_mut().zip(failed) {
                    if let Some(e) = e {
                        t.fail(NodeError::new(t.addr, NodeFailure::Unreachable(e.to_string())));
                    }
                }
                return Ok(());
            }
            Err(FanOutError::Read(e)) => return Err(FrameError::Io(e)),
            Err(FanOutError::SourceEnded { .. }) => return Err(FrameError::ClosedMidFrame),
            Err(FanOutError::Broken { consumed, source }) => {
                // The pipes may hold bytes of this chunk: drop them, fail every copy of this
                // chunk, and read what is left of it from the client by copying.
                *splicer = None;
                for t in targets.iter_mut() {
                    t.fail(NodeError::new(t.addr, NodeFailure::Unreachable(format!("splice failed: {source}"))));
                }
                left = length - consumed;
            }
        }
    }
    if left == 0 {
        return Ok(());
    }
    // `left` counts the bytes not yet read from the client; `full` holds the `n` read last, not
    // yet written.
    let mut full = bufs.take(0);
    let mut n = left.min(full.len() as u64) as usize;
    full = client.read_exact(full, 0, n, false).await?;
    left -= n as u64;
    while left > 0 {
        let spare = bufs.take(1);
        let next_n = left.min(spare.len() as u64) as usize;
        let (written, read) =
            futures_util::future::join(write_live(targets, full, n), client.read_exact(spare, 0, next_n, false)).await;
        bufs.bufs[1] = written;
        full = read?;
        n = next_n;
        left -= n as u64;
    }
    bufs.bufs[0] = write_live(targets, full, n).await;
    Ok(())
}

/// Writes `buf[..n]` to every live target at once and returns the buffer, or an empty one when
/// a failed or timed-out write kept it ([`RelayBuffers::take`] then allocates a new one). A
/// target whose write fails is marked failed.
pub async fn write_live(targets: &mut [Target], buf: Vec<u8>, n: usize) -> Vec<u8> {
    let live: Vec<usize> = (0..targets.len()).filter(|&k| targets[k].node.is_some()).collect();
    match live[..] {
        [] => buf,
        [k] => {
            let nc = targets[k].node.as_ref().expect("live target has a connection");
            match nc.conn.write_range(buf, 0, n).await {
                Ok(b) => b,
                Err(e) => {
                    let e = NodeError::from_frame(nc.addr, e);
                    targets[k].fail(e);
                    Vec::new()
                }
            }
        }
        _ => {
            // The same bytes go to every copy at once, from one shared buffer.
            let shared = bytes::Bytes::from(buf);
            let writes = live.iter().map(|&k| {
                let nc = targets[k].node.as_ref().expect("live target has a connection");
                let bytes = shared.clone();
                async move {
                    nc.conn.write_range(bytes, 0, n).await.map(drop).map_err(|e| NodeError::from_frame(nc.addr, e))
                }
            });
            let results = futures_util::future::join_all(writes).await;
            for (&k, result) in live.iter().zip(results) {
                if let Err(e) = result {
                    targets[k].fail(e);
                }
            }
            // A write that timed out leaves its reference with the runtime.
            shared.try_into_mut().map(Vec::from).unwrap_or_default()
        }
    }
}
