//! The segment store (`dfs-node --store segments`): every chunk copy is one record appended to a
//! large preallocated segment file, written with O_DIRECT from aligned buffers, and made durable
//! by an `fdatasync` of its segment shared by every record written before it started (group
//! commit). An in-memory index maps chunk IDs to records; it is rebuilt at start-up by scanning
//! the segments. The on-disk format is specified in `docs/STORE.md`.
//!
//! Layout under the data directory: `segments/<seq as 16 hex digits>.seg`. Each segment starts
//! with a 4 KiB header block; records follow at 4 KiB-aligned offsets:
//!
//! ```text
//! header (64 bytes) | data (length bytes) | block crc32s (4 each) | seal (4) | zeros to 4 KiB
//! ```
//!
//! The header carries its own crc32, so its length can be trusted before anything else is read;
//! the seal is the crc32 of the header and the block crc32s. A record whose header is sound but
//! whose seal or data is not (a torn write) is skipped, never served: every block is checked
//! against its crc32 when it is read, and at start-up the newest segments are read through.

use dfs_proto::layout::{block_len, check_block, combine_block_crcs, n_blocks};
use dfs_proto::limits::BLOCK_SIZE_BYTES;
use dfs_proto::{ChunkId, FileId};
use dfs_runtime::aligned::{align_down, align_up, AlignedBuf, ALIGN};
use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

mod checkpoint;
mod compact;
#[cfg(test)]
mod model;
pub use checkpoint::start_checkpointer;
pub use compact::{start_compactor, Policy};

/// Version of the on-disk format in `docs/STORE.md`, in every segment header.
pub const FORMAT_VERSION: u32 = 2;
const SEGMENT_MAGIC: [u8; 8] = *b"DFSSEG01";
const RECORD_MAGIC: [u8; 8] = *b"DFSREC02";
/// The segment header block; records start after it.
pub const SEGMENT_HEADER_BYTES: u64 = ALIGN as u64;
pub const RECORD_HEADER_BYTES: usize = 64;
/// Bytes of segment read at once by the start-up scan while it moves through a run of records
/// (direct reads of 1 MiB measured 57 MB/s on the project's machine, of 8 MiB 313 MB/s).
const SCAN_WINDOW_BYTES: usize = 8 << 20;
/// Bytes read where the scan jumps past a record larger than the window (to its trailer, and
/// the header after it).
const SCAN_JUMP_BYTES: usize = 64 << 10;
/// Segments, newest first, whose every record's data is read and checked at start-up: the ones
/// that can hold a write torn by a crash.
const VERIFIED_SEGMENTS_AT_START: usize = 2;
/// Records up to this span (header, data and trailer) are written and read through the page
/// cache, like a small file in a file system: a 4 KiB file's quarter is read back from memory
/// while it is there, where a direct read waits on the disk every time. Larger ones go past it
/// with O_DIRECT.
pub const SMALL_RECORD_BYTES: u64 = 64 << 10;
/// Bytes moved per direct write while receiving a chunk.
pub const WRITE_BYTES: usize = BLOCK_SIZE_BYTES as usize;

/// What a record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A chunk copy: `length` bytes of data.
    Chunk = 1,
    /// The chunk is deleted (or set aside by scrub); earlier records of it are dead.
    Tombstone = 2,
    /// Dead space of `length` bytes in all, header included: an abandoned write.
    Pad = 3,
}

/// A record's header, as stored in its first 64 bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub kind: Kind,
    pub chunk_id: ChunkId,
    pub length: u64,
    pub crc32: u32,
    pub created_unix_ms: u64,
    /// The record's place in the node's history: every record gets a higher one than all
    /// before it, and a compacted copy keeps its original's. Of a chunk's records, the one with
    /// the highest wins, wherever it lies.
    pub lsn: u64,
}

impl RecordHeader {
    pub fn encode(&self) -> [u8; RECORD_HEADER_BYTES] {
        let mut out = [0u8; RECORD_HEADER_BYTES];
        out[0..8].copy_from_slice(&RECORD_MAGIC);
        out[8] = self.kind as u8;
        out[12..28].copy_from_slice(&self.chunk_id.file_id.0);
        out[28..32].copy_from_slice(&self.chunk_id.chunk_idx.to_be_bytes());
        out[32..40].copy_from_slice(&self.length.to_be_bytes());
        out[40..44].copy_from_slice(&self.crc32.to_be_bytes());
        out[44..52].copy_from_slice(&self.created_unix_ms.to_be_bytes());
        out[52..60].copy_from_slice(&self.lsn.to_be_bytes());
        let seal = crc32fast::hash(&out[..60]);
        out[60..64].copy_from_slice(&seal.to_be_bytes());
        out
    }

    /// The header at the start of `bytes`, if it is one whose own crc32 holds.
    pub fn decode(bytes: &[u8]) -> Option<RecordHeader> {
        let b = bytes.get(..RECORD_HEADER_BYTES)?;
        if b[0..8] != RECORD_MAGIC || crc32fast::hash(&b[..60]) != u32::from_be_bytes(b[60..64].try_into().ok()?) {
            return None;
        }
        let kind = match b[8] {
            1 => Kind::Chunk,
            2 => Kind::Tombstone,
            3 => Kind::Pad,
            _ => return None,
        };
        let header = RecordHeader {
            kind,
            chunk_id: ChunkId {
                file_id: FileId(b[12..28].try_into().ok()?),
                chunk_idx: u32::from_be_bytes(b[28..32].try_into().ok()?),
            },
            length: u64::from_be_bytes(b[32..40].try_into().ok()?),
            crc32: u32::from_be_bytes(b[40..44].try_into().ok()?),
            created_unix_ms: u64::from_be_bytes(b[44..52].try_into().ok()?),
            lsn: u64::from_be_bytes(b[52..60].try_into().ok()?),
        };
        // A pad's length is its whole span; it must be a whole number of blocks.
        if kind == Kind::Pad && (header.length == 0 || !header.length.is_multiple_of(ALIGN as u64)) {
            return None;
        }
        if kind == Kind::Tombstone && header.length != 0 {
            return None;
        }
        Some(header)
    }

    /// Bytes the whole record takes in its segment, padding included.
    pub fn span(&self) -> u64 {
        match self.kind {
            Kind::Pad => self.length,
            _ => record_span(self.length),
        }
    }
}

/// Bytes a chunk or tombstone record of `length` data bytes takes in a segment.
pub fn record_span(length: u64) -> u64 {
    align_up(RECORD_HEADER_BYTES as u64 + length + 4 * n_blocks(length) + 4)
}

/// The trailer after a record's data: its block crc32s, then the seal over header and crc32s.
pub fn encode_trailer(header: &[u8; RECORD_HEADER_BYTES], block_crcs: &[u32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 * block_crcs.len() + 4);
    for c in block_crcs {
        out.extend_from_slice(&c.to_be_bytes());
    }
    let mut seal = crc32fast::Hasher::new();
    seal.update(header);
    seal.update(&out);
    out.extend_from_slice(&seal.finalize().to_be_bytes());
    out
}

/// The block crc32s of a trailer, if its seal holds for `header`.
fn decode_trailer(header: &RecordHeader, trailer: &[u8]) -> Option<Vec<u32>> {
    let n = n_blocks(header.length) as usize;
    if trailer.len() != 4 * n + 4 {
        return None;
    }
    let mut seal = crc32fast::Hasher::new();
    seal.update(&header.encode());
    seal.update(&trailer[..4 * n]);
    if seal.finalize() != u32::from_be_bytes(trailer[4 * n..].try_into().ok()?) {
        return None;
    }
    let crcs: Vec<u32> =
        trailer[..4 * n].chunks_exact(4).map(|c| u32::from_be_bytes(c.try_into().expect("4 bytes"))).collect();
    (combine_block_crcs(&crcs, header.length) == header.crc32).then_some(crcs)
}

/// Where a chunk's record lives, and what the index needs to answer without reading it.
#[derive(Clone, Debug)]
pub struct Location {
    pub segment: Arc<Segment>,
    /// Offset of the record's header in its segment.
    pub offset: u64,
    pub length: u64,
    pub crc32: u32,
    pub created_unix_ms: u64,
    /// The record's sequence number ([`RecordHeader::lsn`]): which record of a chunk is live.
    pub lsn: u64,
    pub block_crcs: Arc<[u32]>,
}

impl Location {
    /// Offset of the data's first byte in the segment.
    pub fn data_offset(&self) -> u64 {
        self.offset + RECORD_HEADER_BYTES as u64
    }
}

#[derive(Debug)]
pub struct Segment {
    pub seq: u64,
    /// Opened with O_DIRECT where the file system allows it: large records and everything else.
    pub fd: Arc<OwnedFd>,
    /// Opened without O_DIRECT: small records are written and read through the page cache
    /// (see [`SMALL_RECORD_BYTES`]). Both descriptors are of one file, so one fdatasync covers
    /// both, and the kernel keeps the two views coherent.
    pub buffered: Arc<OwnedFd>,
    pub size: u64,
    pub path: PathBuf,
    /// Offset up to which space has been handed out to records.
    end: AtomicU64,
    /// Bytes of live chunk records in it.
    live: AtomicU64,
    /// Bytes of tombstones in it (kept by compaction while they may still matter).
    tombs: AtomicU64,
    /// Reservations in it whose record is not finished yet (a chunk still being received).
    pending: AtomicU64,
    /// An fdatasync of it failed: writes may have been lost that a later sync would not
    /// report (the kernel reports a writeback error once per open file), so every later sync
    /// of it fails and nothing more is written to it.
    failed: AtomicBool,
    /// Held across each fdatasync of it, so that a failure is marked before any other sync of
    /// it can answer.
    syncing: Mutex<()>,
    /// The next sync fails as if the disk had reported an I/O error (tests and the
    /// `segment-sync-eio` failpoint).
    fail_next_sync: AtomicBool,
}

