//! Every frame of protocol v1. A frame is `u32 body length (big-endian) | u8 kind | body`.
//! Control frames carry one [`Msg`]; `Data` frames carry raw bytes (at most one block) that the
//! receiver reads straight into its own buffer, so bulk data is never decoded or copied twice.

use crate::codec::{DecodeError, Reader, Writer};
use crate::ids::{ChunkId, FileId, NodeId, Origin};
use crate::layout::Chunking;
use crate::limits::*;
use crate::status::Status;
use crate::{MAGIC, VERSION};

/// Which connections a frame kind may cross.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// Client ↔ engine only.
    Client,
    /// Engine ↔ node only.
    Node,
    /// Either connection.
    Both,
}

/// Defines [`Kind`] from one table: each frame kind's name, its numeric value (part of the wire
/// format) and the connections it crosses. Everything that lists kinds (decoding a header,
/// names in errors and metrics, the fuzz targets' per-connection lists) derives from it.
macro_rules! frame_kinds {
    ($($name:ident = $code:literal, $link:ident;)*) => {
        /// Frame kinds. The numeric values are part of the wire format.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Kind {
            $($name = $code,)*
        }

        impl Kind {
            /// Every kind, in the table's order.
            pub const ALL: &'static [Kind] = &[$(Kind::$name,)*];

            pub fn name(self) -> &'static str {
                match self {
                    $(Kind::$name => stringify!($name),)*
                }
            }

            /// The connections a frame of this kind may cross.
            pub fn link(self) -> Link {
                match self {
                    $(Kind::$name => Link::$link,)*
                }
            }
        }
    };
}

frame_kinds! {
    Hello = 0x01, Both;
    HelloOk = 0x02, Both;
    Error = 0x03, Both;
    Ok = 0x04, Both;
    AuthChallenge = 0x05, Node;
    AuthProof = 0x06, Node;
    KeyChallenge = 0x07, Client;
    KeyProof = 0x08, Client;
    Put = 0x10, Client;
    PutOk = 0x11, Client;
    Get = 0x12, Client;
    GetOk = 0x13, Client;
    Stat = 0x14, Client;
    StatOk = 0x15, Client;
    List = 0x16, Client;
    ListOk = 0x17, Client;
    Delete = 0x18, Client;
    ClusterStatus = 0x19, Client;
    ClusterStatusOk = 0x1A, Client;
    Repair = 0x1B, Client;
    RepairProgress = 0x1C, Client;
    RepairOk = 0x1D, Client;
    Gc = 0x1E, Client;
    GcOk = 0x1F, Client;
    Store = 0x20, Node;
    StoreOk = 0x21, Node;
    Fetch = 0x22, Node;
    FetchOk = 0x23, Node;
    Exists = 0x24, Node;
    ExistsOk = 0x25, Node;
    ChunkDelete = 0x26, Node;
    ChunkList = 0x27, Node;
    ChunkListOk = 0x28, Node;
    NodeStat = 0x29, Node;
    NodeStatOk = 0x2A, Node;
    Scrub = 0x2B, Both;
    ScrubOk = 0x2C, Both;
    Data = 0x30, Both;
    End = 0x31, Both;
    BucketCreate = 0x40, Client;
    BucketList = 0x41, Client;
    BucketListOk = 0x42, Client;
    BucketDelete = 0x43, Client;
    BucketKeys = 0x44, Client;
    BucketKeysOk = 0x45, Client;
}

impl Kind {
    pub fn from_u8(v: u8) -> Option<Kind> {
        Kind::ALL.iter().copied().find(|k| *k as u8 == v)
    }

    /// Whether a frame of this kind may cross `link`.
    pub fn crosses(self, link: Link) -> bool {
        self.link() == Link::Both || link == Link::Both || self.link() == link
    }

    /// The control frame kinds (all but Data) that may cross `link`.
    pub fn control_kinds_on(link: Link) -> Vec<Kind> {
        Kind::ALL.iter().copied().filter(|k| *k != Kind::Data && k.crosses(link)).collect()
    }

    /// The largest body a frame of this kind may have.
    pub fn max_body_bytes(self) -> u32 {
        match self {
            Kind::Data => MAX_DATA_FRAME_BYTES,
            _ => MAX_CONTROL_FRAME_BYTES,
        }
    }
}

/// A decoded, validated frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: Kind,
    pub body_len: u32,
}

impl FrameHeader {
    /// Validates the 5 header bytes: a known kind and a length within that kind's limit.
    pub fn parse(bytes: [u8; FRAME_HEADER_BYTES]) -> Result<FrameHeader, DecodeError> {
        let body_len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let kind = Kind::from_u8(bytes[4]).ok_or(DecodeError::UnknownKind(bytes[4]))?;
        let max = kind.max_body_bytes();
        if body_len > max {
            return Err(DecodeError::FrameTooLarge { kind: kind.name(), len: body_len, max });
        }
        Ok(FrameHeader { kind, body_len })
    }

    /// [`FrameHeader::parse`], and a kind that crosses `link`: a client connection never
    /// carries a node frame, nor the other way round.
    pub fn parse_on(bytes: [u8; FRAME_HEADER_BYTES], link: Link) -> Result<FrameHeader, DecodeError> {
        let header = FrameHeader::parse(bytes)?;
        if !header.kind.crosses(link) {
            return Err(DecodeError::WrongLink { kind: header.kind.name() });
        }
        Ok(header)
    }

    pub fn encode(self) -> [u8; FRAME_HEADER_BYTES] {
        let l = self.body_len.to_be_bytes();
        [l[0], l[1], l[2], l[3], self.kind as u8]
    }

