//! Where a node keeps its chunks (`--store`): two stores, a folder each. `files` keeps one file
//! per chunk copy under `chunks/` (the layout before segments); `segments`, the default, appends
//! records to segment files under `segments/`. [`Stores`] is the choice a node made at start-up,
//! and what `server` answers requests through: every read, write, sync and rename of a chunk
//! happens behind it. EXISTS, DELETE, LIST and NODESTAT are one call on [`Stores`]; STORE and
//! FETCH stream through each store's own types (an `Incoming` that lends the buffer each piece
//! of the body is received into, a `ChunkFile` or a record's `Location` that reads and checks
//! one block at a time), since one store works on plain buffers through the page cache and the
//! other on aligned ones, read ahead.

pub mod files;
pub mod segments;

use dfs_proto::ChunkId;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A sync's failure as a sync thread hands it to every waiter it answers: an `io::Error` is
/// not `Clone`, so its kind and OS error number travel with its text, and each waiter gets an
/// `io::Error` back that says what the disk said (a full disk stays `StorageFull`, answered
/// `NoSpace`, not a string no one can match).
#[derive(Debug, Clone)]
pub(crate) struct SyncFailed {
    kind: io::ErrorKind,
    raw: Option<i32>,
    text: String,
}

impl From<&io::Error> for SyncFailed {
    fn from(e: &io::Error) -> SyncFailed {
        SyncFailed { kind: e.kind(), raw: e.raw_os_error(), text: e.to_string() }
    }
}

impl From<SyncFailed> for io::Error {
    fn from(e: SyncFailed) -> io::Error {
        let back = match e.raw {
            Some(errno) => io::Error::from_raw_os_error(errno),
            None => io::Error::new(e.kind, e.text),
        };
        assert_eq!(back.kind(), e.kind, "a sync error keeps its kind");
        back
    }
}

/// Whether a failed write or sync means the disk is full.
pub(crate) fn is_full(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOSPC) || e.kind() == io::ErrorKind::StorageFull
}

/// Where a node keeps its chunks (`--store`): chunk files or segments.
#[derive(Clone)]
pub enum Stores {
    /// One file per chunk copy under `chunks/`.
    Files(Arc<files::ChunkStore>),
    /// Records appended to segment files under `segments/`.
    Segments(Arc<segments::SegmentStore>),
}

impl Stores {
    /// The data directory the store lives in.
    pub fn root(&self) -> &Path {
        match self {
            Stores::Files(files) => files.root(),
            Stores::Segments(segs) => segs.root(),
        }
    }

    /// A chunk's length and crc32, if the store holds a sound copy of it (EXISTS).
    pub(crate) async fn exists(&self, chunk_id: ChunkId) -> Result<(u64, u32), ChunkError> {
        match self {
            Stores::Files(files) => files.exists(chunk_id).await,
            Stores::Segments(segs) => match segs.get(&chunk_id) {
                Some(l) => Ok((l.length, l.crc32)),
                None => Err(ChunkError::NotFound(chunk_id)),
            },
        }
    }

    /// Deletes a chunk durably; with `written_before_unix_ms`, only a copy stored before then
    /// (DELETE).
    pub(crate) async fn delete(
        &self,
        chunk_id: ChunkId,
        written_before_unix_ms: Option<u64>,
    ) -> Result<(), ChunkError> {
        match self {
            Stores::Files(files) => files.delete(chunk_id, written_before_unix_ms).await,
            Stores::Segments(segs) => match segs.remove_if_written_before(chunk_id, written_before_unix_ms).await {
                Ok(true) => Ok(()),
                Ok(false) => Err(ChunkError::Newer(chunk_id)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Err(ChunkError::NotFound(chunk_id)),
                Err(e) => Err(ChunkError::io(format!("cannot delete chunk {chunk_id}"))(e)),
            },
        }
    }

    /// Chunk IDs after `after`, in order, at most `limit`, and whether more follow; with
    /// `min_age`, only chunks stored at least that long ago (LIST).
    pub(crate) fn list(
        &self,
        after: Option<ChunkId>,
        limit: usize,
        min_age: Option<Duration>,
    ) -> io::Result<(Vec<ChunkId>, bool)> {
        match self {
            Stores::Files(files) => files.list(after, limit, min_age),
            Stores::Segments(segs) => Ok(segs.list(after, limit, min_age)),
        }
    }

    /// What the store holds, and the free space of its file system (NODESTAT).
    pub(crate) fn report(&self) -> io::Result<dfs_proto::StoreReport> {
        match self {
            Stores::Files(files) => files.report(),
            Stores::Segments(segs) => segs.report(),
        }
    }
}

/// Why a request failed: most on one chunk, `Io` on the store as a whole too (a listing, a
/// report, a scrub). The connection itself is still usable.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
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

impl ChunkError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> ChunkError {
        let context = context.into();
        move |source| ChunkError::Io { context, source }
    }
}

/// A block read back (for FETCH) against the crc32 stored for it.
fn check_block(chunk_id: ChunkId, block_idx: u64, bytes: &[u8], expected: u32) -> Result<(), ChunkError> {
    dfs_proto::layout::check_block(block_idx, bytes, expected)
        .map_err(|mismatch| ChunkError::Corrupt(chunk_id, mismatch.to_string()))
}