impl Segment {
    fn new(seq: u64, fd: OwnedFd, buffered: OwnedFd, size: u64, path: PathBuf) -> Segment {
        Segment {
            seq,
            fd: Arc::new(fd),
            buffered: Arc::new(buffered),
            size,
            path,
            end: AtomicU64::new(SEGMENT_HEADER_BYTES),
            live: AtomicU64::new(0),
            tombs: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            syncing: Mutex::new(()),
            fail_next_sync: AtomicBool::new(false),
        }
    }

    /// The same file under another number and path (a spare renumbered before it is written).
    fn renumbered(&self, seq: u64, path: PathBuf) -> Segment {
        assert_eq!(self.end.load(Ordering::Relaxed), SEGMENT_HEADER_BYTES, "only an unwritten segment is renumbered");
        Segment {
            seq,
            fd: self.fd.clone(),
            buffered: self.buffered.clone(),
            size: self.size,
            path,
            end: AtomicU64::new(SEGMENT_HEADER_BYTES),
            live: AtomicU64::new(0),
            tombs: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            syncing: Mutex::new(()),
            fail_next_sync: AtomicBool::new(false),
        }
    }

    /// fdatasync of the segment: every write to it that completed before the call is durable
    /// when it returns Ok. After one failure every later call fails too.
    pub fn datasync(&self) -> io::Result<()> {
        let _one_at_a_time = self.syncing.lock().unwrap_or_else(|e| e.into_inner());
        if self.failed.load(Ordering::Acquire) {
            return Err(io::Error::other(format!(
                "segment {} failed an earlier sync; writes to it may be lost",
                self.path.display()
            )));
        }
        let injected = self.fail_next_sync.swap(false, Ordering::AcqRel)
            || dfs_runtime::failpoint::is_on("segment-sync-eio") && !SYNC_EIO_INJECTED.swap(true, Ordering::AcqRel);
        let result = if injected { Err(io::Error::from_raw_os_error(libc::EIO)) } else { fdatasync(&self.fd) };
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
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    #[cfg(test)]
    pub(crate) fn fail_next_sync_for_tests(&self) {
        self.fail_next_sync.store(true, Ordering::Release);
    }

    /// The descriptor a record of `length` data bytes is written and read through.
    pub fn fd_for(&self, length: u64) -> &Arc<OwnedFd> {
        if record_span(length) <= SMALL_RECORD_BYTES {
            &self.buffered
        } else {
            &self.fd
        }
    }

    /// Bytes compaction keeps if it rewrites this segment.
    fn kept_bytes(&self) -> u64 {
        self.live.load(Ordering::Relaxed) + self.tombs.load(Ordering::Relaxed)
    }

    /// Bytes of the file that no live record or tombstone uses: dead records, pads and, once
    /// the segment is no longer written, its unused end.
    fn dead_bytes(&self, sealed: bool) -> u64 {
        let used = if sealed { self.size } else { self.end.load(Ordering::Relaxed) };
        used.saturating_sub(SEGMENT_HEADER_BYTES + self.kept_bytes())
    }
}

/// The space one write was given: `span` bytes at `offset` of `segment`, and the sequence
/// number its record takes.
pub struct Reservation {
    pub segment: Arc<Segment>,
    pub offset: u64,
    pub span: u64,
    pub lsn: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.segment.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

struct Writer {
    active: Option<Arc<Segment>>,
    next_offset: u64,
    next_seq: u64,
    next_lsn: u64,
    /// A segment made ahead of need, and whether one is being made.
    spare: Option<Arc<Segment>>,
    preparing: bool,
    /// Writers blocked until the spare is ready: the maker then writes flat out.
    waiting: usize,
}

type SyncWaiter = (Arc<Segment>, tokio::sync::oneshot::Sender<Result<(), String>>);

pub struct SegmentStore {
    root: PathBuf,
    dir: PathBuf,
    maker: Arc<SegmentMaker>,
    segment_bytes: u64,
    /// Whether the segments are open with O_DIRECT (refused by some file systems, tmpfs among
    /// them; then the page cache is used, and said once in the log).
    pub direct: bool,
    index: Mutex<BTreeMap<ChunkId, Location>>,
    /// Every segment that holds records or is being written, by seq (not the spare).
    segments: Mutex<BTreeMap<u64, Arc<Segment>>>,
    dir_fd: Arc<OwnedFd>,
    writer: Arc<Mutex<Writer>>,
    /// Signalled when a spare segment is ready (or failed to be made).
    spare_ready: Arc<std::sync::Condvar>,
    sync_queue: mpsc::Sender<SyncWaiter>,
    live_bytes: AtomicU64,
    n_quarantined: AtomicU64,
    /// Segments start-up took from the index checkpoint instead of scanning them.
    n_covered_at_start: AtomicU64,
    /// Held by a scrub pass: one at a time, whoever asked for it.
    pub(crate) scrubbing: Mutex<()>,
    pub(crate) scrub: crate::progress::ScrubProgress,
}

fn ctx<'a>(what: &str, path: &'a Path) -> impl FnOnce(io::Error) -> io::Error + 'a {
    let what = what.to_string();
    move |e| io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

fn segment_name(seq: u64) -> String {
    format!("{seq:016x}.seg")
}

fn encode_segment_header(seq: u64, size: u64) -> AlignedBuf {
    let mut b = AlignedBuf::zeroed(ALIGN);
    let mut h = Vec::with_capacity(40);
    h.extend_from_slice(&SEGMENT_MAGIC);
    h.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
    h.extend_from_slice(&(ALIGN as u32).to_be_bytes());
    h.extend_from_slice(&seq.to_be_bytes());
    h.extend_from_slice(&size.to_be_bytes());
    let seal = crc32fast::hash(&h);
    h.extend_from_slice(&seal.to_be_bytes());
    b.extend_from_slice(&h);
    b.pad_to_alignment();
    b
}

/// (seq, size) from a segment header block, or why it is not one this build can read.
fn decode_segment_header(b: &[u8]) -> Result<(u64, u64), String> {
    if b.len() < 36 || b[0..8] != SEGMENT_MAGIC {
        return Err("not a dfs segment (bad magic)".into());
    }
    if crc32fast::hash(&b[..32]) != u32::from_be_bytes(b[32..36].try_into().expect("4 bytes")) {
        return Err("segment header fails its crc32".into());
    }
    let version = u32::from_be_bytes(b[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(format!("segment format version {version}; this build reads version {FORMAT_VERSION}"));
    }
    let align = u32::from_be_bytes(b[12..16].try_into().expect("4 bytes"));
    if align as usize != ALIGN {
        return Err(format!("segment alignment {align}, expected {ALIGN}"));
    }
    Ok((
        u64::from_be_bytes(b[16..24].try_into().expect("8 bytes")),
        u64::from_be_bytes(b[24..32].try_into().expect("8 bytes")),
    ))
}

/// Opens a segment file for direct I/O if the file system allows it.
fn open_segment_file(path: &Path, create: bool, direct: bool) -> io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true).write(true);
    if create {
        o.create_new(true);
    }
    let flags = libc::O_NOFOLLOW | libc::O_CLOEXEC | if direct { libc::O_DIRECT } else { 0 };
    o.custom_flags(flags).open(path)
}

/// How records reach the disk and come back (`--segment-io`). Either way a record is
/// acknowledged only once an fdatasync of its segment that began after its last write has
/// finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SegmentIo {
    /// Through the page cache: the kernel's writeback queues deep and reads of recent records
    /// come from memory.
    Buffered,
    /// O_DIRECT, from aligned buffers, past the page cache.
    Direct,
}

/// How a new segment's space is prepared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Prefill {
    /// fallocate only: the space is reserved but unwritten, so the first write to each part of
    /// it also converts the extent, a metadata change every fdatasync must then commit.
    Allocate,
    /// fallocate, then write zeros through: every later record write lands in space that is
    /// already written, which ext4 takes inline from io_uring and syncs without metadata.
    Zero,
}

/// Zeros are written into a new segment this much at a time.
const PREFILL_PIECE_BYTES: usize = 1 << 20;
/// The pause before each piece of a prefill that is well ahead of need: 1 MiB per 32 ms, about
/// 32 MiB/s, so the device serves foreground writes and syncs between the pieces.
const PREFILL_PACED_PAUSE: Duration = Duration::from_millis(32);
/// A paced prefill must be done this long before the active segment is expected to fill up.
const PREFILL_MARGIN: Duration = Duration::from_secs(1);

/// The `segment-sync-eio` failpoint fails one sync per process.
static SYNC_EIO_INJECTED: AtomicBool = AtomicBool::new(false);

/// Whether the maker may pause before the next piece of zeros: no writer waits for the spare,
/// and at the rate the active segment fills (bytes per second since the spare was begun), its
/// `free` bytes last more than twice as long as the `remaining` zeros take at the paced rate,
/// plus a margin. Otherwise it writes flat out.
fn prefill_can_pace(writer_waiting: bool, free: u64, fill_rate: f64, remaining: u64) -> bool {
    if writer_waiting {
        return false;
    }
    let paced_rate = PREFILL_PIECE_BYTES as f64 / PREFILL_PACED_PAUSE.as_secs_f64();
    let paced_secs = remaining as f64 / paced_rate;
    let secs_until_full = if fill_rate > 0.0 { free as f64 / fill_rate } else { f64::INFINITY };
    secs_until_full > 2.0 * paced_secs + PREFILL_MARGIN.as_secs_f64()
}