    /// Header of a data frame of `len` bytes.
    pub fn data(len: usize) -> FrameHeader {
        assert!(len <= MAX_DATA_FRAME_BYTES as usize, "data frame of {len} bytes is over the limit");
        FrameHeader { kind: Kind::Data, body_len: len as u32 }
    }
}

/// Who is opening a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Client = 1,
    Engine = 2,
}

/// First frame on every connection, from the side that connected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    pub role: Role,
    /// Authentication method ([`crate::auth`]): none, a client's key proof, or the cluster's.
    pub auth_method: u8,
    pub auth: Vec<u8>,
}

impl Hello {
    pub fn new(role: Role) -> Hello {
        Hello { version: VERSION, role, auth_method: 0, auth: Vec::new() }
    }
}

/// The accepting side's answer to a Hello it accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HelloOk {
    pub version: u16,
    pub block_size_bytes: u32,
    /// The engine's dynamic chunk size cap, so a client can compute the chunk layout (and the
    /// per-chunk crc32s it must announce) before sending. Zero from a node.
    pub dynamic_chunk_cap_bytes: u64,
    /// How long the accepting side lets the connection sit idle, mid-request or between
    /// requests, before it closes it: a peer must not leave a request unread for longer.
    pub idle_timeout_ms: u32,
    /// A node's identity (see [`NodeId`]); None from an engine. With the cluster secret it is
    /// the ID the node's proof covered.
    pub node_id: Option<NodeId>,
}

/// One chunk in a file's chunk table.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ChunkInfo {
    pub chunk_idx: u32,
    pub offset: u64,
    pub length: u64,
    pub crc32: u32,
    /// Indices into [`FileInfo::nodes`], one per copy.
    pub placement: Vec<u16>,
}

/// A node that holds copies of a file's chunks: its ID (None for a placement recorded before
/// node IDs, not yet upgraded) and the address the engine reaches it at now, or last did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FileNode {
    pub id: Option<NodeId>,
    pub addr: String,
}

/// A file's full description, as STAT and GET return it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FileInfo {
    pub file_id: FileId,
    pub name: String,
    pub size: u64,
    pub created_unix_ms: u64,
    pub chunking: Chunking,
    /// The tag the uploader sent with the file, if any (see [`Origin`]).
    pub origin: Option<Origin>,
    /// The nodes the chunk placements refer to.
    pub nodes: Vec<FileNode>,
    pub chunks: Vec<ChunkInfo>,
}

/// One line of a LIST answer.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FileSummary {
    pub file_id: FileId,
    pub name: String,
    pub size: u64,
    pub created_unix_ms: u64,
    pub chunking: Chunking,
    pub n_chunks: u32,
    /// The tag the uploader sent with the file, if any (see [`Origin`]).
    pub origin: Option<Origin>,
}

/// One bucket of the S3 front door, as BUCKET_LIST returns it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BucketSummary {
    pub name: String,
    pub created_unix_ms: u64,
}

/// One key of a bucket, as BUCKET_KEYS returns it. An object is one dfs file (a single PUT) or
/// one per part (a multipart upload): `first_file` is the first of `n_files`, None when the
/// object has no file (an empty multipart upload).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KeySummary {
    pub key: String,
    pub size: u64,
    pub modified_unix_ms: u64,
    /// S3's ETag, without its quotes.
    pub etag: String,
    pub first_file: Option<FileId>,
    pub n_files: u32,
}

/// What a node reports about its store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StoreReport {
    pub n_chunks: u64,
    /// Bytes the live chunk copies take.
    pub bytes_used: u64,
    pub bytes_free: u64,
    /// Chunk files set aside by scrub because they failed verification.
    pub n_quarantined: u64,
    /// Bytes on disk that hold nothing live (dead records in a segment store), which
    /// compaction can give back; 0 for a chunk-file store, which frees space at once.
    pub bytes_reclaimable: u64,
    pub scrub: ScrubReport,
}

/// Where a node's scrub stands: the pass running now, if any, and the last one finished.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ScrubReport {
    /// Whether a pass (on request or in the background) is running now.
    pub running: bool,
    /// Chunks the running pass has checked so far (0 when none runs).
    pub n_checked: u64,
    /// When the last pass finished; 0 if none has since the node started.
    pub last_finished_unix_ms: u64,
    /// What the last finished pass checked and found corrupt.
    pub last_checked: u64,
    pub last_corrupt: u64,
}

/// One node as the engine sees it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NodeStatus {
    /// The node's ID, once it has answered a handshake.
    pub id: Option<NodeId>,
    pub addr: String,
    pub up: bool,
    /// When the node last answered; 0 if it never has.
    pub last_seen_unix_ms: u64,
    pub report: Option<StoreReport>,
    /// Why it was last marked down.
    pub last_error: Option<String>,
}

/// The repair queue, as the engine reports it in its status.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RepairQueueStatus {
    /// Chunks waiting to be tried, or to be tried again.
    pub n_queued: u64,
    /// Chunks the queue has settled since the engine started.
    pub n_settled: u64,
    /// Copies the queue has made since the engine started.
    pub n_copies_made: u64,
}

/// The outcome of a repair pass.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RepairSummary {
    pub n_files: u64,
    pub n_chunks_checked: u64,
    /// New copies made (a chunk missing two copies counts twice).
    pub n_copies_made: u64,
    /// Chunks lost: every copy is proven missing or corrupt.
    pub n_chunks_unrecoverable: u64,
    /// Chunks with no sound copy found this pass, but with a copy that could not be checked (its
    /// node is down, or answered with a passing error): perhaps readable again later.
    pub n_chunks_unavailable: u64,
    /// Chunks still short of copies because too few nodes could take one.
    pub n_chunks_degraded: u64,
    pub bytes_copied: u64,
    /// One line per problem, at most [`MAX_REPORT_LINES`].
    pub problems: Vec<String>,
}

