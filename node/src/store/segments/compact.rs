//! Compaction: gives back the space of dead records. A segment with no record still being
//! received into it, whose live records and tombstones fill less than a share of it, is
//! rewritten (the segment being written is sealed first, once a quarter of it is dead): its
//! live records and the tombstones that may still matter
//! are copied to the end of the log, keeping their sequence numbers, made durable, checked by
//! reading them back, and only then does the index point at the copies; then the segment file
//! is deleted. A crash at any point leaves either the original or a durable copy with the same
//! sequence number, and start-up keeps the first it finds (the original, while it exists).
//!
//! Races with the foreground are settled by sequence numbers, not locks: a copy takes over
//! only if the index still holds the record it copied ([`SegmentStore::relocate`]), a delete
//! removes whichever copy of its record the index holds ([`SegmentStore::forget`]), and on
//! disk a tombstone outranks every copy of the records before it. A copy that loses the race
//! gets a pad header, so it cannot outlive the tombstone that deleted its chunk.
//!
//! A tombstone is dropped when it is superseded (its chunk was stored again after it) or when
//! its segment is the oldest: every record it can delete lies in its own segment or an older
//! one (records only move forward, and only live ones), so none is left.

use super::disk::ctx;
use super::read::verify_location;
use super::scan::scan_segment;
use super::*;
use crate::pace::Pace;
use dfs_runtime::aligned::AlignedBuf;

/// When compaction rewrites a segment, and how fast.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// A segment whose live records and tombstones fill less than this share of it is
    /// rewritten (0 turns compaction off).
    pub below: f64,
    /// Bytes copied per second at most, reads and writes each (None: unbounded).
    pub bytes_per_sec: Option<u64>,
}

/// What one segment's compaction did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Compacted {
    pub seq: u64,
    pub n_moved: u64,
    pub n_tombstones_kept: u64,
    /// Records whose data failed its crc32s when read for the copy: set aside, as scrub does.
    pub n_corrupt: u64,
    pub bytes_freed: u64,
}

/// Bytes of records copied before the copies are synced, checked and take over.
const BATCH_BYTES: u64 = 8 << 20;
/// Bytes moved by one read and one write while copying a record.
const COPY_BYTES: u64 = 1 << 20;

/// Copies written but not yet in the index.
#[derive(Default)]
struct Batch {
    moves: Vec<(ChunkId, Location, Reservation)>,
    tombstones: Vec<Reservation>,
    bytes: u64,
}

impl Batch {
    /// Pads every copy not taken over (best effort), after a failure part-way.
    fn abandon(&mut self) {
        for (_, _, r) in self.moves.drain(..) {
            if let Err(e) = r.segment.fd.write_all_at(&pad(r.span, r.lsn), r.offset).and_then(|()| r.segment.datasync())
            {
                tracing::warn!(
                    "segments: cannot mark an unused compaction copy dead in {}: {e}",
                    r.segment.path.display()
                );
            }
        }
        self.tombstones.clear();
        self.bytes = 0;
    }
}

