//! The chunk-file store (`dfs-node --store files`), the layout before segments. Everything lives
//! under the data directory:
//!
//! - `chunks/<xx>/<file id>.<chunk index>`: committed chunks, `xx` the file ID's first byte;
//! - `chunks/<xx>/.<file id>.<chunk index>.<nonce>.tmp`: chunks being received, next to where
//!   they will be renamed, removed on failure and at start-up. (One shared temp directory made
//!   ext4 spend most of a small-file upload scanning its inode bitmap for a free inode.)
//!
//! - `quarantine/<file id>.<chunk index>.<unix secs>`: chunk files scrub found corrupt, set
//!   aside for inspection, out of every request's reach.
//!
//! Paths are built from a [`ChunkId`] alone, never from a name a user typed, so no request can
//! reach outside the data directory.
//!
//! This module holds the layout, its counts, listing, deletion and quarantine; `receive` takes a
//! STORE into a temp file and commits it, `read` opens a chunk file for FETCH and EXISTS,
//! `footer` is the checksum footer at the end of each chunk file, and `sync` the group commit
//! by syncfs.

pub(crate) mod footer;
mod read;
mod receive;
pub mod sync;

use crate::store::ChunkError;
use dfs_proto::ChunkId;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Running totals of what the store holds, counted at start-up and kept up to date by every
/// commit, delete and quarantine.
#[derive(Default)]
struct StoreCounts {
    n_chunks: AtomicU64,
    bytes_used: AtomicU64,
    n_quarantined: AtomicU64,
}

pub struct ChunkStore {
    root: PathBuf,
    counts: StoreCounts,
    /// The 256 fan-out directories, open for the life of the process, so a commit renames and
    /// fsyncs relative to them without opening anything.
    dir_fds: Vec<Arc<OwnedFd>>,
    /// Held by a scrub pass: one at a time, whoever asked for it.
    pub(crate) scrubbing: std::sync::Mutex<()>,
    pub(crate) scrub: crate::progress::ScrubProgress,
}

impl ChunkStore {
    /// Opens (creating if needed) the layout under `root`, and removes chunks left half-received
    /// by a previous run: they were never acknowledged, so nothing refers to them.
    pub fn open(root: &Path) -> io::Result<ChunkStore> {
        let ctx = |what: &str, p: &Path, e: io::Error| io::Error::new(e.kind(), format!("{what} {}: {e}", p.display()));
        std::fs::create_dir_all(root).map_err(|e| ctx("cannot create data directory", root, e))?;
        let root = root.canonicalize().map_err(|e| ctx("cannot resolve data directory", root, e))?;
        let mut store = ChunkStore {
            root,
            counts: StoreCounts::default(),
            dir_fds: Vec::with_capacity(256),
            scrubbing: std::sync::Mutex::new(()),
            scrub: Default::default(),
        };
        let quarantine = store.quarantine_dir();
        std::fs::create_dir_all(&quarantine).map_err(|e| ctx("cannot create", &quarantine, e))?;
        let n_quarantined = std::fs::read_dir(&quarantine).map_err(|e| ctx("cannot read", &quarantine, e))?.count();
        store.counts.n_quarantined.store(n_quarantined as u64, Ordering::Relaxed);
        let chunks_dir = store.root.join("chunks");
        std::fs::create_dir_all(&chunks_dir).map_err(|e| ctx("cannot create", &chunks_dir, e))?;
        spread_subdirectories(&chunks_dir);
        let mut n_removed = 0;
        for byte in 0..=255u8 {
            let dir = store.root.join("chunks").join(format!("{byte:02x}"));
            std::fs::create_dir_all(&dir).map_err(|e| ctx("cannot create", &dir, e))?;
            for entry in std::fs::read_dir(&dir).map_err(|e| ctx("cannot read", &dir, e))? {
                let entry = entry?;
                if is_temp_name(&entry.file_name()) {
                    std::fs::remove_file(entry.path())
                        .map_err(|e| ctx("cannot remove stale temp file", &entry.path(), e))?;
                    n_removed += 1;
                } else if entry.file_name().to_str().is_some_and(|n| n.parse::<ChunkId>().is_ok()) {
                    let len = entry.metadata().map_err(|e| ctx("cannot stat", &entry.path(), e))?.len();
                    store.counts.n_chunks.fetch_add(1, Ordering::Relaxed);
                    store.counts.bytes_used.fetch_add(len, Ordering::Relaxed);
                }
            }
            let fd = std::fs::File::open(&dir).map_err(|e| ctx("cannot open", &dir, e))?;
            store.dir_fds.push(Arc::new(fd.into()));
        }
        if n_removed > 0 {
            tracing::info!("removed {n_removed} half-received chunk(s)");
        }
        for dir in [store.root.join("chunks"), store.root.clone()] {
            std::fs::File::open(&dir).and_then(|d| d.sync_all()).map_err(|e| ctx("cannot sync", &dir, e))?;
        }
        Ok(store)
    }

