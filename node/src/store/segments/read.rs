//! Reading a record's data back, every block checked against its crc32: with plain blocking
//! reads for scrub, start-up and compaction, and block by block on the runtime for FETCH, which
//! reads ahead by running each read as a task of its own.

use super::{Location, SegmentStore};
use crate::store::ChunkError;
use dfs_proto::layout::n_blocks;
use dfs_proto::layout::{block_len, check_block, BlockMismatch};
use dfs_proto::limits::BLOCK_SIZE_BYTES;
use dfs_proto::ChunkId;
use dfs_runtime::aligned::{self, align_down, align_up, AlignedBuf, ALIGN};
use std::future::Future;
use std::io;
use std::ops::Range;

/// See [`SegmentStore::verify`](super::SegmentStore::verify).
pub(super) fn verify_location(loc: &Location, mut pace: impl FnMut(u64)) -> io::Result<Result<(), BlockMismatch>> {
    let mut buf = AlignedBuf::zeroed(BLOCK_SIZE_BYTES as usize + 2 * ALIGN);
    for (block_idx, &expected) in loc.block_crcs.iter().enumerate() {
        let at = loc.data_offset() + block_idx as u64 * BLOCK_SIZE_BYTES as u64;
        let len = block_len(loc.length, block_idx as u64);
        let (s, e) = (align_down(at), align_up(at + len));
        loc.segment.fd.read_exact_into(&mut buf, (e - s) as usize, s)?;
        let from = (at - s) as usize;
        if let Err(mismatch) = check_block(block_idx as u64, &buf[from..from + len as usize], expected) {
            return Ok(Err(mismatch));
        }
        pace(len);
    }
    Ok(Ok(()))
}

impl SegmentStore {
    /// A record FETCH found not to hold the bytes stored is set aside as scrub would (a
    /// tombstone, counted as quarantined), so that repair finds the copy missing and makes it
    /// again.
    pub(crate) async fn set_aside_if_corrupt(&self, chunk_id: ChunkId, loc: &Location, e: &ChunkError) {
        if !matches!(e, ChunkError::Corrupt(..)) {
            return;
        }
        match self.quarantine_record(chunk_id, loc).await {
            Ok(()) => tracing::warn!("chunk {chunk_id} failed a block check on FETCH; set aside"),
            Err(q) => tracing::warn!("chunk {chunk_id} failed a block check on FETCH; cannot set it aside: {q}"),
        }
    }

    /// A chunk's data read whole, block by block, each checked against its crc32 as FETCH
    /// checks it; a record that fails is set aside as FETCH sets it aside (for the simulator,
    /// which reads what a FETCH would send).
    pub async fn read_chunk(&self, chunk_id: ChunkId) -> Result<Vec<u8>, ChunkError> {
        let loc = self.get(&chunk_id).ok_or(ChunkError::NotFound(chunk_id))?;
        let mut out = Vec::with_capacity(loc.length as usize);
        for block_idx in 0..n_blocks(loc.length) {
            let (res, buf) = loc.read_block(block_idx, aligned::for_io(loc.block_buf_bytes())).await;
            let checked = loc.check_block(chunk_id, block_idx, res, &buf);
            match checked {
                Ok(range) => out.extend_from_slice(&buf[range]),
                Err(e) => {
                    aligned::give_back(buf);
                    self.set_aside_if_corrupt(chunk_id, &loc, &e).await;
                    return Err(e);
                }
            }
            aligned::give_back(buf);
        }
        assert_eq!(out.len() as u64, loc.length, "a chunk read whole has its length");
        Ok(out)
    }
}

impl Location {
    /// Bytes of a buffer that holds any one block of the record as [`Location::read_block`]
    /// reads it: the block, and the rest of the aligned span around it.
    pub(crate) fn block_buf_bytes(&self) -> usize {
        align_up(self.length.min(BLOCK_SIZE_BYTES as u64)) as usize + 2 * ALIGN
    }

    /// Where block `block_idx` lies: the aligned span read, and its data's place in that span.
    fn block_span(&self, block_idx: u64) -> (u64, u64, usize, usize) {
        let len = block_len(self.length, block_idx);
        let at = self.data_offset() + block_idx * BLOCK_SIZE_BYTES as u64;
        (align_down(at), align_up(at + len), (at - align_down(at)) as usize, len as usize)
    }

    /// Reads the aligned span around block `block_idx` into `buf`, through the descriptor the
    /// record was written through; the future owns all it needs, so that it can run as a task
    /// of its own while earlier blocks are sent.
    pub(crate) fn read_block(
        &self,
        block_idx: u64,
        buf: AlignedBuf,
    ) -> impl Future<Output = (io::Result<()>, AlignedBuf)> + 'static {
        let (start, end, _, _) = self.block_span(block_idx);
        let fd = self.segment.fd_for(self.length).clone();
        fd.read_owned(buf, (end - start) as usize, start)
    }

    /// Block `block_idx` of chunk `chunk_id` as [`Location::read_block`] left it in `buf`,
    /// checked against its crc32: its place in `buf`, or why it cannot be sent.
    pub(crate) fn check_block(
        &self,
        chunk_id: ChunkId,
        block_idx: u64,
        res: io::Result<()>,
        buf: &AlignedBuf,
    ) -> Result<Range<usize>, ChunkError> {
        let (_, _, from, len) = self.block_span(block_idx);
        res.map_err(ChunkError::io(format!("cannot read chunk {chunk_id}")))
            .and_then(|()| {
                crate::store::check_block(
                    chunk_id,
                    block_idx,
                    &buf[from..from + len],
                    self.block_crcs[block_idx as usize],
                )
            })
            .map(|()| from..from + len)
    }
}
