//! Errors of reading and writing frames, shared by the blocking and io_uring helpers.

use crate::codec::DecodeError;
use std::io;

/// An error and its sources as one line, `a: b: c`: what a typed error prints on its way out
/// of `main` or into a report, its causes included.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

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
