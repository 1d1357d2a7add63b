//! Opening a segment store: the directory made or found (a chunk-file store's refused), O_DIRECT
//! probed, the index rebuilt from the checkpoint and a scan of the segments written after it
//! (the newest read through, since only they can hold a write torn by a crash), and the first
//! segment made before the node serves anything.

use super::checkpoint;
use super::disk::{ctx, Disk, RealDisk};
use super::format::{decode_segment_header, record_span, segment_name, SEGMENT_HEADER_BYTES};
use super::maker::{remove_unused, Prefill, SegmentMaker};
use super::read::verify_location;
use super::scan::{scan_segment, Scanned};
use super::segment::Segment;
use super::{sync_thread, Location, SegmentIo, SegmentStore, SyncWaiter, Threads, Writer};
use dfs_proto::{ChunkId, FileId};
use dfs_runtime::aligned::{AlignedBuf, ALIGN};
use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

/// Segments, newest first, whose every record's data is read and checked at start-up: the ones
/// that can hold a write torn by a crash.
const VERIFIED_SEGMENTS_AT_START: usize = 2;

impl SegmentStore {
    /// [`SegmentStore::open_with`] O_DIRECT, as the unit tests open it.
    #[cfg(test)]
    pub(super) fn open(root: &Path, segment_bytes: u64, prefill: Prefill) -> io::Result<SegmentStore> {
        SegmentStore::open_with(root, segment_bytes, prefill, SegmentIo::Direct)
    }

    /// Opens (creating if needed) the segments under `root/segments`, rebuilding the index;
    /// records are written and read as `io` says.
    pub fn open_with(root: &Path, segment_bytes: u64, prefill: Prefill, io: SegmentIo) -> io::Result<SegmentStore> {
        SegmentStore::open_on(Arc::new(RealDisk), Threads::Own, root, segment_bytes, prefill, io)
    }

    /// [`SegmentStore::open_with`] on `disk`, with or without threads of its own (the
    /// simulator opens it on a simulated disk, without).
    pub fn open_on(
        disk: Arc<dyn Disk>,
        threads: Threads,
        root: &Path,
        segment_bytes: u64,
        prefill: Prefill,
        io: SegmentIo,
    ) -> io::Result<SegmentStore> {
        assert!(segment_bytes.is_multiple_of(ALIGN as u64) && segment_bytes > SEGMENT_HEADER_BYTES, "segment size");
        disk.create_dir_all(root).map_err(ctx("cannot create data directory", root))?;
        let root = disk.resolve(root).map_err(ctx("cannot resolve data directory", root))?;
        if disk.exists(&root.join("chunks")) {
            return Err(io::Error::other(format!(
                "{} holds a chunk-file store (chunks/), the layout before segments: start this node \
                 with --store files to keep it, or move to segments by starting the node with \
                 --store segments on an empty directory and running `dfs-client repair`, which \
                 copies its chunks back from the other nodes (needs --replicas 2 or more)",
                root.display()
            )));
        }
        let dir = root.join("segments");
        disk.create_dir_all(&dir).map_err(ctx("cannot create", &dir))?;
        // Probe direct I/O once with a scratch file.
        let probe = dir.join(".direct-probe");
        let _ = disk.remove(&probe);
        let direct = io == SegmentIo::Direct
            && match disk.open(&probe, true, true) {
                Ok(_) => true,
                Err(e) => {
                    tracing::warn!(
                        "segments: O_DIRECT refused on {} ({e}): writing through the page cache",
                        dir.display()
                    );
                    false
                }
            };
        let _ = disk.remove(&probe);

        let (sync_queue, waiting) = mpsc::channel::<SyncWaiter>();
        let sync_waiting = match threads {
            Threads::Own => {
                std::thread::Builder::new().name("segment-sync".into()).spawn(move || sync_thread(waiting))?;
                None
            }
            Threads::None => Some(waiting),
        };
        let maker = Arc::new(SegmentMaker {
            dir: dir.clone(),
            disk: disk.clone(),
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
            disk,
            threads,
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
            sync_waiting: Mutex::new(sync_waiting),
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

    /// Scans every segment in order and rebuilds the index: of a chunk's records the one with
    /// the highest sequence number wins, and a tombstone winning removes the chunk; records that
    /// fail their seals are skipped. The newest segments are read through and every block
    /// checked first, since a crash can only have torn a write there.
    fn recover(&self) -> io::Result<()> {
        let started = std::time::Instant::now();
        let mut seqs = Vec::new();
        for name in self.disk.list(&self.dir).map_err(ctx("cannot read", &self.dir))? {
            let name = name.as_str();
            let path = self.dir.join(name);
            match name.strip_suffix(".seg").and_then(|h| u64::from_str_radix(h, 16).ok()) {
                Some(seq) => seqs.push(seq),
                // A segment a crash interrupted while it was made: it never held a record.
                // Gone already is as good as removed (in the tests, the segment maker of a store
                // opened before on the same directory may still be finishing it).
                None if name.starts_with('.') && name.ends_with(".seg.tmp") => match self.disk.remove(&path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        return Err(ctx("cannot remove", &path)(e));
                    }
                    _ => {}
                },
                None if name.starts_with('.') || name == checkpoint::FILE_NAME => {}
                None => tracing::warn!("segments: ignoring unexpected file {}", path.display()),
            }
        }
        seqs.sort_unstable();
        let n_segments = seqs.len();
        let ckpt = checkpoint::load(&*self.disk, &self.dir)
            .and_then(|c| match c {
                Some(c) => checkpoint::check_covered_ends(&*self.disk, &self.dir, &c).map(|()| Some(c)),
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
            let fd = self.disk.open(&path, false, self.direct).map_err(ctx("cannot open", &path))?;
            let mut buf = AlignedBuf::zeroed(ALIGN);
            fd.read_exact_into(&mut buf, ALIGN, 0).map_err(ctx("cannot read", &path))?;
            let (found_seq, size) = decode_segment_header(&buf).map_err(|why| {
                io::Error::other(format!(
                    "{}: {why} (to move a node to this build, start it on an empty directory and run \
                     `dfs-client repair`: it gets its copies back from the other nodes)",
                    path.display()
                ))
            })?;
            let buffered = self.disk.open(&path, false, false).map_err(ctx("cannot open", &path))?;
            let segment = Arc::new(Segment::new(seq, fd, buffered, size, path.clone()));
            if found_seq != seq {
                // A spare whose renumbering a stop interrupted: it never held a record.
                let scan = scan_segment(&segment)
                    .map_err(|e| io::Error::new(e.kind(), format!("scanning {}: {e}", path.display())))?;
                if scan.records.is_empty() && scan.n_skipped + scan.n_pads == 0 {
                    remove_unused(&*self.disk, &segment);
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
                    remove_unused(&*self.disk, &unused);
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
                    remove_unused(&*self.disk, &unused);
                }
            } else if let Some(unused) = empty_last.replace(segment) {
                remove_unused(&*self.disk, &unused);
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
}

#[cfg(test)]
mod tests {
    use super::super::tests::{data, id, overwrite, put, read_back, wait_for_spare};
    use super::*;
    use crate::store::segments::format::{encode_segment_header, RecordHeader, RECORD_HEADER_BYTES};
    use dfs_proto::limits::BLOCK_SIZE_BYTES;

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
    fn a_chunk_file_store_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("chunks")).unwrap();
        let e = SegmentStore::open(dir.path(), 64 << 20, Prefill::Zero).err().expect("a files store must be refused");
        assert!(e.to_string().contains("--store files"), "{e}");
    }
}
