//! A chunk being received into a record (STORE): header, data and trailer go to disk in
//! aligned pieces of [`WRITE_BYTES`] as they arrive, up to [`WRITES_IN_FLIGHT`] at once, each a
//! task of its own on the receiving thread; then one shared fdatasync of the segment makes the
//! record durable, and only then does the index point at it. Space reserved for a record that
//! is refused or cut off is marked dead, so start-up passes it at once.

use super::format::{encode_trailer, record_span, Kind, RecordHeader, RECORD_HEADER_BYTES};
use super::{Location, Reservation, SegmentStore};
use crate::store::ChunkError;
use dfs_proto::layout::BlockHasher;
use dfs_proto::limits::BLOCK_SIZE_BYTES;
use dfs_proto::ChunkId;
use dfs_runtime::aligned::{self, align_down, AlignedBuf, ALIGN};
use std::collections::VecDeque;
use std::io;

/// Bytes moved per direct write while receiving a chunk.
const WRITE_BYTES: usize = BLOCK_SIZE_BYTES as usize;
/// Pieces of a record being written while the next is received.
const WRITES_IN_FLIGHT: usize = 4;

type Write = tokio::task::JoinHandle<(io::Result<()>, AlignedBuf)>;

/// A chunk of `length` bytes being received into the space reserved for its record, or why it
/// is refused (the rest of its body is then only read through).
pub struct Incoming<'a> {
    store: &'a SegmentStore,
    chunk_id: ChunkId,
    length: u64,
    /// The crc32 the engine announced for the chunk.
    crc32: u32,
    created_unix_ms: u64,
    header: [u8; RECORD_HEADER_BYTES],
    reservation: Option<Reservation>,
    failed: Option<ChunkError>,
    /// Staging buffer: sized to the record when it is small (one write at the end), else
    /// holding a write's worth plus the part of a block left over from the previous write (from
    /// the thread's pool). None while it is lent out to receive the next piece.
    stage: Option<AlignedBuf>,
    stage_bytes: usize,
    write_at: u64,
    hasher: BlockHasher,
    /// Writes under way, oldest first; and their buffers, once done.
    writes: VecDeque<Write>,
    free: Vec<AlignedBuf>,
}

impl SegmentStore {
    /// Begins receiving chunk `chunk_id` of `length` bytes whose crc32 is announced as `crc32`:
    /// space for its record, unless the chunk is here already or no space can be had (then the
    /// refusal is kept for [`Incoming::finish`]).
    pub fn receive(&self, chunk_id: ChunkId, length: u64, crc32: u32) -> Incoming<'_> {
        let mut failed: Option<ChunkError> = None;
        let mut reservation = None;
        if self.contains(&chunk_id) {
            failed = Some(ChunkError::AlreadyExists(chunk_id));
        } else {
            match self.reserve(record_span(length)) {
                Ok(r) => {
                    assert_eq!(r.span, record_span(length), "a record's reservation is its whole span");
                    assert_eq!(r.offset % ALIGN as u64, 0, "a record starts aligned");
                    reservation = Some(r);
                }
                Err(e) => failed = Some(ChunkError::io(format!("cannot make room for chunk {chunk_id}"))(e)),
            }
        }
        let created_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let lsn = reservation.as_ref().map_or(0, |r| r.lsn);
        let header = RecordHeader { kind: Kind::Chunk, chunk_id, length, crc32, created_unix_ms, lsn }.encode();
        let stage_bytes = (record_span(length) as usize).min(WRITE_BYTES + ALIGN);
        let mut stage = aligned::for_io(stage_bytes);
        stage.extend_from_slice(&header);
        let write_at = reservation.as_ref().map_or(0, |r| r.offset);
        Incoming {
            store: self,
            chunk_id,
            length,
            crc32,
            created_unix_ms,
            header,
            reservation,
            failed,
            stage: Some(stage),
            stage_bytes,
            write_at,
            hasher: BlockHasher::new(),
            writes: VecDeque::new(),
            free: Vec::new(),
        }
    }
}

