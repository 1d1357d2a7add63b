//! How a file is cut into chunks and a chunk into checksum blocks. Both ends compute the layout
//! from the same inputs, so the chunk table never has to be trusted from the wire.

use crate::limits::{BLOCK_SIZE_BYTES, MAX_CHUNKS_PER_FILE, MAX_FILE_SIZE_BYTES};
use std::fmt;
use std::str::FromStr;

/// The original design's four-way split.
pub const N_QUARTERS: u32 = 4;

/// How a file is cut into chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Chunking {
    /// Exactly 4 chunks of ceil(size/4) bytes; the last ones may be shorter or empty.
    Equal,
    /// 4·k equal chunks, k the smallest that keeps every chunk at or under the engine's cap.
    Dynamic,
}

impl Chunking {
    pub fn code(self) -> u8 {
        match self {
            Chunking::Equal => 1,
            Chunking::Dynamic => 2,
        }
    }
    pub fn from_code(code: u8) -> Option<Chunking> {
        match code {
            1 => Some(Chunking::Equal),
            2 => Some(Chunking::Dynamic),
            _ => None,
        }
    }
}

impl fmt::Display for Chunking {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Chunking::Equal => "equal",
            Chunking::Dynamic => "dynamic",
        })
    }
}

/// A chunking name other than `equal` or `dynamic`; holds the name given.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown chunking {0:?}: expected equal or dynamic")]
pub struct UnknownChunking(pub String);

impl FromStr for Chunking {
    type Err = UnknownChunking;
    fn from_str(s: &str) -> Result<Chunking, UnknownChunking> {
        match s {
            "equal" => Ok(Chunking::Equal),
            "dynamic" => Ok(Chunking::Dynamic),
            _ => Err(UnknownChunking(s.to_string())),
        }
    }
}

/// Where one chunk lies in its file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkSpan {
    pub chunk_idx: u32,
    pub offset: u64,
    pub length: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error("file size {size} bytes exceeds the limit of {max} bytes")]
    FileTooLarge { size: u64, max: u64 },
    #[error("dynamic chunk size cap must be at least 1 byte")]
    ZeroCap,
    #[error("{n_chunks} chunks exceed the limit of {max} chunks per file: raise the chunk size cap")]
    TooManyChunks { n_chunks: u64, max: u32 },
}

/// The chunk spans of a file of `size` bytes. `dynamic_cap_bytes` is the engine's chunk size cap
/// and is only used by [`Chunking::Dynamic`].
pub fn chunk_spans(size: u64, chunking: Chunking, dynamic_cap_bytes: u64) -> Result<Vec<ChunkSpan>, LayoutError> {
    if size > MAX_FILE_SIZE_BYTES {
        return Err(LayoutError::FileTooLarge { size, max: MAX_FILE_SIZE_BYTES });
    }
    let n_chunks: u64 = match chunking {
        Chunking::Equal => N_QUARTERS as u64,
        Chunking::Dynamic => {
            if dynamic_cap_bytes == 0 {
                return Err(LayoutError::ZeroCap);
            }
            let per_round = dynamic_cap_bytes.saturating_mul(N_QUARTERS as u64);
            N_QUARTERS as u64 * size.div_ceil(per_round).max(1)
        }
    };
    if n_chunks > MAX_CHUNKS_PER_FILE as u64 {
        return Err(LayoutError::TooManyChunks { n_chunks, max: MAX_CHUNKS_PER_FILE });
    }
    let part = size.div_ceil(n_chunks);
    let spans: Vec<ChunkSpan> = (0..n_chunks)
        .map(|i| {
            let offset = (i * part).min(size);
            ChunkSpan { chunk_idx: i as u32, offset, length: part.min(size - offset) }
        })
        .collect();
    debug_assert_eq!(spans.iter().map(|s| s.length).sum::<u64>(), size);
    Ok(spans)
}

/// Number of checksum blocks in a chunk of `length` bytes (an empty chunk has none).
pub fn n_blocks(length: u64) -> u64 {
    length.div_ceil(BLOCK_SIZE_BYTES as u64)
}

/// Length of block `block_idx` of a chunk of `length` bytes.
pub fn block_len(length: u64, block_idx: u64) -> u64 {
    let start = block_idx * BLOCK_SIZE_BYTES as u64;
    assert!(start < length, "block {block_idx} lies outside a chunk of {length} bytes");
    (length - start).min(BLOCK_SIZE_BYTES as u64)
}

/// The crc32 of every block of a chunk, in order.
pub type BlockCrcs = Vec<u32>;

/// crc32 of a whole byte slice.
pub fn crc32(data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(data);
    h.finalize()
}

/// A block whose bytes do not match the crc32 recorded for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("block {block_idx} has crc32 {actual:08x}, {expected:08x} was recorded")]
pub struct BlockMismatch {
    pub block_idx: u64,
    pub actual: u32,
    pub expected: u32,
}

/// Checks block `block_idx`'s bytes against the crc32 recorded for it. The one block check:
/// a node's FETCH, scrub and compaction, and the engine's reads all go through it.
pub fn check_block(block_idx: u64, bytes: &[u8], expected: u32) -> Result<(), BlockMismatch> {
    let actual = crc32(bytes);
    if actual == expected {
        Ok(())
    } else {
        Err(BlockMismatch { block_idx, actual, expected })
    }
}

/// The chunk crc32 implied by its block crcs, without touching the data.
pub fn combine_block_crcs(block_crcs: &[u32], length: u64) -> u32 {
    assert_eq!(block_crcs.len() as u64, n_blocks(length), "block count does not fit the length");
    let mut whole = crc32fast::Hasher::new();
    for (block_idx, &crc) in block_crcs.iter().enumerate() {
        let part = crc32fast::Hasher::new_with_initial_len(crc, block_len(length, block_idx as u64));
        whole.combine(&part);
    }
    whole.finalize()
}

