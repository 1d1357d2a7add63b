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
//!
//! Beside this file: `record` (the record and its stored bytes, placement changes), `leases`
//! (upload registrations, cluster-wide passes, the cluster view), `objects` (S3's buckets and
//! keys), and the two backends.

pub mod embedded;
pub mod objects;
pub mod postgres;

use dfs_core::repair::Reason;
use dfs_proto::{ChunkId, ChunkInfo, Chunking, FileId, FileInfo, FileNode, FileSummary, NodeId, Origin};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

pub use postgres::PostgresOptions;

mod leases;
mod record;

pub use leases::{ClusterView, EngineView, Pass, PassError, PassHeld, PassLease, PassView, RunningPasses, Writer};
pub use record::{ChunkRecord, FileRecord, NodeDirectory, NodeSlot, Placed, PlacementChange, PlacementError};
#[cfg(test)]
pub(crate) use record::{FileRecordV1, FileRecordV2, RECORD_VERSION, RECORD_VERSION_1, RECORD_VERSION_2};

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
