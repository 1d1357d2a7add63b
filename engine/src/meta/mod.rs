//! File metadata: the records every request reads and writes, and the store that keeps them.
//!
//! One record per file: name, size, creation time, chunking, the nodes it uses (each by node ID,
//! with the address it was last known at), per chunk its offset, length, crc32, block crc32s and
//! placement (a list of node indices, one per copy), and the origin tag the uploader sent, if
//! any. A record is written once, when every chunk is durable on its nodes, so a file is either
//! wholly visible or not at all. Beside the records, the store keeps the repair queue.
//!
//! [`MetaStore`] is the one interface the engine uses, over two backends:
//! - [`embedded`]: a redb database in a directory (`--meta DIR`, and `--local`), for an engine
//!   alone;
//! - [`postgres`]: tables in PostgreSQL (`--meta postgres://...`), shared by any number of
//!   engines over the same nodes, with leases for what one engine at a time must do.
//!
//! Both store a record as the same bytes: its format version byte, then postcard. Versions 1
//! (no origin) and 2 name nodes by address only; they are still read, as records whose nodes
//! have no ID yet, and rewritten in the current version when they change for another reason (a
//! new placement) or when the engine learns the IDs of their nodes ([`MetaStore::name_nodes`],
//! run at start-up).

pub mod embedded;
pub mod objects;
pub mod postgres;

use dfs_core::repair::Reason;
use dfs_proto::{ChunkId, ChunkInfo, Chunking, FileId, FileInfo, FileNode, FileSummary, NodeId, Origin};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

pub use postgres::PostgresOptions;

/// Record format version, the first byte of every stored record: the one every record is
/// written in.
pub(crate) const RECORD_VERSION: u8 = 3;
/// The first format, without an origin: [`FileRecordV1`]. Still read, never written.
pub(crate) const RECORD_VERSION_1: u8 = 1;
/// Nodes by address only: [`FileRecordV2`]. Still read, never written.
pub(crate) const RECORD_VERSION_2: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("metadata database: {0}")]
    Db(String),
    #[error("metadata record of file {0} is unreadable: {1}")]
    BadRecord(FileId, String),
    #[error("metadata writer thread is gone")]
    WriterGone,
    #[error(
        "the metadata database has schema version {found}, newer than this engine's {known}: run the engine \
         that wrote it"
    )]
    NewerSchema { found: u64, known: u64 },
    #[error("{0}")]
    Config(String),
}

pub(crate) fn db_err(e: impl std::fmt::Display) -> MetaError {
    MetaError::Db(e.to_string())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRecord {
    pub offset: u64,
    pub length: u64,
    pub crc32: u32,
    pub block_crcs: Vec<u32>,
    /// Indices into [`FileRecord::nodes`], one per copy.
    pub placement: Vec<u16>,
}

/// A node a record's placements point at: its ID, and the address it was at when the record
/// was last written. The ID is what names the node; the address is only where to look for it
/// when no node of the engine's has proved that ID since start-up (and all there is for a
/// record written before node IDs, until [`MetaStore::name_nodes`] finds its ID).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSlot {
    pub id: Option<[u8; 16]>,
    pub addr: String,
}

/// Why a chunk's recorded placement cannot be followed: a record that breaks its own format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("chunk has no placement")]
    Empty,
    #[error("placement names an unknown node")]
    UnknownNode,
    #[error("stored node address {addr:?} is invalid: {why}")]
    BadAddress { addr: String, why: String },
}

/// Who answers at which address, as far as the engine knows: the node table (`cluster::Health`)
/// implements it; the metadata only asks.
pub trait NodeDirectory {
    /// Where the node with this ID answers now, if the engine knows.
    fn addr_of(&self, id: NodeId) -> Option<SocketAddr>;
    /// Which node answers at this address, if the engine knows.
    fn id_of(&self, addr: SocketAddr) -> Option<NodeId>;
}

impl NodeSlot {
    /// Where to reach this node: where its ID answers now, else where it last was.
    pub fn resolve(&self, nodes: &dyn NodeDirectory) -> Result<SocketAddr, PlacementError> {
        if let Some(addr) = self.id.and_then(|id| nodes.addr_of(NodeId(id))) {
            return Ok(addr);
        }
        self.addr.parse().map_err(|e: std::net::AddrParseError| PlacementError::BadAddress {
            addr: self.addr.clone(),
            why: e.to_string(),
        })
    }
}

