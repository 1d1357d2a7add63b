//! The footer at the end of every chunk file: the chunk's identity, length, crc32 and the crc32
//! of each block, sealed by a crc32 of its own. Data starts at offset 0 so the file can later be
//! sent with splice from offset 0; the footer is what lets FETCH verify every block before it
//! leaves the node.

use dfs_proto::layout::{combine_block_crcs, n_blocks};
use dfs_proto::limits::{BLOCK_SIZE_BYTES, MAX_BLOCKS_PER_CHUNK};
use dfs_proto::{ChunkId, FileId};

const FOOTER_MAGIC: [u8; 8] = *b"DFSCHNK1";
/// Fixed part of the footer: magic, file id, chunk index, length, crc32, block size, block count, seal.
pub(crate) const FOOTER_FIXED_BYTES: usize = 8 + 16 + 4 + 8 + 4 + 4 + 4 + 4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Footer {
    pub(super) chunk_id: ChunkId,
    pub(crate) length: u64,
    pub(crate) crc32: u32,
    pub(crate) block_crcs: Vec<u32>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum FooterError {
    #[error("file is {0} bytes, too short for a chunk footer")]
    TooShort(u64),
    #[error("footer magic is wrong")]
    Magic,
    #[error("footer seal (crc32) does not match its contents")]
    Seal,
    #[error("footer names chunk {found}, but the file is named for {expected}")]
    WrongChunk { expected: ChunkId, found: ChunkId },
    #[error("footer describes {0} but the file is {1} bytes")]
    SizeMismatch(String, u64),
    #[error("block crcs do not combine to the chunk crc32")]
    Inconsistent,
}

impl Footer {
    /// Bytes the footer occupies for a chunk of `length` bytes.
    pub(crate) fn encoded_len(length: u64) -> u64 {
        4 * n_blocks(length) + FOOTER_FIXED_BYTES as u64
    }

    pub(super) fn encode(&self) -> Vec<u8> {
        assert_eq!(self.block_crcs.len() as u64, n_blocks(self.length), "footer block count");
        let mut out = Vec::with_capacity(Footer::encoded_len(self.length) as usize);
        for c in &self.block_crcs {
            out.extend_from_slice(&c.to_be_bytes());
        }
        out.extend_from_slice(&FOOTER_MAGIC);
        out.extend_from_slice(&self.chunk_id.file_id.0);
        out.extend_from_slice(&self.chunk_id.chunk_idx.to_be_bytes());
        out.extend_from_slice(&self.length.to_be_bytes());
        out.extend_from_slice(&self.crc32.to_be_bytes());
        out.extend_from_slice(&BLOCK_SIZE_BYTES.to_be_bytes());
        out.extend_from_slice(&(self.block_crcs.len() as u32).to_be_bytes());
        let seal = dfs_proto::layout::crc32(&out);
        out.extend_from_slice(&seal.to_be_bytes());
        out
    }

    /// Parses the fixed tail (the last [`FOOTER_FIXED_BYTES`] of the file) and returns the chunk
    /// length and block count, so the caller knows how many block crcs to read before it.
    pub(crate) fn parse_tail(tail: &[u8], file_len: u64) -> Result<(u64, u32), FooterError> {
        assert_eq!(tail.len(), FOOTER_FIXED_BYTES);
        if tail[..8] != FOOTER_MAGIC {
            return Err(FooterError::Magic);
        }
        let length = u64::from_be_bytes(tail[28..36].try_into().expect("8 bytes"));
        let n = u32::from_be_bytes(tail[44..48].try_into().expect("4 bytes"));
        let block_size = u32::from_be_bytes(tail[40..44].try_into().expect("4 bytes"));
        if block_size != BLOCK_SIZE_BYTES || n > MAX_BLOCKS_PER_CHUNK || n as u64 != n_blocks(length) {
            return Err(FooterError::Seal);
        }
        match length.checked_add(Footer::encoded_len(length)) {
            Some(total) if total == file_len => Ok((length, n)),
            _ => Err(FooterError::SizeMismatch(format!("{length} data bytes and {n} blocks"), file_len)),
        }
    }

    /// Parses the whole footer (block crcs then the fixed tail) and checks it for `expected`.
    pub(crate) fn decode(bytes: &[u8], expected: ChunkId) -> Result<Footer, FooterError> {
        let fixed_at = bytes.len().checked_sub(FOOTER_FIXED_BYTES).ok_or(FooterError::TooShort(bytes.len() as u64))?;
        let seal = u32::from_be_bytes(bytes[bytes.len() - 4..].try_into().expect("4 bytes"));
        if dfs_proto::layout::crc32(&bytes[..bytes.len() - 4]) != seal {
            return Err(FooterError::Seal);
        }
        let tail = &bytes[fixed_at..];
        let file_id = FileId(tail[8..24].try_into().expect("16 bytes"));
        let chunk_idx = u32::from_be_bytes(tail[24..28].try_into().expect("4 bytes"));
        let found = ChunkId { file_id, chunk_idx };
        if found != expected {
            return Err(FooterError::WrongChunk { expected, found });
        }
        let length = u64::from_be_bytes(tail[28..36].try_into().expect("8 bytes"));
        let crc32 = u32::from_be_bytes(tail[36..40].try_into().expect("4 bytes"));
        if fixed_at as u64 != 4 * n_blocks(length) {
            return Err(FooterError::Seal);
        }
        let block_crcs: Vec<u32> =
            bytes[..fixed_at].chunks_exact(4).map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes"))).collect();
        if combine_block_crcs(&block_crcs, length) != crc32 {
            return Err(FooterError::Inconsistent);
        }
        Ok(Footer { chunk_id: found, length, crc32, block_crcs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(length: u64) -> Footer {
        let data: Vec<u8> = (0..length).map(|i| (i % 251) as u8).collect();
        let mut h = dfs_proto::layout::BlockHasher::new();
        h.update(&data);
        let (crc32, block_crcs) = h.finish();
        Footer { chunk_id: ChunkId { file_id: FileId([7; 16]), chunk_idx: 3 }, length, crc32, block_crcs }
    }

    #[test]
    fn footer_round_trips_for_empty_small_and_multi_block_chunks() {
        for length in [0, 1, BLOCK_SIZE_BYTES as u64, BLOCK_SIZE_BYTES as u64 * 2 + 5] {
            let f = sample(length);
            let bytes = f.encode();
            assert_eq!(bytes.len() as u64, Footer::encoded_len(length));
            let tail = &bytes[bytes.len() - FOOTER_FIXED_BYTES..];
            assert_eq!(Footer::parse_tail(tail, length + bytes.len() as u64).unwrap().0, length);
            assert_eq!(Footer::decode(&bytes, f.chunk_id).unwrap(), f);
        }
    }

    #[test]
    fn any_flipped_footer_byte_is_detected() {
        let f = sample(BLOCK_SIZE_BYTES as u64 + 9);
        let bytes = f.encode();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            assert!(Footer::decode(&bad, f.chunk_id).is_err(), "flip at byte {i} went unnoticed");
        }
    }

    #[test]
    fn footer_for_another_chunk_is_refused() {
        let f = sample(10);
        let other = ChunkId { file_id: FileId([7; 16]), chunk_idx: 4 };
        assert!(matches!(Footer::decode(&f.encode(), other), Err(FooterError::WrongChunk { .. })));
    }
}
