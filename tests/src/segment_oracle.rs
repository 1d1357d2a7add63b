//! A reader of a segment node's files (`DATA/segments/*.seg`), written from docs/STORE.md
//! (format version 2) and nothing else, so the tests can find, damage and count what a segment
//! node holds on disk without asking the node. It is a test oracle: it follows the spec, not the
//! node's code, and panics on anything the spec does not allow, naming the file and offset.

use dfs_proto::{ChunkId, FileId};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Every offset and length on disk is a multiple of this.
pub const ALIGN: u64 = 4096;
/// Bytes of a record header; the data follows it.
pub const HEADER_BYTES: u64 = 64;
/// Blocks of a chunk's data, each with its crc32 in the record's trailer.
const BLOCK_BYTES: u64 = 1 << 20;
/// Bytes read at once while looking for the next header after a gap.
const WINDOW_BYTES: u64 = 1 << 20;
const SEGMENT_MAGIC: &[u8; 8] = b"DFSSEG01";
const RECORD_MAGIC: &[u8; 8] = b"DFSREC02";
const FORMAT_VERSION: u32 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Chunk,
    Tombstone,
    Pad,
}

/// One record whose header is sound (magic, kind and the header's own crc32).
#[derive(Clone, Debug)]
pub struct Record {
    pub segment: PathBuf,
    /// Offset of the header in its segment.
    pub offset: u64,
    pub kind: Kind,
    pub chunk_id: ChunkId,
    /// Data bytes (chunk), 0 (tombstone), the whole span (pad).
    pub length: u64,
    pub lsn: u64,
    /// Whether the seal after the block crc32s holds (chunks and tombstones; never for a
    /// pad, which has none). A chunk record whose header is on disk but whose seal is not
    /// is being written (or was torn by a crash).
    pub sealed: bool,
}

impl Record {
    /// Offset of the data's first byte in the segment.
    pub fn data_offset(&self) -> u64 {
        self.offset + HEADER_BYTES
    }

    /// Offset of the seal: after the data and one crc32 per block.
    pub fn seal_offset(&self) -> u64 {
        self.data_offset() + self.length + 4 * n_blocks(self.length)
    }

    /// Bytes the record takes in its segment, padding included.
    pub fn span(&self) -> u64 {
        match self.kind {
            Kind::Pad => self.length,
            _ => align_up(HEADER_BYTES + self.length + 4 * n_blocks(self.length) + 4),
        }
    }
}

fn n_blocks(length: u64) -> u64 {
    length.div_ceil(BLOCK_BYTES)
}

fn align_up(n: u64) -> u64 {
    n.div_ceil(ALIGN) * ALIGN
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b.try_into().expect("4 bytes"))
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b.try_into().expect("8 bytes"))
}

/// The segment files under `segments_dir`, in seq order (`<16 hex digits>.seg`; segments
/// being made, `.<seq>.seg.tmp`, are not segments yet).
pub fn segment_files(segments_dir: &Path) -> Vec<PathBuf> {
    let entries = fs::read_dir(segments_dir)
        .unwrap_or_else(|e| panic!("cannot list the segments in {}: {e}", segments_dir.display()));
    let mut out: Vec<(u64, PathBuf)> = entries
        .map(|e| e.unwrap_or_else(|e| panic!("cannot list {}: {e}", segments_dir.display())).path())
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?;
            let hex = name.strip_suffix(".seg").filter(|h| h.len() == 16)?;
            Some((u64::from_str_radix(hex, 16).ok()?, p))
        })
        .collect();
    out.sort();
    out.into_iter().map(|(_, p)| p).collect()
}

/// The header of the record at the start of `block`, if it is a sound one.
fn parse_header(block: &[u8]) -> Option<(Kind, ChunkId, u64, u64)> {
    let h = block.get(..HEADER_BYTES as usize)?;
    if &h[0..8] != RECORD_MAGIC || dfs_proto::layout::crc32(&h[..60]) != be32(&h[60..64]) {
        return None;
    }
    let kind = match h[8] {
        1 => Kind::Chunk,
        2 => Kind::Tombstone,
        3 => Kind::Pad,
        _ => return None,
    };
    let chunk_id = ChunkId { file_id: FileId(h[12..28].try_into().ok()?), chunk_idx: be32(&h[28..32]) };
    Some((kind, chunk_id, be64(&h[32..40]), be64(&h[52..60])))
}