/// A record as written today (version 3). postcard lays fields out in declaration order with no
/// names, so fields are only ever added in a new version, never changed in place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub name: String,
    pub size: u64,
    pub created_unix_ms: u64,
    pub chunking: Chunking,
    pub nodes: Vec<NodeSlot>,
    pub chunks: Vec<ChunkRecord>,
    /// The uploader's [`Origin`] tag, as raw bytes; None for plain uploads and version 1 records.
    pub origin: Option<[u8; 16]>,
}

/// A version 2 record: nodes by address. Its layout must never change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FileRecordV2 {
    name: String,
    size: u64,
    created_unix_ms: u64,
    chunking: Chunking,
    nodes: Vec<String>,
    chunks: Vec<ChunkRecord>,
    origin: Option<[u8; 16]>,
}

impl From<FileRecordV2> for FileRecord {
    fn from(v2: FileRecordV2) -> FileRecord {
        let FileRecordV2 { name, size, created_unix_ms, chunking, nodes, chunks, origin } = v2;
        let nodes = nodes.into_iter().map(|addr| NodeSlot { id: None, addr }).collect();
        FileRecord { name, size, created_unix_ms, chunking, nodes, chunks, origin }
    }
}

/// A version 1 record, exactly as the engine wrote it before origins existed. Its layout must
/// never change: databases full of these records are still read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FileRecordV1 {
    name: String,
    size: u64,
    created_unix_ms: u64,
    chunking: Chunking,
    nodes: Vec<String>,
    chunks: Vec<ChunkRecord>,
}

impl From<FileRecordV1> for FileRecord {
    fn from(v1: FileRecordV1) -> FileRecord {
        let FileRecordV1 { name, size, created_unix_ms, chunking, nodes, chunks } = v1;
        FileRecordV2 { name, size, created_unix_ms, chunking, nodes, chunks, origin: None }.into()
    }
}

impl FileRecord {
    /// Where `chunk`'s copies live, in placement order.
    pub fn copy_addrs(
        &self,
        chunk: &ChunkRecord,
        nodes: &dyn NodeDirectory,
    ) -> Result<Vec<SocketAddr>, PlacementError> {
        self.copy_slots(chunk)?.iter().map(|slot| slot.resolve(nodes)).collect()
    }

    /// The nodes `chunk`'s copies are recorded on, in placement order.
    pub fn copy_slots(&self, chunk: &ChunkRecord) -> Result<Vec<&NodeSlot>, PlacementError> {
        if chunk.placement.is_empty() {
            return Err(PlacementError::Empty);
        }
        chunk
            .placement
            .iter()
            .map(|&node_idx| self.nodes.get(node_idx as usize).ok_or(PlacementError::UnknownNode))
            .collect()
    }

    /// Names every node of this record whose ID `nodes` knows by its address; true if any
    /// changed.
    pub(crate) fn name_nodes(&mut self, nodes: &dyn NodeDirectory) -> bool {
        let mut changed = false;
        for slot in self.nodes.iter_mut().filter(|s| s.id.is_none()) {
            if let Some(id) = slot.addr.parse().ok().and_then(|a| nodes.id_of(a)) {
                slot.id = Some(id.0);
                changed = true;
            }
        }
        changed
    }

    pub(crate) fn all_nodes_named(&self) -> bool {
        self.nodes.iter().all(|s| s.id.is_some())
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = vec![RECORD_VERSION];
        out.extend(postcard::to_stdvec(self).expect("a record always serializes"));
        out
    }

    pub(crate) fn decode(file_id: FileId, bytes: &[u8]) -> Result<FileRecord, MetaError> {
        let bad = |e: postcard::Error| MetaError::BadRecord(file_id, e.to_string());
        match bytes.split_first() {
            Some((&RECORD_VERSION, rest)) => postcard::from_bytes(rest).map_err(bad),
            Some((&RECORD_VERSION_2, rest)) => postcard::from_bytes::<FileRecordV2>(rest).map(Into::into).map_err(bad),
            Some((&RECORD_VERSION_1, rest)) => postcard::from_bytes::<FileRecordV1>(rest).map(Into::into).map_err(bad),
            Some((v, _)) => Err(MetaError::BadRecord(file_id, format!("unknown record version {v}"))),
            None => Err(MetaError::BadRecord(file_id, "empty record".into())),
        }
    }

