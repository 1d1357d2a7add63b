//! Errors of reading and writing frames, shared by the blocking and io_uring helpers.

use crate::codec::DecodeError;
use std::io;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed by peer")]
    Closed,
    #[error("connection closed by peer in the middle of a frame")]
    ClosedMidFrame,
    #[error("malformed frame: {0}")]
    Decode(#[from] DecodeError),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("timed out after {0:?}")]
    TimedOut(std::time::Duration),
}