impl SegmentStore {
    fn active_seq(&self) -> Option<u64> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner()).active.as_ref().map(|s| s.seq)
    }

    /// Bytes that hold nothing live: dead records, pads, and the unused ends of sealed
    /// segments. Compaction gives them back.
    pub(super) fn reclaimable_bytes(&self) -> u64 {
        let active = self.active_seq();
        self.lock_segments().values().map(|s| s.dead_bytes(Some(s.seq) != active)).sum()
    }

    /// The segment with the smallest live share under `below`, if any: a sealed one, measured
    /// against its whole file, or the one being written, measured against what is written of
    /// it and only once at least a quarter of its file is dead (an idle node's deletes are
    /// then given back too, without rewriting a busy segment over and over).
    fn candidate(&self, below: f64) -> Option<Arc<Segment>> {
        let active = self.active_seq();
        let segments = self.lock_segments();
        segments
            .values()
            .filter(|s| s.pending.load(Ordering::Acquire) == 0)
            .filter_map(|s| {
                let room = if Some(s.seq) == active {
                    if s.dead_bytes(false) < s.size / 4 {
                        return None;
                    }
                    s.end.load(Ordering::Relaxed) - SEGMENT_HEADER_BYTES
                } else {
                    s.size - SEGMENT_HEADER_BYTES
                };
                let share = s.kept_bytes() as f64 / room as f64;
                (share < below).then(|| (share, s.clone()))
            })
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, s)| s)
    }

    /// Stops writing into `seg` if it is the segment being written; false if a record is
    /// still being received into it. Since [`SegmentStore::candidate`] picked it, a STORE may
    /// have reserved space in it and writing moved on to another segment: the check is made
    /// whether it is still the one being written or not.
    fn seal(&self, seg: &Arc<Segment>) -> bool {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        // Reservations are only made under this lock, and only in the segment being written,
        // so none can start in `seg` once this holds.
        if seg.pending.load(Ordering::Acquire) > 0 {
            return false;
        }
        if w.active.as_ref().is_some_and(|a| Arc::ptr_eq(a, seg)) {
            w.active = None;
        }
        true
    }

    /// Makes `new` the live copy of `id` if the index still holds `old`'s record.
    fn relocate(&self, id: ChunkId, old: &Location, new: Location) -> bool {
        let mut index = self.lock_index();
        match index.get_mut(&id) {
            Some(current) if current.lsn == old.lsn => {
                let span = record_span(current.length);
                sub(&current.segment.live, span);
                new.segment.live.fetch_add(span, Ordering::Relaxed);
                *current = new;
                true
            }
            _ => false,
        }
    }

    /// Rewrites the segment with the smallest live share, if one is under `policy.below`
    /// (blocking; runs on the compaction thread). None: nothing to do.
    pub fn compact_once(&self, policy: Policy) -> io::Result<Option<Compacted>> {
        match self.candidate(policy.below) {
            Some(segment) if self.seal(&segment) => self.compact(&segment, policy).map(Some),
            _ => Ok(None),
        }
    }

    fn compact(&self, seg: &Arc<Segment>, policy: Policy) -> io::Result<Compacted> {
        let mut pace = Pace::new(policy.bytes_per_sec);
        let oldest = self.lock_segments().keys().next() == Some(&seg.seq);
        let mut out = Compacted { seq: seg.seq, ..Compacted::default() };
        let mut batch = Batch::default();
        let copied = self.copy_out(seg, oldest, &mut batch, &mut out, &mut pace);
        if let Err(e) = copied {
            batch.abandon();
            return Err(io::Error::new(e.kind(), format!("compacting {}: {e}", seg.path.display())));
        }
        // Nothing may point into the segment any more.
        if let Some(id) = self.lock_index().iter().find(|(_, l)| Arc::ptr_eq(&l.segment, seg)).map(|(id, _)| *id) {
            return Err(io::Error::other(format!(
                "compacting {}: the record of {id} is still live in it afterwards; segment kept",
                seg.path.display()
            )));
        }
        self.lock_segments().remove(&seg.seq);
        self.disk.remove(&seg.path).map_err(ctx("cannot remove compacted segment", &seg.path))?;
        self.disk.sync_dir(&self.dir).map_err(ctx("cannot sync", &self.dir))?;
        out.bytes_freed = seg.size;
        crate::metrics::SEGMENTS_COMPACTED.inc();
        crate::metrics::COMPACTION_BYTES_FREED.inc_by(seg.size);
        Ok(out)
    }

    /// Copies `seg`'s live records and the tombstones that still matter to the end of the log.
    fn copy_out(
        &self,
        seg: &Arc<Segment>,
        oldest: bool,
        batch: &mut Batch,
        out: &mut Compacted,
        pace: &mut Pace,
    ) -> io::Result<()> {
        let live: Vec<(ChunkId, Location)> = self
            .lock_index()
            .iter()
            .filter(|(_, l)| Arc::ptr_eq(&l.segment, seg))
            .map(|(id, l)| (*id, l.clone()))
            .collect();
        let mut buf = AlignedBuf::zeroed(COPY_BYTES as usize);
        for (id, old) in live {
            if self.get(&id).is_none_or(|l| l.lsn != old.lsn) {
                continue; // deleted meanwhile
            }
            let span = record_span(old.length);
            let r = self.reserve(span)?;
            let mut done = 0;
            while done < span {
                let len = (span - done).min(COPY_BYTES) as usize;
                old.segment.fd.read_exact_into(&mut buf, len, old.offset + done)?;
                r.segment.fd.write_all_at(&buf[..len], r.offset + done)?;
                pace.account(2 * len as u64);
                done += len as u64;
            }
            batch.moves.push((id, old, r));
            batch.bytes += span;
            if batch.bytes >= BATCH_BYTES {
                self.take_over(batch, out, pace)?;
            }
        }
        // The tombstones, read from the segment's headers.
        for t in scan_segment(seg)?.records.into_iter().filter(|r| r.loc.is_none()) {
            if oldest || self.get(&t.id).is_some_and(|l| l.lsn > t.lsn) {
                continue;
            }
            let r = self.reserve(record_span(0))?;
            r.segment.fd.write_all_at(&tombstone(t.id, t.lsn), r.offset)?;
            r.segment.tombs.fetch_add(r.span, Ordering::Relaxed);
            batch.tombstones.push(r);
            out.n_tombstones_kept += 1;
        }
        self.take_over(batch, out, pace)
    }

    /// Makes a batch of copies durable, reads each back, and points the index at it.
    fn take_over(&self, batch: &mut Batch, out: &mut Compacted, pace: &mut Pace) -> io::Result<()> {
        sync_each(batch.moves.iter().map(|(_, _, r)| &r.segment).chain(batch.tombstones.iter().map(|r| &r.segment)))?;
        batch.tombstones.clear();
        let mut padded = Vec::new();
        while let Some((id, old, r)) = batch.moves.pop() {
            let new = Location { segment: r.segment.clone(), offset: r.offset, ..old.clone() };
            let why_copy = match verify_location(&new, |n| pace.account(n)) {
                Ok(Ok(())) if self.relocate(id, &old, new) => {
                    out.n_moved += 1;
                    continue;
                }
                // Deleted meanwhile: the copy is dead.
                Ok(Ok(())) => None,
                Ok(Err(why)) => Some(why.to_string()),
                Err(e) => Some(e.to_string()),
            };
            if let Some(why_copy) = why_copy {
                // The copy reads back wrong: set the original aside if it is the one at fault;
                // if not, this disk cannot be trusted to take copies now.
                match verify_location(&old, |_| {}) {
                    Ok(Err(why)) => {
                        tracing::warn!(
                            "segments: record of {id} in {} is corrupt ({why}): set aside by compaction",
                            old.segment.path.display()
                        );
                        if self.remove_blocking(id, &old, true)? {
                            out.n_corrupt += 1;
                        }
                    }
                    _ => {
                        let path = r.segment.path.display().to_string();
                        batch.moves.push((id, old, r));
                        return Err(io::Error::other(format!(
                            "the copy of {id} in {path} reads back wrong ({why_copy})"
                        )));
                    }
                }
            }
            // Not taken over: a dead copy, marked so.
            r.segment.fd.write_all_at(&pad(r.span, r.lsn), r.offset)?;
            padded.push(r);
        }
        sync_each(padded.iter().map(|r| &r.segment))?;
        batch.bytes = 0;
        Ok(())
    }
}