    pub fn info(&self, file_id: FileId, nodes: &dyn NodeDirectory) -> FileInfo {
        FileInfo {
            file_id,
            name: self.name.clone(),
            size: self.size,
            created_unix_ms: self.created_unix_ms,
            chunking: self.chunking,
            origin: self.origin.map(Origin),
            nodes: self
                .nodes
                .iter()
                .map(|slot| FileNode {
                    id: slot.id.map(NodeId),
                    addr: slot.resolve(nodes).map(|a| a.to_string()).unwrap_or_else(|_| slot.addr.clone()),
                })
                .collect(),
            chunks: self
                .chunks
                .iter()
                .enumerate()
                .map(|(i, c)| ChunkInfo {
                    chunk_idx: i as u32,
                    offset: c.offset,
                    length: c.length,
                    crc32: c.crc32,
                    placement: c.placement.clone(),
                })
                .collect(),
        }
    }

    pub fn summary(&self, file_id: FileId) -> FileSummary {
        FileSummary {
            file_id,
            name: self.name.clone(),
            size: self.size,
            created_unix_ms: self.created_unix_ms,
            chunking: self.chunking,
            n_chunks: self.chunks.len() as u32,
            origin: self.origin.map(Origin),
        }
    }
}

/// A new placement for one chunk, to be written only over the one it was decided from.
#[derive(Debug)]
pub struct PlacementChange {
    pub file_id: FileId,
    pub chunk_idx: u32,
    /// The chunk's nodes as the decision read them.
    pub expected: Vec<NodeSlot>,
    pub nodes: Vec<NodeSlot>,
}

/// What [`MetaStore::set_placement`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    Set,
    /// The file was deleted meanwhile: nothing changed.
    FileGone,
    /// The chunk's placement changed since it was read (another repair moved it): nothing
    /// changed; decide again from the new one.
    Changed,
}

/// Whether two slots name the same node: the same ID, or the same address where neither has an
/// ID.
pub(crate) fn same_node(a: &NodeSlot, b: &NodeSlot) -> bool {
    match (a.id, b.id) {
        (Some(x), Some(y)) => x == y,
        (None, None) => a.addr == b.addr,
        _ => false,
    }
}

impl PlacementChange {
    /// Applies the change to `record` (read fresh) if its chunk's placement is still the one
    /// the change was decided from: [`Placed::Set`], or [`Placed::Changed`] and `record` as it
    /// was. The same rule for every backend.
    pub(crate) fn apply(&self, record: &mut FileRecord) -> Placed {
        let chunk_idx = self.chunk_idx as usize;
        assert!(
            chunk_idx < record.chunks.len(),
            "placement for chunk {chunk_idx} of {}, which has {}",
            self.file_id,
            record.chunks.len()
        );
        let current = &record.chunks[chunk_idx].placement;
        let unchanged = current.len() == self.expected.len()
            && current
                .iter()
                .zip(&self.expected)
                .all(|(&i, e)| record.nodes.get(i as usize).is_some_and(|n| same_node(n, e)));
        if !unchanged {
            return Placed::Changed;
        }
        let mut placement = Vec::with_capacity(self.nodes.len());
        for slot in &self.nodes {
            // The same node: the same ID, or the same address where there is no ID on either
            // side. Its address is kept current.
            let node_idx = match record.nodes.iter().position(|n| same_node(n, slot)) {
                Some(i) => {
                    record.nodes[i].addr.clone_from(&slot.addr);
                    i
                }
                None => {
                    record.nodes.push(slot.clone());
                    record.nodes.len() - 1
                }
            };
            placement.push(node_idx as u16);
        }
        record.chunks[chunk_idx].placement = placement;
        Placed::Set
    }
}

/// Where the metadata lives, as `--meta` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaSpec {
    /// A directory holding the embedded database.
    Dir(PathBuf),
    /// A PostgreSQL connection URL (`postgres://USER@HOST:PORT/DB?...`).
    Postgres(String),
}

