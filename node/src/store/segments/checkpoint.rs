//! Index checkpoints: the index written to `segments/index.ckpt` now and then, so that start-up
//! reads it and scans only the segments written since, instead of every record header.
//!
//! A checkpoint names the first segment it does not cover (`first_scanned_seq`): the oldest
//! one a record was still being written into when it was taken, or the one being written.
//! Every record in an older segment had then finished (published, abandoned or failed), so the
//! index holds what those segments say. The index is copied after that point is fixed, a slice
//! at a time; whatever changes meanwhile (a new record, a delete, a compacted copy) is written
//! in a segment at or after it, which start-up scans, and the usual rule (highest sequence
//! number wins, the first found on a tie) settles it. An entry whose segment has since been
//! deleted by compaction is dropped: its record was copied forward first.
//!
//! File: magic `DFSCKPT1`, then the postcard encoding of a [`Head`], of `n_segments`
//! [`SegmentEntry`]s and of the [`Entry`]s, then the entry count (u64) and the crc32 of
//! everything before it (u32), both big-endian. Written under a temporary name, synced, and
//! renamed into place.

use super::disk::{ctx, Disk, DiskFile};
use super::format::{segment_name, RecordHeader};
use super::*;
use dfs_runtime::aligned::AlignedBuf;
use serde::{Deserialize, Serialize};
use std::io::Write;

pub(super) const FILE_NAME: &str = "index.ckpt";
const MAGIC: [u8; 8] = *b"DFSCKPT1";
/// Index entries copied per hold of the index lock.
const SLICE_ENTRIES: usize = 4096;

#[derive(Serialize, Deserialize, Debug)]
struct Head {
    first_scanned_seq: u64,
    next_lsn: u64,
    n_segments: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy)]
pub(super) struct SegmentEntry {
    pub seq: u64,
    pub size: u64,
    pub end: u64,
    pub tombs: u64,
}

#[derive(Serialize, Deserialize, Debug)]
pub(super) struct Entry {
    pub file_id: [u8; 16],
    pub chunk_idx: u32,
    pub seq: u64,
    pub offset: u64,
    pub length: u64,
    pub crc32: u32,
    pub created_unix_ms: u64,
    pub lsn: u64,
    pub block_crcs: Vec<u32>,
}

/// A checkpoint read back.
pub(super) struct Loaded {
    pub first_scanned_seq: u64,
    pub next_lsn: u64,
    pub segments: BTreeMap<u64, SegmentEntry>,
    pub entries: Vec<Entry>,
}

/// Writes a file front to back through a buffer of 1 MiB.
struct Appender {
    file: Arc<dyn DiskFile>,
    at: u64,
    buf: Vec<u8>,
}

impl Write for Appender {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.buf.len() + buf.len() > self.buf.capacity() {
            self.flush()?;
        }
        if buf.len() >= self.buf.capacity() {
            self.file.write_all_at(buf, self.at)?;
            self.at += buf.len() as u64;
        } else {
            self.buf.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.write_all_at(&self.buf, self.at)?;
        self.at += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }
}

/// Counts the crc32 of everything written through it.
struct Hashing<W: Write> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn encode_into<T: Serialize, W: Write>(value: &T, w: &mut W) -> io::Result<()> {
    postcard::to_io(value, w).map(|_| ()).map_err(|e| io::Error::other(format!("cannot encode checkpoint: {e}")))
}

impl SegmentStore {
    /// The first segment a checkpoint taken now cannot cover (the lowest numbered of those a
    /// record is still being written into and the one being written), and the sequence number
    /// the next record gets: fixed under the writer lock, under which every reservation is made.
    fn checkpoint_point(&self) -> (u64, u64) {
        let w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let segments = self.lock_segments();
        let pending = segments.values().filter(|s| s.pending.load(Ordering::Acquire) > 0).map(|s| s.seq);
        let first = pending.chain(w.active.as_ref().map(|s| s.seq)).min().unwrap_or(w.next_seq);
        (first, w.next_lsn)
    }

    /// Writes a checkpoint of the index (blocking). Returns the entries written.
    pub fn write_checkpoint(&self) -> io::Result<u64> {
        let (first_scanned_seq, next_lsn) = self.checkpoint_point();
        self.write_checkpoint_at(first_scanned_seq, next_lsn)
    }

