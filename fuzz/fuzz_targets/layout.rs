//! The chunk layout both ends compute: for any `u64 size | u8 chunking (low bit: 0 equal,
//! 1 dynamic) | u64 cap` (big-endian, zero-padded), `chunk_spans` is a refusal for a reason
//! that holds, or 4·k chunks in order that tile the file exactly, none over the cap.
#![no_main]

use dfs_proto::layout::{chunk_spans, LayoutError};
use dfs_proto::limits::{MAX_CHUNKS_PER_FILE, MAX_FILE_SIZE_BYTES};
use dfs_proto::Chunking;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let mut input = [0u8; 17];
    let n = bytes.len().min(input.len());
    input[..n].copy_from_slice(&bytes[..n]);
    let size = u64::from_be_bytes(input[..8].try_into().expect("8 bytes"));
    let chunking = if input[8] & 1 == 0 { Chunking::Equal } else { Chunking::Dynamic };
    let cap = u64::from_be_bytes(input[9..].try_into().expect("8 bytes"));

    let spans = match dfs_fuzz::bounded("chunk_spans", || chunk_spans(size, chunking, cap)) {
        Ok(spans) => spans,
        Err(LayoutError::FileTooLarge { .. }) => return assert!(size > MAX_FILE_SIZE_BYTES),
        Err(LayoutError::ZeroCap) => return assert!(chunking == Chunking::Dynamic && cap == 0),
        Err(LayoutError::TooManyChunks { n_chunks, .. }) => {
            return assert!(chunking == Chunking::Dynamic && n_chunks > MAX_CHUNKS_PER_FILE as u64)
        }
    };
    assert!(size <= MAX_FILE_SIZE_BYTES, "a file of {size} bytes was laid out");
    assert!(!spans.is_empty() && spans.len() % 4 == 0, "{} chunks: not 4·k", spans.len());
    if chunking == Chunking::Equal {
        assert_eq!(spans.len(), 4, "equal chunking gave {} chunks", spans.len());
    }
    let mut next_offset = 0u64;
    for (i, span) in spans.iter().enumerate() {
        assert_eq!(span.chunk_idx as usize, i, "chunks out of order");
        assert_eq!(span.offset, next_offset, "chunk {i} does not start where the one before ended");
        assert!(span.length <= spans[0].length, "chunk {i} is longer than the first");
        if chunking == Chunking::Dynamic {
            assert!(span.length <= cap, "chunk {i} of {} bytes is over the cap of {cap}", span.length);
        }
        next_offset += span.length;
    }
    assert_eq!(next_offset, size, "the chunks do not cover the file");
});
