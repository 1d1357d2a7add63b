//! Reading a record's data back, every block checked against its crc32.

use super::blocking::pread_exact;
use super::Location;
use dfs_proto::layout::{block_len, check_block};
use dfs_proto::limits::BLOCK_SIZE_BYTES;
use dfs_runtime::aligned::{align_down, align_up, AlignedBuf, ALIGN};
use std::io;

/// See [`SegmentStore::verify`].
pub(super) fn verify_location(loc: &Location, mut pace: impl FnMut(u64)) -> io::Result<Result<(), String>> {
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