/// Adds a line to a report (repair problems, scrub findings, gc orphans), cut to
/// [`MAX_REPORT_LINE_BYTES`] on a character boundary; lines beyond [`MAX_REPORT_LINES`] are
/// dropped, since every report also carries exact counts.
pub fn push_report_line(lines: &mut Vec<String>, line: impl Into<String>) {
    if lines.len() >= MAX_REPORT_LINES as usize {
        return;
    }
    let mut line = line.into();
    if line.len() > MAX_REPORT_LINE_BYTES as usize {
        let mut cut = MAX_REPORT_LINE_BYTES as usize;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
    }
    lines.push(line);
}

/// Every control frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Msg {
    Hello(Hello),
    HelloOk(HelloOk),
    Error {
        status: Status,
        message: String,
    },
    /// Generic success with nothing to say (DELETE).
    Ok,
    /// Node → engine, in answer to a Hello with the cluster method: the node's nonce, its ID,
    /// and its proof of the cluster secret over both nonces and the ID (see [`crate::auth`]).
    AuthChallenge {
        nonce: crate::auth::Nonce,
        node_id: NodeId,
        proof: crate::auth::Proof,
    },
    /// Engine → node: the engine's proof of the cluster secret.
    AuthProof {
        proof: crate::auth::Proof,
    },
    /// Engine → client, in answer to a Hello with the key-proof method: the engine's nonce, and
    /// its proof that it holds the access key the client named, over both nonces (see
    /// [`crate::auth`]).
    KeyChallenge {
        nonce: crate::auth::Nonce,
        proof: crate::auth::Proof,
    },
    /// Client → engine: the client's proof of its access key over both nonces.
    KeyProof {
        proof: crate::auth::Proof,
    },
    /// Upload: followed on the wire by exactly `size` raw bytes (no framing). `origin` is
    /// stored with the file as given, and returned in STAT and LIST.
    Put {
        name: String,
        size: u64,
        chunking: Chunking,
        chunk_crcs: Vec<u32>,
        origin: Option<Origin>,
    },
    PutOk {
        file_id: FileId,
    },
    /// Download: answered by GetOk, then Data frames in file order, then End (or Error).
    Get {
        file_id: FileId,
    },
    GetOk(FileInfo),
    Stat {
        file_id: FileId,
    },
    StatOk(FileInfo),
    List {
        after: Option<FileId>,
        limit: u32,
    },
    ListOk {
        files: Vec<FileSummary>,
        more: bool,
    },
    Delete {
        file_id: FileId,
    },
    /// Store a chunk: followed by exactly `length` raw bytes.
    Store {
        chunk_id: ChunkId,
        length: u64,
        crc32: u32,
    },
    /// The chunk is durable; the crc32 of each of its blocks.
    StoreOk {
        block_crcs: Vec<u32>,
    },
    /// Answered by FetchOk, then one Data frame per block from `first_block` on, each verified
    /// before it is sent, then End (or Error naming the corrupt block).
    Fetch {
        chunk_id: ChunkId,
        first_block: u32,
    },
    FetchOk {
        length: u64,
        crc32: u32,
        block_size_bytes: u32,
    },
    Exists {
        chunk_id: ChunkId,
    },
    ExistsOk {
        length: u64,
        crc32: u32,
    },
    /// Deletes a chunk's copy; with `written_before_unix_ms`, only a copy the node stored
    /// before that time by its own clock (gc passes the time its listing was taken, so a copy
    /// written since, by a repair, is kept and the node answers AlreadyExists).
    ChunkDelete {
        chunk_id: ChunkId,
        written_before_unix_ms: Option<u64>,
    },
    /// Chunks in ID order after `after`, only those whose file is at least `min_age_secs` old.
    ChunkList {
        after: Option<ChunkId>,
        limit: u32,
        min_age_secs: u64,
    },
    ChunkListOk {
        chunk_ids: Vec<ChunkId>,
        more: bool,
        /// The node's clock when it took the listing.
        listed_at_unix_ms: u64,
    },
    /// Client → engine: every node's state.
    ClusterStatus,
    ClusterStatusOk {
        replicas: u32,
        nodes: Vec<NodeStatus>,
        repair_queue: RepairQueueStatus,
    },
    /// Client → engine: bring every chunk back to its copy count. Answered by any number of
    /// RepairProgress, then RepairOk.
    Repair,
    RepairProgress {
        n_done: u64,
        n_total: u64,
    },
    RepairOk(RepairSummary),
    /// Client → engine: find chunks on nodes that no file references and that are older than
    /// the grace period (the engine's default if None); delete them unless `dry_run`.
    Gc {
        dry_run: bool,
        grace_secs: Option<u64>,
    },
    GcOk {
        n_scanned: u64,
        n_orphans: u64,
        n_deleted: u64,
        /// One line per orphan, at most [`MAX_REPORT_LINES`].
        orphans: Vec<String>,
    },
    /// Engine → node: report on the store.
    NodeStat,
    NodeStatOk(StoreReport),
    /// Re-verify every stored chunk and quarantine the corrupt ones (engine → node), or have
    /// every node do so (client → engine).
    Scrub,
    ScrubOk {
        n_checked: u64,
        n_corrupt: u64,
        /// One line per corrupt chunk, at most [`MAX_REPORT_LINES`].
        corrupt: Vec<String>,
    },
    /// End of a stream of Data frames.
    End,
    /// Client → engine: create an S3 bucket (answered by Ok, or AlreadyExists).
    BucketCreate {
        name: String,
    },
    /// Client → engine: buckets by name after `after`.
    BucketList {
        after: Option<String>,
        limit: u32,
    },
    BucketListOk {
        buckets: Vec<BucketSummary>,
        more: bool,
    },
    /// Client → engine: delete an empty bucket (answered by Ok; NotFound; BadRequest while it
    /// holds keys).
    BucketDelete {
        name: String,
    },
    /// Client → engine: a bucket's keys that start with `prefix`, in byte order, after `after`.
    BucketKeys {
        bucket: String,
        prefix: String,
        after: Option<String>,
        limit: u32,
    },
    BucketKeysOk {
        keys: Vec<KeySummary>,
        more: bool,
    },
}