/// Makes segment files: on the writer's path when no spare is ready, else on a thread of its
/// own ahead of need.
struct SegmentMaker {
    dir: PathBuf,
    dir_fd: Arc<OwnedFd>,
    direct: bool,
    prefill: Prefill,
    reported: AtomicBool,
}

impl SegmentMaker {
    /// Makes segment `seq` of `size` bytes, prefilled as configured unless `prefill` is false
    /// (a segment made for one record larger than a segment: writing it twice would halve
    /// what the disk gives a large upload).
    ///
    /// Zeros go out one piece at a time. Before each piece `pace(bytes still to write)` says
    /// whether the segment is far enough ahead of need to wait before it: a prefill written flat
    /// out fills the device's queue, and every foreground fdatasync on this disk waits behind it.
    fn make(&self, seq: u64, size: u64, prefill: bool, pace: &dyn Fn(u64) -> bool) -> io::Result<Arc<Segment>> {
        // Made under a temporary name and renamed into place only once its header is durable,
        // so a crash while it is made leaves nothing that start-up would take for a segment.
        let path = self.dir.join(segment_name(seq));
        let temp = self.dir.join(format!(".{}.tmp", segment_name(seq)));
        let _ = std::fs::remove_file(&temp);
        let file = open_segment_file(&temp, true, self.direct).map_err(ctx("cannot create", &temp))?;
        let fd: OwnedFd = file.into();
        let result = (|| {
            // SAFETY: fallocate on a descriptor we own.
            if unsafe { libc::fallocate(fd.as_raw_fd(), 0, 0, size as libc::off_t) } != 0 {
                return Err(io::Error::last_os_error());
            }
            if prefill && self.prefill == Prefill::Zero {
                let mut zeros = AlignedBuf::zeroed(PREFILL_PIECE_BYTES);
                zeros.set_len(zeros.capacity());
                let mut at = SEGMENT_HEADER_BYTES;
                while at < size {
                    if pace(size - at) {
                        std::thread::sleep(PREFILL_PACED_PAUSE);
                    }
                    let len = (size - at).min(zeros.len() as u64) as usize;
                    pwrite_all(&fd, &zeros[..len], at)?;
                    at += len as u64;
                }
            }
            pwrite_all(&fd, &encode_segment_header(seq, size), 0)?;
            fdatasync(&fd)?;
            std::fs::rename(&temp, &path)?;
            fsync_dir(&self.dir_fd)
        })();
        if let Err(e) = result {
            drop(fd);
            let _ = std::fs::remove_file(&temp);
            let _ = std::fs::remove_file(&path);
            return Err(io::Error::new(e.kind(), format!("cannot create segment {}: {e}", path.display())));
        }
        if !self.reported.swap(true, Ordering::Relaxed) {
            tracing::info!(
                "segments: writing {} with{} O_DIRECT, {} MiB per segment, prefilled: {:?}",
                self.dir.display(),
                if self.direct { "" } else { "out" },
                size >> 20,
                self.prefill
            );
        }
        let buffered = open_segment_file(&path, false, false).map_err(ctx("cannot open", &path))?;
        Ok(Arc::new(Segment::new(seq, fd, buffered.into(), size, path)))
    }
}

impl SegmentMaker {
    /// Gives `spare` (made ahead of need, nothing written to it yet) the number `seq`: its
    /// header is rewritten and made durable, then the file is renamed and the directory synced.
    /// A crash in between leaves a segment whose header and name disagree and which holds no
    /// record: start-up removes it.
    fn renumber(&self, spare: &Segment, seq: u64) -> io::Result<Arc<Segment>> {
        let path = self.dir.join(segment_name(seq));
        if path.exists() {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} exists already", path.display())));
        }
        pwrite_all(&spare.fd, &encode_segment_header(seq, spare.size), 0)?;
        fdatasync(&spare.fd)?;
        std::fs::rename(&spare.path, &path)?;
        fsync_dir(&self.dir_fd)?;
        Ok(Arc::new(spare.renumbered(seq, path)))
    }
}

/// Blocking positioned read of exactly `len` bytes, for start-up.
fn pread_exact(fd: &OwnedFd, buf: &mut AlignedBuf, len: usize, offset: u64) -> io::Result<()> {
    buf.set_len(0);
    let dst = buf.spare_all();
    let mut done = 0;
    while done < len {
        // SAFETY: pread into the buffer's own memory, within its capacity.
        let n = unsafe {
            libc::pread(
                fd.as_raw_fd(),
                dst[done..].as_mut_ptr().cast(),
                len - done,
                (offset + done as u64) as libc::off_t,
            )
        };
        match n {
            n if n < 0 => return Err(io::Error::last_os_error()),
            0 => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "segment ends early")),
            n => done += n as usize,
        }
    }
    buf.set_len(len);
    Ok(())
}

impl SegmentStore {
    /// [`SegmentStore::open_with`] O_DIRECT, as the unit tests open it.
    #[cfg(test)]
    pub fn open(root: &Path, segment_bytes: u64, prefill: Prefill) -> io::Result<SegmentStore> {
        SegmentStore::open_with(root, segment_bytes, prefill, SegmentIo::Direct)
    }

