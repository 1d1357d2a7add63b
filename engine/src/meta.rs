//! File metadata in an embedded, crash-safe database (redb) under `--meta`.
//!
//! One table maps a file ID to its record: name, size, creation time, chunking, the nodes it
//! uses (each by node ID, with the address it was last known at), per chunk its offset, length,
//! crc32, block crc32s and placement (a list of node indices, one per copy), and the origin tag
//! the uploader sent, if any. A record is written once, when every chunk is durable on its
//! nodes, so a file is either wholly visible or not at all.
//!
//! A record is its format version byte, then postcard. Versions 1 (no origin) and 2 name nodes
//! by address only; they are still read, as records whose nodes have no ID yet, and rewritten in
//! the current version when they change for another reason (a new placement) or when the
//! engine learns the IDs of their nodes ([`MetaStore::name_nodes`], run at start-up).
//!
//! A second table holds the schema version of the database as a whole: 1 while some record
//! names a node by address alone, 2 once every record names its nodes by ID.
//!
//! Reads run on the calling thread (redb read transactions are cheap and concurrent). Writes
//! go to one writer thread that commits whatever has queued up in a single fsynced
//! transaction (group commit), so the io_uring threads never block on an fsync.

use dfs_proto::{ChunkInfo, Chunking, FileId, FileInfo, FileNode, FileSummary, NodeId, Origin};
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;

const FILES: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("files");
const SCHEMA: TableDefinition<&str, u64> = TableDefinition::new("schema");
const SCHEMA_VERSION_KEY: &str = "version";
/// Schema: some records name nodes by address alone.
const SCHEMA_NODES_BY_ADDRESS: u64 = 1;
/// Schema: every record names its nodes by ID. The newest this engine knows.
const SCHEMA_NODES_BY_ID: u64 = 2;
/// Record format version, the first byte of every stored record: the one every record is
/// written in.
const RECORD_VERSION: u8 = 3;
/// The first format, without an origin: [`FileRecordV1`]. Still read, never written.
const RECORD_VERSION_1: u8 = 1;
/// Nodes by address only: [`FileRecordV2`]. Still read, never written.
const RECORD_VERSION_2: u8 = 2;
/// Writes that may queue for the writer thread before callers wait.
pub const MAX_QUEUED_WRITES: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("metadata database: {0}")]
    Db(String),
    #[error("metadata record of file {0} is unreadable: {1}")]
    BadRecord(FileId, String),
    #[error("metadata writer thread is gone")]
    WriterGone,
    #[error(
        "the metadata database has schema version {0}, newer than this engine's {SCHEMA_NODES_BY_ID}: run the \
         engine that wrote it"
    )]
    NewerSchema(u64),
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
struct FileRecordV2 {
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
struct FileRecordV1 {
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
    fn name_nodes(&mut self, nodes: &dyn NodeDirectory) -> bool {
        let mut changed = false;
        for slot in self.nodes.iter_mut().filter(|s| s.id.is_none()) {
            if let Some(id) = slot.addr.parse().ok().and_then(|a| nodes.id_of(a)) {
                slot.id = Some(id.0);
                changed = true;
            }
        }
        changed
    }

    fn all_nodes_named(&self) -> bool {
        self.nodes.iter().all(|s| s.id.is_some())
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = vec![RECORD_VERSION];
        out.extend(postcard::to_stdvec(self).expect("a record always serializes"));
        out
    }