fn put_file_id(w: &mut Writer, id: &FileId) {
    w.raw(&id.0);
}
fn file_id(r: &mut Reader) -> Result<FileId, DecodeError> {
    Ok(FileId(r.array("file_id")?))
}
fn put_chunk_id(w: &mut Writer, id: &ChunkId) {
    w.raw(&id.file_id.0);
    w.u32(id.chunk_idx);
}
fn chunk_id(r: &mut Reader) -> Result<ChunkId, DecodeError> {
    Ok(ChunkId { file_id: file_id(r)?, chunk_idx: r.u32("chunk_idx")? })
}
fn put_origin(w: &mut Writer, o: &Origin) {
    w.raw(&o.0);
}
fn origin(r: &mut Reader) -> Result<Origin, DecodeError> {
    Ok(Origin(r.array("origin")?))
}
fn chunking(r: &mut Reader) -> Result<Chunking, DecodeError> {
    Chunking::from_code(r.u8("chunking")?).ok_or(DecodeError::Invalid { field: "chunking" })
}
fn put_opt<T>(w: &mut Writer, v: &Option<T>, put: impl Fn(&mut Writer, &T)) {
    match v {
        None => w.u8(0),
        Some(v) => {
            w.u8(1);
            put(w, v)
        }
    }
}
fn opt<T>(r: &mut Reader, get: impl Fn(&mut Reader) -> Result<T, DecodeError>) -> Result<Option<T>, DecodeError> {
    Ok(if r.bool("option tag")? { Some(get(r)?) } else { None })
}
fn limit(r: &mut Reader) -> Result<u32, DecodeError> {
    let n = r.u32("list limit")?;
    if n == 0 || n > MAX_LIST_ENTRIES {
        return Err(DecodeError::OverLimit { field: "list limit", len: n as u64, max: MAX_LIST_ENTRIES as u64 });
    }
    Ok(n)
}
fn u32s(r: &mut Reader, field: &'static str, max: u32) -> Result<Vec<u32>, DecodeError> {
    let n = r.count(field, max, 4)?;
    (0..n).map(|_| r.u32(field)).collect()
}
fn put_u32s(w: &mut Writer, v: &[u32]) {
    w.count(v.len());
    v.iter().for_each(|x| w.u32(*x));
}

fn put_lines(w: &mut Writer, lines: &[String]) {
    w.count(lines.len());
    lines.iter().for_each(|l| w.str(l));
}
fn lines(r: &mut Reader, field: &'static str) -> Result<Vec<String>, DecodeError> {
    let n = r.count(field, MAX_REPORT_LINES, 4)?;
    (0..n).map(|_| r.string(field, MAX_REPORT_LINE_BYTES)).collect()
}
fn put_store_report(w: &mut Writer, s: &StoreReport) {
    w.u64(s.n_chunks);
    w.u64(s.bytes_used);
    w.u64(s.bytes_free);
    w.u64(s.n_quarantined);
    w.u64(s.bytes_reclaimable);
    w.u8(u8::from(s.scrub.running));
    w.u64(s.scrub.n_checked);
    w.u64(s.scrub.last_finished_unix_ms);
    w.u64(s.scrub.last_checked);
    w.u64(s.scrub.last_corrupt);
}
fn store_report(r: &mut Reader) -> Result<StoreReport, DecodeError> {
    Ok(StoreReport {
        n_chunks: r.u64("chunks")?,
        bytes_used: r.u64("bytes used")?,
        bytes_free: r.u64("bytes free")?,
        n_quarantined: r.u64("quarantined")?,
        bytes_reclaimable: r.u64("bytes reclaimable")?,
        scrub: ScrubReport {
            running: r.bool("scrub running")?,
            n_checked: r.u64("scrub checked")?,
            last_finished_unix_ms: r.u64("scrub finished")?,
            last_checked: r.u64("last scrub checked")?,
            last_corrupt: r.u64("last scrub corrupt")?,
        },
    })
}
fn put_node_id(w: &mut Writer, id: &NodeId) {
    w.raw(&id.0);
}
fn node_id(r: &mut Reader) -> Result<NodeId, DecodeError> {
    Ok(NodeId(r.array("node_id")?))
}
fn put_node_status(w: &mut Writer, n: &NodeStatus) {
    put_opt(w, &n.id, put_node_id);
    w.str(&n.addr);
    w.u8(n.up as u8);
    w.u64(n.last_seen_unix_ms);
    put_opt(w, &n.report, put_store_report);
    put_opt(w, &n.last_error, |w, e| w.str(e));
}
fn node_status(r: &mut Reader) -> Result<NodeStatus, DecodeError> {
    Ok(NodeStatus {
        id: opt(r, node_id)?,
        addr: r.string("node address", MAX_ADDR_BYTES)?,
        up: r.bool("up")?,
        last_seen_unix_ms: r.u64("last seen")?,
        report: opt(r, store_report)?,
        last_error: opt(r, |r| r.string("last error", MAX_REPORT_LINE_BYTES))?,
    })
}