    pub(super) fn root(&self) -> &Path {
        &self.root
    }

    fn quarantine_dir(&self) -> PathBuf {
        self.root.join("quarantine")
    }

    /// A chunk file of `file_bytes` bytes was committed.
    fn note_added(&self, file_bytes: u64) {
        self.counts.n_chunks.fetch_add(1, Ordering::Relaxed);
        self.counts.bytes_used.fetch_add(file_bytes, Ordering::Relaxed);
    }

    /// A chunk file of `file_bytes` bytes was deleted or quarantined.
    fn note_removed(&self, file_bytes: u64) {
        let sub = |a: &AtomicU64, v: u64| {
            let _ = a.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |x| Some(x.saturating_sub(v)));
        };
        sub(&self.counts.n_chunks, 1);
        sub(&self.counts.bytes_used, file_bytes);
    }

    /// What the store holds, and the free space of its file system.
    pub(super) fn report(&self) -> io::Result<dfs_proto::StoreReport> {
        let vfs = nix::sys::statvfs::statvfs(&self.root).map_err(io::Error::from)?;
        Ok(dfs_proto::StoreReport {
            n_chunks: self.counts.n_chunks.load(Ordering::Relaxed),
            bytes_used: self.counts.bytes_used.load(Ordering::Relaxed),
            bytes_free: vfs.blocks_available() as u64 * vfs.fragment_size() as u64,
            n_quarantined: self.counts.n_quarantined.load(Ordering::Relaxed),
            // A chunk file's space is freed when it is deleted.
            bytes_reclaimable: 0,
            scrub: self.scrub.report(),
        })
    }

    /// Moves a committed chunk file out of reach into `quarantine/`, durably.
    pub(crate) fn quarantine(&self, id: &ChunkId) -> io::Result<PathBuf> {
        let from = self.chunk_path(id);
        let file_bytes = std::fs::symlink_metadata(&from)?.len();
        let stamp = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let to = self.quarantine_dir().join(format!("{}.{stamp}", id.file_name()));
        std::fs::rename(&from, &to)?;
        for dir in [self.quarantine_dir(), self.chunk_dir(id)] {
            std::fs::File::open(&dir)?.sync_all()?;
        }
        self.note_removed(file_bytes);
        self.counts.n_quarantined.fetch_add(1, Ordering::Relaxed);
        Ok(to)
    }

    fn chunk_dir(&self, id: &ChunkId) -> PathBuf {
        self.root.join("chunks").join(id.fanout_dir())
    }

    fn chunk_dir_fd(&self, id: &ChunkId) -> &Arc<OwnedFd> {
        &self.dir_fds[id.file_id.0[0] as usize]
    }

    pub(crate) fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        self.chunk_dir(id).join(id.file_name())
    }

    /// A fresh temp path for receiving `id`; the random suffix keeps two concurrent STOREs of the
    /// same chunk apart (the second loses at the no-replace rename).
    fn temp_path(&self, id: &ChunkId) -> io::Result<PathBuf> {
        let mut nonce = [0u8; 8];
        getrandom::getrandom(&mut nonce).map_err(io::Error::other)?;
        Ok(self.chunk_dir(id).join(format!(".{}.{}.tmp", id.file_name(), hex::encode(nonce))))
    }

    /// All committed chunk IDs after `after`, in order, at most `limit`, and whether more follow;
    /// with a `min_age`, only chunks whose file was last modified at least that long ago.
    /// Files whose names are not chunk IDs are skipped and logged.
    pub(crate) fn list(
        &self,
        after: Option<ChunkId>,
        limit: usize,
        min_age: Option<Duration>,
    ) -> io::Result<(Vec<ChunkId>, bool)> {
        let now = SystemTime::now();
        let first_dir = after.map(|a| a.file_id.0[0]).unwrap_or(0);
        let mut out = Vec::new();
        for byte in first_dir..=255u8 {
            let dir = self.root.join("chunks").join(format!("{byte:02x}"));
            let mut ids = Vec::new();
            for entry in std::fs::read_dir(&dir)? {
                let entry = entry?;
                if is_temp_name(&entry.file_name()) {
                    continue;
                }
                match entry.file_name().to_str().and_then(|n| n.parse::<ChunkId>().ok()) {
                    Some(id) if Some(id) > after => {
                        if let Some(min_age) = min_age {
                            let modified = entry.metadata()?.modified()?;
                            if now.duration_since(modified).unwrap_or_default() < min_age {
                                continue;
                            }
                        }
                        ids.push(id)
                    }
                    Some(_) => {}
                    None => tracing::warn!("ignoring unexpected file {}", entry.path().display()),
                }
            }
            ids.sort();
            for id in ids {
                if out.len() == limit {
                    return Ok((out, true));
                }
                out.push(id);
            }
        }
        Ok((out, false))
    }

    /// A chunk's length and crc32 from its footer, if its file is there and the footer sound.
    pub(super) async fn exists(&self, chunk_id: ChunkId) -> Result<(u64, u32), ChunkError> {
        let chunk = self.open_chunk(chunk_id).await?;
        let (length, crc32) = (chunk.footer().length, chunk.footer().crc32);
        chunk.close().await;
        Ok((length, crc32))
    }

    /// Deletes a chunk file durably; with `written_before_unix_ms`, only one last modified
    /// before then.
    pub(super) async fn delete(
        &self,
        chunk_id: ChunkId,
        written_before_unix_ms: Option<u64>,
    ) -> Result<(), ChunkError> {
        let path = self.chunk_path(&chunk_id);
        let meta = std::fs::symlink_metadata(&path);
        if let (Some(before), Ok(m)) = (written_before_unix_ms, &meta) {
            let modified_ms = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(u64::MAX, |d| d.as_millis() as u64);
            if modified_ms >= before {
                return Err(ChunkError::Newer(chunk_id));
            }
        }
        let file_bytes = meta.map(|m| m.len()).unwrap_or(0);
        match dfs_runtime::backend::fs::remove_file(&path).await {
            Ok(()) => self.note_removed(file_bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ChunkError::NotFound(chunk_id)),
            Err(e) => return Err(ChunkError::io(format!("cannot delete chunk {chunk_id}"))(e)),
        }
        dfs_runtime::ops::fsync(self.chunk_dir_fd(&chunk_id))
            .await
            .map_err(ChunkError::io(format!("cannot sync directory of chunk {chunk_id}")))
    }
}