/// A `--meta` value that names no metadata store.
#[derive(Debug, thiserror::Error)]
pub enum MetaSpecError {
    #[error("{0:?}: --meta takes a directory or a postgres:// URL")]
    Scheme(String),
    #[error("--meta must not be empty")]
    Empty,
}

impl std::str::FromStr for MetaSpec {
    type Err = MetaSpecError;
    fn from_str(s: &str) -> Result<MetaSpec, MetaSpecError> {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Ok(MetaSpec::Postgres(s.to_string()))
        } else if s.contains("://") {
            Err(MetaSpecError::Scheme(s.to_string()))
        } else if s.is_empty() {
            Err(MetaSpecError::Empty)
        } else {
            Ok(MetaSpec::Dir(PathBuf::from(s)))
        }
    }
}

/// The metadata store: one interface over the embedded database and PostgreSQL.
pub enum MetaStore {
    Embedded(embedded::Embedded),
    Postgres(postgres::Postgres),
}

impl MetaStore {
    /// Opens (creating or migrating where needed) the store `spec` names.
    pub fn open(spec: &MetaSpec, pg: &PostgresOptions) -> Result<MetaStore, MetaError> {
        Ok(match spec {
            MetaSpec::Dir(dir) => MetaStore::Embedded(embedded::Embedded::open(dir)?),
            MetaSpec::Postgres(url) => MetaStore::Postgres(postgres::Postgres::open(url, pg)?),
        })
    }

    /// Where the metadata is, for the log (never a password).
    pub fn describe(&self) -> String {
        match self {
            MetaStore::Embedded(e) => e.describe(),
            MetaStore::Postgres(p) => p.describe(),
        }
    }

    /// Whether other engines may share this store (and so the leases mean something).
    pub fn shared(&self) -> bool {
        matches!(self, MetaStore::Postgres(_))
    }

    pub async fn get(&self, file_id: FileId) -> Result<Option<FileRecord>, MetaError> {
        match self {
            MetaStore::Embedded(e) => e.get(file_id),
            MetaStore::Postgres(p) => p.get(file_id).await,
        }
    }

    /// Files in ID order after `after`, at most `limit`, and whether more follow.
    pub async fn list(&self, after: Option<FileId>, limit: usize) -> Result<(Vec<FileSummary>, bool), MetaError> {
        let (records, more) = self.records(after, limit).await?;
        Ok((records.into_iter().map(|(id, r)| r.summary(id)).collect(), more))
    }

    /// Whole records in ID order after `after`, at most `limit`, and whether more follow.
    pub async fn records(
        &self,
        after: Option<FileId>,
        limit: usize,
    ) -> Result<(Vec<(FileId, FileRecord)>, bool), MetaError> {
        match self {
            MetaStore::Embedded(e) => e.records(after, limit),
            MetaStore::Postgres(p) => p.records(after, limit).await,
        }
    }

    /// Durably records the file `writer` uploaded. Returns once the transaction holding it has
    /// committed. In PostgreSQL, refused if this engine's registration lapsed while the upload
    /// ran (gc on another engine may have taken its copies for orphans).
    pub async fn insert(&self, writer: &Writer, record: FileRecord) -> Result<(), MetaError> {
        match self {
            MetaStore::Embedded(e) => e.insert(writer.file_id, record).await?,
            MetaStore::Postgres(p) => p.insert(writer, record).await?,
        }
        // The test failpoint reports an error for an insert that did commit, as a failing
        // fsync reported after the data reached the disk could.
        if dfs_runtime::failpoint::is_on("meta-insert-commit-then-error") {
            return Err(MetaError::Db("injected: the commit reported an error after it was made".into()));
        }
        Ok(())
    }

    /// After [`MetaStore::insert`] answered an error: makes sure the insert can no longer commit,
    /// then reads what it left. Some: the record is there (the error came after the commit),
    /// None: it is not and never will be, so the upload's copies may go. An error means neither
    /// is known: the copies must stay (gc takes them after its grace period if no record
    /// appears).
    ///
    /// In PostgreSQL an insert whose answer timed out may still be running on the server and
    /// commit later. An insert commits only by claiming its upload's registration row in the
    /// same statement, so taking that row away first settles it: either the insert claimed it
    /// (the delete waits for its commit, and the record is read) or it never will.
    pub async fn settle_failed_insert(&self, writer: &Writer) -> Result<Option<FileRecord>, MetaError> {
        match self {
            MetaStore::Embedded(e) => e.get(writer.file_id),
            MetaStore::Postgres(p) => p.settle_failed_insert(writer).await,
        }
    }