/// Every record with a sound header in one segment, in order; nothing if the segment is
/// gone (a running node's compaction deletes segments it has rewritten).
pub fn scan_segment(path: &Path) -> Vec<Record> {
    let file = match fs::File::open(path) {
        Ok(f) => f,
        // Deleted by compaction since it was listed.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("cannot open segment {}: {e}", path.display()),
    };
    let size = file.metadata().unwrap_or_else(|e| panic!("cannot stat segment {}: {e}", path.display())).len();
    let read = |offset: u64, len: u64| -> Vec<u8> {
        let len = len.min(size.saturating_sub(offset)) as usize;
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset)
            .unwrap_or_else(|e| panic!("cannot read {len} bytes at {offset} of segment {}: {e}", path.display()));
        buf
    };
    let head = read(0, ALIGN);
    assert!(
        head.len() == ALIGN as usize
            && &head[0..8] == SEGMENT_MAGIC
            && dfs_proto::layout::crc32(&head[..32]) == be32(&head[32..36]),
        "{} is not a sound dfs segment (magic or header crc32)",
        path.display()
    );
    assert_eq!(be32(&head[8..12]), FORMAT_VERSION, "{}: segment format version", path.display());
    assert_eq!(u64::from(be32(&head[12..16])), ALIGN, "{}: segment alignment", path.display());
    let mut out = Vec::new();
    let mut offset = ALIGN;
    while offset < size {
        let window = read(offset, WINDOW_BYTES);
        let found = (0..window.len() as u64)
            .step_by(ALIGN as usize)
            .find_map(|at| parse_header(&window[at as usize..]).map(|h| (offset + at, h)));
        let Some((at, (kind, chunk_id, length, lsn))) = found else {
            // A gap: space reserved and never written, or the unused end.
            offset += window.len().max(1) as u64;
            continue;
        };
        let mut record = Record { segment: path.to_path_buf(), offset: at, kind, chunk_id, length, lsn, sealed: false };
        if kind != Kind::Pad {
            let crcs_at = record.data_offset() + length;
            let trailer = read(crcs_at, 4 * n_blocks(length) + 4);
            if trailer.len() as u64 == 4 * n_blocks(length) + 4 {
                let (crcs, seal) = trailer.split_at(trailer.len() - 4);
                let mut sealed_bytes = read(at, HEADER_BYTES);
                sealed_bytes.extend_from_slice(crcs);
                record.sealed = dfs_proto::layout::crc32(&sealed_bytes) == be32(seal);
            }
        }
        assert!(
            kind != Kind::Pad || (length > 0 && length % ALIGN == 0),
            "{}: pad at {at} spans {length} bytes, not a positive multiple of {ALIGN}",
            path.display()
        );
        offset = at + record.span();
        out.push(record);
    }
    out
}

/// Every record of every segment under `segments_dir`, in seq and offset order.
pub fn scan_dir(segments_dir: &Path) -> Vec<Record> {
    segment_files(segments_dir).iter().flat_map(|p| scan_segment(p)).collect()
}

/// Each chunk's live copy: of its sealed chunk records and tombstones, those with the
/// highest lsn, unless one of them is a tombstone (a tombstone carries the lsn of the record
/// it deletes; then the chunk is deleted). More than one record of a chunk with that lsn
/// are one record and its compacted copies.
pub fn live(records: &[Record]) -> BTreeMap<ChunkId, Vec<Record>> {
    let mut newest: BTreeMap<ChunkId, (u64, Vec<&Record>)> = BTreeMap::new();
    for r in records.iter().filter(|r| r.sealed && r.kind != Kind::Pad) {
        let entry = newest.entry(r.chunk_id).or_insert((r.lsn, Vec::new()));
        if r.lsn > entry.0 {
            *entry = (r.lsn, Vec::new());
        }
        if r.lsn == entry.0 {
            entry.1.push(r);
        }
    }
    newest
        .into_iter()
        .filter(|(_, (_, rs))| rs.iter().all(|r| r.kind == Kind::Chunk))
        .map(|(id, (_, rs))| (id, rs.into_iter().cloned().collect()))
        .collect()
}

/// Sealed chunk records that a tombstone of their chunk superseded (one carrying their lsn
/// or a later one): copies deleted, or set aside by scrub (the two look the same on disk),
/// whose bytes compaction has not reclaimed yet.
pub fn superseded(records: &[Record]) -> Vec<Record> {
    records
        .iter()
        .filter(|r| r.sealed && r.kind == Kind::Chunk)
        .filter(|r| {
            records.iter().any(|t| t.sealed && t.kind == Kind::Tombstone && t.chunk_id == r.chunk_id && t.lsn >= r.lsn)
        })
        .cloned()
        .collect()
}

/// The data bytes of a chunk record.
pub fn read_data(record: &Record) -> Vec<u8> {
    let file = fs::File::open(&record.segment)
        .unwrap_or_else(|e| panic!("cannot open segment {}: {e}", record.segment.display()));
    let mut buf = vec![0u8; record.length as usize];
    file.read_exact_at(&mut buf, record.data_offset()).unwrap_or_else(|e| {
        panic!("cannot read chunk {} at {} of {}: {e}", record.chunk_id, record.offset, record.segment.display())
    });
    buf
}

/// Flips `mask` into the byte at `offset` of a segment with a plain positioned write (a node
/// reading with O_DIRECT sees it: the kernel writes dirty page-cache pages back before a
/// direct read of their range).
pub fn flip_byte(segment: &Path, offset: u64, mask: u8) {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(segment)
        .unwrap_or_else(|e| panic!("cannot open segment {} for writing: {e}", segment.display()));
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, offset)
        .unwrap_or_else(|e| panic!("cannot read byte {offset} of {}: {e}", segment.display()));
    byte[0] ^= mask;
    file.write_all_at(&byte, offset)
        .unwrap_or_else(|e| panic!("cannot write byte {offset} of {}: {e}", segment.display()));
}
