//! The segment store (`dfs-node --store segments`, the default): every chunk copy is one record
//! appended to a large preallocated segment file, written from aligned buffers through the page
//! cache (the default, `--segment-io buffered`) or with O_DIRECT (`--segment-io direct`), and made durable
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
//!
//! This module holds the store's type and its operations: reserving space, publishing a durable
//! record, deleting and setting aside, listing, reporting, and the shared fdatasyncs of the
//! `segment-sync` thread. The rest lies along its seams: `format` (header, trailer, tombstone and
//! segment header bytes), `segment` (one open segment file), `maker` (new and spare segments),
//! `recovery` (opening a store: checkpoint, then a scan of what came after it), `scan` (one
//! segment's records at start-up), `receive` (a STORE's record written as its body arrives),
//! `read` (a record's blocks read back and checked, for FETCH, scrub, start-up and compaction),
//! `checkpoint`, `compact`, and `disk` (every file and directory call, through the [`disk::Disk`]
//! seam: the host's file system in the node, a simulated disk in `dfs-sim`, which runs this
//! store as it ships).

mod checkpoint;
mod compact;
pub mod disk;
mod format;
mod maker;
mod read;
mod receive;
mod recovery;
mod scan;
mod segment;

pub use checkpoint::start_checkpointer;
pub use compact::{start_compactor, Compacted, Policy};
pub use maker::Prefill;
pub use receive::Incoming;

use dfs_proto::ChunkId;
use dfs_runtime::aligned::ALIGN;
use format::{pad, record_span, tombstone, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES};
use maker::{remove_unused, SegmentMaker};
use read::verify_location;
use segment::Segment;
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// Where a chunk's record lives, and what the index needs to answer without reading it.
#[derive(Clone, Debug)]
pub(crate) struct Location {
    segment: Arc<Segment>,
    /// Offset of the record's header in its segment.
    offset: u64,
    pub(crate) length: u64,
    pub(crate) crc32: u32,
    created_unix_ms: u64,
    /// The record's sequence number ([`RecordHeader::lsn`](format::RecordHeader::lsn)): which
    /// record of a chunk is live.
    lsn: u64,
    block_crcs: Arc<[u32]>,
}

impl Location {
    /// Offset of the data's first byte in the segment.
    fn data_offset(&self) -> u64 {
        self.offset + RECORD_HEADER_BYTES as u64
    }
}

/// The space one write was given: `span` bytes at `offset` of `segment`, and the sequence
/// number its record takes.
struct Reservation {
    segment: Arc<Segment>,
    offset: u64,
    span: u64,
    lsn: u64,
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

type SyncWaiter = (Arc<Segment>, tokio::sync::oneshot::Sender<Result<(), crate::store::SyncFailed>>);

pub struct SegmentStore {
    root: PathBuf,
    dir: PathBuf,
    maker: Arc<SegmentMaker>,
    segment_bytes: u64,
    /// Whether the segments are open with O_DIRECT (refused by some file systems, tmpfs among
    /// them; then the page cache is used, and said once in the log).
    direct: bool,
    index: Mutex<BTreeMap<ChunkId, Location>>,
    /// Every segment that holds records or is being written, by seq (not the spare).
    segments: Mutex<BTreeMap<u64, Arc<Segment>>>,
    disk: Arc<dyn disk::Disk>,
    threads: Threads,
    writer: Arc<Mutex<Writer>>,
    /// Signalled when a spare segment is ready (or failed to be made).
    spare_ready: Arc<std::sync::Condvar>,
    sync_queue: mpsc::Sender<SyncWaiter>,
    /// With [`Threads::None`], the queue the sync thread would take its waiters from:
    /// [`SegmentStore::sync_now`] serves it.
    sync_waiting: Mutex<Option<mpsc::Receiver<SyncWaiter>>>,
    live_bytes: AtomicU64,
    n_quarantined: AtomicU64,
    /// Segments start-up took from the index checkpoint instead of scanning them.
    n_covered_at_start: AtomicU64,
    /// Held by a scrub pass: one at a time, whoever asked for it.
    pub(crate) scrubbing: Mutex<()>,
    pub(crate) scrub: crate::progress::ScrubProgress,
}

/// Whether a store runs threads of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Threads {
    /// As the node runs it: syncs are shared by the waiters of a `segment-sync` thread (group
    /// commit) and spare segments are made ahead of need on a `segment-maker` thread.
    Own,
    /// As the simulator runs it, one step at a time: the syncs queued are run by
    /// [`SegmentStore::sync_now`], and a spare segment is made only by
    /// [`SegmentStore::make_spare_now`].
    None,
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

impl SegmentStore {
    pub(super) fn root(&self) -> &Path {
        &self.root
    }

