//! One segment file as the store holds it open: its two descriptors (direct and through the
//! page cache), how far space has been handed out, the bytes of live records and tombstones in
//! it, and its fdatasync, which once failed fails for good.

use super::disk::DiskFile;
use super::format::{record_span, SEGMENT_HEADER_BYTES};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Records up to this span (header, data and trailer) are written and read through the page
/// cache, like a small file in a file system: a 4 KiB file's quarter is read back from memory
/// while it is there, where a direct read waits on the disk every time. Larger ones go past it
/// with O_DIRECT.
const SMALL_RECORD_BYTES: u64 = 64 << 10;

/// The `segment-sync-eio` failpoint fails one sync per process.
static SYNC_EIO_INJECTED: AtomicBool = AtomicBool::new(false);

#[derive(Debug)]
pub(super) struct Segment {
    pub(super) seq: u64,
    /// Opened with O_DIRECT where the file system allows it: large records and everything else.
    pub(super) fd: Arc<dyn DiskFile>,
    /// Opened without O_DIRECT: small records are written and read through the page cache
    /// (see [`SMALL_RECORD_BYTES`]). Both descriptors are of one file, so one fdatasync covers
    /// both, and the kernel keeps the two views coherent.
    pub(super) buffered: Arc<dyn DiskFile>,
    pub(super) size: u64,
    pub(super) path: PathBuf,
    /// Offset up to which space has been handed out to records.
    pub(super) end: AtomicU64,
    /// Bytes of live chunk records in it.
    pub(super) live: AtomicU64,
    /// Bytes of tombstones in it (kept by compaction while they may still matter).
    pub(super) tombs: AtomicU64,
    /// Reservations in it whose record is not finished yet (a chunk still being received).
    pub(super) pending: AtomicU64,
    /// An fdatasync of it failed: writes may have been lost that a later sync would not
    /// report (the kernel reports a writeback error once per open file), so every later sync
    /// of it fails and nothing more is written to it.
    pub(super) failed: AtomicBool,
    /// Held across each fdatasync of it, so that a failure is marked before any other sync of
    /// it can answer.
    pub(super) syncing: Mutex<()>,
    /// The next sync fails as if the disk had reported this error number (0: none; tests and
    /// the `segment-sync-eio` failpoint, which reports EIO).
    pub(super) fail_next_sync: AtomicI32,
}

impl Segment {
    /// A segment of `size` bytes, its space handed out up to the end of its header (start-up
    /// then sets how far records reach).
    pub(super) fn new(
        seq: u64,
        fd: Arc<dyn DiskFile>,
        buffered: Arc<dyn DiskFile>,
        size: u64,
        path: PathBuf,
    ) -> Segment {
        Segment {
            seq,
            fd,
            buffered,
            size,
            path,
            end: AtomicU64::new(SEGMENT_HEADER_BYTES),
            live: AtomicU64::new(0),
            tombs: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            syncing: Mutex::new(()),
            fail_next_sync: AtomicI32::new(0),
        }
    }

    /// The same file under another number and path (a spare renumbered before it is written).
    pub(super) fn renumbered(&self, seq: u64, path: PathBuf) -> Segment {
        assert_eq!(self.end.load(Ordering::Relaxed), SEGMENT_HEADER_BYTES, "only an unwritten segment is renumbered");
        Segment::new(seq, self.fd.clone(), self.buffered.clone(), self.size, path)
    }

    /// fdatasync of the segment: every write to it that completed before the call is durable
    /// when it returns Ok. After one failure every later call fails too.
    pub(super) fn datasync(&self) -> io::Result<()> {
        let _one_at_a_time = self.syncing.lock().unwrap_or_else(|e| e.into_inner());
        if self.failed.load(Ordering::Acquire) {
            return Err(io::Error::other(format!(
                "segment {} failed an earlier sync; writes to it may be lost",
                self.path.display()
            )));
        }
        let injected = match self.fail_next_sync.swap(0, Ordering::AcqRel) {
            0 if dfs_runtime::failpoint::is_on("segment-sync-eio")
                && !SYNC_EIO_INJECTED.swap(true, Ordering::AcqRel) =>
            {
                libc::EIO
            }
            errno => errno,
        };
        let result = if injected != 0 { Err(io::Error::from_raw_os_error(injected)) } else { self.fd.datasync() };
        if let Err(e) = result {
            self.failed.store(true, Ordering::Release);
            tracing::error!(
                "segments: sync of {} failed ({e}): the segment is failed, no more is written to it, and every record \
                 not yet acknowledged in it fails",
                self.path.display()
            );
            return Err(io::Error::new(e.kind(), format!("sync of segment {} failed: {e}", self.path.display())));
        }
        Ok(())
    }

    /// Whether a sync of it has failed.
    pub(super) fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    #[cfg(test)]
    pub(super) fn fail_next_sync_for_tests(&self, errno: i32) {
        assert_ne!(errno, 0, "an error number");
        self.fail_next_sync.store(errno, Ordering::Release);
    }

    /// The descriptor a record of `length` data bytes is written and read through.
    pub(super) fn fd_for(&self, length: u64) -> &Arc<dyn DiskFile> {
        if record_span(length) <= SMALL_RECORD_BYTES {
            &self.buffered
        } else {
            &self.fd
        }
    }

    /// Bytes compaction keeps if it rewrites this segment.
    pub(super) fn kept_bytes(&self) -> u64 {
        self.live.load(Ordering::Relaxed) + self.tombs.load(Ordering::Relaxed)
    }

    /// Bytes of the file that no live record or tombstone uses: dead records, pads and, once
    /// the segment is no longer written, its unused end.
    pub(super) fn dead_bytes(&self, sealed: bool) -> u64 {
        let used = if sealed { self.size } else { self.end.load(Ordering::Relaxed) };
        used.saturating_sub(SEGMENT_HEADER_BYTES + self.kept_bytes())
    }
}
