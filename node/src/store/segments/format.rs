//! The segment store's on-disk format (`docs/STORE.md`): the segment header block, and the
//! records after it, each a 64-byte header (with its own crc32), the data, the block crc32s and
//! a seal, padded to 4 KiB; tombstones and pads are records too. Encoding and decoding only: no
//! file is touched here.

use dfs_proto::layout::{combine_block_crcs, n_blocks};
use dfs_proto::{ChunkId, FileId};
use dfs_runtime::aligned::{align_up, AlignedBuf, ALIGN};

/// Version of the on-disk format in `docs/STORE.md`, in every segment header.
const FORMAT_VERSION: u32 = 2;
const SEGMENT_MAGIC: [u8; 8] = *b"DFSSEG01";
const RECORD_MAGIC: [u8; 8] = *b"DFSREC02";
/// The segment header block; records start after it.
pub(super) const SEGMENT_HEADER_BYTES: u64 = ALIGN as u64;
pub(super) const RECORD_HEADER_BYTES: usize = 64;

/// What a record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// A chunk copy: `length` bytes of data.
    Chunk = 1,
    /// The chunk is deleted (or set aside by scrub); earlier records of it are dead.
    Tombstone = 2,
    /// Dead space of `length` bytes in all, header included: an abandoned write.
    Pad = 3,
}

/// A record's header, as stored in its first 64 bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct RecordHeader {
    pub(super) kind: Kind,
    pub(super) chunk_id: ChunkId,
    pub(super) length: u64,
    pub(super) crc32: u32,
    pub(super) created_unix_ms: u64,
    /// The record's place in the node's history: every record gets a higher one than all
    /// before it, and a compacted copy keeps its original's. Of a chunk's records, the one with
    /// the highest wins, wherever it lies.
    pub(super) lsn: u64,
}

impl RecordHeader {
    pub(super) fn encode(&self) -> [u8; RECORD_HEADER_BYTES] {
        let mut out = [0u8; RECORD_HEADER_BYTES];
        out[0..8].copy_from_slice(&RECORD_MAGIC);
        out[8] = self.kind as u8;
        out[12..28].copy_from_slice(&self.chunk_id.file_id.0);
        out[28..32].copy_from_slice(&self.chunk_id.chunk_idx.to_be_bytes());
        out[32..40].copy_from_slice(&self.length.to_be_bytes());
        out[40..44].copy_from_slice(&self.crc32.to_be_bytes());
        out[44..52].copy_from_slice(&self.created_unix_ms.to_be_bytes());
        out[52..60].copy_from_slice(&self.lsn.to_be_bytes());
        let seal = crc32fast::hash(&out[..60]);
        out[60..64].copy_from_slice(&seal.to_be_bytes());
        out
    }

    /// The header at the start of `bytes`, if it is one whose own crc32 holds.
    pub(super) fn decode(bytes: &[u8]) -> Option<RecordHeader> {
        let b = bytes.get(..RECORD_HEADER_BYTES)?;
        if b[0..8] != RECORD_MAGIC || crc32fast::hash(&b[..60]) != u32::from_be_bytes(b[60..64].try_into().ok()?) {
            return None;
        }
        let kind = match b[8] {
            1 => Kind::Chunk,
            2 => Kind::Tombstone,
            3 => Kind::Pad,
            _ => return None,
        };
        let header = RecordHeader {
            kind,
            chunk_id: ChunkId {
                file_id: FileId(b[12..28].try_into().ok()?),
                chunk_idx: u32::from_be_bytes(b[28..32].try_into().ok()?),
            },
            length: u64::from_be_bytes(b[32..40].try_into().ok()?),
            crc32: u32::from_be_bytes(b[40..44].try_into().ok()?),
            created_unix_ms: u64::from_be_bytes(b[44..52].try_into().ok()?),
            lsn: u64::from_be_bytes(b[52..60].try_into().ok()?),
        };
        // A pad's length is its whole span; it must be a whole number of blocks.
        if kind == Kind::Pad && (header.length == 0 || !header.length.is_multiple_of(ALIGN as u64)) {
            return None;
        }
        if kind == Kind::Tombstone && header.length != 0 {
            return None;
        }
        Some(header)
    }

    /// Bytes the whole record takes in its segment, padding included.
    pub(super) fn span(&self) -> u64 {
        match self.kind {
            Kind::Pad => self.length,
            _ => record_span(self.length),
        }
    }
}

/// Bytes a chunk or tombstone record of `length` data bytes takes in a segment.
pub(super) fn record_span(length: u64) -> u64 {
    align_up(RECORD_HEADER_BYTES as u64 + length + 4 * n_blocks(length) + 4)
}

/// The trailer after a record's data: its block crc32s, then the seal over header and crc32s.
pub(super) fn encode_trailer(header: &[u8; RECORD_HEADER_BYTES], block_crcs: &[u32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 * block_crcs.len() + 4);
    for c in block_crcs {
        out.extend_from_slice(&c.to_be_bytes());
    }
    let mut seal = crc32fast::Hasher::new();
    seal.update(header);
    seal.update(&out);
    out.extend_from_slice(&seal.finalize().to_be_bytes());
    out
}

/// The block crc32s of a trailer, if its seal holds for `header`.
pub(super) fn decode_trailer(header: &RecordHeader, trailer: &[u8]) -> Option<Vec<u32>> {
    let n = n_blocks(header.length) as usize;
    if trailer.len() != 4 * n + 4 {
        return None;
    }
    let mut seal = crc32fast::Hasher::new();
    seal.update(&header.encode());
    seal.update(&trailer[..4 * n]);
    if seal.finalize() != u32::from_be_bytes(trailer[4 * n..].try_into().ok()?) {
        return None;
    }
    let crcs: Vec<u32> =
        trailer[..4 * n].chunks_exact(4).map(|c| u32::from_be_bytes(c.try_into().expect("4 bytes"))).collect();
    (combine_block_crcs(&crcs, header.length) == header.crc32).then_some(crcs)
}