    fn decode(file_id: FileId, bytes: &[u8]) -> Result<FileRecord, MetaError> {
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

enum WriteOp {
    Insert(FileId, Box<FileRecord>, tokio::sync::oneshot::Sender<Result<(), MetaError>>),
    Delete(FileId, tokio::sync::oneshot::Sender<Result<Option<FileRecord>, MetaError>>),
    /// Replaces where one chunk's copies live, if the file still exists.
    SetPlacement(Box<PlacementChange>, tokio::sync::oneshot::Sender<Result<Placed, MetaError>>),
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
fn same_node(a: &NodeSlot, b: &NodeSlot) -> bool {
    match (a.id, b.id) {
        (Some(x), Some(y)) => x == y,
        (None, None) => a.addr == b.addr,
        _ => false,
    }
}

pub struct MetaStore {
    pub(crate) db: Arc<Database>,
    /// Always Some until drop, which closes the queue and waits for the writer to finish.
    writes: Option<mpsc::SyncSender<WriteOp>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for MetaStore {
    fn drop(&mut self) {
        drop(self.writes.take());
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl MetaStore {
    pub fn open(dir: &Path) -> Result<MetaStore, MetaError> {
        std::fs::create_dir_all(dir).map_err(|e| MetaError::Db(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join("meta.redb");
        let db = Database::create(&path).map_err(|e| MetaError::Db(format!("cannot open {}: {e}", path.display())))?;
        let txn = db.begin_write().map_err(db_err)?;
        let empty = txn.open_table(FILES).map_err(db_err)?.is_empty().map_err(db_err)?;
        {
            let mut schema = txn.open_table(SCHEMA).map_err(db_err)?;
            let version = schema.get(SCHEMA_VERSION_KEY).map_err(db_err)?.map(|v| v.value());
            match version {
                Some(v) if v > SCHEMA_NODES_BY_ID => return Err(MetaError::NewerSchema(v)),
                Some(_) => {}
                None => {
                    let v = if empty { SCHEMA_NODES_BY_ID } else { SCHEMA_NODES_BY_ADDRESS };
                    schema.insert(SCHEMA_VERSION_KEY, v).map_err(db_err)?;
                }
            }
        }
        txn.commit().map_err(db_err)?;
        let db = Arc::new(db);
        let (writes, queue) = mpsc::sync_channel(MAX_QUEUED_WRITES);
        let writer_db = db.clone();
        let writer = std::thread::Builder::new()
            .name("meta-writer".into())
            .spawn(move || writer(&writer_db, queue))
            .map_err(|e| MetaError::Db(format!("cannot start writer thread: {e}")))?;
        Ok(MetaStore { db, writes: Some(writes), writer: Some(writer) })
    }

    pub fn get(&self, file_id: FileId) -> Result<Option<FileRecord>, MetaError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(FILES).map_err(db_err)?;
        match table.get(&file_id.0).map_err(db_err)? {
            Some(v) => Ok(Some(FileRecord::decode(file_id, v.value())?)),
            None => Ok(None),
        }
    }

    /// Files in ID order after `after`, at most `limit`, and whether more follow.
    pub fn list(&self, after: Option<FileId>, limit: usize) -> Result<(Vec<FileSummary>, bool), MetaError> {
        let (records, more) = self.records(after, limit)?;
        Ok((records.into_iter().map(|(id, r)| r.summary(id)).collect(), more))
    }

    /// Whole records in ID order after `after`, at most `limit`, and whether more follow.
    pub fn records(&self, after: Option<FileId>, limit: usize) -> Result<(Vec<(FileId, FileRecord)>, bool), MetaError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(FILES).map_err(db_err)?;
        let start = after.map(|a| a.0).unwrap_or([0; 16]);
        let mut out = Vec::new();
        for entry in table.range::<&[u8; 16]>(&start..).map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            let file_id = FileId(*k.value());
            if Some(file_id) == after {
                continue;
            }
            if out.len() == limit {
                return Ok((out, true));
            }
            out.push((file_id, FileRecord::decode(file_id, v.value())?));
        }
        Ok((out, false))
    }

    /// Durably records a file. Returns once the transaction holding it has committed.
    pub async fn insert(&self, file_id: FileId, record: FileRecord) -> Result<(), MetaError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(WriteOp::Insert(file_id, Box::new(record), tx)).await?;
        rx.await.map_err(|_| MetaError::WriterGone)?
    }

    /// Durably removes a file's record; returns it, or None if there was none.
    pub async fn delete(&self, file_id: FileId) -> Result<Option<FileRecord>, MetaError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(WriteOp::Delete(file_id, tx)).await?;
        rx.await.map_err(|_| MetaError::WriterGone)?
    }

    /// Durably records that a chunk now has its copies on `change.nodes`, in that order, if
    /// its placement is still `change.expected` (compare and set: two repairs deciding from
    /// the same record cannot overwrite each other's placement).
    pub async fn set_placement(&self, change: PlacementChange) -> Result<Placed, MetaError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(WriteOp::SetPlacement(Box::new(change), tx)).await?;
        rx.await.map_err(|_| MetaError::WriterGone)?
    }

    /// The database's schema version (see the module documentation).
    pub fn schema_version(&self) -> Result<u64, MetaError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let schema = txn.open_table(SCHEMA).map_err(db_err)?;
        Ok(schema.get(SCHEMA_VERSION_KEY).map_err(db_err)?.map(|v| v.value()).unwrap_or(SCHEMA_NODES_BY_ADDRESS))
    }

    /// The upgrade to node IDs: gives every record's nodes known only by address the ID that
    /// `nodes` knows for that address, rewriting those records, and moves the schema to
    /// "nodes by ID" once no record is left with an unnamed node. Returns how many records it
    /// rewrote and how many still name a node by address alone (nodes that have not answered
    /// since start-up; the next start names them). Runs before the engine serves, in batches.
    pub fn name_nodes(&self, nodes: &dyn NodeDirectory) -> Result<(u64, u64), MetaError> {
        if self.schema_version()? == SCHEMA_NODES_BY_ID {
            return Ok((0, 0));
        }
        const BATCH: usize = 1024;
        let (mut n_named, mut n_left) = (0u64, 0u64);
        let mut after: Option<[u8; 16]> = None;
        loop {
            let txn = self.db.begin_write().map_err(db_err)?;
            let mut last = None;
            {
                let mut table = txn.open_table(FILES).map_err(db_err)?;
                let mut batch = Vec::with_capacity(BATCH);
                let range = match &after {
                    Some(a) => table.range::<&[u8; 16]>(a..).map_err(db_err)?,
                    None => table.range::<&[u8; 16]>(..).map_err(db_err)?,
                };
                for entry in range {
                    let (k, v) = entry.map_err(db_err)?;
                    let key = *k.value();
                    if Some(key) == after {
                        continue;
                    }
                    if batch.len() == BATCH {
                        break;
                    }
                    batch.push((key, FileRecord::decode(FileId(key), v.value())?));
                }
                for (key, mut record) in batch {
                    last = Some(key);
                    if record.name_nodes(nodes) {
                        table.insert(&key, record.encode().as_slice()).map_err(db_err)?;
                        n_named += 1;
                    }
                    if !record.all_nodes_named() {
                        n_left += 1;
                    }
                }
                if last.is_none() && n_left == 0 {
                    txn.open_table(SCHEMA)
                        .map_err(db_err)?
                        .insert(SCHEMA_VERSION_KEY, SCHEMA_NODES_BY_ID)
                        .map_err(db_err)?;
                }
            }
            txn.commit().map_err(db_err)?;
            match last {
                Some(key) => after = Some(key),
                None => return Ok((n_named, n_left)),
            }
        }
    }

    async fn send(&self, mut op: WriteOp) -> Result<(), MetaError> {
        // A full queue means the disk is behind: wait a little rather than grow without bound.
        loop {
            match self.writes.as_ref().expect("queue open until drop").try_send(op) {
                Ok(()) => return Ok(()),
                Err(mpsc::TrySendError::Full(back)) => {
                    op = back;
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
                Err(mpsc::TrySendError::Disconnected(_)) => return Err(MetaError::WriterGone),
            }
        }
    }
}

/// The writer thread: takes every queued write, applies them in one transaction, commits
/// (fsync), then answers each.
fn writer(db: &Database, queue: mpsc::Receiver<WriteOp>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_QUEUED_WRITES {
            match queue.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let mut deleted: Vec<Option<FileRecord>> = Vec::with_capacity(batch.len());
        let mut placed: Vec<Placed> = Vec::with_capacity(batch.len());
        let result = (|| -> Result<(), MetaError> {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut table = txn.open_table(FILES).map_err(db_err)?;
                for op in &batch {
                    match op {
                        WriteOp::Insert(id, record, _) => {
                            let existing = table.insert(&id.0, record.encode().as_slice()).map_err(db_err)?;
                            // IDs are 128 random bits: a collision means a bug, not bad luck.
                            assert!(existing.is_none(), "file ID {id} inserted twice");
                            deleted.push(None);
                            placed.push(Placed::FileGone);
                        }
                        WriteOp::SetPlacement(change, _) => {
                            let PlacementChange { file_id: id, chunk_idx, expected, nodes: slots } = &**change;
                            deleted.push(None);
                            let old = table.get(&id.0).map_err(db_err)?.map(|v| FileRecord::decode(*id, v.value()));
                            let Some(mut record) = old.transpose()? else {
                                placed.push(Placed::FileGone);
                                continue;
                            };
                            let chunk_idx = *chunk_idx as usize;
                            assert!(
                                chunk_idx < record.chunks.len(),
                                "placement for chunk {chunk_idx} of {id}, which has {}",
                                record.chunks.len()
                            );
                            let current = &record.chunks[chunk_idx].placement;
                            let unchanged = current.len() == expected.len()
                                && current
                                    .iter()
                                    .zip(expected)
                                    .all(|(&i, e)| record.nodes.get(i as usize).is_some_and(|n| same_node(n, e)));
                            if !unchanged {
                                placed.push(Placed::Changed);
                                continue;
                            }
                            let mut placement = Vec::with_capacity(slots.len());
                            for slot in slots {
                                // The same node: the same ID, or the same address where there is
                                // no ID on either side. Its address is kept current.
                                let same = |n: &NodeSlot| same_node(n, slot);
                                let node_idx = match record.nodes.iter().position(same) {
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
                            table.insert(&id.0, record.encode().as_slice()).map_err(db_err)?;
                            placed.push(Placed::Set);
                        }
                        WriteOp::Delete(id, _) => {
                            placed.push(Placed::FileGone);
                            let old = table.remove(&id.0).map_err(db_err)?;
                            deleted.push(match old {
                                Some(v) => Some(FileRecord::decode(*id, v.value())?),
                                None => None,
                            });
                        }
                    }
                }
            }
            txn.commit().map_err(db_err)
        })();
        if let Err(e) = &result {
            tracing::error!("metadata commit failed: {e}");
        }
        let mut placed = placed.into_iter().chain(std::iter::repeat(Placed::FileGone));
        for (op, old) in batch.into_iter().zip(deleted.into_iter().chain(std::iter::repeat(None))) {
            let placed = placed.next().unwrap_or(Placed::FileGone);
            match op {
                WriteOp::SetPlacement(.., reply) => {
                    let _ = reply.send(result.as_ref().map(|_| placed).map_err(|e| MetaError::Db(e.to_string())));
                }
                WriteOp::Insert(_, _, reply) => {
                    // The test failpoint reports an error for an insert that did commit, as a
                    // failing fsync reported after the data reached the disk could.
                    let result = match &result {
                        Ok(()) if dfs_runtime::failpoint::is_on("meta-insert-commit-then-error") => {
                            Err(MetaError::Db("injected: the commit reported an error after it was made".into()))
                        }
                        other => other.as_ref().map(|_| ()).map_err(|e| MetaError::Db(e.to_string())),
                    };
                    let _ = reply.send(result);
                }
                WriteOp::Delete(_, reply) => {
                    let _ = reply.send(result.as_ref().map(|_| old).map_err(|e| MetaError::Db(e.to_string())));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(id: Option<u8>, addr: &str) -> NodeSlot {
        NodeSlot { id: id.map(|b| [b; 16]), addr: addr.into() }
    }

    /// A node table for tests: (ID byte, address) pairs.
    struct Nodes(Vec<(u8, &'static str)>);

    impl NodeDirectory for Nodes {
        fn addr_of(&self, id: NodeId) -> Option<SocketAddr> {
            self.0.iter().find(|(b, _)| [*b; 16] == id.0).map(|(_, a)| a.parse().unwrap())
        }
        fn id_of(&self, addr: SocketAddr) -> Option<NodeId> {
            self.0.iter().find(|(_, a)| a.parse::<SocketAddr>().unwrap() == addr).map(|(b, _)| NodeId([*b; 16]))
        }
    }

    /// `record` as read from a version 1 or 2 record: its node by address only.
    fn unnamed(mut r: FileRecord) -> FileRecord {
        r.nodes.iter_mut().for_each(|s| s.id = None);
        r
    }

    fn record(name: &str) -> FileRecord {
        FileRecord {
            name: name.into(),
            size: 5,
            created_unix_ms: 1,
            chunking: Chunking::Equal,
            nodes: vec![slot(Some(1), "127.0.0.1:1")],
            chunks: vec![ChunkRecord { offset: 0, length: 5, crc32: 9, block_crcs: vec![9], placement: vec![0] }],
            origin: None,
        }
    }

    fn change(file_id: FileId, expected: Vec<NodeSlot>, nodes: Vec<NodeSlot>) -> PlacementChange {
        PlacementChange { file_id, chunk_idx: 0, expected, nodes }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(f)
    }

    #[test]
    fn records_survive_reopen_and_delete_returns_them() {
        let dir = tempfile::tempdir().unwrap();
        let a = FileId([1; 16]);
        let b = FileId([2; 16]);
        {
            let meta = MetaStore::open(dir.path()).unwrap();
            block_on(meta.insert(a, record("a"))).unwrap();
            block_on(meta.insert(b, record("b"))).unwrap();
        }
        let meta = MetaStore::open(dir.path()).unwrap();
        assert_eq!(meta.get(a).unwrap(), Some(record("a")));
        let (page, more) = meta.list(None, 1).unwrap();
        assert_eq!((page.len(), more), (1, true));
        let (page2, more) = meta.list(Some(page[0].file_id), 10).unwrap();
        assert_eq!((page2.len(), more), (1, false));
        assert_eq!(block_on(meta.delete(a)).unwrap(), Some(record("a")));
        assert_eq!(block_on(meta.delete(a)).unwrap(), None);
        assert_eq!(meta.get(a).unwrap(), None);
    }

    #[test]
    fn set_placement_rewrites_one_chunk_and_skips_deleted_files() {
        let dir = tempfile::tempdir().unwrap();
        let meta = MetaStore::open(dir.path()).unwrap();
        let a = FileId([3; 16]);
        block_on(meta.insert(a, record("a"))).unwrap();
        // Node 1 is now at another address; node 2 is new.
        let moved = vec![slot(Some(2), "127.0.0.1:2"), slot(Some(1), "127.0.0.1:5")];
        let was = vec![slot(Some(1), "127.0.0.1:1")];
        assert_eq!(block_on(meta.set_placement(change(a, was.clone(), moved.clone()))).unwrap(), Placed::Set);
        let got = meta.get(a).unwrap().unwrap();
        assert_eq!(got.nodes, [slot(Some(1), "127.0.0.1:5"), slot(Some(2), "127.0.0.1:2")]);
        assert_eq!(got.chunks[0].placement, [1, 0]);
        // A second decision made from the old placement does not overwrite the first.
        let other = vec![slot(Some(3), "127.0.0.1:3")];
        assert_eq!(block_on(meta.set_placement(change(a, was, other.clone()))).unwrap(), Placed::Changed);
        assert_eq!(meta.get(a).unwrap().unwrap().chunks[0].placement, [1, 0]);
        block_on(meta.delete(a)).unwrap();
        assert_eq!(block_on(meta.set_placement(change(a, moved, other))).unwrap(), Placed::FileGone);
        assert_eq!(meta.get(a).unwrap(), None);
    }

    /// The bytes the engine wrote for `record("a")` before record version 2, pinned so that a
    /// change to the version 1 layout fails here instead of on an operator's database.
    const V1_RECORD_A: &[u8] = &[
        1, // version
        1, b'a', // name
        5,    // size
        1,    // created_unix_ms
        0,    // chunking: Equal
        1, 11, b'1', b'2', b'7', b'.', b'0', b'.', b'0', b'.', b'1', b':', b'1', // nodes
        1, 0, 5, 9, 1, 9, 1, 0, // one chunk: offset, length, crc32, block crcs, placement
    ];

    fn insert_raw(dir: &Path, id: FileId, bytes: &[u8]) {
        let db = Database::create(dir.join("meta.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(FILES).unwrap().insert(&id.0, bytes).unwrap();
        txn.commit().unwrap();
    }

    #[test]
    fn version_1_records_still_read_and_are_rewritten_in_the_current_version_with_no_origin() {
        let v1 = FileRecordV1 {
            name: "a".into(),
            size: 5,
            created_unix_ms: 1,
            chunking: Chunking::Equal,
            nodes: vec!["127.0.0.1:1".into()],
            chunks: record("a").chunks,
        };
        assert_eq!([&[RECORD_VERSION_1][..], &postcard::to_stdvec(&v1).unwrap()].concat(), V1_RECORD_A);

        let dir = tempfile::tempdir().unwrap();
        let id = FileId([4; 16]);
        insert_raw(dir.path(), id, V1_RECORD_A);
        let meta = MetaStore::open(dir.path()).unwrap();
        assert_eq!(meta.get(id).unwrap(), Some(unnamed(record("a"))));
        assert_eq!(meta.list(None, 10).unwrap().0[0].origin, None);
        // A placement change rewrites the record in the current version; nothing is lost.
        let was = vec![slot(None, "127.0.0.1:1")];
        assert_eq!(
            block_on(meta.set_placement(change(id, was, vec![slot(Some(2), "127.0.0.1:2")]))).unwrap(),
            Placed::Set
        );
        let txn = meta.db.begin_read().unwrap();
        let stored = txn.open_table(FILES).unwrap().get(&id.0).unwrap().unwrap().value().to_vec();
        assert_eq!(stored[0], RECORD_VERSION);
        let got = meta.get(id).unwrap().unwrap();
        assert_eq!((got.name.as_str(), got.origin, got.chunks[0].placement.as_slice()), ("a", None, &[1u16][..]));
    }

    fn insert_v2(dir: &Path, id: FileId, addrs: &[&str]) {
        let v2 = FileRecordV2 {
            name: "old".into(),
            size: 5,
            created_unix_ms: 1,
            chunking: Chunking::Equal,
            nodes: addrs.iter().map(|a| a.to_string()).collect(),
            chunks: vec![ChunkRecord {
                offset: 0,
                length: 5,
                crc32: 9,
                block_crcs: vec![9],
                placement: (0..addrs.len() as u16).collect(),
            }],
            origin: None,
        };
        insert_raw(dir, id, &[&[RECORD_VERSION_2][..], &postcard::to_stdvec(&v2).unwrap()].concat());
    }

    #[test]
    fn records_by_address_are_named_once_their_nodes_answer_and_then_follow_them() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (FileId([10; 16]), FileId([11; 16]));
        insert_v2(dir.path(), a, &["127.0.0.1:1", "127.0.0.1:2"]);
        insert_v2(dir.path(), b, &["127.0.0.1:2"]);
        let meta = MetaStore::open(dir.path()).unwrap();
        assert_eq!(meta.schema_version().unwrap(), SCHEMA_NODES_BY_ADDRESS);
        // Only the node at :2 has answered: b is named whole, a in part.
        assert_eq!(meta.name_nodes(&Nodes(vec![(2, "127.0.0.1:2")])).unwrap(), (2, 1));
        assert_eq!(meta.schema_version().unwrap(), SCHEMA_NODES_BY_ADDRESS);
        assert_eq!(meta.get(b).unwrap().unwrap().nodes, [slot(Some(2), "127.0.0.1:2")]);
        // Now both answer: a is named, the schema moves on, and the next run has nothing to do.
        let both = Nodes(vec![(1, "127.0.0.1:1"), (2, "127.0.0.1:2")]);
        assert_eq!(meta.name_nodes(&both).unwrap(), (1, 0));
        assert_eq!(meta.schema_version().unwrap(), SCHEMA_NODES_BY_ID);
        assert_eq!(meta.name_nodes(&both).unwrap(), (0, 0));
        let got = meta.get(a).unwrap().unwrap();
        assert_eq!(got.nodes, [slot(Some(1), "127.0.0.1:1"), slot(Some(2), "127.0.0.1:2")]);
        // Node 1 moves: its copies are found at its new address, by its ID.
        let moved = Nodes(vec![(1, "127.0.0.1:7"), (2, "127.0.0.1:2")]);
        let addrs = got.copy_addrs(&got.chunks[0], &moved).unwrap();
        assert_eq!(addrs, ["127.0.0.1:7".parse().unwrap(), "127.0.0.1:2".parse().unwrap()]);
        assert_eq!(got.info(a, &moved).nodes[0], FileNode { id: Some(NodeId([1; 16])), addr: "127.0.0.1:7".into() });
        // A node no one has seen since start-up is looked for where it last was.
        let addrs = got.copy_addrs(&got.chunks[0], &Nodes(vec![])).unwrap();
        assert_eq!(addrs, ["127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap()]);
    }

    #[test]
    fn a_new_database_names_nodes_by_id_and_a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(MetaStore::open(dir.path()).unwrap().schema_version().unwrap(), SCHEMA_NODES_BY_ID);
        {
            let db = Database::create(dir.path().join("meta.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(SCHEMA).unwrap().insert(SCHEMA_VERSION_KEY, SCHEMA_NODES_BY_ID + 1).unwrap();
            txn.commit().unwrap();
        }
        let err = MetaStore::open(dir.path()).err().expect("refused").to_string();
        assert!(err.contains("schema version 3, newer than this engine's 2"), "{err}");
    }

    #[test]
    fn the_origin_survives_reopen_and_shows_in_stat_and_list() {
        let dir = tempfile::tempdir().unwrap();
        let id = FileId([6; 16]);
        let tagged = FileRecord { origin: Some([0xab; 16]), ..record("t") };
        {
            let meta = MetaStore::open(dir.path()).unwrap();
            block_on(meta.insert(id, tagged.clone())).unwrap();
        }
        let meta = MetaStore::open(dir.path()).unwrap();
        let got = meta.get(id).unwrap().unwrap();
        assert_eq!(got, tagged);
        assert_eq!(got.info(id, &Nodes(vec![])).origin, Some(Origin([0xab; 16])));
        assert_eq!(meta.list(None, 10).unwrap().0[0].origin, Some(Origin([0xab; 16])));
    }

    #[test]
    fn unknown_and_empty_records_are_errors_not_panics() {
        let id = FileId([8; 16]);
        for (bytes, why) in [(&[][..], "empty"), (&[4, 0][..], "version 4"), (&V1_RECORD_A[..5], "")] {
            let err = FileRecord::decode(id, bytes).expect_err("must be refused").to_string();
            assert!(err.contains(why), "{err}");
        }
    }
}
