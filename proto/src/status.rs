//! Typed status codes carried by Error frames.

use std::fmt;

/// Why a request failed. The numeric values are part of the wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// The file or chunk does not exist.
    NotFound,
    /// Stored data failed its checksum.
    Corrupt,
    /// A node or resource needed for the request is unreachable or down.
    Unavailable,
    /// The request is malformed or violates a limit.
    BadRequest,
    /// The data received does not match the checksum announced for it.
    ChecksumMismatch,
    /// A storage node has no space left.
    NoSpace,
    /// The peer speaks another protocol version.
    VersionMismatch,
    /// Authentication failed (reserved for the authentication issue).
    Unauthorized,
    /// The chunk already exists on the node.
    AlreadyExists,
    /// An unexpected failure inside the server; its message says more.
    Internal,
}

impl Status {
    pub const ALL: [Status; 10] = [
        Status::NotFound,
        Status::Corrupt,
        Status::Unavailable,
        Status::BadRequest,
        Status::ChecksumMismatch,
        Status::NoSpace,
        Status::VersionMismatch,
        Status::Unauthorized,
        Status::AlreadyExists,
        Status::Internal,
    ];

    pub fn code(self) -> u16 {
        match self {
            Status::NotFound => 1,
            Status::Corrupt => 2,
            Status::Unavailable => 3,
            Status::BadRequest => 4,
            Status::ChecksumMismatch => 5,
            Status::NoSpace => 6,
            Status::VersionMismatch => 7,
            Status::Unauthorized => 8,
            Status::AlreadyExists => 9,
            Status::Internal => 10,
        }
    }

    pub fn from_code(code: u16) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.code() == code)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::NotFound => "not found",
            Status::Corrupt => "corrupt",
            Status::Unavailable => "unavailable",
            Status::BadRequest => "bad request",
            Status::ChecksumMismatch => "checksum mismatch",
            Status::NoSpace => "no space",
            Status::VersionMismatch => "version mismatch",
            Status::Unauthorized => "unauthorized",
            Status::AlreadyExists => "already exists",
            Status::Internal => "internal error",
        })
    }
}