    fn lock_index(&self) -> std::sync::MutexGuard<'_, BTreeMap<ChunkId, Location>> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_segments(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Segment>>> {
        self.segments.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Space for a record of `span` bytes: in the active segment, or in a new one.
    fn reserve(&self, span: u64) -> io::Result<Reservation> {
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
                            remove_unused(&*self.disk, &segment);
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
        assert!(
            offset >= SEGMENT_HEADER_BYTES && offset.is_multiple_of(ALIGN as u64) && offset + span <= segment.size,
            "a reservation lies inside its segment, on a block boundary: {offset} + {span} of {}",
            segment.size
        );
        w.next_offset += span;
        let lsn = w.next_lsn;
        w.next_lsn += 1;
        assert!(w.next_lsn > lsn, "sequence numbers only go up");
        segment.end.store(w.next_offset, Ordering::Relaxed);
        segment.pending.fetch_add(1, Ordering::AcqRel);
        Ok(Reservation { segment, offset, span, lsn })
    }

    /// Returns once an fdatasync of `segment` that started after this call has finished: every
    /// write to it completed before the call is then durable.
    async fn sync(&self, segment: &Arc<Segment>) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.sync_queue.send((segment.clone(), tx)).map_err(|_| io::Error::other("the segment sync thread is gone"))?;
        Ok(rx.await.map_err(|_| io::Error::other("the segment sync thread is gone"))??)
    }

    /// Runs the syncs queued so far, as the `segment-sync` thread runs them, for a store opened
    /// with [`Threads::None`] (the simulator calls this where the thread would have run).
    /// Returns how many waiters were answered.
    pub fn sync_now(&self) -> usize {
        let waiting = self.sync_waiting.lock().unwrap_or_else(|e| e.into_inner());
        let batch: Vec<SyncWaiter> = waiting.as_ref().map(|w| w.try_iter().collect()).unwrap_or_default();
        let n = batch.len();
        if n > 0 {
            sync_batch(batch);
        }
        n
    }

    pub(crate) fn get(&self, id: &ChunkId) -> Option<Location> {
        self.lock_index().get(id).cloned()
    }

    pub fn contains(&self, id: &ChunkId) -> bool {
        self.lock_index().contains_key(id)
    }

    /// The highest sequence number of a live record (0 if none), and the one the next record
    /// takes, which must be above it.
    pub fn lsn_bounds(&self) -> (u64, u64) {
        let next = self.writer.lock().unwrap_or_else(|e| e.into_inner()).next_lsn;
        (self.lock_index().values().map(|l| l.lsn).max().unwrap_or(0), next)
    }

    /// Where the data of `id`'s record lies: its segment file and the byte range in it (the
    /// simulator rots sectors there).
    pub fn data_place(&self, id: &ChunkId) -> Option<(PathBuf, std::ops::Range<u64>)> {
        self.get(id).map(|l| (l.segment.path.clone(), l.data_offset()..l.data_offset() + l.length))
    }

    /// Makes a durable record the live copy of its chunk. False if the chunk already has one
    /// (the caller then marks its record dead).
    fn publish(&self, id: ChunkId, location: Location) -> bool {
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
    /// Err(NotFound) if there is no such chunk. (The engine's DELETE always goes through
    /// [`SegmentStore::remove_if_written_before`].)
    #[cfg(test)]
    async fn remove(&self, id: ChunkId, quarantine: bool) -> io::Result<()> {
        let Some(old) = self.get(&id) else {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("chunk {id} not found")));
        };
        self.remove_record(id, &old, quarantine).await
    }

    /// Appends a tombstone for `id` and, once it is durable, drops the chunk from the index, only
    /// if the chunk's record was stored before `written_before_unix_ms` (when given).
    /// Ok(false): a newer record, kept. Err(NotFound) if there is no such chunk.
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
    pub(crate) async fn quarantine_record(&self, id: ChunkId, old: &Location) -> io::Result<()> {
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
        let (res, _) = r.segment.fd.clone().write_owned(tombstone(id, old.lsn), r.offset).await;
        res?;
        r.segment.tombs.fetch_add(r.span, Ordering::Relaxed);
        self.sync(&r.segment).await?;
        self.forget(id, old, quarantine);
        Ok(())
    }

    /// [`SegmentStore::remove_record`] for a thread outside the runtimes (scrub, compaction):
    /// writes and syncs the tombstone with plain blocking calls. Ok(false): the index no longer
    /// holds `old` (deleted, or set aside and stored again meanwhile), and nothing was written.
    pub(crate) fn remove_blocking(&self, id: ChunkId, old: &Location, quarantine: bool) -> io::Result<bool> {
        if !self.holds(id, old) {
            return Ok(false);
        }
        let r = self.reserve(record_span(0))?;
        r.segment.fd.write_all_at(&tombstone(id, old.lsn), r.offset)?;
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
    pub(crate) fn verify(
        &self,
        loc: &Location,
        pace: impl FnMut(u64),
    ) -> io::Result<Result<(), dfs_proto::layout::BlockMismatch>> {
        verify_location(loc, pace)
    }
}