fn put_file_info(w: &mut Writer, f: &FileInfo) {
    put_file_id(w, &f.file_id);
    w.str(&f.name);
    w.u64(f.size);
    w.u64(f.created_unix_ms);
    w.u8(f.chunking.code());
    put_opt(w, &f.origin, put_origin);
    w.count(f.nodes.len());
    for n in &f.nodes {
        put_opt(w, &n.id, put_node_id);
        w.str(&n.addr);
    }
    w.count(f.chunks.len());
    for c in &f.chunks {
        w.u32(c.chunk_idx);
        w.u64(c.offset);
        w.u64(c.length);
        w.u32(c.crc32);
        w.count(c.placement.len());
        c.placement.iter().for_each(|p| w.u16(*p));
    }
}

fn file_info(r: &mut Reader) -> Result<FileInfo, DecodeError> {
    let file_id = file_id(r)?;
    let name = r.string("name", MAX_NAME_BYTES)?;
    let size = r.u64("size")?;
    let created_unix_ms = r.u64("created")?;
    let chunking = chunking(r)?;
    let origin = opt(r, origin)?;
    let n_nodes = r.count("node count", MAX_NODES_PER_FILE, 5)?;
    let nodes = (0..n_nodes)
        .map(|_| Ok(FileNode { id: opt(r, node_id)?, addr: r.string("node address", MAX_ADDR_BYTES)? }))
        .collect::<Result<Vec<_>, _>>()?;
    let n_chunks = r.count("chunk count", MAX_CHUNKS_PER_FILE, 28)?;
    let mut chunks = Vec::with_capacity(n_chunks);
    for _ in 0..n_chunks {
        let chunk_idx = r.u32("chunk_idx")?;
        let offset = r.u64("offset")?;
        let length = r.u64("length")?;
        let crc32 = r.u32("crc32")?;
        let n = r.count("placement count", MAX_REPLICAS, 2)?;
        let placement = (0..n)
            .map(|_| {
                let p = r.u16("placement")?;
                if p as usize >= nodes.len() {
                    return Err(DecodeError::Invalid { field: "placement" });
                }
                Ok(p)
            })
            .collect::<Result<Vec<_>, _>>()?;
        chunks.push(ChunkInfo { chunk_idx, offset, length, crc32, placement });
    }
    Ok(FileInfo { file_id, name, size, created_unix_ms, chunking, origin, nodes, chunks })
}

fn put_summary(w: &mut Writer, f: &FileSummary) {
    put_file_id(w, &f.file_id);
    w.str(&f.name);
    w.u64(f.size);
    w.u64(f.created_unix_ms);
    w.u8(f.chunking.code());
    w.u32(f.n_chunks);
    put_opt(w, &f.origin, put_origin);
}

fn summary(r: &mut Reader) -> Result<FileSummary, DecodeError> {
    Ok(FileSummary {
        file_id: file_id(r)?,
        name: r.string("name", MAX_NAME_BYTES)?,
        size: r.u64("size")?,
        created_unix_ms: r.u64("created")?,
        chunking: chunking(r)?,
        n_chunks: r.u32("chunk count")?,
        origin: opt(r, origin)?,
    })
}

impl Msg {
    pub fn kind(&self) -> Kind {
        match self {
            Msg::Hello(_) => Kind::Hello,
            Msg::HelloOk(_) => Kind::HelloOk,
            Msg::Error { .. } => Kind::Error,
            Msg::Ok => Kind::Ok,
            Msg::AuthChallenge { .. } => Kind::AuthChallenge,
            Msg::AuthProof { .. } => Kind::AuthProof,
            Msg::KeyChallenge { .. } => Kind::KeyChallenge,
            Msg::KeyProof { .. } => Kind::KeyProof,
            Msg::Put { .. } => Kind::Put,
            Msg::PutOk { .. } => Kind::PutOk,
            Msg::Get { .. } => Kind::Get,
            Msg::GetOk(_) => Kind::GetOk,
            Msg::Stat { .. } => Kind::Stat,
            Msg::StatOk(_) => Kind::StatOk,
            Msg::List { .. } => Kind::List,
            Msg::ListOk { .. } => Kind::ListOk,
            Msg::Delete { .. } => Kind::Delete,
            Msg::Store { .. } => Kind::Store,
            Msg::StoreOk { .. } => Kind::StoreOk,
            Msg::Fetch { .. } => Kind::Fetch,
            Msg::FetchOk { .. } => Kind::FetchOk,
            Msg::Exists { .. } => Kind::Exists,
            Msg::ExistsOk { .. } => Kind::ExistsOk,
            Msg::ChunkDelete { .. } => Kind::ChunkDelete,
            Msg::ChunkList { .. } => Kind::ChunkList,
            Msg::ChunkListOk { .. } => Kind::ChunkListOk,
            Msg::ClusterStatus => Kind::ClusterStatus,
            Msg::ClusterStatusOk { .. } => Kind::ClusterStatusOk,
            Msg::Repair => Kind::Repair,
            Msg::RepairProgress { .. } => Kind::RepairProgress,
            Msg::RepairOk(_) => Kind::RepairOk,
            Msg::Gc { .. } => Kind::Gc,
            Msg::GcOk { .. } => Kind::GcOk,
            Msg::NodeStat => Kind::NodeStat,
            Msg::NodeStatOk(_) => Kind::NodeStatOk,
            Msg::Scrub => Kind::Scrub,
            Msg::ScrubOk { .. } => Kind::ScrubOk,
            Msg::End => Kind::End,
            Msg::BucketCreate { .. } => Kind::BucketCreate,
            Msg::BucketList { .. } => Kind::BucketList,
            Msg::BucketListOk { .. } => Kind::BucketListOk,
            Msg::BucketDelete { .. } => Kind::BucketDelete,
            Msg::BucketKeys { .. } => Kind::BucketKeys,
            Msg::BucketKeysOk { .. } => Kind::BucketKeysOk,
        }
    }