/// One fdatasync per distinct segment among `segments`.
fn sync_each<'a>(segments: impl Iterator<Item = &'a Arc<Segment>>) -> io::Result<()> {
    let mut synced: Vec<u64> = Vec::new();
    for s in segments {
        if !synced.contains(&s.seq) {
            s.datasync()?;
            synced.push(s.seq);
        }
    }
    Ok(())
}

/// Runs compaction on a thread of its own: every `interval`, segments are rewritten one at a
/// time until none is under the policy's share.
pub fn start_compactor(store: Arc<SegmentStore>, policy: Policy, interval: Duration) -> io::Result<()> {
    if policy.below <= 0.0 {
        return Ok(());
    }
    std::thread::Builder::new().name("segment-compact".into()).spawn(move || loop {
        std::thread::sleep(interval);
        loop {
            match store.compact_once(policy) {
                Ok(Some(c)) => tracing::info!(
                    "segments: compacted segment {}: {} record(s) moved, {} tombstone(s) kept, {} corrupt set aside, {} MiB freed",
                    c.seq,
                    c.n_moved,
                    c.n_tombstones_kept,
                    c.n_corrupt,
                    c.bytes_freed >> 20
                ),
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!("segments: compaction stopped until the next round: {e}");
                    break;
                }
            }
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::format::segment_name;
    use super::super::tests::{data, id, put, read_back, reserve_larger_than_a_segment};
    use super::*;

    const SEGMENT: u64 = 4 << 20;
    const ALL: Policy = Policy { below: 0.5, bytes_per_sec: None };

    fn segment_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.join("segments"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".seg"))
            .collect();
        names.sort();
        names
    }

    /// Fills the first segment with 12 records of 300 KiB (chunks (1, 0..12)) and starts a
    /// second one, so the first is sealed.
    async fn fill_first_segment(store: &SegmentStore) {
        for i in 0..12 {
            put(store, id(1, i), &data(i as u8, 300 << 10)).await;
        }
        put(store, id(9, 0), &data(99, 2 << 20)).await;
        assert_eq!(store.get(&id(9, 0)).unwrap().segment.seq, 2, "the large record opened a second segment");
    }

    /// [`fill_first_segment`], then deletes all but its last three records.
    async fn leave_a_quarter_of_the_first_segment_live(store: &SegmentStore) {
        fill_first_segment(store).await;
        for i in 0..9 {
            store.remove(id(1, i), false).await.unwrap();
        }
    }

    #[test]
    fn a_segment_that_took_a_record_after_it_was_picked_is_not_sealed() {
        let dir = tempfile::tempdir().unwrap();
        tokio_uring::start(async {
            let store = SegmentStore::open(dir.path(), SEGMENT, Prefill::Allocate).unwrap();
            put(&store, id(1, 0), &data(1, 1000)).await;
            let picked = store.get(&id(1, 0)).unwrap().segment;
            // Compaction picked the segment being written; before it seals it, a STORE reserves
            // space there and a large record moves writing on to a segment of its own.
            let _receiving = store.reserve(record_span(1000)).unwrap();
            let _large = reserve_larger_than_a_segment(&store, SEGMENT);
            assert!(!Arc::ptr_eq(store.writer.lock().unwrap().active.as_ref().unwrap(), &picked));
            assert!(!store.seal(&picked), "a segment still being written into was sealed for compaction");
        });
    }

    #[test]
    fn compaction_moves_the_live_records_and_deletes_the_segment() {
        let dir = tempfile::tempdir().unwrap();
        tokio_uring::start(async {
            let store = SegmentStore::open(dir.path(), SEGMENT, Prefill::Allocate).unwrap();
            fill_first_segment(&store).await;
            assert_eq!(store.compact_once(ALL).unwrap(), None, "nothing is under half live yet");
            for i in 0..9 {
                store.remove(id(1, i), false).await.unwrap();
            }
            let before = store.reclaimable_bytes();
            assert!(before >= 9 * (300 << 10), "9 dead records count as reclaimable: {before}");
            let done = store.compact_once(ALL).unwrap().expect("the first segment is a quarter live");
            assert_eq!((done.seq, done.n_moved, done.n_corrupt, done.bytes_freed), (1, 3, 0, SEGMENT));
            assert_eq!(done.n_tombstones_kept, 0, "the oldest segment keeps no tombstone");
            assert!(store.reclaimable_bytes() < before - 8 * (300 << 10));
            for i in 9..12 {
                assert_eq!(read_back(&store, &id(1, i)), Some(data(i as u8, 300 << 10)), "chunk {i}");
                assert_eq!(store.get(&id(1, i)).unwrap().segment.seq, 2);
            }
        });
        assert!(!segment_files(dir.path()).contains(&segment_name(1)), "the compacted segment is still there");
        let store = SegmentStore::open(dir.path(), SEGMENT, Prefill::Allocate).unwrap();
        for i in 0..9 {
            assert!(!store.contains(&id(1, i)), "deleted chunk {i} came back after compaction and a restart");
        }
        for i in 9..12 {
            assert_eq!(read_back(&store, &id(1, i)), Some(data(i as u8, 300 << 10)), "chunk {i} after a restart");
        }
        assert_eq!(read_back(&store, &id(9, 0)), Some(data(99, 2 << 20)));
        assert_eq!(store.report().unwrap().n_chunks, 4);
    }

    #[test]
    fn a_tombstone_outlives_compaction_while_an_older_segment_holds_its_record() {
        let dir = tempfile::tempdir().unwrap();
        tokio_uring::start(async {
            let store = SegmentStore::open(dir.path(), SEGMENT, Prefill::Allocate).unwrap();
            fill_first_segment(&store).await;
            // Segment 2 gets the tombstone of a record in segment 1, which stays mostly live.
            store.remove(id(1, 0), false).await.unwrap();
            // And a chunk deleted then stored again: its tombstone is superseded.
            put(&store, id(3, 0), &data(3, 1000)).await;
            store.remove(id(3, 0), false).await.unwrap();
            put(&store, id(3, 0), &data(4, 1000)).await;
            // Segment 2 dies: its large record is deleted, and segment 3 takes new writes.
            store.remove(id(9, 0), false).await.unwrap();
            put(&store, id(9, 1), &data(98, 3 << 20)).await;
            let done = store.compact_once(ALL).unwrap().expect("segment 2 is nearly empty");
            assert_eq!(done.seq, 2);
            // Kept: the tombstones of (1, 0) and (9, 0), whose records lie in older segments
            // or in the one compacted; dropped: the superseded one of (3, 0).
            assert_eq!(done.n_tombstones_kept, 2);
            assert_eq!(done.n_moved, 1, "the second (3, 0) moved");
        });
        let store = SegmentStore::open(dir.path(), SEGMENT, Prefill::Allocate).unwrap();
        assert!(!store.contains(&id(1, 0)), "a chunk whose tombstone was compacted came back");
        assert!(!store.contains(&id(9, 0)));
        assert_eq!(read_back(&store, &id(3, 0)), Some(data(4, 1000)), "the chunk stored again after its delete");
        assert_eq!(read_back(&store, &id(1, 1)), Some(data(1, 300 << 10)));
    }

    #[test]
    fn a_copy_whose_chunk_was_deleted_meanwhile_never_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        tokio_uring::start(async {
            let store = SegmentStore::open(dir.path(), SEGMENT, Prefill::Allocate).unwrap();
            fill_first_segment(&store).await;
            // Compaction reads the index, then a delete of (1, 5) writes its tombstone in
            // segment 2, then compaction copies the record, into segment 3.
            let old = store.get(&id(1, 5)).unwrap();
            store.remove(id(1, 5), false).await.unwrap();
            put(&store, id(9, 1), &data(97, 2 << 20)).await;
            let r = store.reserve(record_span(old.length)).unwrap();
            assert_eq!(r.segment.seq, 3);
            let mut buf = AlignedBuf::zeroed(r.span as usize);
            old.segment.fd.read_exact_into(&mut buf, r.span as usize, old.offset).unwrap();
            r.segment.fd.write_all_at(&buf, r.offset).unwrap();
            let mut batch = Batch { moves: vec![(id(1, 5), old, r)], ..Batch::default() };
            let mut out = Compacted::default();
            store.take_over(&mut batch, &mut out, &mut Pace::new(None)).unwrap();
            assert_eq!(out.n_moved, 0);
            assert!(!store.contains(&id(1, 5)));
            // Segments 1 and 2 die and are compacted away, the tombstone with them once
            // segment 2 is the oldest.
            for i in (0..12).filter(|i| *i != 5) {
                store.remove(id(1, i), false).await.unwrap();
            }
            store.remove(id(9, 0), false).await.unwrap();
            let seqs: Vec<u64> = std::iter::from_fn(|| store.compact_once(ALL).unwrap()).map(|c| c.seq).collect();
            assert!(seqs.starts_with(&[1, 2]), "compacted: {seqs:?}");
        });
        // The copy was padded, so nothing is left that could bring the chunk back.
        let store = SegmentStore::open(dir.path(), SEGMENT, Prefill::Allocate).unwrap();
        assert!(!store.contains(&id(1, 5)), "the deleted chunk came back from its compaction copy");
        assert_eq!(read_back(&store, &id(9, 1)), Some(data(97, 2 << 20)));
    }

    #[test]
    fn a_crash_before_the_old_segment_is_deleted_keeps_one_copy_of_each_record() {
        let dir = tempfile::tempdir().unwrap();
        tokio_uring::start(async {
            let store = SegmentStore::open(dir.path(), SEGMENT, Prefill::Allocate).unwrap();
            leave_a_quarter_of_the_first_segment_live(&store).await;
            // Copies made and taken over, then a crash before the segment file is removed.
            let seg = store.lock_segments()[&1].clone();
            let (mut batch, mut out) = (Batch::default(), Compacted::default());
            store.copy_out(&seg, true, &mut batch, &mut out, &mut Pace::new(None)).unwrap();
            assert_eq!(out.n_moved, 3);
        });
        assert!(segment_files(dir.path()).contains(&segment_name(1)));
        let store = SegmentStore::open(dir.path(), SEGMENT, Prefill::Allocate).unwrap();
        assert_eq!(store.report().unwrap().n_chunks, 4);
        for i in 9..12 {
            assert_eq!(read_back(&store, &id(1, i)), Some(data(i as u8, 300 << 10)), "chunk {i}");
        }
        // The originals win at start-up; a later compaction moves them again and frees the file.
        let done = store.compact_once(ALL).unwrap().expect("segment 1 is still a quarter live");
        assert_eq!(done.seq, 1);
        assert_eq!(store.report().unwrap().n_chunks, 4);
        for i in 9..12 {
            assert_eq!(read_back(&store, &id(1, i)), Some(data(i as u8, 300 << 10)), "chunk {i}");
        }
    }

    #[test]
    fn a_corrupt_record_is_set_aside_not_copied() {
        let dir = tempfile::tempdir().unwrap();
        tokio_uring::start(async {
            let store = SegmentStore::open(dir.path(), SEGMENT, Prefill::Allocate).unwrap();
            leave_a_quarter_of_the_first_segment_live(&store).await;
            let bad = store.get(&id(1, 10)).unwrap();
            super::super::tests::overwrite(&bad.segment.path, bad.data_offset() + 7, &[0xee]);
            let done = store.compact_once(ALL).unwrap().expect("a quarter live");
            assert_eq!((done.n_moved, done.n_corrupt), (2, 1));
            assert!(!store.contains(&id(1, 10)), "a corrupt record was carried over");
            assert_eq!(store.report().unwrap().n_quarantined, 1);
        });
    }

    /// A small tmpfs mounted for one test, unmounted when dropped.
    struct SmallDisk(std::path::PathBuf);

    impl Drop for SmallDisk {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }

    #[test]
    fn a_full_disk_stops_compaction_without_losing_a_record() {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=13m", "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("SKIPPED: cannot mount a tmpfs (needs root); compaction on a full disk is not tested");
            return;
        }
        let _disk = SmallDisk(dir.path().to_path_buf());
        let filler = dir.path().join("filler");
        std::fs::write(&filler, vec![1u8; 9 << 19]).unwrap();
        let data_dir = dir.path().join("node");
        tokio_uring::start(async {
            let store = SegmentStore::open(&data_dir, SEGMENT, Prefill::Allocate).unwrap();
            leave_a_quarter_of_the_first_segment_live(&store).await;
            // Segment 2 is nearly full, and no third segment fits on the disk.
            put(&store, id(9, 1), &data(98, 1900 << 10)).await;
            let e = store.compact_once(ALL).expect_err("compaction needs a segment the disk cannot hold");
            assert!(e.raw_os_error() == Some(libc::ENOSPC) || e.to_string().contains("No space"), "{e}");
            for i in 9..12 {
                assert_eq!(read_back(&store, &id(1, i)), Some(data(i as u8, 300 << 10)), "chunk {i}");
            }
            assert!(store.lock_segments().contains_key(&1), "segment 1 was dropped by a failed compaction");
        });
        let store = SegmentStore::open(&data_dir, SEGMENT, Prefill::Allocate).unwrap();
        for i in 9..12 {
            assert_eq!(read_back(&store, &id(1, i)), Some(data(i as u8, 300 << 10)), "chunk {i} after a restart");
        }
        assert!((0..9).all(|i| !store.contains(&id(1, i))));
        // Room again: compaction finishes and every record is still there.
        std::fs::remove_file(&filler).unwrap();
        let done = store.compact_once(ALL).unwrap().expect("segment 1 is a quarter live");
        assert_eq!((done.seq, done.n_moved), (1, 3));
        for i in 9..12 {
            assert_eq!(read_back(&store, &id(1, i)), Some(data(i as u8, 300 << 10)), "chunk {i} after compaction");
        }
        assert_eq!(read_back(&store, &id(9, 1)), Some(data(98, 1900 << 10)));
    }
}
