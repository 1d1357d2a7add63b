//! Named bounds on everything a peer can make us allocate or wait for. A decoder checks a length
//! against its limit before it allocates anything for it.

/// Size of a checksum block inside a chunk: every block has its own crc32, so any byte range can
/// be verified before it is sent and no chunk has to be buffered whole to be checked.
pub const BLOCK_SIZE_BYTES: u32 = 1 << 20;
/// Largest file the protocol accepts (1 TiB).
pub const MAX_FILE_SIZE_BYTES: u64 = 1 << 40;
/// Largest number of chunks one file may have.
pub const MAX_CHUNKS_PER_FILE: u32 = 1 << 16;
/// Largest number of blocks in one chunk (a 1 TiB file split in equal quarters fits).
pub const MAX_BLOCKS_PER_CHUNK: u32 = (MAX_FILE_SIZE_BYTES / BLOCK_SIZE_BYTES as u64) as u32;
/// Largest file name, in UTF-8 bytes.
pub const MAX_NAME_BYTES: u32 = 4096;
/// Longest key of an S3 bucket, in UTF-8 bytes (S3's own limit).
pub const MAX_KEY_BYTES: u32 = 1024;
/// Longest ETag carried in a key listing (an MD5 in hex, `-` and a part count fit).
pub const MAX_ETAG_BYTES: u32 = 64;
/// Largest human-readable error message, in UTF-8 bytes.
pub const MAX_MESSAGE_BYTES: u32 = 4096;
/// Largest node address string (host:port), in bytes.
pub const MAX_ADDR_BYTES: u32 = 256;
/// Largest number of distinct nodes one file's placement may name.
pub const MAX_NODES_PER_FILE: u32 = 1024;
/// Largest number of copies of one chunk.
pub const MAX_REPLICAS: u32 = 8;
/// Largest authentication blob in a Hello frame.
pub const MAX_AUTH_BYTES: u32 = 1024;
/// Largest number of entries in one LIST answer page.
pub const MAX_LIST_ENTRIES: u32 = 1000;
/// Largest number of lines in a repair, scrub or gc report (the counts are exact; the lines
/// show the first problems).
pub const MAX_REPORT_LINES: u32 = 256;
/// Largest report line, in UTF-8 bytes.
pub const MAX_REPORT_LINE_BYTES: u32 = 512;
/// Largest body of a control (non-data) frame: a chunk's block crcs at the largest size fit.
pub const MAX_CONTROL_FRAME_BYTES: u32 = 4 * MAX_BLOCKS_PER_CHUNK + 64 * 1024;
/// Largest body of a data frame: one block.
pub const MAX_DATA_FRAME_BYTES: u32 = BLOCK_SIZE_BYTES;
/// Size of a frame header: u32 body length, u8 kind.
pub const FRAME_HEADER_BYTES: usize = 5;

const _: () = assert!(MAX_FILE_SIZE_BYTES.is_multiple_of(BLOCK_SIZE_BYTES as u64));
const _: () = assert!(MAX_CONTROL_FRAME_BYTES >= 4 * MAX_CHUNKS_PER_FILE + 64 * 1024);
const _: () = assert!(MAX_LIST_ENTRIES as u64 * (MAX_NAME_BYTES as u64 + 64) <= MAX_CONTROL_FRAME_BYTES as u64);
const _: () = assert!(
    MAX_LIST_ENTRIES as u64 * (MAX_KEY_BYTES as u64 + MAX_ETAG_BYTES as u64 + 64) <= MAX_CONTROL_FRAME_BYTES as u64
);
const _: () =
    assert!(MAX_REPORT_LINES as u64 * (MAX_REPORT_LINE_BYTES as u64 + 4) + 64 <= MAX_CONTROL_FRAME_BYTES as u64);
const _: () = assert!(
    MAX_NODES_PER_FILE as u64 * (MAX_ADDR_BYTES as u64 + MAX_REPORT_LINE_BYTES as u64 + 64)
        <= MAX_CONTROL_FRAME_BYTES as u64
);