/// Computes block crcs and the chunk crc of a stream of bytes fed in pieces of any size.
#[derive(Default)]
pub struct BlockHasher {
    block: crc32fast::Hasher,
    block_fill: u32,
    whole: crc32fast::Hasher,
    block_crcs: BlockCrcs,
    total_bytes: u64,
}

impl BlockHasher {
    pub fn new() -> BlockHasher {
        BlockHasher::default()
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.whole.update(data);
        self.total_bytes += data.len() as u64;
        while !data.is_empty() {
            let room = (BLOCK_SIZE_BYTES - self.block_fill) as usize;
            let take = room.min(data.len());
            self.block.update(&data[..take]);
            self.block_fill += take as u32;
            data = &data[take..];
            if self.block_fill == BLOCK_SIZE_BYTES {
                let done = std::mem::take(&mut self.block);
                self.block_crcs.push(done.finalize());
                self.block_fill = 0;
            }
        }
    }

    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// The chunk crc32 and the crc32 of every block.
    pub fn finish(mut self) -> (u32, BlockCrcs) {
        if self.block_fill > 0 {
            self.block_crcs.push(self.block.finalize());
        }
        (self.whole.finalize(), self.block_crcs)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_block_check_passes_the_recorded_crc_and_names_a_mismatch() {
        let bytes = b"four quarters";
        assert_eq!(check_block(3, bytes, crc32(bytes)), Ok(()));
        let e = check_block(3, bytes, crc32(bytes) ^ 1).unwrap_err();
        assert_eq!((e.block_idx, e.actual, e.expected), (3, crc32(bytes), crc32(bytes) ^ 1));
        assert!(e.to_string().starts_with("block 3 has crc32 "), "{e}");
    }

    use super::*;
    use proptest::prelude::*;

    #[test]
    fn chunking_names_round_trip_and_an_unknown_one_is_named_in_the_error() {
        for chunking in [Chunking::Equal, Chunking::Dynamic] {
            assert_eq!(chunking.to_string().parse::<Chunking>(), Ok(chunking));
        }
        let e = "Equal".parse::<Chunking>().unwrap_err();
        assert_eq!(e, UnknownChunking("Equal".into()));
        assert_eq!(e.to_string(), "unknown chunking \"Equal\": expected equal or dynamic");
    }

    #[test]
    fn equal_split_of_small_sizes() {
        let lens =
            |size| -> Vec<u64> { chunk_spans(size, Chunking::Equal, 1).unwrap().iter().map(|s| s.length).collect() };
        assert_eq!(lens(0), [0, 0, 0, 0]);
        assert_eq!(lens(1), [1, 0, 0, 0]);
        assert_eq!(lens(3), [1, 1, 1, 0]);
        assert_eq!(lens(5), [2, 2, 1, 0]);
        assert_eq!(lens(8), [2, 2, 2, 2]);
        assert_eq!(lens(4097), [1025, 1025, 1025, 1022]);
    }

    #[test]
    fn dynamic_split_caps_chunks_in_multiples_of_four() {
        let spans = chunk_spans(1000, Chunking::Dynamic, 100).unwrap();
        assert_eq!(spans.len(), 12);
        assert!(spans.iter().all(|s| s.length <= 100));
        assert_eq!(chunk_spans(0, Chunking::Dynamic, 100).unwrap().len(), 4);
        assert_eq!(chunk_spans(400, Chunking::Dynamic, 100).unwrap().len(), 4);
        assert_eq!(chunk_spans(401, Chunking::Dynamic, 100).unwrap().len(), 8);
        assert_eq!(
            chunk_spans(1 << 30, Chunking::Dynamic, 1),
            Err(LayoutError::TooManyChunks { n_chunks: 1 << 30, max: MAX_CHUNKS_PER_FILE })
        );
    }

    proptest! {
        #[test]
        fn spans_tile_the_file(size in 0u64..1 << 34, cap in 1u64 << 16..1 << 30, dynamic: bool) {
            let chunking = if dynamic { Chunking::Dynamic } else { Chunking::Equal };
            let spans = match chunk_spans(size, chunking, cap) {
                // A large file under a small cap needs more chunks than a file may have.
                Err(LayoutError::TooManyChunks { n_chunks, max }) => {
                    prop_assert!(dynamic && n_chunks > u64::from(max));
                    return Ok(());
                }
                other => other.unwrap(),
            };
            prop_assert_eq!(spans.len() % 4, 0);
            let mut next = 0;
            for (i, s) in spans.iter().enumerate() {
                prop_assert_eq!(s.chunk_idx as usize, i);
                prop_assert_eq!(s.offset, next);
                next += s.length;
                if dynamic { prop_assert!(s.length <= cap); }
            }
            prop_assert_eq!(next, size);
        }
    }

    proptest! {
        // Each case hashes up to 3 MiB in a debug build; 64 cases keep this test near 2 s.
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn block_hasher_agrees_with_one_shot_crcs(
            len in 0usize..3 * BLOCK_SIZE_BYTES as usize + 17,
            piece in 1usize..300_000,
        ) {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let mut h = BlockHasher::new();
            for p in data.chunks(piece) { h.update(p); }
            let (whole, blocks) = h.finish();
            prop_assert_eq!(whole, crc32(&data));
            let expect: Vec<u32> = data.chunks(BLOCK_SIZE_BYTES as usize).map(crc32).collect();
            prop_assert_eq!(&blocks, &expect);
            prop_assert_eq!(combine_block_crcs(&blocks, len as u64), whole);
        }
    }
}