    /// Opens (creating if needed) the segments under `root/segments`, rebuilding the index;
    /// records are written and read as `io` says.
    pub fn open_with(root: &Path, segment_bytes: u64, prefill: Prefill, io: SegmentIo) -> io::Result<SegmentStore> {
        assert!(segment_bytes.is_multiple_of(ALIGN as u64) && segment_bytes > SEGMENT_HEADER_BYTES, "segment size");
        std::fs::create_dir_all(root).map_err(ctx("cannot create data directory", root))?;
        let root = root.canonicalize().map_err(ctx("cannot resolve data directory", root))?;
        if root.join("chunks").exists() {
            return Err(io::Error::other(format!(
                "{} holds a chunk-file store (chunks/), the layout before segments: start this node \
                 with --store files to keep it, or move to segments by starting the node with \
                 --store segments on an empty directory and running `dfs-client repair`, which \
                 copies its chunks back from the other nodes (needs --replicas 2 or more)",
                root.display()
            )));
        }
        let dir = root.join("segments");
        std::fs::create_dir_all(&dir).map_err(ctx("cannot create", &dir))?;
        let dir_fd: Arc<OwnedFd> = Arc::new(std::fs::File::open(&dir).map_err(ctx("cannot open", &dir))?.into());
        // Probe direct I/O once with a scratch file.
        let probe = dir.join(".direct-probe");
        let _ = std::fs::remove_file(&probe);
        let direct = io == SegmentIo::Direct
            && match open_segment_file(&probe, true, true) {
                Ok(_) => true,
                Err(e) => {
                    tracing::warn!(
                        "segments: O_DIRECT refused on {} ({e}): writing through the page cache",
                        dir.display()
                    );
                    false
                }
            };
        let _ = std::fs::remove_file(&probe);

        let (sync_queue, waiting) = mpsc::channel::<SyncWaiter>();
        std::thread::Builder::new().name("segment-sync".into()).spawn(move || sync_thread(waiting))?;
        let maker = Arc::new(SegmentMaker {
            dir: dir.clone(),
            dir_fd: dir_fd.clone(),
            direct,
            prefill,
            reported: AtomicBool::new(false),
        });
        let store = SegmentStore {
            root,
            dir,
            maker,
            segment_bytes,
            direct,
            index: Mutex::new(BTreeMap::new()),
            segments: Mutex::new(BTreeMap::new()),
            dir_fd,
            writer: Arc::new(Mutex::new(Writer {
                active: None,
                next_offset: 0,
                next_seq: 1,
                next_lsn: 1,
                spare: None,
                preparing: false,
                waiting: 0,
            })),
            spare_ready: Arc::new(std::sync::Condvar::new()),
            sync_queue,
            live_bytes: AtomicU64::new(0),
            n_quarantined: AtomicU64::new(0),
            scrubbing: Mutex::new(()),
            scrub: Default::default(),
            n_covered_at_start: AtomicU64::new(0),
        };
        store.recover()?;
        // The first segment is made before the node serves anything: made on demand, its
        // prefill would hold up the first STOREs, and every sync beside them, for as long as
        // it takes to write a segment's worth of zeros. A node whose disk is full still starts
        // and serves what it holds; a STORE then tries again and answers the error.
        let mut w = store.writer.lock().unwrap_or_else(|e| e.into_inner());
        if w.spare.is_none() {
            let seq = w.next_seq;
            match store.maker.make(seq, segment_bytes, true, &|_| false) {
                Ok(segment) => {
                    w.next_seq += 1;
                    w.spare = Some(segment);
                }
                Err(e) => tracing::warn!("segments: no segment to write into yet: {e}"),
            }
        }
        drop(w);
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn lock_index(&self) -> std::sync::MutexGuard<'_, BTreeMap<ChunkId, Location>> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Scans every segment in order and rebuilds the index: of a chunk's records the one with
    /// the highest sequence number wins, and a tombstone winning removes the chunk; records that
    /// fail their seals are skipped. The newest segments are read through and every block
    /// checked first, since a crash can only have torn a write there.
    fn recover(&self) -> io::Result<()> {
        let started = std::time::Instant::now();
        let mut seqs = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(ctx("cannot read", &self.dir))? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            match name.strip_suffix(".seg").and_then(|h| u64::from_str_radix(h, 16).ok()) {
                Some(seq) => seqs.push(seq),
                // A segment a crash interrupted while it was made: it never held a record.
                // Gone already is as good as removed (in the tests, the segment maker of a store
                // opened before on the same directory may still be finishing it).
                None if name.starts_with('.') && name.ends_with(".seg.tmp") => {
                    match std::fs::remove_file(entry.path()) {
                        Err(e) if e.kind() != io::ErrorKind::NotFound => {
                            return Err(ctx("cannot remove", &entry.path())(e));
                        }
                        _ => {}
                    }
                }
                None if name.starts_with('.') || name == checkpoint::FILE_NAME => {}
                None => tracing::warn!("segments: ignoring unexpected file {}", entry.path().display()),
            }
        }
        seqs.sort_unstable();
        let n_segments = seqs.len();
        let ckpt = checkpoint::load(&self.dir)
            .and_then(|c| match c {
                Some(c) => checkpoint::check_covered_ends(&self.dir, &c).map(|()| Some(c)),
                None => Ok(None),
            })
            .unwrap_or_else(|e| {
                tracing::warn!("segments: {e}; scanning every segment instead");
                None
            });
        let covers = |seq: u64, size: u64| {
            ckpt.as_ref().and_then(|c| c.segments.get(&seq).filter(|s| seq < c.first_scanned_seq && s.size == size))
        };
        let (mut n_records, mut n_skipped, mut n_scanned) = (0u64, 0u64, 0usize);
        let mut max_lsn = ckpt.as_ref().map_or(0, |c| c.next_lsn.saturating_sub(1));
        let mut by_seq: std::collections::HashMap<u64, Arc<Segment>> = Default::default();
        let mut scanned: Vec<(Arc<Segment>, Vec<Scanned>)> = Vec::new();
        let mut empty_last: Option<Arc<Segment>> = None;
        for &seq in &seqs {
            let path = self.dir.join(segment_name(seq));
            let file = open_segment_file(&path, false, self.direct).map_err(ctx("cannot open", &path))?;
            let fd: OwnedFd = file.into();
            let mut buf = AlignedBuf::zeroed(ALIGN);
            pread_exact(&fd, &mut buf, ALIGN, 0).map_err(ctx("cannot read", &path))?;
            let (found_seq, size) = decode_segment_header(&buf).map_err(|why| {
                io::Error::other(format!(
                    "{}: {why} (to move a node to this build, start it on an empty directory and run \
                     `dfs-client repair`: it gets its copies back from the other nodes)",
                    path.display()
                ))
            })?;
            let buffered = open_segment_file(&path, false, false).map_err(ctx("cannot open", &path))?;
            let segment = Arc::new(Segment::new(seq, fd, buffered.into(), size, path.clone()));
            if found_seq != seq {
                // A spare whose renumbering a stop interrupted: it never held a record.
                let scan = scan_segment(&segment)
                    .map_err(|e| io::Error::new(e.kind(), format!("scanning {}: {e}", path.display())))?;
                if scan.records.is_empty() && scan.n_skipped + scan.n_pads == 0 {
                    remove_unused(&segment);
                    continue;
                }
                return Err(io::Error::other(format!("{}: header says segment {found_seq}", path.display())));
            }
            if let Some(c) = covers(seq, size) {
                segment.end.store(c.end, Ordering::Relaxed);
                segment.tombs.store(c.tombs, Ordering::Relaxed);
                by_seq.insert(seq, segment.clone());
                scanned.push((segment, Vec::new()));
                if let Some(unused) = empty_last.take() {
                    remove_unused(&unused);
                }
                continue;
            }
            n_scanned += 1;
            let scan = scan_segment(&segment)
                .map_err(|e| io::Error::new(e.kind(), format!("scanning {}: {e}", path.display())))?;
            n_skipped += scan.n_skipped;
            max_lsn = max_lsn.max(scan.max_lsn);
            segment.end.store(scan.end, Ordering::Relaxed);
            if scan.records.len() as u64 + scan.n_skipped + scan.n_pads > 0 {
                scanned.push((segment, scan.records));
                if let Some(unused) = empty_last.take() {
                    remove_unused(&unused);
                }
            } else if let Some(unused) = empty_last.replace(segment) {
                remove_unused(&unused);
            }
        }
        // Only the newest segments written to can hold a write torn by a crash: read their
        // records through, and drop any whose data does not match its block crc32s before it
        // can win over an older copy.
        for (segment, records) in scanned.iter_mut().rev().take(VERIFIED_SEGMENTS_AT_START) {
            records.retain(|r| {
                let Some(loc) = &r.loc else { return true };
                let why = match verify_location(loc, |_| {}) {
                    Ok(Ok(())) => return true,
                    Ok(Err(why)) => format!("is torn ({why})"),
                    Err(e) => format!("cannot be read ({e})"),
                };
                tracing::warn!("segments: record of {} in {} {why}: skipped", r.id, segment.path.display());
                n_skipped += 1;
                false
            });
        }
        let mut winners: std::collections::HashMap<ChunkId, (u64, Option<Location>)> = Default::default();
        // The checkpoint's entries first: they lie in the oldest segments. An entry whose
        // segment compaction has deleted since was copied forward, where the scan finds it.
        let from_checkpoint = ckpt.map(|c| c.entries).unwrap_or_default().into_iter().filter_map(|e| {
            let segment = by_seq.get(&e.seq)?.clone();
            let id = ChunkId { file_id: FileId(e.file_id), chunk_idx: e.chunk_idx };
            let loc = Location {
                segment,
                offset: e.offset,
                length: e.length,
                crc32: e.crc32,
                created_unix_ms: e.created_unix_ms,
                lsn: e.lsn,
                block_crcs: e.block_crcs.into(),
            };
            Some((None, Scanned { id, lsn: e.lsn, loc: Some(loc) }))
        });
        let registry: BTreeMap<u64, Arc<Segment>> = scanned.iter().map(|(s, _)| (s.seq, s.clone())).collect();
        let from_scan = scanned
            .into_iter()
            .flat_map(|(segment, records)| records.into_iter().map(move |r| (Some(segment.clone()), r)));
        for (scanned_in, r) in from_checkpoint.chain(from_scan) {
            n_records += 1;
            if let (Some(segment), None) = (scanned_in, &r.loc) {
                segment.tombs.fetch_add(ALIGN as u64, Ordering::Relaxed);
            }
            match winners.entry(r.id) {
                // A tombstone deletes the record whose number it carries and every earlier one.
                // Otherwise equal numbers are a record and its compacted copy (or a tombstone
                // and its compacted copy): the first is kept.
                std::collections::hash_map::Entry::Occupied(mut e)
                    if e.get().0 == r.lsn && r.loc.is_none() && e.get().1.is_some() =>
                {
                    e.insert((r.lsn, None));
                }
                std::collections::hash_map::Entry::Occupied(e) if e.get().0 >= r.lsn => {}
                std::collections::hash_map::Entry::Occupied(mut e) => {
                    e.insert((r.lsn, r.loc));
                }
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert((r.lsn, r.loc));
                }
            }
        }
        let index: BTreeMap<ChunkId, Location> =
            winners.into_iter().filter_map(|(id, (_, loc))| loc.map(|l| (id, l))).collect();
        let mut live = 0;
        for l in index.values() {
            l.segment.live.fetch_add(record_span(l.length), Ordering::Relaxed);
            live += record_span(l.length);
        }
        self.live_bytes.store(live, Ordering::Relaxed);
        let n_chunks = index.len();
        self.n_covered_at_start.store((n_segments - n_scanned) as u64, Ordering::Relaxed);
        *self.lock_index() = index;
        *self.lock_segments() = registry;
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        w.next_seq = seqs.last().map_or(1, |s| s + 1);
        w.next_lsn = max_lsn + 1;
        // New records go to a fresh segment: where a crash stopped writing the last one is not
        // known exactly, and appending after a torn region would interleave with it.
        w.active = None;
        // An empty newest segment (a spare made before the stop) is the next spare.
        w.spare = empty_last.filter(|s| s.size >= self.segment_bytes);
        tracing::info!(
            "segments: {n_segments} segment(s), {} by the index checkpoint and {n_scanned} scanned, {n_records} record(s) read, \
             {n_skipped} skipped, {n_chunks} chunk(s) live, in {:.1?}{}",
            n_segments - n_scanned,
            started.elapsed(),
            if self.direct { "" } else { " (no O_DIRECT)" }
        );
        Ok(())
    }

    fn lock_segments(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Segment>>> {
        self.segments.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Space for a record of `span` bytes: in the active segment, or in a new one.
    pub fn reserve(&self, span: u64) -> io::Result<Reservation> {
        assert!(span.is_multiple_of(ALIGN as u64), "record spans are aligned");
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        // A segment whose sync failed takes nothing more.
        let fits = w.active.as_ref().is_some_and(|s| !s.is_failed() && w.next_offset + span <= s.size);
        if !fits {
            // A spare on its way is worth waiting for: making another here would write a second
            // segment's worth of zeros while the first is still being written.
            while w.spare.is_none() && w.preparing {
                w.waiting += 1;
                w = self.spare_ready.wait(w).unwrap_or_else(|e| e.into_inner());
                w.waiting -= 1;
            }
            let segment = match w.spare.take() {
                Some(spare) if SEGMENT_HEADER_BYTES + span <= spare.size => spare,
                other => {
                    w.spare = other;
                    let size = self.segment_bytes.max(SEGMENT_HEADER_BYTES + span);
                    let seq = w.next_seq;
                    w.next_seq += 1;
                    // Needed now, and made under the writer's lock: no pacing.
                    self.maker.make(seq, size, size == self.segment_bytes, &|_| false)?
                }
            };
            // Segments are written in the order of their numbers: start-up reads the newest
            // ones through, a checkpoint covers the ones before the first still written, and
            // compaction drops tombstones in the oldest, all by number. A spare made before a
            // record larger than a segment got a segment of its own has a lower number than
            // that one: it is renumbered before anything is written to it.
            let newest = self.lock_segments().keys().next_back().copied();
            let segment = match newest {
                Some(newest) if segment.seq < newest => {
                    let seq = w.next_seq;
                    w.next_seq += 1;
                    match self.maker.renumber(&segment, seq) {
                        Ok(renumbered) => renumbered,
                        Err(e) => {
                            tracing::warn!("segments: cannot renumber {} as {seq}: {e}", segment.path.display());
                            remove_unused(&segment);
                            let seq = w.next_seq;
                            w.next_seq += 1;
                            let size = self.segment_bytes.max(SEGMENT_HEADER_BYTES + span);
                            self.maker.make(seq, size, size == self.segment_bytes, &|_| false)?
                        }
                    }
                }
                _ => segment,
            };
            assert!(
                newest.is_none_or(|n| segment.seq > n),
                "segment {} would be written after segment {newest:?}",
                segment.seq
            );
            self.lock_segments().insert(segment.seq, segment.clone());
            w.active = Some(segment);
            w.next_offset = SEGMENT_HEADER_BYTES;
            self.prepare_spare(&mut w);
        }
        let segment = w.active.clone().expect("an active segment after the check above");
        let offset = w.next_offset;
        w.next_offset += span;
        let lsn = w.next_lsn;
        w.next_lsn += 1;
        segment.end.store(w.next_offset, Ordering::Relaxed);
        segment.pending.fetch_add(1, Ordering::AcqRel);
        Ok(Reservation { segment, offset, span, lsn })
    }

    /// Starts making the next segment on a thread of its own, unless one is ready or under way.
    fn prepare_spare(&self, w: &mut Writer) {
        if w.spare.is_some() || w.preparing {
            return;
        }
        w.preparing = true;
        let seq = w.next_seq;
        w.next_seq += 1;
        let (maker, writer, size) = (self.maker.clone(), self.writer.clone(), self.segment_bytes);
        let ready = self.spare_ready.clone();
        let made = std::thread::Builder::new().name("segment-maker".into()).spawn(move || {
            let started = std::time::Instant::now();
            let (first_active, first_offset) = {
                let w = writer.lock().unwrap_or_else(|e| e.into_inner());
                (w.active.as_ref().map(|s| s.seq), w.next_offset)
            };
            let pace = |remaining: u64| {
                let w = writer.lock().unwrap_or_else(|e| e.into_inner());
                let still_active = w.active.as_ref().filter(|s| Some(s.seq) == first_active);
                let Some(active) = still_active else { return false };
                let fill_rate = (w.next_offset - first_offset) as f64 / started.elapsed().as_secs_f64().max(1e-3);
                prefill_can_pace(w.waiting > 0, active.size.saturating_sub(w.next_offset), fill_rate, remaining)
            };
            let made = maker.make(seq, size, true, &pace);
            let mut w = writer.lock().unwrap_or_else(|e| e.into_inner());
            w.preparing = false;
            match made {
                Ok(segment) => w.spare = Some(segment),
                Err(e) => tracing::warn!("segments: cannot make a spare segment ahead of need: {e}"),
            }
            ready.notify_all();
        });
        if let Err(e) = made {
            w.preparing = false;
            tracing::warn!("segments: cannot start the segment maker thread: {e}");
        }
    }

    /// Returns once an fdatasync of `segment` that started after this call has finished: every
    /// write to it completed before the call is then durable.
    pub async fn sync(&self, segment: &Arc<Segment>) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.sync_queue.send((segment.clone(), tx)).map_err(|_| io::Error::other("the segment sync thread is gone"))?;
        rx.await.map_err(|_| io::Error::other("the segment sync thread is gone"))?.map_err(io::Error::other)
    }

    pub fn get(&self, id: &ChunkId) -> Option<Location> {
        self.lock_index().get(id).cloned()
    }

    pub fn contains(&self, id: &ChunkId) -> bool {
        self.lock_index().contains_key(id)
    }

    /// Makes a durable record the live copy of its chunk. False if the chunk already has one
    /// (the caller then marks its record dead).
    pub fn publish(&self, id: ChunkId, location: Location) -> bool {
        let mut index = self.lock_index();
        if index.contains_key(&id) {
            return false;
        }
        self.live_bytes.fetch_add(record_span(location.length), Ordering::Relaxed);
        location.segment.live.fetch_add(record_span(location.length), Ordering::Relaxed);
        index.insert(id, location);
        true
    }

    /// Appends a tombstone for `id` and, once it is durable, drops the chunk from the index.
    /// Err(NotFound) if there is no such chunk.
    pub async fn remove(&self, id: ChunkId, quarantine: bool) -> io::Result<()> {
        let Some(old) = self.get(&id) else {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("chunk {id} not found")));
        };
        self.remove_record(id, &old, quarantine).await
    }

    /// [`SegmentStore::remove`], only if the chunk's record was stored before
    /// `written_before_unix_ms` (when given). Ok(false): a newer record, kept.
    pub async fn remove_if_written_before(&self, id: ChunkId, written_before_unix_ms: Option<u64>) -> io::Result<bool> {
        let Some(old) = self.get(&id) else {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("chunk {id} not found")));
        };
        if written_before_unix_ms.is_some_and(|before| old.created_unix_ms >= before) {
            return Ok(false);
        }
        self.remove_record(id, &old, false).await.map(|()| true)
    }

    /// Sets record `old` of `id` aside as corrupt (a tombstone; counted as quarantined), unless
    /// a newer record has taken its place.
    pub async fn quarantine_record(&self, id: ChunkId, old: &Location) -> io::Result<()> {
        match self.get(&id) {
            Some(current) if current.lsn == old.lsn => self.remove_record(id, old, true).await,
            _ => Ok(()),
        }
    }

    /// Writes a tombstone of record `old` of `id` and drops it from the index once that is
    /// durable. The tombstone carries `old`'s sequence number, and deletes that record and the
    /// chunk's earlier ones only: a copy stored after `old` left the index (set aside by a read,
    /// then stored again by repair) keeps its place, in memory and after a restart, whoever
    /// removes `old` late.
    async fn remove_record(&self, id: ChunkId, old: &Location, quarantine: bool) -> io::Result<()> {
        if !self.holds(id, old) {
            return Ok(());
        }
        let r = self.reserve(record_span(0))?;
        let (res, _) = dfs_runtime::ops::write_all_at(&r.segment.fd, tombstone(id, old.lsn), r.offset).await;
        res?;
        r.segment.tombs.fetch_add(r.span, Ordering::Relaxed);
        self.sync(&r.segment).await?;
        self.forget(id, old, quarantine);
        Ok(())
    }

    /// [`SegmentStore::remove_record`] for a thread outside the runtimes (scrub, compaction):
    /// writes and syncs the tombstone with plain blocking calls. Ok(false): the index no longer
    /// holds `old` (deleted, or set aside and stored again meanwhile), and nothing was written.
    pub fn remove_blocking(&self, id: ChunkId, old: &Location, quarantine: bool) -> io::Result<bool> {
        if !self.holds(id, old) {
            return Ok(false);
        }
        let r = self.reserve(record_span(0))?;
        pwrite_all(&r.segment.fd, &tombstone(id, old.lsn), r.offset)?;
        r.segment.tombs.fetch_add(r.span, Ordering::Relaxed);
        r.segment.datasync()?;
        self.forget(id, old, quarantine);
        Ok(true)
    }

    /// Whether the index still holds record `old` of `id` (or a compacted copy of it).
    fn holds(&self, id: ChunkId, old: &Location) -> bool {
        self.lock_index().get(&id).is_some_and(|l| l.lsn == old.lsn)
    }

    /// Drops `id` from the index if it is still the record `old` (or a compacted copy of it).
    fn forget(&self, id: ChunkId, old: &Location, quarantine: bool) {
        let mut index = self.lock_index();
        if let Some(current) = index.get(&id).filter(|l| l.lsn == old.lsn) {
            let span = record_span(current.length);
            sub(&current.segment.live, span);
            sub(&self.live_bytes, span);
            index.remove(&id);
            if quarantine {
                self.n_quarantined.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Reads a record's data and checks every block against its crc32, calling `pace` with the
    /// bytes read (blocking; for scrub). Inner error: why the record is corrupt.
    pub fn verify(&self, loc: &Location, pace: impl FnMut(u64)) -> io::Result<Result<(), String>> {
        verify_location(loc, pace)
    }
}

fn sub(counter: &AtomicU64, n: u64) {
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_sub(n)));
}