pub(super) fn segment_name(seq: u64) -> String {
    format!("{seq:016x}.seg")
}

pub(super) fn encode_segment_header(seq: u64, size: u64) -> AlignedBuf {
    let mut b = AlignedBuf::zeroed(ALIGN);
    let mut h = Vec::with_capacity(40);
    h.extend_from_slice(&SEGMENT_MAGIC);
    h.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
    h.extend_from_slice(&(ALIGN as u32).to_be_bytes());
    h.extend_from_slice(&seq.to_be_bytes());
    h.extend_from_slice(&size.to_be_bytes());
    let seal = crc32fast::hash(&h);
    h.extend_from_slice(&seal.to_be_bytes());
    b.extend_from_slice(&h);
    b.pad_to_alignment();
    b
}

/// Why a segment's header block is not one this build can read.
#[derive(Debug, thiserror::Error)]
pub(super) enum BadSegmentHeader {
    #[error("not a dfs segment (bad magic)")]
    Magic,
    #[error("segment header fails its crc32")]
    Crc,
    #[error("segment format version {0}; this build reads version {FORMAT_VERSION}")]
    Version(u32),
    #[error("segment alignment {0}, expected {ALIGN}")]
    Alignment(u32),
}

/// (seq, size) from a segment header block, or why it is not one this build can read.
pub(super) fn decode_segment_header(b: &[u8]) -> Result<(u64, u64), BadSegmentHeader> {
    if b.len() < 36 || b[0..8] != SEGMENT_MAGIC {
        return Err(BadSegmentHeader::Magic);
    }
    if crc32fast::hash(&b[..32]) != u32::from_be_bytes(b[32..36].try_into().expect("4 bytes")) {
        return Err(BadSegmentHeader::Crc);
    }
    let version = u32::from_be_bytes(b[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(BadSegmentHeader::Version(version));
    }
    let align = u32::from_be_bytes(b[12..16].try_into().expect("4 bytes"));
    if align as usize != ALIGN {
        return Err(BadSegmentHeader::Alignment(align));
    }
    Ok((
        u64::from_be_bytes(b[16..24].try_into().expect("8 bytes")),
        u64::from_be_bytes(b[24..32].try_into().expect("8 bytes")),
    ))
}

/// A pad header over the whole of a reservation of `span` bytes whose record would have been
/// numbered `lsn`, ready to write.
pub(super) fn pad(span: u64, lsn: u64) -> AlignedBuf {
    let header = RecordHeader {
        kind: Kind::Pad,
        chunk_id: ChunkId { file_id: FileId([0; 16]), chunk_idx: 0 },
        length: span,
        crc32: 0,
        created_unix_ms: dfs_runtime::unix_ms(),
        lsn,
    };
    let mut buf = AlignedBuf::zeroed(ALIGN);
    buf.extend_from_slice(&header.encode());
    buf.pad_to_alignment();
    buf
}

/// A tombstone for `id` ready to write: it deletes the chunk's record numbered `lsn` and every
/// earlier one.
pub(super) fn tombstone(id: ChunkId, lsn: u64) -> AlignedBuf {
    let header = RecordHeader {
        kind: Kind::Tombstone,
        chunk_id: id,
        length: 0,
        crc32: 0,
        created_unix_ms: dfs_runtime::unix_ms(),
        lsn,
    };
    let mut buf = AlignedBuf::zeroed(ALIGN);
    let bytes = header.encode();
    buf.extend_from_slice(&bytes);
    buf.extend_from_slice(&encode_trailer(&bytes, &[]));
    buf.pad_to_alignment();
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::segments::tests::id;
    use dfs_proto::limits::BLOCK_SIZE_BYTES;

    #[test]
    fn headers_round_trip_and_refuse_damage() {
        let h = RecordHeader {
            kind: Kind::Chunk,
            chunk_id: id(7, 3),
            length: 5000,
            crc32: 9,
            created_unix_ms: 11,
            lsn: 12,
        };
        let b = h.encode();
        assert_eq!(RecordHeader::decode(&b), Some(h.clone()));
        for i in 0..64 {
            let mut bad = b;
            bad[i] ^= 1;
            assert_eq!(RecordHeader::decode(&bad), None, "a flipped bit at byte {i} went unnoticed");
        }
        assert_eq!(record_span(5000), 8192);
        assert_eq!(record_span(0), 4096);
        assert_eq!(record_span(4096 - 64 - 8), 4096);
        assert_eq!(record_span(4096 - 64 - 7), 8192);
    }

    #[test]
    fn trailers_seal_the_header_and_the_block_crcs() {
        let data = vec![5u8; 3 * BLOCK_SIZE_BYTES as usize / 2];
        let crcs: Vec<u32> = data.chunks(BLOCK_SIZE_BYTES as usize).map(crc32fast::hash).collect();
        let h = RecordHeader {
            kind: Kind::Chunk,
            chunk_id: id(1, 0),
            length: data.len() as u64,
            crc32: crc32fast::hash(&data),
            created_unix_ms: 1,
            lsn: 1,
        };
        let t = encode_trailer(&h.encode(), &crcs);
        assert_eq!(decode_trailer(&h, &t), Some(crcs.clone()));
        let mut bad = t.clone();
        bad[0] ^= 1;
        assert_eq!(decode_trailer(&h, &bad), None);
        let other = RecordHeader { chunk_id: id(2, 0), ..h };
        assert_eq!(decode_trailer(&other, &t), None, "a trailer belongs to its own header");
    }
}
