//! The dfs wire protocol (version [`VERSION`]): the one definition of every frame that crosses a socket,
//! the limits that bound them, the typed status codes, file and chunk identities, and the chunk
//! and block layout both ends must agree on. See `docs/PROTOCOL.md` for the byte-level format.
//!
//! This crate does no I/O of its own beyond `io_std`, framing over blocking sockets (the
//! client); the servers' connections, over their I/O runtime, are `dfs_runtime::conn`.

pub mod auth;
pub mod codec;
pub mod env;
pub mod error;
pub mod ids;
pub mod io_std;
pub mod layout;
pub mod limits;
pub mod listening;
pub mod msg;
pub mod status;
pub mod units;

pub use codec::DecodeError;
pub use error::FrameError;
pub use ids::{ChunkId, FileId, NodeId, Origin, ParseIdError};
pub use layout::{BlockCrcs, ChunkSpan, Chunking};
pub use msg::{
    BucketSummary, ChunkInfo, FileInfo, FileNode, FileSummary, FrameHeader, Hello, HelloOk, KeySummary, Kind, Link,
    Msg, NodeStatus, RepairQueueStatus, RepairSummary, Role, ScrubReport, StoreReport,
};
pub use status::Status;

/// Protocol magic that opens every connection's Hello frame.
pub const MAGIC: [u8; 4] = *b"DFS1";
/// The protocol version this build speaks.
pub const VERSION: u16 = 7;