fn sub(counter: &AtomicU64, n: u64) {
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_sub(n)));
}

impl SegmentStore {
    /// Marks the record of an abandoned or refused write dead (best effort): a pad header over
    /// its span, so start-up skips it at once.
    async fn abandon(&self, r: &Reservation) {
        let (res, _) = r.segment.fd.clone().write_owned(pad(r.span, r.lsn), r.offset).await;
        if let Err(e) = res {
            tracing::warn!("segments: cannot mark an abandoned record dead in {}: {e}", r.segment.path.display());
        }
    }

    /// Chunk IDs after `after`, in order, at most `limit`, and whether more follow; with
    /// `min_age`, only chunks stored at least that long ago.
    pub(super) fn list(&self, after: Option<ChunkId>, limit: usize, min_age: Option<Duration>) -> (Vec<ChunkId>, bool) {
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

    pub(super) fn report(&self) -> io::Result<dfs_proto::StoreReport> {
        let bytes_free = self.disk.free_bytes(&self.root)?;
        Ok(dfs_proto::StoreReport {
            n_chunks: self.lock_index().len() as u64,
            bytes_used: self.live_bytes.load(Ordering::Relaxed),
            bytes_free,
            n_quarantined: self.n_quarantined.load(Ordering::Relaxed),
            bytes_reclaimable: self.reclaimable_bytes(),
            scrub: self.scrub.report(),
        })
    }

    /// Every live chunk, for scrub.
    pub(crate) fn all(&self) -> Vec<(ChunkId, Location)> {
        self.lock_index().iter().map(|(id, l)| (*id, l.clone())).collect()
    }
}

/// The `segment-sync` thread: each time waiters are queued, syncs for them all.
fn sync_thread(waiting: mpsc::Receiver<SyncWaiter>) {
    while let Ok(first) = waiting.recv() {
        let mut batch = vec![first];
        batch.extend(waiting.try_iter());
        sync_batch(batch);
    }
}

/// Runs fdatasync for a batch of waiters, once per distinct segment, and answers them.
fn sync_batch(batch: Vec<SyncWaiter>) {
    let mut results: Vec<(u64, Result<(), crate::store::SyncFailed>)> = Vec::new();
    for (segment, _) in &batch {
        if results.iter().any(|(seq, _)| *seq == segment.seq) {
            continue;
        }
        results.push((segment.seq, segment.datasync().map_err(|e| (&e).into())));
    }
    for (segment, waiter) in batch {
        let result = results.iter().find(|(seq, _)| *seq == segment.seq).map(|(_, r)| r.clone());
        let _ = waiter.send(result.unwrap_or(Ok(())));
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::format::{encode_trailer, segment_name, Kind, RecordHeader};
    use super::*;
    use dfs_proto::limits::BLOCK_SIZE_BYTES;
    use dfs_proto::FileId;
    use dfs_runtime::aligned::AlignedBuf;

    pub(super) fn id(n: u8, idx: u32) -> ChunkId {
        ChunkId { file_id: FileId([n; 16]), chunk_idx: idx }
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
        let (res, _) = r.segment.fd.clone().write_owned(buf, r.offset).await;
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

    /// An fdatasync that reports a full disk reaches the waiting STORE as a full disk (the
    /// node answers NoSpace and the engine puts the copy elsewhere), not as a string.
    #[test]
    fn a_full_disk_at_sync_reaches_the_writer_as_a_full_disk() {
        let dir = tempfile::tempdir().unwrap();
        tokio_uring::start(async {
            let store = SegmentStore::open(dir.path(), 4 << 20, Prefill::Allocate).unwrap();
            let first = put(&store, id(1, 0), &data(1, 1000)).await;
            first.segment.fail_next_sync_for_tests(libc::ENOSPC);
            let e = store.sync(&first.segment).await.expect_err("the sync reported ENOSPC");
            assert!(crate::store::is_full(&e), "{e:?}");
            assert!(e.to_string().contains("failed"), "{e}");
        });
    }

    #[test]
    fn a_failed_sync_fails_the_segment_for_every_later_writer() {
        let dir = tempfile::tempdir().unwrap();
        tokio_uring::start(async {
            let store = SegmentStore::open(dir.path(), 4 << 20, Prefill::Allocate).unwrap();
            let first = put(&store, id(1, 0), &data(1, 1000)).await;
            // Another descriptor's sync of the segment (compaction's, scrub's) receives the
            // writeback error; the kernel reports it to that caller only.
            first.segment.fail_next_sync_for_tests(libc::EIO);
            assert!(first.segment.datasync().is_err());
            let e = store.sync(&first.segment).await.expect_err("a sync after the error succeeded");
            assert!(e.to_string().contains("failed"), "{e}");
            // Nothing more is written there.
            let next = store.reserve(record_span(100)).unwrap();
            assert_ne!(next.segment.seq, first.segment.seq, "a new record went into the failed segment");
        });
    }
}