    /// An Error frame; the message is cut to the protocol limit on a character boundary.
    pub fn error(status: Status, message: impl Into<String>) -> Msg {
        let mut message = message.into();
        if message.len() > MAX_MESSAGE_BYTES as usize {
            let mut cut = MAX_MESSAGE_BYTES as usize;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        Msg::Error { status, message }
    }

    /// The whole frame, header included. Panics if the body breaks a protocol limit: sending
    /// such a frame is a bug on our side, and the peer would refuse it anyway.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer { buf: vec![0; FRAME_HEADER_BYTES] };
        match self {
            Msg::Hello(h) => {
                w.raw(&MAGIC);
                w.u16(h.version);
                w.u8(h.role as u8);
                w.u8(h.auth_method);
                w.bytes(&h.auth);
            }
            Msg::HelloOk(h) => {
                w.u16(h.version);
                w.u32(h.block_size_bytes);
                w.u64(h.dynamic_chunk_cap_bytes);
                w.u32(h.idle_timeout_ms);
                put_opt(&mut w, &h.node_id, put_node_id);
            }
            Msg::Error { status, message } => {
                w.u16(status.code());
                w.str(message);
            }
            Msg::Ok | Msg::End => {}
            Msg::Put { name, size, chunking, chunk_crcs, origin } => {
                w.str(name);
                w.u64(*size);
                w.u8(chunking.code());
                put_u32s(&mut w, chunk_crcs);
                put_opt(&mut w, origin, put_origin);
            }
            Msg::PutOk { file_id } | Msg::Get { file_id } | Msg::Stat { file_id } | Msg::Delete { file_id } => {
                put_file_id(&mut w, file_id)
            }
            Msg::GetOk(info) | Msg::StatOk(info) => put_file_info(&mut w, info),
            Msg::List { after, limit } => {
                put_opt(&mut w, after, put_file_id);
                w.u32(*limit);
            }
            Msg::ListOk { files, more } => {
                w.count(files.len());
                files.iter().for_each(|f| put_summary(&mut w, f));
                w.u8(*more as u8);
            }
            Msg::Store { chunk_id, length, crc32 } => {
                put_chunk_id(&mut w, chunk_id);
                w.u64(*length);
                w.u32(*crc32);
            }
            Msg::StoreOk { block_crcs } => put_u32s(&mut w, block_crcs),
            Msg::Fetch { chunk_id, first_block } => {
                put_chunk_id(&mut w, chunk_id);
                w.u32(*first_block);
            }
            Msg::Exists { chunk_id } => put_chunk_id(&mut w, chunk_id),
            Msg::ChunkDelete { chunk_id, written_before_unix_ms } => {
                put_chunk_id(&mut w, chunk_id);
                put_opt(&mut w, written_before_unix_ms, |w, v| w.u64(*v));
            }
            Msg::FetchOk { length, crc32, block_size_bytes } => {
                w.u64(*length);
                w.u32(*crc32);
                w.u32(*block_size_bytes);
            }
            Msg::ExistsOk { length, crc32 } => {
                w.u64(*length);
                w.u32(*crc32);
            }
            Msg::ChunkList { after, limit, min_age_secs } => {
                put_opt(&mut w, after, put_chunk_id);
                w.u32(*limit);
                w.u64(*min_age_secs);
            }
            Msg::ClusterStatus | Msg::Repair | Msg::NodeStat | Msg::Scrub => {}
            Msg::AuthChallenge { nonce, node_id, proof } => {
                w.raw(nonce);
                put_node_id(&mut w, node_id);
                w.raw(proof);
            }
            Msg::AuthProof { proof } => w.raw(proof),
            Msg::KeyChallenge { nonce, proof } => {
                w.raw(nonce);
                w.raw(proof);
            }
            Msg::KeyProof { proof } => w.raw(proof),
            Msg::ClusterStatusOk { replicas, nodes, repair_queue } => {
                w.u32(*replicas);
                w.count(nodes.len());
                nodes.iter().for_each(|n| put_node_status(&mut w, n));
                w.u64(repair_queue.n_queued);
                w.u64(repair_queue.n_settled);
                w.u64(repair_queue.n_copies_made);
            }
            Msg::RepairProgress { n_done, n_total } => {
                w.u64(*n_done);
                w.u64(*n_total);
            }
            Msg::RepairOk(r) => {
                for v in [
                    r.n_files,
                    r.n_chunks_checked,
                    r.n_copies_made,
                    r.n_chunks_unrecoverable,
                    r.n_chunks_unavailable,
                    r.n_chunks_degraded,
                    r.bytes_copied,
                ] {
                    w.u64(v);
                }
                put_lines(&mut w, &r.problems);
            }
            Msg::Gc { dry_run, grace_secs } => {
                w.u8(*dry_run as u8);
                put_opt(&mut w, grace_secs, |w, v| w.u64(*v));
            }
            Msg::GcOk { n_scanned, n_orphans, n_deleted, orphans } => {
                w.u64(*n_scanned);
                w.u64(*n_orphans);
                w.u64(*n_deleted);
                put_lines(&mut w, orphans);
            }
            Msg::NodeStatOk(r) => put_store_report(&mut w, r),
            Msg::ScrubOk { n_checked, n_corrupt, corrupt } => {
                w.u64(*n_checked);
                w.u64(*n_corrupt);
                put_lines(&mut w, corrupt);
            }
            Msg::ChunkListOk { chunk_ids, more, listed_at_unix_ms } => {
                w.count(chunk_ids.len());
                chunk_ids.iter().for_each(|c| put_chunk_id(&mut w, c));
                w.u8(*more as u8);
                w.u64(*listed_at_unix_ms);
            }
            Msg::BucketCreate { name } | Msg::BucketDelete { name } => w.str(name),
            Msg::BucketList { after, limit } => {
                put_opt(&mut w, after, |w, a| w.str(a));
                w.u32(*limit);
            }
            Msg::BucketListOk { buckets, more } => {
                w.count(buckets.len());
                for b in buckets {
                    w.str(&b.name);
                    w.u64(b.created_unix_ms);
                }
                w.u8(*more as u8);
            }
            Msg::BucketKeys { bucket, prefix, after, limit } => {
                w.str(bucket);
                w.str(prefix);
                put_opt(&mut w, after, |w, a| w.str(a));
                w.u32(*limit);
            }
            Msg::BucketKeysOk { keys, more } => {
                w.count(keys.len());
                for k in keys {
                    w.str(&k.key);
                    w.u64(k.size);
                    w.u64(k.modified_unix_ms);
                    w.str(&k.etag);
                    put_opt(&mut w, &k.first_file, put_file_id);
                    w.u32(k.n_files);
                }
                w.u8(*more as u8);
            }
        }
        let body_len = w.buf.len() - FRAME_HEADER_BYTES;
        let kind = self.kind();
        assert!(
            body_len <= kind.max_body_bytes() as usize,
            "{} frame of {body_len} bytes is over the limit",
            kind.name()
        );
        let header = FrameHeader { kind, body_len: body_len as u32 }.encode();
        w.buf[..FRAME_HEADER_BYTES].copy_from_slice(&header);
        debug_assert_eq!(Msg::decode(kind, &w.buf[FRAME_HEADER_BYTES..]).as_ref(), Ok(self));
        w.buf
    }