    /// Durably removes a file's record; returns it, or None if there was none.
    pub async fn delete(&self, file_id: FileId) -> Result<Option<FileRecord>, MetaError> {
        match self {
            MetaStore::Embedded(e) => e.delete(file_id).await,
            MetaStore::Postgres(p) => p.delete(file_id).await,
        }
    }

    /// Durably records that a chunk now has its copies on `change.nodes`, in that order, if
    /// its placement is still `change.expected` (compare and set: two repairs deciding from
    /// the same record, on one engine or two, cannot overwrite each other's placement).
    pub async fn set_placement(&self, change: PlacementChange) -> Result<Placed, MetaError> {
        match self {
            MetaStore::Embedded(e) => e.set_placement(change).await,
            MetaStore::Postgres(p) => p.set_placement(change).await,
        }
    }

    /// The upgrade to node IDs for records written before them (see the module
    /// documentation): returns how many records it rewrote and how many still name a node by
    /// address alone. PostgreSQL holds only records written since, so it has nothing to do.
    pub fn name_nodes(&self, nodes: &dyn NodeDirectory) -> Result<(u64, u64), MetaError> {
        match self {
            MetaStore::Embedded(e) => e.name_nodes(nodes),
            MetaStore::Postgres(_) => Ok((0, 0)),
        }
    }

    /// Every chunk with a copy recorded on a node `on` matches: a scan of the metadata, no
    /// node request.
    pub async fn chunks_placed(&self, on: impl Fn(&NodeSlot) -> bool) -> Result<Vec<ChunkId>, MetaError> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let (page, more) = self.records(after, 1000).await?;
            for (file_id, record) in &page {
                let here: Vec<bool> = record.nodes.iter().map(&on).collect();
                for (idx, chunk) in record.chunks.iter().enumerate() {
                    if chunk.placement.iter().any(|&i| here.get(i as usize).copied().unwrap_or(false)) {
                        out.push(ChunkId { file_id: *file_id, chunk_idx: idx as u32 });
                    }
                }
            }
            match (more, page.last()) {
                (true, Some((last, _))) => after = Some(*last),
                _ => return Ok(out),
            }
        }
    }

    /// Queues each chunk not already queued for repair, to be tried from its time on; a chunk
    /// already queued keeps its entry and is tried no later than the new time. Returns how
    /// many chunks were new.
    pub async fn queue_add(&self, entries: &[(ChunkId, Reason, u64)], now_unix_ms: u64) -> Result<u64, MetaError> {
        if entries.is_empty() {
            return Ok(0);
        }
        match self {
            MetaStore::Embedded(e) => e.queue_add(entries, now_unix_ms),
            MetaStore::Postgres(p) => p.queue_add(entries, now_unix_ms).await,
        }
    }

    /// Up to `limit` chunks due at `now_unix_ms`, the longest-waiting first.
    pub async fn queue_due(&self, now_unix_ms: u64, limit: usize) -> Result<Vec<(ChunkId, Queued)>, MetaError> {
        match self {
            MetaStore::Embedded(e) => e.queue_due(now_unix_ms, limit),
            MetaStore::Postgres(p) => p.queue_due(now_unix_ms, limit).await,
        }
    }

    /// Forgets the settled chunks and reschedules the others (attempts, next time).
    pub async fn queue_settle(&self, settled: &[ChunkId], retry: &[(ChunkId, u32, u64)]) -> Result<(), MetaError> {
        match self {
            MetaStore::Embedded(e) => e.queue_settle(settled, retry),
            MetaStore::Postgres(p) => p.queue_settle(settled, retry).await,
        }
    }

    /// Files recorded and their bytes: two values kept beside the records by the embedded
    /// database, a count over every row in PostgreSQL.
    pub async fn totals(&self) -> Result<(u64, u64), MetaError> {
        match self {
            MetaStore::Embedded(e) => e.totals(),
            MetaStore::Postgres(p) => p.totals().await,
        }
    }

    /// Chunks queued.
    pub async fn queue_len(&self) -> Result<u64, MetaError> {
        match self {
            MetaStore::Embedded(e) => e.queue_len(),
            MetaStore::Postgres(p) => p.queue_len().await,
        }
    }
}

