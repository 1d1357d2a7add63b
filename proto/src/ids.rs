//! File and chunk identities. A file ID is 128 bits from the OS random source and is the only
//! handle a client has on a file; a chunk ID is derived from it and the chunk index, and is the
//! only thing a storage node builds a path from. An origin is an opaque 128-bit tag a client may
//! attach to an upload (a tree upload's manifest identity) and find again in listings. A node ID
//! names a storage node independently of its address.

use std::fmt;
use std::str::FromStr;

/// Opaque, unguessable file identity: 16 random bytes, shown as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileId(pub [u8; 16]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseIdError {
    #[error("malformed file ID {0:?}: expected 32 hex digits")]
    File(String),
    #[error("malformed chunk ID {0:?}: expected 32 hex digits, '.', 8 hex digits")]
    Chunk(String),
    #[error("malformed origin {0:?}: expected 32 hex digits")]
    Origin(String),
    #[error("malformed node ID {0:?}: expected 32 hex digits")]
    Node(String),
}

/// 16 bytes from 32 lowercase hex digits. Uppercase is refused so that each value has exactly
/// one spelling.
fn hex16(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut bytes = [0u8; 16];
    hex::decode_to_slice(s, &mut bytes).ok()?;
    Some(bytes)
}

/// The random constructor, the 32-hex-digit spelling (Display, FromStr, Serialize) and Debug that every
/// 16-byte identity shares.
macro_rules! id16 {
    ($name:ident, $err:ident) => {
        impl $name {
            /// A fresh value from the operating system's random source.
            pub fn random() -> std::io::Result<$name> {
                let mut bytes = [0u8; 16];
                getrandom::getrandom(&mut bytes).map_err(std::io::Error::other)?;
                Ok($name(bytes))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self)
            }
        }

        /// As its 32 hex digits, as everywhere else it is shown.
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;
            fn from_str(s: &str) -> Result<$name, ParseIdError> {
                hex16(s).map($name).ok_or_else(|| ParseIdError::$err(s.chars().take(80).collect()))
            }
        }
    };
}

id16!(FileId, File);

/// Who stored a file, as the uploading client chose to say: 16 opaque bytes, shown as 32
/// lowercase hex digits. The engine stores it with the file and returns it in STAT and LIST; it
/// never interprets it. `put -r` sends its manifest's identity, so that a rerun recognises the
/// files its own earlier runs stored.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Origin(pub [u8; 16]);

id16!(Origin, Origin);

/// A storage node's identity: 16 random bytes the node draws when its data directory is first
/// used, kept there, and proves in every handshake. The metadata names where a chunk's copies
/// live by node ID, so a node that comes back on another address keeps its files.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub [u8; 16]);

id16!(NodeId, Node);

/// One chunk of one file.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct ChunkId {
    pub file_id: FileId,
    pub chunk_idx: u32,
}

impl ChunkId {
    /// The chunk's file name on a node: built from the ID alone, `<file id hex>.<index hex8>`.
    pub fn file_name(&self) -> String {
        format!("{}.{:08x}", self.file_id, self.chunk_idx)
    }

    /// The fan-out directory a node keeps this chunk in: the file ID's first byte in hex.
    pub fn fanout_dir(&self) -> String {
        format!("{:02x}", self.file_id.0[0])
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file_name())
    }
}

impl FromStr for ChunkId {
    type Err = ParseIdError;
    fn from_str(s: &str) -> Result<ChunkId, ParseIdError> {
        let bad = || ParseIdError::Chunk(s.chars().take(80).collect());
        let (file, idx) = s.split_once('.').ok_or_else(bad)?;
        let file_id: FileId = file.parse().map_err(|_| bad())?;
        if idx.len() != 8 || !idx.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad());
        }
        let chunk_idx = u32::from_str_radix(idx, 16).map_err(|_| bad())?;
        Ok(ChunkId { file_id, chunk_idx })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_id_round_trips_and_rejects_other_spellings() {
        let id = FileId::random().unwrap();
        assert_eq!(id.to_string().parse::<FileId>().unwrap(), id);
        for bad in ["", "abc", "../../etc/passwd", &id.to_string().to_uppercase(), &format!("{id}0")] {
            assert!(bad.parse::<FileId>().is_err(), "{bad:?} must not parse");
        }
    }

    #[test]
    fn chunk_id_round_trips() {
        let c = ChunkId { file_id: FileId([0xab; 16]), chunk_idx: 7 };
        assert_eq!(c.file_name(), "abababababababababababababababab.00000007");
        assert_eq!(c.file_name().parse::<ChunkId>().unwrap(), c);
        assert_eq!(c.fanout_dir(), "ab");
        assert!("abababababababababababababababab.0000007".parse::<ChunkId>().is_err());
        assert!("abababababababababababababababab/00000007".parse::<ChunkId>().is_err());
    }

    #[test]
    fn random_ids_differ() {
        assert_ne!(FileId::random().unwrap(), FileId::random().unwrap());
        assert_ne!(Origin::random().unwrap(), Origin::random().unwrap());
        assert_ne!(NodeId::random().unwrap(), NodeId::random().unwrap());
    }

    #[test]
    fn node_id_round_trips_and_names_itself_in_errors() {
        let n = NodeId([0x5a; 16]);
        assert_eq!(n.to_string().parse::<NodeId>().unwrap(), n);
        assert_eq!(format!("{n:?}"), format!("NodeId({n})"));
        assert!("5a".parse::<NodeId>().unwrap_err().to_string().contains("node ID"));
    }

    #[test]
    fn origin_round_trips_and_rejects_other_spellings() {
        let o = Origin::random().unwrap();
        assert_eq!(o.to_string().parse::<Origin>().unwrap(), o);
        for bad in ["", "xyz", &o.to_string().to_uppercase(), &format!("{o}0"), &o.to_string()[1..]] {
            assert!(bad.parse::<Origin>().is_err(), "{bad:?} must not parse");
        }
    }
}
