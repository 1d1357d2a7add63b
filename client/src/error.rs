//! The errors the client library returns. Each variant names one way a request can fail, so a
//! caller (the CLI, the benchmark, a test) can tell a refusal by the engine from a broken
//! connection, a local file problem or downloaded data that failed verification. Messages leave
//! the underlying cause to `source()`, so printing the chain (`{:#}` with anyhow) reads as one
//! sentence without repeating itself.

use dfs_proto::layout::LayoutError;
use dfs_proto::{FrameError, Status};
use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The engine's address did not resolve or no connection could be opened to it.
    #[error("cannot connect to the engine at {addr}")]
    Connect {
        addr: String,
        #[source]
        source: io::Error,
    },
    /// The engine answered with an Error frame; its message is the real reason.
    #[error("{status}: {message}")]
    Remote { status: Status, message: String },
    /// The engine sent something the protocol does not allow at this point.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The connection failed (closed, timed out, malformed frame) while doing `doing`.
    #[error("connection to the engine failed while {doing}")]
    Connection {
        doing: &'static str,
        #[source]
        source: FrameError,
    },
    /// A local file could not be opened, read, written, synced or renamed.
    #[error("cannot {action} {}", path.display())]
    File {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The caller's writer refused downloaded data (for example a closed stdout pipe).
    #[error("cannot write the downloaded data")]
    Output(#[source] io::Error),
    /// Downloaded data does not match the file's chunk table.
    #[error(transparent)]
    Integrity(#[from] IntegrityError),
    /// The file cannot be cut into chunks (too large, or too many chunks for the cap).
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// The request is not one the protocol can carry, for example an over-long name.
    #[error("{0}")]
    Invalid(String),
    /// An earlier request failed in a way that leaves the connection in an unknown state.
    #[error("the connection to the engine is unusable after an earlier failure: connect again")]
    Unusable,
}

/// Why downloaded data was rejected. Every variant that concerns a chunk names its index.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IntegrityError {
    #[error("chunk {chunk_idx} is corrupt: received data has crc32 {actual_crc32:08x}, the file's chunk table says {expected_crc32:08x}")]
    ChunkMismatch { chunk_idx: u32, expected_crc32: u32, actual_crc32: u32 },
    #[error("download ended early in chunk {chunk_idx}: received {received_bytes} of {size_bytes} bytes")]
    ShortStream { chunk_idx: u32, received_bytes: u64, size_bytes: u64 },
    #[error("engine sent data past the end of the file: {received_bytes} bytes received, {n_bytes} more offered, the file has {size_bytes}")]
    Overrun { received_bytes: u64, n_bytes: u64, size_bytes: u64 },
    #[error("the {offset} bytes written before the download moved to another engine are not the file's: the output is not the file")]
    ResumeMismatch { offset: u64 },
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;