/// One queued chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queued {
    /// [`Reason::code`] of what queued it first.
    pub reason: u8,
    pub queued_unix_ms: u64,
    /// Tries that left it unsettled.
    pub attempts: u32,
    /// Not tried before this time.
    pub not_before_unix_ms: u64,
}

impl Queued {
    pub fn reason(&self) -> Option<Reason> {
        Reason::from_code(self.reason)
    }
}

/// An upload's or a repair's registration as a writer of a file's chunks, so that gc on any
/// engine keeps off the copies it writes before the metadata points at them. In the embedded
/// backend, the engine's own memory ([`crate::state::Uploads`]) is enough; in PostgreSQL it is
/// a row of `dfs_uploads` under this engine's registration, removed once this is dropped.
pub struct Writer {
    pub file_id: FileId,
    /// The engine registration the row is under (PostgreSQL only).
    pub(crate) epoch: Option<[u8; 16]>,
    pub(crate) done: Option<std::sync::Arc<postgres::Done>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let (Some(epoch), Some(done)) = (self.epoch, &self.done) {
            done.push(self.file_id, epoch);
        }
    }
}

/// A cluster-wide pass that one engine at a time may run (`repair`, `gc`, `scrub`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pass {
    Repair,
    Gc,
    Scrub,
}

impl Pass {
    pub fn name(self) -> &'static str {
        match self {
            Pass::Repair => "repair",
            Pass::Gc => "gc",
            Pass::Scrub => "scrub",
        }
    }
}

/// Another engine holds a [`Pass`]: which one, by the address it said.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the engine at {holder} is running the cluster's {} pass", pass.name())]
pub struct PassHeld {
    pub pass: Pass,
    pub holder: String,
}

/// Why a cluster-wide pass could not run, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("a {} pass is already running; try again when it has finished", .0.name())]
    AlreadyRunning(Pass),
    #[error("{0}; try again when it has finished")]
    Held(PassHeld),
    #[error("cannot take the {} pass: {source}", pass.name())]
    CannotTake { pass: Pass, source: MetaError },
    #[error("the {} pass was lost (its lease lapsed), and another engine may have taken it over: stopped", .0.name())]
    Lost(Pass),
    #[error(transparent)]
    Meta(#[from] MetaError),
}

impl PassError {
    /// Takes `pass` for this engine, or says why it cannot run now.
    pub async fn take(meta: &MetaStore, pass: Pass) -> Result<PassLease, PassError> {
        match meta.take_pass(pass).await {
            Ok(Ok(lease)) => Ok(lease),
            Ok(Err(held)) => Err(PassError::Held(held)),
            Err(source) => Err(PassError::CannotTake { pass, source }),
        }
    }
}

/// Holds a [`Pass`] for this engine while it lives (several holders on one engine share one
/// lease). In PostgreSQL it is a row of `dfs_leases`, renewed in the background and released
/// when the last holder drops it; [`PassLease::lost`] says when renewing failed (another engine
/// may have taken over), and the pass stops at its next step.
pub struct PassLease {
    pub(crate) held: Option<std::sync::Arc<postgres::Held>>,
    _here: RunningHere,
}

impl PassLease {
    pub(crate) fn new(pass: Pass, held: Option<std::sync::Arc<postgres::Held>>) -> PassLease {
        PassLease { held, _here: RunningHere::new(pass) }
    }

    pub fn lost(&self) -> bool {
        self.held.as_ref().is_some_and(|h| h.lost())
    }
}

/// The passes running on this engine (one engine per process): holders, and since when.
static HERE: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<Pass, (usize, u64)>>> =
    std::sync::LazyLock::new(Default::default);

/// Counts a pass as running on this engine while it lives.
struct RunningHere(Pass);

impl RunningHere {
    fn new(pass: Pass) -> RunningHere {
        let mut here = HERE.lock().unwrap_or_else(|e| e.into_inner());
        here.entry(pass).or_insert((0, dfs_runtime::unix_ms())).0 += 1;
        RunningHere(pass)
    }
}