/// Blocking positioned write of all of `buf` (for threads outside the runtimes).
pub(crate) fn pwrite_all(fd: &OwnedFd, buf: &[u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: pwrite from a buffer we borrow, on a descriptor the caller keeps open.
        let n = unsafe {
            libc::pwrite(
                fd.as_raw_fd(),
                buf[done..].as_ptr().cast(),
                buf.len() - done,
                (offset + done as u64) as libc::off_t,
            )
        };
        match n {
            n if n < 0 => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            0 => return Err(io::Error::new(io::ErrorKind::WriteZero, "segment write wrote nothing")),
            n => done += n as usize,
        }
    }
    Ok(())
}

/// Makes a directory's entries durable (after a file in it was renamed or removed).
pub(crate) fn fsync_dir(dir_fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fsync on a descriptor the caller keeps open.
    if unsafe { libc::fsync(dir_fd.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub(crate) fn fdatasync(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fdatasync on a descriptor the caller keeps open.
    if unsafe { libc::fdatasync(fd.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Deletes a segment no record was ever written to (a spare made before a stop).
fn remove_unused(segment: &Segment) {
    match std::fs::remove_file(&segment.path) {
        Ok(()) => tracing::info!("segments: removed {}, which holds no record", segment.path.display()),
        Err(e) => tracing::warn!("segments: cannot remove unused {}: {e}", segment.path.display()),
    }
}

/// See [`SegmentStore::verify`].
fn verify_location(loc: &Location, mut pace: impl FnMut(u64)) -> io::Result<Result<(), String>> {
    let mut buf = AlignedBuf::zeroed(BLOCK_SIZE_BYTES as usize + 2 * ALIGN);
    for (block_idx, &expected) in loc.block_crcs.iter().enumerate() {
        let at = loc.data_offset() + block_idx as u64 * BLOCK_SIZE_BYTES as u64;
        let len = block_len(loc.length, block_idx as u64);
        let (s, e) = (align_down(at), align_up(at + len));
        pread_exact(&loc.segment.fd, &mut buf, (e - s) as usize, s)?;
        let from = (at - s) as usize;
        if let Err(mismatch) = check_block(block_idx as u64, &buf[from..from + len as usize], expected) {
            return Ok(Err(mismatch.to_string()));
        }
        pace(len);
    }
    Ok(Ok(()))
}

impl SegmentStore {
    /// Marks the record of an abandoned or refused write dead (best effort): a pad header over
    /// its span, so start-up skips it at once.
    pub async fn abandon(&self, r: &Reservation) {
        let (res, _) = dfs_runtime::ops::write_all_at(&r.segment.fd, pad(r), r.offset).await;
        if let Err(e) = res {
            tracing::warn!("segments: cannot mark an abandoned record dead in {}: {e}", r.segment.path.display());
        }
    }

    /// Chunk IDs after `after`, in order, at most `limit`, and whether more follow; with
    /// `min_age`, only chunks stored at least that long ago.
    pub fn list(&self, after: Option<ChunkId>, limit: usize, min_age: Option<Duration>) -> (Vec<ChunkId>, bool) {
        let now = dfs_runtime::unix_ms();
        let index = self.lock_index();
        let mut out = Vec::new();
        let range = match after {
            Some(a) => index.range((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            None => index.range(..),
        };
        for (id, loc) in range {
            if min_age.is_some_and(|age| now.saturating_sub(loc.created_unix_ms) < age.as_millis() as u64) {
                continue;
            }
            if out.len() == limit {
                return (out, true);
            }
            out.push(*id);
        }
        (out, false)
    }

    pub fn report(&self) -> io::Result<dfs_proto::StoreReport> {
        let vfs = nix::sys::statvfs::statvfs(&self.root).map_err(io::Error::from)?;
        Ok(dfs_proto::StoreReport {
            n_chunks: self.lock_index().len() as u64,
            bytes_used: self.live_bytes.load(Ordering::Relaxed),
            bytes_free: vfs.blocks_available() as u64 * vfs.fragment_size() as u64,
            n_quarantined: self.n_quarantined.load(Ordering::Relaxed),
            bytes_reclaimable: self.reclaimable_bytes(),
            scrub: self.scrub.report(),
        })
    }

    /// Every live chunk, for scrub.
    pub fn all(&self) -> Vec<(ChunkId, Location)> {
        self.lock_index().iter().map(|(id, l)| (*id, l.clone())).collect()
    }
}

/// A pad header over the whole of `r`, ready to write.
fn pad(r: &Reservation) -> AlignedBuf {
    let header = RecordHeader {
        kind: Kind::Pad,
        chunk_id: ChunkId { file_id: FileId([0; 16]), chunk_idx: 0 },
        length: r.span,
        crc32: 0,
        created_unix_ms: dfs_runtime::unix_ms(),
        lsn: r.lsn,
    };
    let mut buf = AlignedBuf::zeroed(ALIGN);
    buf.extend_from_slice(&header.encode());
    buf.pad_to_alignment();
    buf
}

/// A tombstone for `id` ready to write: it deletes the chunk's record numbered `lsn` and every
/// earlier one.
fn tombstone(id: ChunkId, lsn: u64) -> AlignedBuf {
    let header = RecordHeader {
        kind: Kind::Tombstone,
        chunk_id: id,
        length: 0,
        crc32: 0,
        created_unix_ms: dfs_runtime::unix_ms(),
        lsn,
    };
    let mut buf = AlignedBuf::zeroed(ALIGN);
    let bytes = header.encode();
    buf.extend_from_slice(&bytes);
    buf.extend_from_slice(&encode_trailer(&bytes, &[]));
    buf.pad_to_alignment();
    buf
}

/// Runs fdatasync for the waiters queued so far, once per distinct segment, and answers them.
fn sync_thread(waiting: mpsc::Receiver<SyncWaiter>) {
    while let Ok(first) = waiting.recv() {
        let mut batch = vec![first];
        batch.extend(waiting.try_iter());
        let mut results: Vec<(u64, Result<(), String>)> = Vec::new();
        for (segment, _) in &batch {
            if results.iter().any(|(seq, _)| *seq == segment.seq) {
                continue;
            }
            results.push((segment.seq, segment.datasync().map_err(|e| e.to_string())));
        }
        for (segment, waiter) in batch {
            let result = results.iter().find(|(seq, _)| *seq == segment.seq).map(|(_, r)| r.clone());
            let _ = waiter.send(result.unwrap_or(Ok(())));
        }
    }
}

/// A chunk record or tombstone found by [`scan_segment`].
struct Scanned {
    id: ChunkId,
    lsn: u64,
    /// The record, or None for a tombstone.
    loc: Option<Location>,
}

struct Scan {
    records: Vec<Scanned>,
    n_skipped: u64,
    n_pads: u64,
    max_lsn: u64,
    /// Where the last record found ends.
    end: u64,
}

/// A window of up to [`SCAN_WINDOW_BYTES`] over a segment, read front to back: a run of small
/// records costs one read per window instead of one per record.
struct Window<'a> {
    segment: &'a Segment,
    buf: AlignedBuf,
    start: u64,
    len: usize,
}

impl<'a> Window<'a> {
    fn new(segment: &'a Segment) -> Window<'a> {
        Window { segment, buf: AlignedBuf::zeroed(SCAN_WINDOW_BYTES + 2 * ALIGN), start: 0, len: 0 }
    }

    /// The `len` bytes at `pos` (at most a window's worth, inside the segment), read with the
    /// window that follows them unless the current window holds them: a whole window where
    /// the scan goes on from the current one, a small one where it jumped past a large record.
    fn get(&mut self, pos: u64, len: usize) -> io::Result<&[u8]> {
        assert!(len <= SCAN_WINDOW_BYTES && pos + len as u64 <= self.segment.size, "a window read inside the segment");
        let end = self.start + self.len as u64;
        if pos < self.start || pos + len as u64 > end {
            let start = align_down(pos);
            let want = if pos <= end { SCAN_WINDOW_BYTES } else { SCAN_JUMP_BYTES } as u64;
            let need = align_up(pos + len as u64) - start;
            let n = want.max(need).min(self.segment.size - start) as usize;
            pread_exact(&self.segment.fd, &mut self.buf, n, start)?;
            (self.start, self.len) = (start, n);
        }
        let from = (pos - self.start) as usize;
        Ok(&self.buf[from..from + len])
    }
}

/// Reads one segment's record headers (and chunk records' trailers), in order.
fn scan_segment(segment: &Arc<Segment>) -> io::Result<Scan> {
    let mut window = Window::new(segment);
    let mut pos = SEGMENT_HEADER_BYTES;
    let mut scan = Scan { records: Vec::new(), n_skipped: 0, n_pads: 0, max_lsn: 0, end: SEGMENT_HEADER_BYTES };
    while pos + ALIGN as u64 <= segment.size {
        let Some(header) = RecordHeader::decode(window.get(pos, ALIGN)?) else {
            // A gap: an abandoned write that never wrote its header, or the unwritten end.
            // Look for the next record a block at a time.
            pos += ALIGN as u64;
            continue;
        };
        let span = header.span();
        if pos + span > segment.size {
            scan.n_skipped += 1;
            pos += ALIGN as u64;
            continue;
        }
        scan.max_lsn = scan.max_lsn.max(header.lsn);
        match header.kind {
            Kind::Pad => scan.n_pads += 1,
            Kind::Tombstone => scan.records.push(Scanned { id: header.chunk_id, lsn: header.lsn, loc: None }),
            Kind::Chunk => {
                let trailer_at = pos + RECORD_HEADER_BYTES as u64 + header.length;
                let trailer = window.get(trailer_at, 4 * n_blocks(header.length) as usize + 4)?;
                match decode_trailer(&header, trailer) {
                    Some(block_crcs) => scan.records.push(Scanned {
                        id: header.chunk_id,
                        lsn: header.lsn,
                        loc: Some(Location {
                            segment: segment.clone(),
                            offset: pos,
                            length: header.length,
                            crc32: header.crc32,
                            created_unix_ms: header.created_unix_ms,
                            lsn: header.lsn,
                            block_crcs: block_crcs.into(),
                        }),
                    }),
                    None => {
                        scan.n_skipped += 1;
                        tracing::warn!(
                            "segments: record of {} at {} in {} is torn or corrupt: skipped",
                            header.chunk_id,
                            pos,
                            segment.path.display()
                        );
                    }
                }
            }
        }
        pos += span;
        scan.end = pos;
    }
    Ok(scan)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(super) fn id(n: u8, idx: u32) -> ChunkId {
        ChunkId { file_id: FileId([n; 16]), chunk_idx: idx }
    }

    #[test]
    fn a_prefill_paces_only_while_well_ahead_of_need() {
        const MIB: u64 = 1 << 20;
        // Nothing is being written: plenty of time.
        assert!(prefill_can_pace(false, 60 * MIB, 0.0, 63 * MIB));
        // Small records at 8 MiB/s: 7.5 s of room, the paced rest takes about 2 s.
        assert!(prefill_can_pace(false, 60 * MIB, 8.0 * MIB as f64, 63 * MIB));
        // A writer is already waiting for the spare.
        assert!(!prefill_can_pace(true, 60 * MIB, 0.0, 63 * MIB));
        // Large records at 100 MiB/s fill the active segment in 0.6 s.
        assert!(!prefill_can_pace(false, 60 * MIB, 100.0 * MIB as f64, 63 * MIB));
        // The active segment is nearly full.
        assert!(!prefill_can_pace(false, 4 * MIB, 8.0 * MIB as f64, 10 * MIB));
        assert!(!prefill_can_pace(false, 0, 1.0, MIB));
    }

    #[test]
    fn headers_round_trip_and_refuse_damage() {
        let h = RecordHeader {
            kind: Kind::Chunk,
            chunk_id: id(7, 3),
            length: 5000,
            crc32: 9,
            created_unix_ms: 11,
            lsn: 12,
        };
        let b = h.encode();
        assert_eq!(RecordHeader::decode(&b), Some(h.clone()));
        for i in 0..64 {
            let mut bad = b;
            bad[i] ^= 1;
            assert_eq!(RecordHeader::decode(&bad), None, "a flipped bit at byte {i} went unnoticed");
        }
        assert_eq!(record_span(5000), 8192);
        assert_eq!(record_span(0), 4096);
        assert_eq!(record_span(4096 - 64 - 8), 4096);
        assert_eq!(record_span(4096 - 64 - 7), 8192);
    }

    #[test]
    fn trailers_seal_the_header_and_the_block_crcs() {
        let data = vec![5u8; 3 * BLOCK_SIZE_BYTES as usize / 2];
        let crcs: Vec<u32> = data.chunks(BLOCK_SIZE_BYTES as usize).map(crc32fast::hash).collect();
        let h = RecordHeader {
            kind: Kind::Chunk,
            chunk_id: id(1, 0),
            length: data.len() as u64,
            crc32: crc32fast::hash(&data),
            created_unix_ms: 1,
            lsn: 1,
        };
        let t = encode_trailer(&h.encode(), &crcs);
        assert_eq!(decode_trailer(&h, &t), Some(crcs.clone()));
        let mut bad = t.clone();
        bad[0] ^= 1;
        assert_eq!(decode_trailer(&h, &bad), None);
        let other = RecordHeader { chunk_id: id(2, 0), ..h };
        assert_eq!(decode_trailer(&other, &t), None, "a trailer belongs to its own header");
    }

    /// Writes one whole chunk record the way a STORE does (header, data, trailer, sync,
    /// publish) and returns where it went.
    pub(super) async fn put(store: &SegmentStore, chunk_id: ChunkId, data: &[u8]) -> Reservation {
        let r = store.reserve(record_span(data.len() as u64)).unwrap();
        let crcs: Vec<u32> = data.chunks(BLOCK_SIZE_BYTES as usize).map(crc32fast::hash).collect();
        let header = RecordHeader {
            kind: Kind::Chunk,
            chunk_id,
            length: data.len() as u64,
            crc32: crc32fast::hash(data),
            created_unix_ms: 1,
            lsn: r.lsn,
        };
        let bytes = header.encode();
        let mut buf = AlignedBuf::zeroed(r.span as usize);
        buf.extend_from_slice(&bytes);
        buf.extend_from_slice(data);
        buf.extend_from_slice(&encode_trailer(&bytes, &crcs));
        buf.pad_to_alignment();
        let (res, _) = dfs_runtime::ops::write_all_at(&r.segment.fd, buf, r.offset).await;
        res.unwrap();
        store.sync(&r.segment).await.unwrap();
        let loc = Location {
            segment: r.segment.clone(),
            offset: r.offset,
            length: data.len() as u64,
            crc32: header.crc32,
            created_unix_ms: 1,
            lsn: r.lsn,
            block_crcs: crcs.into(),
        };
        assert!(store.publish(chunk_id, loc));
        r
    }

    pub(super) fn data(seed: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    /// Reads a chunk's data back through the index with plain reads.
    pub(super) fn read_back(store: &SegmentStore, id: &ChunkId) -> Option<Vec<u8>> {
        let loc = store.get(id)?;
        store.verify(&loc, |_| {}).unwrap().ok()?;
        let bytes = std::fs::read(&loc.segment.path).unwrap();
        let at = loc.data_offset() as usize;
        Some(bytes[at..at + loc.length as usize].to_vec())
    }

    pub(super) fn overwrite(path: &Path, at: u64, bytes: &[u8]) {
        use std::os::unix::fs::FileExt;
        std::fs::OpenOptions::new().write(true).open(path).unwrap().write_all_at(bytes, at).unwrap();
    }

    #[test]
    fn records_survive_a_restart_and_tombstones_stay_deleted() {
        for io in [SegmentIo::Direct, SegmentIo::Buffered] {
            let dir = tempfile::tempdir().unwrap();
            let big = data(3, 3 * BLOCK_SIZE_BYTES as usize + 17);
            tokio_uring::start(async {
                let store = SegmentStore::open_with(dir.path(), 4 << 20, Prefill::Allocate, io).unwrap();
                if io == SegmentIo::Buffered {
                    assert!(!store.direct, "--segment-io buffered opened the segments with O_DIRECT");
                }
                put(&store, id(1, 0), &data(1, 1000)).await;
                put(&store, id(1, 1), &[]).await;
                // Larger than what is left of the first segment: goes to the next one.
                put(&store, id(1, 2), &big).await;
                put(&store, id(2, 0), &data(2, 5000)).await;
                store.remove(id(2, 0), false).await.unwrap();
                assert!(!store.contains(&id(2, 0)));
            });
            let store = SegmentStore::open_with(dir.path(), 4 << 20, Prefill::Allocate, io).unwrap();
            assert_eq!(read_back(&store, &id(1, 0)), Some(data(1, 1000)), "{io:?}");
            assert_eq!(read_back(&store, &id(1, 1)), Some(vec![]), "{io:?}");
            assert_eq!(read_back(&store, &id(1, 2)), Some(big), "{io:?}");
            assert!(!store.contains(&id(2, 0)), "{io:?}: a deleted chunk came back after a restart");
            assert_eq!(store.list(None, 10, None).0, vec![id(1, 0), id(1, 1), id(1, 2)]);
            assert_eq!(store.report().unwrap().n_chunks, 3);
        }
    }

    #[test]
    fn a_delete_with_a_time_keeps_a_record_stored_at_or_after_it() {
        let dir = tempfile::tempdir().unwrap();
        tokio_uring::start(async {
            let store = SegmentStore::open(dir.path(), 4 << 20, Prefill::Allocate).unwrap();
            // The helper stores records at unix ms 1.
            put(&store, id(1, 0), &data(1, 100)).await;
            put(&store, id(1, 1), &data(2, 100)).await;
            assert!(!store.remove_if_written_before(id(1, 0), Some(1)).await.unwrap(), "stored at 1, not before 1");
            assert!(store.contains(&id(1, 0)));
            assert!(store.remove_if_written_before(id(1, 0), Some(2)).await.unwrap());
            assert!(!store.contains(&id(1, 0)));
            assert!(store.remove_if_written_before(id(1, 1), None).await.unwrap());
            let e = store.remove_if_written_before(id(1, 1), None).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::NotFound);
        });
    }

    #[test]
    fn a_torn_last_record_is_dropped_and_the_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        let torn = tokio_uring::start(async {
            let store = SegmentStore::open(dir.path(), 64 << 20, Prefill::Zero).unwrap();
            put(&store, id(1, 0), &data(1, 2000)).await;
            put(&store, id(1, 1), &data(2, 3 * BLOCK_SIZE_BYTES as usize)).await
        });
        // The crash left only the record's first block on disk: the rest reads as zeros.
        let zeros = vec![0u8; (torn.span - ALIGN as u64) as usize];
        overwrite(&torn.segment.path, torn.offset + ALIGN as u64, &zeros);
        let store = SegmentStore::open(dir.path(), 64 << 20, Prefill::Zero).unwrap();
        assert_eq!(read_back(&store, &id(1, 0)), Some(data(1, 2000)));
        assert!(!store.contains(&id(1, 1)), "a torn record was indexed");
    }

    #[test]
    fn a_corrupt_record_in_the_middle_is_skipped_and_the_scan_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let (middle, header_hit) = tokio_uring::start(async {
            let store = SegmentStore::open(dir.path(), 64 << 20, Prefill::Zero).unwrap();
            put(&store, id(1, 0), &data(1, 100)).await;
            let middle = put(&store, id(1, 1), &data(2, 9000)).await;
            let header_hit = put(&store, id(1, 2), &data(3, 100)).await;
            put(&store, id(1, 3), &data(4, 100)).await;
            (middle, header_hit)
        });
        // One data byte of the second record, and the header of the third.
        overwrite(&middle.segment.path, middle.offset + RECORD_HEADER_BYTES as u64 + 5000, &[0xff]);
        overwrite(&header_hit.segment.path, header_hit.offset + 30, &[0xff]);
        let store = SegmentStore::open(dir.path(), 64 << 20, Prefill::Zero).unwrap();
        assert_eq!(read_back(&store, &id(1, 0)), Some(data(1, 100)));
        assert!(!store.contains(&id(1, 1)), "a record with a flipped data byte was indexed");
        assert!(!store.contains(&id(1, 2)), "a record with a broken header was indexed");
        assert_eq!(read_back(&store, &id(1, 3)), Some(data(4, 100)), "the scan stopped at a bad record");
    }

    #[test]
    fn space_reserved_but_never_written_is_passed_over() {
        let dir = tempfile::tempdir().unwrap();
        tokio_uring::start(async {
            let store = SegmentStore::open(dir.path(), 64 << 20, Prefill::Zero).unwrap();
            put(&store, id(1, 0), &data(1, 100)).await;
            // A STORE that reserved 3 MiB and died before writing anything.
            let _lost = store.reserve(3 << 20).unwrap();
            put(&store, id(1, 1), &data(2, 100)).await;
            // A STORE that was refused and marked its space dead.
            let refused = store.reserve(1 << 20).unwrap();
            store.abandon(&refused).await;
            put(&store, id(1, 2), &data(3, 100)).await;
        });
        let store = SegmentStore::open(dir.path(), 64 << 20, Prefill::Zero).unwrap();
        for (n, seed) in [(0, 1), (1, 2), (2, 3)] {
            assert_eq!(read_back(&store, &id(1, n)), Some(data(seed, 100)), "chunk {n}");
        }
    }

    #[test]
    fn a_segment_interrupted_while_it_was_made_is_removed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        tokio_uring::start(async {
            let store = SegmentStore::open(dir.path(), 1 << 20, Prefill::Allocate).unwrap();
            put(&store, id(1, 0), &data(1, 100)).await;
        });
        // What a kill during fallocate or the zero fill leaves: a file with no header yet.
        let half_made = dir.path().join("segments").join(format!(".{}.tmp", segment_name(9)));
        std::fs::write(&half_made, vec![0u8; 8192]).unwrap();
        let store = SegmentStore::open(dir.path(), 1 << 20, Prefill::Allocate).unwrap();
        assert_eq!(read_back(&store, &id(1, 0)), Some(data(1, 100)));
        assert!(!half_made.exists(), "the half-made segment was left behind");
    }

    /// Waits until the segment maker has a spare ready, as it has on a node that is not busy.
    pub(super) fn wait_for_spare(store: &SegmentStore) {
        for _ in 0..1000 {
            if store.writer.lock().unwrap().spare.is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("no spare segment within 5 s");
    }

    /// Space for a record larger than a segment, taken while a spare is ready: the record gets
    /// a segment of its own, and the spare stays for the records after it.
    pub(super) fn reserve_larger_than_a_segment(store: &SegmentStore, segment_bytes: u64) -> Reservation {
        wait_for_spare(store);
        let r = store.reserve(record_span(segment_bytes)).unwrap();
        assert!(store.writer.lock().unwrap().spare.is_some(), "the spare was kept for later records");
        r
    }

    #[test]
    fn segments_are_numbered_in_the_order_they_are_written() {
        let dir = tempfile::tempdir().unwrap();
        tokio_uring::start(async {
            let store = SegmentStore::open(dir.path(), 4 << 20, Prefill::Allocate).unwrap();
            put(&store, id(1, 0), &data(1, 1000)).await;
            let big = reserve_larger_than_a_segment(&store, 4 << 20);
            put(&store, id(1, 1), &data(2, 1000)).await;
            let after = store.get(&id(1, 1)).unwrap().segment.seq;
            assert!(
                after > big.segment.seq,
                "the segment written after the large record's ({}) has the lower number {after}",
                big.segment.seq
            );
            // And on disk: file name and header agree.
            let path = store.get(&id(1, 1)).unwrap().segment.path.clone();
            assert_eq!(path.file_name().unwrap().to_str().unwrap(), segment_name(after));
        });
        let store = SegmentStore::open(dir.path(), 4 << 20, Prefill::Allocate).unwrap();
        assert_eq!(read_back(&store, &id(1, 1)), Some(data(2, 1000)));
    }

    #[test]
    fn a_spare_whose_renumbering_was_interrupted_is_removed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        tokio_uring::start(async {
            let store = SegmentStore::open(dir.path(), 4 << 20, Prefill::Allocate).unwrap();
            put(&store, id(1, 0), &data(1, 1000)).await;
        });
        // A stop after the spare's new header was synced and before its rename: segment 7's
        // header in a file still named for segment 5, holding no record.
        let seg = dir.path().join("segments");
        let name = segment_name(5);
        std::fs::write(seg.join(&name), vec![0u8; 1 << 20]).unwrap();
        overwrite(&seg.join(&name), 0, &encode_segment_header(7, 1 << 20));
        let store = SegmentStore::open(dir.path(), 4 << 20, Prefill::Allocate).unwrap();
        assert_eq!(read_back(&store, &id(1, 0)), Some(data(1, 1000)));
        assert!(!seg.join(&name).exists(), "the interrupted spare was left behind");
        // A segment whose header and name disagree and that holds records is still refused.
        drop(store);
        let held = std::fs::read_dir(&seg)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| std::fs::read(p).is_ok_and(|b| b.len() > 8192 && RecordHeader::decode(&b[4096..]).is_some()));
        let held = held.expect("the segment with the record");
        std::fs::rename(&held, seg.join(segment_name(9))).unwrap();
        let e = SegmentStore::open(dir.path(), 4 << 20, Prefill::Allocate).err().expect("refused");
        assert!(e.to_string().contains("header says segment"), "{e}");
    }

    #[test]
    fn a_torn_record_written_after_a_large_record_is_found_at_start() {
        // The segments a crash can have torn are the last ones written: after a record larger
        // than a segment, that is the spare kept beside it, whatever its number.
        let dir = tempfile::tempdir().unwrap();
        let torn = tokio_uring::start(async {
            let store = SegmentStore::open(dir.path(), 4 << 20, Prefill::Allocate).unwrap();
            put(&store, id(1, 0), &data(1, 1000)).await;
            wait_for_spare(&store);
            put(&store, id(3, 0), &data(3, 4 << 20)).await;
            let torn = put(&store, id(2, 0), &data(2, 3 * BLOCK_SIZE_BYTES as usize)).await;
            // Another large record after it, in a segment of its own.
            wait_for_spare(&store);
            put(&store, id(4, 0), &data(4, 4 << 20)).await;
            torn
        });
        // The crash left its header and trailer on disk, but not all of its data between.
        let zeros = vec![0u8; 2 * BLOCK_SIZE_BYTES as usize];
        overwrite(&torn.segment.path, torn.offset + ALIGN as u64, &zeros);
        let store = SegmentStore::open(dir.path(), 4 << 20, Prefill::Allocate).unwrap();
        assert_eq!(read_back(&store, &id(1, 0)), Some(data(1, 1000)));
        assert!(!store.contains(&id(2, 0)), "a torn record in the last segment written was indexed");
    }

    #[test]
    fn a_tombstone_of_a_set_aside_copy_spares_the_fresh_copy_stored_after_it() {
        // Scrub lists a copy, a read finds it corrupt and sets it aside, repair stores a fresh
        // copy, and then scrub reaches the listed copy and sets it aside too.
        let dir = tempfile::tempdir().unwrap();
        tokio_uring::start(async {
            let store = SegmentStore::open(dir.path(), 4 << 20, Prefill::Allocate).unwrap();
            put(&store, id(1, 0), &data(1, 1000)).await;
            let listed = store.get(&id(1, 0)).unwrap();
            store.quarantine_record(id(1, 0), &listed).await.unwrap();
            assert!(!store.contains(&id(1, 0)));
            put(&store, id(1, 0), &data(1, 1000)).await;
            let fresh = store.get(&id(1, 0)).unwrap();
            assert!(fresh.lsn > listed.lsn);
            assert!(!store.remove_blocking(id(1, 0), &listed, true).unwrap(), "nothing to set aside any more");
            assert_eq!(store.get(&id(1, 0)).map(|l| l.lsn), Some(fresh.lsn), "the fresh copy was dropped");
            // A delete of the fresh copy still deletes it, for good.
            put(&store, id(2, 0), &data(2, 100)).await;
            store.remove(id(2, 0), false).await.unwrap();
        });
        let store = SegmentStore::open(dir.path(), 4 << 20, Prefill::Allocate).unwrap();
        assert_eq!(read_back(&store, &id(1, 0)), Some(data(1, 1000)), "the fresh copy is gone after a restart");
        assert!(!store.contains(&id(2, 0)), "a deleted chunk came back");
    }

    #[test]
    fn a_failed_sync_fails_the_segment_for_every_later_writer() {
        let dir = tempfile::tempdir().unwrap();
        tokio_uring::start(async {
            let store = SegmentStore::open(dir.path(), 4 << 20, Prefill::Allocate).unwrap();
            let first = put(&store, id(1, 0), &data(1, 1000)).await;
            // Another descriptor's sync of the segment (compaction's, scrub's) receives the
            // writeback error; the kernel reports it to that caller only.
            first.segment.fail_next_sync_for_tests();
            assert!(first.segment.datasync().is_err());
            let e = store.sync(&first.segment).await.expect_err("a sync after the error succeeded");
            assert!(e.to_string().contains("failed"), "{e}");
            // Nothing more is written there.
            let next = store.reserve(record_span(100)).unwrap();
            assert_ne!(next.segment.seq, first.segment.seq, "a new record went into the failed segment");
        });
    }

    #[test]
    fn a_chunk_file_store_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("chunks")).unwrap();
        let e = SegmentStore::open(dir.path(), 64 << 20, Prefill::Zero).err().expect("a files store must be refused");
        assert!(e.to_string().contains("--store files"), "{e}");
    }
}
