//! The chunk layout both ends compute from a file size: for any size, chunking and cap, it is
//! an error or chunks in order that tile the file exactly.
#![no_main]

use dfs_proto::layout::chunk_spans;
use dfs_proto::Chunking;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u64, bool, u64)| {
    let (size, dynamic, cap) = input;
    // Keep most sizes small enough that the spans fit in memory quickly, but try large ones too.
    let size = if size % 4 == 0 { size } else { size % (1 << 32) };
    let chunking = if dynamic { Chunking::Dynamic } else { Chunking::Equal };
    let Ok(spans) = chunk_spans(size, chunking, cap) else { return };
    let mut next_offset = 0u64;
    for (i, span) in spans.iter().enumerate() {
        assert_eq!(span.chunk_idx as usize, i, "chunks out of order");
        assert_eq!(span.offset, next_offset, "chunk {i} does not start where the previous ended");
        if chunking == Chunking::Dynamic {
            assert!(span.length <= cap, "chunk {i} is over the cap");
        }
        next_offset += span.length;
    }
    assert_eq!(next_offset, size, "the chunks do not cover the file");
    assert!(spans.len() % 4 == 0 && !spans.is_empty(), "{} chunks: not a multiple of four", spans.len());
});