    /// Writes a checkpoint covering the segments before `first_scanned_seq`.
    fn write_checkpoint_at(&self, first_scanned_seq: u64, next_lsn: u64) -> io::Result<u64> {
        let covered: Vec<SegmentEntry> = self
            .lock_segments()
            .values()
            .filter(|s| s.seq < first_scanned_seq)
            .map(|s| SegmentEntry {
                seq: s.seq,
                size: s.size,
                end: s.end.load(Ordering::Relaxed),
                tombs: s.tombs.load(Ordering::Relaxed),
            })
            .collect();
        let temp = self.dir.join(format!(".{FILE_NAME}.tmp"));
        let path = self.dir.join(FILE_NAME);
        match self.disk.remove(&temp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(ctx("cannot remove", &temp)(e)),
            _ => {}
        }
        let file = self.disk.open(&temp, true, false).map_err(ctx("cannot create", &temp))?;
        let appender = Appender { file: file.clone(), at: 0, buf: Vec::with_capacity(1 << 20) };
        let mut w = Hashing { inner: appender, crc: crc32fast::Hasher::new() };
        w.write_all(&MAGIC)?;
        encode_into(&Head { first_scanned_seq, next_lsn, n_segments: covered.len() as u64 }, &mut w)?;
        for s in &covered {
            encode_into(s, &mut w)?;
        }
        let mut n_entries = 0u64;
        let mut after: Option<ChunkId> = None;
        loop {
            let slice: Vec<(ChunkId, Location)> = {
                let index = self.lock_index();
                let range = match after {
                    Some(a) => index.range((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
                    None => index.range(..),
                };
                range
                    .filter(|(_, l)| l.segment.seq < first_scanned_seq)
                    .take(SLICE_ENTRIES)
                    .map(|(id, l)| (*id, l.clone()))
                    .collect()
            };
            let Some((last, _)) = slice.last() else { break };
            after = Some(*last);
            for (id, l) in &slice {
                let entry = Entry {
                    file_id: id.file_id.0,
                    chunk_idx: id.chunk_idx,
                    seq: l.segment.seq,
                    offset: l.offset,
                    length: l.length,
                    crc32: l.crc32,
                    created_unix_ms: l.created_unix_ms,
                    lsn: l.lsn,
                    block_crcs: l.block_crcs.to_vec(),
                };
                encode_into(&entry, &mut w)?;
                n_entries += 1;
            }
        }
        w.write_all(&n_entries.to_be_bytes())?;
        let crc = w.crc.clone().finalize();
        let mut appender = w.inner;
        appender.write_all(&crc.to_be_bytes())?;
        appender.flush().map_err(ctx("cannot write", &temp))?;
        file.datasync().map_err(ctx("cannot sync", &temp))?;
        self.disk.rename(&temp, &path).map_err(ctx("cannot rename", &temp))?;
        self.disk.sync_dir(&self.dir).map_err(ctx("cannot sync", &self.dir))?;
        Ok(n_entries)
    }
}

/// Reads the checkpoint in `dir`, if there is one. A damaged one is an error (start-up then
/// scans every segment).
pub(super) fn load(disk: &dyn Disk, dir: &Path) -> io::Result<Option<Loaded>> {
    let path = dir.join(FILE_NAME);
    let file = match disk.open(&path, false, false) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ctx("cannot open", &path)(e)),
    };
    let len = file.size().map_err(ctx("cannot read", &path))? as usize;
    let mut buf = AlignedBuf::zeroed(len);
    file.read_exact_into(&mut buf, len, 0).map_err(ctx("cannot read", &path))?;
    let bytes: &[u8] = &buf;
    let bad = |why: &str| io::Error::other(format!("{}: {why}", path.display()));
    if bytes.len() < MAGIC.len() + 12 || bytes[..MAGIC.len()] != MAGIC {
        return Err(bad("not a dfs index checkpoint"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32fast::hash(body) != u32::from_be_bytes(crc.try_into().expect("4 bytes")) {
        return Err(bad("fails its crc32"));
    }
    let (encoded, count) = body.split_at(body.len() - 8);
    let n_entries = u64::from_be_bytes(count.try_into().expect("8 bytes"));
    let decode_err = |e: postcard::Error| bad(&format!("cannot decode: {e}"));
    let (head, mut rest): (Head, &[u8]) = postcard::take_from_bytes(&encoded[MAGIC.len()..]).map_err(decode_err)?;
    let mut segments = BTreeMap::new();
    for _ in 0..head.n_segments {
        let (s, r): (SegmentEntry, &[u8]) = postcard::take_from_bytes(rest).map_err(decode_err)?;
        segments.insert(s.seq, s);
        rest = r;
    }
    let mut entries = Vec::with_capacity(n_entries.min(1 << 24) as usize);
    for _ in 0..n_entries {
        let (e, r): (Entry, &[u8]) = postcard::take_from_bytes(rest).map_err(decode_err)?;
        entries.push(e);
        rest = r;
    }
    if !rest.is_empty() {
        return Err(bad("has bytes after its last entry"));
    }
    Ok(Some(Loaded { first_scanned_seq: head.first_scanned_seq, next_lsn: head.next_lsn, segments, entries }))
}

/// Checks that no covered segment holds a record after the end the checkpoint knew for it,
/// which would have been written after the checkpoint and is not in it. Checkpoints written
/// before the segments were numbered in write order could cover a segment still being
/// written; this finds them (by the first block past each covered end) so that start-up scans.
pub(super) fn check_covered_ends(disk: &dyn Disk, dir: &Path, c: &Loaded) -> io::Result<()> {
    for s in c.segments.values().filter(|s| s.seq < c.first_scanned_seq && s.end + ALIGN as u64 <= s.size) {
        let path = dir.join(segment_name(s.seq));
        let file = match disk.open(&path, false, false) {
            Ok(f) => f,
            // Deleted by compaction since: its records were copied forward.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(ctx("cannot open", &path)(e)),
        };
        let mut buf = AlignedBuf::zeroed(ALIGN);
        file.read_exact_into(&mut buf, ALIGN, s.end).map_err(ctx("cannot read", &path))?;
        if RecordHeader::decode(&buf).is_some() {
            return Err(io::Error::other(format!(
                "the index checkpoint covers {} up to {}, but a record follows there",
                path.display(),
                s.end
            )));
        }
    }
    Ok(())
}

/// Writes a checkpoint every `interval` once records have been written since the last one.
pub fn start_checkpointer(store: Arc<SegmentStore>, interval: Duration) -> io::Result<()> {
    std::thread::Builder::new().name("segment-checkpoint".into()).spawn(move || {
        let mut last_lsn = 0;
        loop {
            std::thread::sleep(interval);
            let next_lsn = store.writer.lock().unwrap_or_else(|e| e.into_inner()).next_lsn;
            if next_lsn == last_lsn {
                continue;
            }
            let started = std::time::Instant::now();
            match store.write_checkpoint() {
                Ok(n) => {
                    last_lsn = next_lsn;
                    tracing::debug!("segments: checkpoint of {n} chunk(s) written in {:.1?}", started.elapsed());
                }
                Err(e) => tracing::warn!("segments: cannot write an index checkpoint: {e}"),
            }
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::format::{encode_trailer, Kind};
    use super::super::tests::{data, id, overwrite, put, read_back, reserve_larger_than_a_segment};
    use super::*;

    const SEGMENT: u64 = 4 << 20;

    fn open(dir: &Path) -> SegmentStore {
        SegmentStore::open(dir, SEGMENT, Prefill::Allocate).unwrap()
    }

    /// What a store holds, for comparing two ways of opening it.
    fn state(store: &SegmentStore) -> (Vec<(ChunkId, u64, u64)>, u64, u64) {
        let chunks = store.all().into_iter().map(|(id, l)| (id, l.segment.seq, l.lsn)).collect();
        let report = store.report().unwrap();
        (chunks, report.bytes_used, store.reclaimable_bytes())
    }

    #[test]
    fn start_up_takes_the_checkpoint_and_scans_what_came_after_it() {
        let dir = tempfile::tempdir().unwrap();
        tokio_uring::start(async {
            let store = open(dir.path());
            for i in 0..12 {
                put(&store, id(1, i), &data(i as u8, 300 << 10)).await;
            }
            put(&store, id(2, 0), &data(20, 2 << 20)).await;
            store.remove(id(1, 3), false).await.unwrap();
            assert_eq!(store.write_checkpoint().unwrap(), 11, "segment 1's live records");
            // After the checkpoint: a delete of a covered chunk, a new chunk, and one stored
            // again after its delete.
            store.remove(id(1, 4), false).await.unwrap();
            put(&store, id(3, 0), &data(30, 1000)).await;
            put(&store, id(1, 3), &data(33, 500)).await;
            put(&store, id(4, 0), &data(40, 3 << 20)).await;
        });
        let store = open(dir.path());
        assert_eq!(store.n_covered_at_start.load(Ordering::Relaxed), 1, "segment 1 came from the checkpoint");
        assert!(!store.contains(&id(1, 4)), "a chunk deleted after the checkpoint came back");
        assert_eq!(read_back(&store, &id(1, 3)), Some(data(33, 500)));
        assert_eq!(read_back(&store, &id(3, 0)), Some(data(30, 1000)));
        assert_eq!(read_back(&store, &id(1, 5)), Some(data(5, 300 << 10)));
        assert_eq!(read_back(&store, &id(4, 0)), Some(data(40, 3 << 20)));
        let with_checkpoint = state(&store);
        drop(store);
        std::fs::remove_file(dir.path().join("segments").join(FILE_NAME)).unwrap();
        let store = open(dir.path());
        assert_eq!(store.n_covered_at_start.load(Ordering::Relaxed), 0);
        assert_eq!(state(&store), with_checkpoint, "a full scan and the checkpoint disagree");
    }

    #[test]
    fn a_damaged_checkpoint_is_set_aside_and_every_segment_scanned() {
        let dir = tempfile::tempdir().unwrap();
        tokio_uring::start(async {
            let store = open(dir.path());
            for i in 0..12 {
                put(&store, id(1, i), &data(i as u8, 300 << 10)).await;
            }
            put(&store, id(2, 0), &data(20, 2 << 20)).await;
            store.write_checkpoint().unwrap();
        });
        overwrite(&dir.path().join("segments").join(FILE_NAME), 40, &[0xff]);
        let store = open(dir.path());
        assert_eq!(store.n_covered_at_start.load(Ordering::Relaxed), 0);
        for i in 0..12 {
            assert_eq!(read_back(&store, &id(1, i)), Some(data(i as u8, 300 << 10)), "chunk {i}");
        }
    }

    #[test]
    fn a_record_still_being_written_keeps_its_segment_out_of_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        tokio_uring::start(async {
            let store = open(dir.path());
            put(&store, id(1, 0), &data(1, 1000)).await;
            // A STORE reserves its space in segment 1, and is still receiving when a large
            // record opens segment 2 and the checkpoint is taken.
            let slow = store.reserve(record_span(2000)).unwrap();
            put(&store, id(2, 0), &data(20, 4 << 20)).await;
            assert_eq!(store.write_checkpoint().unwrap(), 0, "segment 1 cannot be covered yet");
            // The slow STORE finishes.
            let d = data(3, 2000);
            let crcs = vec![crc32fast::hash(&d)];
            let header = RecordHeader {
                kind: Kind::Chunk,
                chunk_id: id(3, 0),
                length: 2000,
                crc32: crcs[0],
                created_unix_ms: 1,
                lsn: slow.lsn,
            };
            let mut buf = AlignedBuf::zeroed(slow.span as usize);
            buf.extend_from_slice(&header.encode());
            buf.extend_from_slice(&d);
            buf.extend_from_slice(&encode_trailer(&header.encode(), &crcs));
            buf.pad_to_alignment();
            slow.segment.fd.write_all_at(&buf, slow.offset).unwrap();
            store.sync(&slow.segment).await.unwrap();
            let loc = Location {
                segment: slow.segment.clone(),
                offset: slow.offset,
                length: 2000,
                crc32: crcs[0],
                created_unix_ms: 1,
                lsn: slow.lsn,
                block_crcs: crcs.into(),
            };
            assert!(store.publish(id(3, 0), loc));
        });
        let store = open(dir.path());
        assert_eq!(read_back(&store, &id(3, 0)), Some(data(3, 2000)), "the record finished after the checkpoint");
        assert_eq!(read_back(&store, &id(1, 0)), Some(data(1, 1000)));
    }

    #[test]
    fn a_checkpoint_while_a_record_larger_than_a_segment_arrives_covers_nothing_still_written() {
        // The large record gets a segment of its own; the spare made before it takes the small
        // records that arrive meanwhile. A checkpoint then must not cover where they go.
        let dir = tempfile::tempdir().unwrap();
        tokio_uring::start(async {
            let store = open(dir.path());
            put(&store, id(1, 0), &data(1, 1000)).await;
            let _receiving = reserve_larger_than_a_segment(&store, SEGMENT);
            for i in 0..5 {
                put(&store, id(2, i), &data(i as u8, 5000)).await;
            }
            store.write_checkpoint().unwrap();
            for i in 0..5 {
                put(&store, id(3, i), &data(10 + i as u8, 5000)).await;
            }
            // The node stops (no checkpoint is written at a stop, clean or not).
        });
        let store = open(dir.path());
        assert_eq!(read_back(&store, &id(1, 0)), Some(data(1, 1000)));
        for i in 0..5 {
            assert_eq!(read_back(&store, &id(2, i)), Some(data(i as u8, 5000)), "chunk (2, {i})");
            assert_eq!(
                read_back(&store, &id(3, i)),
                Some(data(10 + i as u8, 5000)),
                "chunk (3, {i}), after the checkpoint"
            );
        }
        // Sequence numbers go on after the highest written.
        let highest = store.all().into_iter().map(|(_, l)| l.lsn).max().unwrap();
        assert!(store.writer.lock().unwrap().next_lsn > highest, "sequence numbers would repeat");
    }

    #[test]
    fn a_checkpoint_that_misses_records_written_after_it_is_not_trusted() {
        // What an older build wrote: a checkpoint covering the segment still being written.
        // Start-up finds a record past the end the checkpoint knew for it, and scans instead.
        let dir = tempfile::tempdir().unwrap();
        tokio_uring::start(async {
            let store = open(dir.path());
            for i in 0..3 {
                put(&store, id(1, i), &data(i as u8, 5000)).await;
            }
            let next_lsn = store.writer.lock().unwrap().next_lsn;
            store.write_checkpoint_at(2, next_lsn).unwrap();
            put(&store, id(4, 0), &data(4, 100)).await;
        });
        let store = open(dir.path());
        assert_eq!(store.n_covered_at_start.load(Ordering::Relaxed), 0, "the checkpoint was trusted");
        assert_eq!(read_back(&store, &id(4, 0)), Some(data(4, 100)), "a record after the checkpoint was lost");
        for i in 0..3 {
            assert_eq!(read_back(&store, &id(1, i)), Some(data(i as u8, 5000)));
        }
    }

    #[test]
    fn entries_in_a_segment_compaction_deleted_are_found_where_they_moved() {
        let dir = tempfile::tempdir().unwrap();
        tokio_uring::start(async {
            let store = open(dir.path());
            for i in 0..12 {
                put(&store, id(1, i), &data(i as u8, 300 << 10)).await;
            }
            put(&store, id(2, 0), &data(20, 2 << 20)).await;
            for i in 0..9 {
                store.remove(id(1, i), false).await.unwrap();
            }
            store.write_checkpoint().unwrap();
            let done = store.compact_once(Policy { below: 0.5, bytes_per_sec: None }).unwrap().unwrap();
            assert_eq!((done.seq, done.n_moved), (1, 3));
        });
        let store = open(dir.path());
        for i in 0..9 {
            assert!(!store.contains(&id(1, i)), "chunk {i}");
        }
        for i in 9..12 {
            assert_eq!(read_back(&store, &id(1, i)), Some(data(i as u8, 300 << 10)), "chunk {i}");
        }
        assert_eq!(read_back(&store, &id(2, 0)), Some(data(20, 2 << 20)));
    }
}