impl Drop for RunningHere {
    fn drop(&mut self) {
        let mut here = HERE.lock().unwrap_or_else(|e| e.into_inner());
        if let std::collections::hash_map::Entry::Occupied(mut e) = here.entry(self.0) {
            e.get_mut().0 -= 1;
            if e.get().0 == 0 {
                e.remove();
            }
        }
    }
}

/// An engine working on this metadata, as the status page shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EngineView {
    pub addr: String,
    /// Whether it is the engine answering.
    pub this: bool,
    pub started_unix_ms: u64,
    /// How long its registration lasts unless renewed (PostgreSQL only).
    pub lease_left_ms: Option<i64>,
}

/// A cluster-wide pass held, and by which engine. The repair queue holds `repair` for as long
/// as its engine runs the queue; gc and scrub hold theirs while they run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PassView {
    pub pass: String,
    /// The address of the engine running it.
    pub holder: String,
    pub this: bool,
    /// When it started, known for this engine's passes only.
    pub since_unix_ms: Option<u64>,
    /// How long its lease lasts unless renewed (PostgreSQL only).
    pub lease_left_ms: Option<i64>,
}

/// The engines sharing the metadata and the passes they run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ClusterView {
    pub engines: Vec<EngineView>,
    pub passes: Vec<PassView>,
}

impl MetaStore {
    /// A new file ID for an upload, registered as being written.
    pub async fn new_upload(&self) -> Result<Writer, MetaError> {
        match self {
            MetaStore::Embedded(_) => {
                let file_id = FileId::random().map_err(|e| MetaError::Db(format!("cannot draw a file ID: {e}")))?;
                Ok(Writer { file_id, epoch: None, done: None })
            }
            MetaStore::Postgres(p) => p.new_upload().await,
        }
    }

    /// Registers a writer of new copies of an existing file's chunks (repair).
    pub async fn register_writer(&self, file_id: FileId) -> Result<Writer, MetaError> {
        match self {
            MetaStore::Embedded(_) => Ok(Writer { file_id, epoch: None, done: None }),
            MetaStore::Postgres(p) => p.register_writer(file_id).await,
        }
    }

    /// Whether another engine registered a writer of this file that is still alive (always
    /// false for the embedded backend, which has no other engine).
    pub async fn writing_elsewhere(&self, file_id: FileId) -> Result<bool, MetaError> {
        match self {
            MetaStore::Embedded(_) => Ok(false),
            MetaStore::Postgres(p) => p.writing_elsewhere(file_id).await,
        }
    }

    /// Takes `pass` for this engine, or says which engine holds it. The embedded backend has
    /// no other engine: always this one.
    pub async fn take_pass(&self, pass: Pass) -> Result<Result<PassLease, PassHeld>, MetaError> {
        match self {
            MetaStore::Embedded(_) => Ok(Ok(PassLease::new(pass, None))),
            MetaStore::Postgres(p) => p.take_pass(pass).await,
        }
    }

    /// The engines working on this metadata and the passes they run. With the embedded
    /// database that is this engine (at `this_addr`, started at `started_unix_ms`) alone.
    pub async fn cluster_view(&self, this_addr: &str, started_unix_ms: u64) -> Result<ClusterView, MetaError> {
        let here: Vec<(Pass, u64)> = {
            let here = HERE.lock().unwrap_or_else(|e| e.into_inner());
            let mut v: Vec<(Pass, u64)> = here.iter().map(|(p, (_, since))| (*p, *since)).collect();
            v.sort_by_key(|(p, _)| p.name());
            v
        };
        let since = |name: &str| here.iter().find(|(p, _)| p.name() == name).map(|(_, s)| *s);
        match self {
            MetaStore::Embedded(_) => Ok(ClusterView {
                engines: vec![EngineView {
                    addr: this_addr.to_string(),
                    this: true,
                    started_unix_ms,
                    lease_left_ms: None,
                }],
                passes: here
                    .iter()
                    .map(|(p, s)| PassView {
                        pass: p.name().to_string(),
                        holder: this_addr.to_string(),
                        this: true,
                        since_unix_ms: Some(*s),
                        lease_left_ms: None,
                    })
                    .collect(),
            }),
            MetaStore::Postgres(p) => {
                let mut view = p.cluster_view().await?;
                for pass in view.passes.iter_mut().filter(|p| p.this) {
                    pass.since_unix_ms = since(&pass.pass);
                }
                Ok(view)
            }
        }
    }
}