    /// Decodes the body of a control frame of kind `kind`.
    pub fn decode(kind: Kind, body: &[u8]) -> Result<Msg, DecodeError> {
        let mut r = Reader::new(body);
        let r = &mut r;
        let msg = match kind {
            Kind::Data => return Err(DecodeError::Invalid { field: "frame kind (data where control expected)" }),
            Kind::Hello => {
                if r.array::<4>("magic")? != MAGIC {
                    return Err(DecodeError::Invalid { field: "magic" });
                }
                let version = r.u16("version")?;
                let role = match r.u8("role")? {
                    1 => Role::Client,
                    2 => Role::Engine,
                    _ => return Err(DecodeError::Invalid { field: "role" }),
                };
                let auth_method = r.u8("auth method")?;
                let auth = r.bytes("auth", MAX_AUTH_BYTES)?.to_vec();
                Msg::Hello(Hello { version, role, auth_method, auth })
            }
            Kind::HelloOk => Msg::HelloOk(HelloOk {
                version: r.u16("version")?,
                block_size_bytes: r.u32("block size")?,
                dynamic_chunk_cap_bytes: r.u64("dynamic chunk cap")?,
                idle_timeout_ms: r.u32("idle timeout")?,
                node_id: opt(r, node_id)?,
            }),
            Kind::Error => {
                let code = r.u16("status")?;
                let status = Status::from_code(code).ok_or(DecodeError::Invalid { field: "status" })?;
                Msg::Error { status, message: r.string("message", MAX_MESSAGE_BYTES)? }
            }
            Kind::Ok => Msg::Ok,
            Kind::AuthChallenge => {
                Msg::AuthChallenge { nonce: r.array("nonce")?, node_id: node_id(r)?, proof: r.array("proof")? }
            }
            Kind::AuthProof => Msg::AuthProof { proof: r.array("proof")? },
            Kind::KeyChallenge => Msg::KeyChallenge { nonce: r.array("nonce")?, proof: r.array("proof")? },
            Kind::KeyProof => Msg::KeyProof { proof: r.array("proof")? },
            Kind::End => Msg::End,
            Kind::Put => {
                let name = r.string("name", MAX_NAME_BYTES)?;
                let size = r.u64("size")?;
                if size > MAX_FILE_SIZE_BYTES {
                    return Err(DecodeError::OverLimit { field: "file size", len: size, max: MAX_FILE_SIZE_BYTES });
                }
                let chunking = chunking(r)?;
                let chunk_crcs = u32s(r, "chunk crc count", MAX_CHUNKS_PER_FILE)?;
                let origin = opt(r, origin)?;
                Msg::Put { name, size, chunking, chunk_crcs, origin }
            }
            Kind::PutOk => Msg::PutOk { file_id: file_id(r)? },
            Kind::Get => Msg::Get { file_id: file_id(r)? },
            Kind::Stat => Msg::Stat { file_id: file_id(r)? },
            Kind::Delete => Msg::Delete { file_id: file_id(r)? },
            Kind::GetOk => Msg::GetOk(file_info(r)?),
            Kind::StatOk => Msg::StatOk(file_info(r)?),
            Kind::List => Msg::List { after: opt(r, file_id)?, limit: limit(r)? },
            Kind::ListOk => {
                // Smallest summary: file id 16, name length 4, size 8, created 8, chunking 1, chunks 4,
                // origin tag 1.
                let n = r.count("file count", MAX_LIST_ENTRIES, 42)?;
                let files = (0..n).map(|_| summary(r)).collect::<Result<Vec<_>, _>>()?;
                Msg::ListOk { files, more: r.bool("more")? }
            }
            Kind::Store => Msg::Store { chunk_id: chunk_id(r)?, length: r.u64("length")?, crc32: r.u32("crc32")? },
            Kind::StoreOk => Msg::StoreOk { block_crcs: u32s(r, "block crc count", MAX_BLOCKS_PER_CHUNK)? },
            Kind::Fetch => Msg::Fetch { chunk_id: chunk_id(r)?, first_block: r.u32("first block")? },
            Kind::Exists => Msg::Exists { chunk_id: chunk_id(r)? },
            Kind::ChunkDelete => Msg::ChunkDelete {
                chunk_id: chunk_id(r)?,
                written_before_unix_ms: opt(r, |r| r.u64("written before"))?,
            },
            Kind::FetchOk => Msg::FetchOk {
                length: r.u64("length")?,
                crc32: r.u32("crc32")?,
                block_size_bytes: r.u32("block size")?,
            },
            Kind::ExistsOk => Msg::ExistsOk { length: r.u64("length")?, crc32: r.u32("crc32")? },
            Kind::ChunkList => {
                Msg::ChunkList { after: opt(r, chunk_id)?, limit: limit(r)?, min_age_secs: r.u64("min age")? }
            }
            Kind::ClusterStatus => Msg::ClusterStatus,
            Kind::Repair => Msg::Repair,
            Kind::NodeStat => Msg::NodeStat,
            Kind::Scrub => Msg::Scrub,
            Kind::ClusterStatusOk => {
                let replicas = r.u32("replicas")?;
                // Smallest node: address length 4, up 1, last seen 8, two option tags.
                let n = r.count("node count", MAX_NODES_PER_FILE, 15)?;
                let nodes = (0..n).map(|_| node_status(r)).collect::<Result<Vec<_>, _>>()?;
                let repair_queue = RepairQueueStatus {
                    n_queued: r.u64("queued")?,
                    n_settled: r.u64("settled")?,
                    n_copies_made: r.u64("copies made")?,
                };
                Msg::ClusterStatusOk { replicas, nodes, repair_queue }
            }
            Kind::RepairProgress => Msg::RepairProgress { n_done: r.u64("done")?, n_total: r.u64("total")? },
            Kind::RepairOk => Msg::RepairOk(RepairSummary {
                n_files: r.u64("files")?,
                n_chunks_checked: r.u64("chunks checked")?,
                n_copies_made: r.u64("copies made")?,
                n_chunks_unrecoverable: r.u64("chunks unrecoverable")?,
                n_chunks_unavailable: r.u64("chunks unavailable")?,
                n_chunks_degraded: r.u64("chunks degraded")?,
                bytes_copied: r.u64("bytes copied")?,
                problems: lines(r, "problems")?,
            }),
            Kind::Gc => Msg::Gc { dry_run: r.bool("dry run")?, grace_secs: opt(r, |r| r.u64("grace"))? },
            Kind::GcOk => Msg::GcOk {
                n_scanned: r.u64("scanned")?,
                n_orphans: r.u64("orphans")?,
                n_deleted: r.u64("deleted")?,
                orphans: lines(r, "orphans")?,
            },
            Kind::NodeStatOk => Msg::NodeStatOk(store_report(r)?),
            Kind::ScrubOk => Msg::ScrubOk {
                n_checked: r.u64("checked")?,
                n_corrupt: r.u64("corrupt")?,
                corrupt: lines(r, "corrupt")?,
            },
            Kind::ChunkListOk => {
                let n = r.count("chunk count", MAX_LIST_ENTRIES, 20)?;
                let chunk_ids = (0..n).map(|_| chunk_id(r)).collect::<Result<Vec<_>, _>>()?;
                Msg::ChunkListOk { chunk_ids, more: r.bool("more")?, listed_at_unix_ms: r.u64("listed at")? }
            }
            Kind::BucketCreate => Msg::BucketCreate { name: r.string("bucket", MAX_NAME_BYTES)? },
            Kind::BucketDelete => Msg::BucketDelete { name: r.string("bucket", MAX_NAME_BYTES)? },
            Kind::BucketList => {
                Msg::BucketList { after: opt(r, |r| r.string("after", MAX_NAME_BYTES))?, limit: limit(r)? }
            }
            Kind::BucketListOk => {
                // Smallest bucket: name length 4, created 8.
                let n = r.count("bucket count", MAX_LIST_ENTRIES, 12)?;
                let buckets = (0..n)
                    .map(|_| {
                        Ok(BucketSummary {
                            name: r.string("bucket", MAX_NAME_BYTES)?,
                            created_unix_ms: r.u64("created")?,
                        })
                    })
                    .collect::<Result<Vec<_>, DecodeError>>()?;
                Msg::BucketListOk { buckets, more: r.bool("more")? }
            }
            Kind::BucketKeys => Msg::BucketKeys {
                bucket: r.string("bucket", MAX_NAME_BYTES)?,
                prefix: r.string("prefix", MAX_KEY_BYTES)?,
                after: opt(r, |r| r.string("after", MAX_KEY_BYTES))?,
                limit: limit(r)?,
            },
            Kind::BucketKeysOk => {
                // Smallest key: key length 4, size 8, modified 8, etag length 4, option tag 1,
                // file count 4.
                let n = r.count("key count", MAX_LIST_ENTRIES, 29)?;
                let keys = (0..n)
                    .map(|_| {
                        Ok(KeySummary {
                            key: r.string("key", MAX_KEY_BYTES)?,
                            size: r.u64("size")?,
                            modified_unix_ms: r.u64("modified")?,
                            etag: r.string("etag", MAX_ETAG_BYTES)?,
                            first_file: opt(r, file_id)?,
                            n_files: r.u32("file count")?,
                        })
                    })
                    .collect::<Result<Vec<_>, DecodeError>>()?;
                Msg::BucketKeysOk { keys, more: r.bool("more")? }
            }
        };
        r.finish(kind.name())?;
        Ok(msg)
    }
}