impl Incoming<'_> {
    /// The buffer to receive the next piece of the body into, and the range of it to fill: at
    /// most `remaining` bytes, after what is staged already (from its start once the chunk is
    /// refused: the bytes are then only read through). Give it back to [`Incoming::received`].
    pub fn next_piece(&mut self, remaining: u64) -> (AlignedBuf, usize, usize) {
        let stage = self.stage.take().expect("the buffer lent for the last piece came back");
        let begin = if self.failed.is_some() { 0 } else { stage.len() };
        let n = remaining.min((self.stage_bytes - begin) as u64) as usize;
        (stage, begin, begin + n)
    }

    /// Takes back the buffer [`Incoming::next_piece`] lent, with `stage[begin..end]` received:
    /// hashed, and once a write's worth is staged, its aligned part written while the next
    /// piece is received (the rest of its last block stays staged).
    pub async fn received(&mut self, mut stage: AlignedBuf, begin: usize, end: usize) {
        if self.failed.is_some() {
            stage.set_len(0);
            self.stage = Some(stage);
            return;
        }
        assert!(
            begin <= end && end <= self.stage_bytes,
            "a piece fits the stage: {begin}..{end} of {}",
            self.stage_bytes
        );
        self.hasher.update(&stage[begin..end]);
        stage.set_len(end);
        if stage.len() >= WRITE_BYTES {
            if self.writes.len() >= WRITES_IN_FLIGHT {
                let done = self.writes.pop_front().expect("writes are under way").await;
                self.note_written(done);
            }
            let r = self.reservation.as_ref().expect("no failure means space was reserved");
            if self.write_at == r.offset {
                // Tests hold a large record here, its space reserved and its first piece on
                // the way, while other records are written and checkpoints taken.
                dfs_runtime::failpoint::pause("segment-store-large-record").await;
            }
            let full = stage.len();
            let aligned = align_down(full as u64) as usize;
            let mut next = self.free.pop().unwrap_or_else(|| aligned::for_io(self.stage_bytes));
            next.set_len(0);
            next.extend_from_slice(&stage[aligned..full]);
            stage.set_len(aligned);
            assert_eq!(self.write_at % ALIGN as u64, 0, "writes start aligned");
            assert!(
                self.write_at + aligned as u64 <= r.offset + r.span,
                "a write stays inside its record's reservation"
            );
            let to_write = std::mem::replace(&mut stage, next);
            let fd = r.segment.fd.clone();
            let at = self.write_at;
            self.writes.push_back(dfs_runtime::backend::spawn(fd.write_owned(to_write, at)));
            self.write_at += aligned as u64;
        }
        self.stage = Some(stage);
    }

    /// A write under way is done: its buffer is free again, and its error refuses the chunk.
    fn note_written(&mut self, done: Result<(io::Result<()>, AlignedBuf), tokio::task::JoinError>) {
        let res = match done {
            Ok((res, buf)) => {
                self.free.push(buf);
                res
            }
            Err(e) => Err(io::Error::other(e)),
        };
        if let Err(e) = res {
            self.failed.get_or_insert(ChunkError::io(format!("cannot write chunk {}", self.chunk_id))(e));
        }
    }

    /// The body was cut off (the engine went away mid-chunk): once the writes under way are
    /// done, the reserved space is marked dead, so start-up passes it at once instead of
    /// searching it for records.
    pub async fn abandon(mut self) {
        while let Some(w) = self.writes.pop_front() {
            let _ = w.await;
        }
        if let Some(r) = &self.reservation {
            self.store.abandon(r).await;
        }
    }

    /// Once the whole body was received: checks the crc32 announced, writes the rest of the
    /// record with its trailer, syncs it, and makes it the chunk's live copy. Ok: the block
    /// crc32s of a record that is now durable and indexed.
    pub async fn finish(mut self) -> Result<Vec<u32>, ChunkError> {
        while let Some(w) = self.writes.pop_front() {
            let done = w.await;
            self.note_written(done);
        }
        for buf in self.free.drain(..) {
            aligned::give_back(buf);
        }
        let (segs, chunk_id, length, crc32) = (self.store, self.chunk_id, self.length, self.crc32);
        let Some(r) = self.reservation.take() else {
            return Err(self.failed.take().expect("no reservation means a failure"));
        };
        if let Some(e) = self.failed.take() {
            segs.abandon(&r).await;
            return Err(e);
        }
        let (actual, block_crcs) = std::mem::take(&mut self.hasher).finish();
        assert_eq!(block_crcs.len() as u64, dfs_proto::layout::n_blocks(length), "one crc32 per block received");
        if actual != crc32 {
            segs.abandon(&r).await;
            return Err(ChunkError::ChecksumMismatch { chunk: chunk_id, announced: crc32, actual });
        }
        let mut stage = self.stage.take().expect("the buffer lent for the last piece came back");
        stage.extend_from_slice(&encode_trailer(&self.header, &block_crcs));
        stage.pad_to_alignment();
        assert_eq!(self.write_at + stage.len() as u64, r.offset + r.span, "a record fills its reservation exactly");
        let (res, stage) = r.segment.fd_for(length).clone().write_owned(stage, self.write_at).await;
        aligned::give_back(stage);
        if let Err(e) = res {
            segs.abandon(&r).await;
            return Err(ChunkError::io(format!("cannot write chunk {chunk_id}"))(e));
        }
        if let Err(e) = segs.sync(&r.segment).await {
            return Err(ChunkError::io(format!("cannot sync chunk {chunk_id}"))(e));
        }
        let location = Location {
            segment: r.segment.clone(),
            offset: r.offset,
            length,
            crc32,
            created_unix_ms: self.created_unix_ms,
            lsn: r.lsn,
            block_crcs: block_crcs.clone().into(),
        };
        if !segs.publish(chunk_id, location) {
            segs.abandon(&r).await;
            return Err(ChunkError::AlreadyExists(chunk_id));
        }
        Ok(block_crcs)
    }
}