/// Temp files are hidden (leading dot) and end in `.tmp`; no chunk ID looks like that.
fn is_temp_name(name: &std::ffi::OsStr) -> bool {
    name.to_str().is_some_and(|n| n.starts_with('.') && n.ends_with(".tmp"))
}

nix::ioctl_read!(fs_ioc_getflags, b'f', 1, libc::c_long);
nix::ioctl_write_ptr!(fs_ioc_setflags, b'f', 2, libc::c_long);
/// The ext2/3/4 "top of directory hierarchy" inode flag.
const FS_TOPDIR_FL: libc::c_long = 0x0002_0000;

/// Asks ext4 to place the fan-out directories created under `dir` in different block groups, as
/// it does for top-level directories. Every chunk file's inode is then allocated in its own
/// directory's group, so creating many small chunks does not make every upload scan the same
/// inode bitmap (seen as most of the CPU time of 4 KiB uploads). Only a placement hint: on other
/// file systems, or when refused, nothing changes.
fn spread_subdirectories(dir: &Path) {
    use std::os::fd::AsRawFd;
    let Ok(d) = std::fs::File::open(dir) else { return };
    let mut flags: libc::c_long = 0;
    // SAFETY: FS_IOC_GETFLAGS/SETFLAGS read or write one integer through a pointer to a local
    // that outlives the calls, on a descriptor we hold open.
    let result = unsafe {
        fs_ioc_getflags(d.as_raw_fd(), &mut flags).and_then(|_| {
            let wanted = flags | FS_TOPDIR_FL;
            fs_ioc_setflags(d.as_raw_fd(), &wanted)
        })
    };
    if let Err(e) = result {
        tracing::debug!("cannot set the top-directory flag on {}: {e}", dir.display());
    }
}
