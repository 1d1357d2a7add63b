//! What the command line prints about files, for people (aligned text) and for scripts (JSON).
//! The JSON objects are this crate's own, not the wire structs: node placements are resolved to
//! addresses and checksums are hex strings, so a script never needs the protocol to read them.
//!
//! Field reference (every JSON object below; sizes and offsets in bytes):
//! - `id`: the file ID, 32 lowercase hex digits.
//! - `name`: the name the file was stored under.
//! - `size`: file size.
//! - `chunking`: `"equal"` or `"dynamic"`.
//! - `created_unix_ms`: creation time, milliseconds since the Unix epoch (UTC).
//! - `n_chunks`: number of chunks.
//! - `origin`: the tag the uploader attached (32 lowercase hex digits; `put -r` sends its
//!   manifest's identity), or null.
//! - `chunks` (STAT only): one object per chunk, in file order, with `chunk_idx`, `offset`,
//!   `length`, `crc32` (8 lowercase hex digits) and `nodes` (addresses holding a copy).
//! - `nodes` (STAT only): the nodes the chunks are on, each with `id` (the node's ID, 32
//!   lowercase hex digits, or null for a placement recorded before node IDs) and `addr` (where
//!   the engine reaches it).

use dfs_proto::{FileInfo, FileSummary};
use serde::Serialize;
use std::borrow::Cow;
use std::io::{self, Write};

/// STAT as JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FileView {
    pub id: String,
    pub name: String,
    pub size: u64,
    pub chunking: String,
    pub created_unix_ms: u64,
    pub n_chunks: usize,
    pub origin: Option<String>,
    pub chunks: Vec<ChunkView>,
    pub nodes: Vec<NodeView>,
}

/// One node of [`FileView`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeView {
    pub id: Option<String>,
    pub addr: String,
}

/// One chunk of [`FileView`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChunkView {
    pub chunk_idx: u32,
    pub offset: u64,
    pub length: u64,
    pub crc32: String,
    pub nodes: Vec<String>,
}

/// One entry of LS as JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SummaryView {
    pub id: String,
    pub name: String,
    pub size: u64,
    pub chunking: String,
    pub created_unix_ms: u64,
    pub n_chunks: u32,
    pub origin: Option<String>,
}

impl From<&FileInfo> for FileView {
    fn from(info: &FileInfo) -> FileView {
        let chunks = info
            .chunks
            .iter()
            .map(|c| ChunkView {
                chunk_idx: c.chunk_idx,
                offset: c.offset,
                length: c.length,
                crc32: format!("{:08x}", c.crc32),
                nodes: c.placement.iter().map(|&p| node_address(info, p)).collect(),
            })
            .collect();
        FileView {
            id: info.file_id.to_string(),
            name: info.name.clone(),
            size: info.size,
            chunking: info.chunking.to_string(),
            created_unix_ms: info.created_unix_ms,
            n_chunks: info.chunks.len(),
            origin: info.origin.map(|o| o.to_string()),
            chunks,
            nodes: info
                .nodes
                .iter()
                .map(|n| NodeView { id: n.id.map(|id| id.to_string()), addr: n.addr.clone() })
                .collect(),
        }
    }
}

impl From<&FileSummary> for SummaryView {
    fn from(f: &FileSummary) -> SummaryView {
        SummaryView {
            id: f.file_id.to_string(),
            name: f.name.clone(),
            size: f.size,
            chunking: f.chunking.to_string(),
            created_unix_ms: f.created_unix_ms,
            n_chunks: f.n_chunks,
            origin: f.origin.map(|o| o.to_string()),
        }
    }
}

/// The address a placement index refers to. The decoder already refuses indices outside the
/// node list; the fallback only keeps a hand-built `FileInfo` from causing a panic.
fn node_address(info: &FileInfo, placement: u16) -> String {
    info.nodes.get(placement as usize).map(|n| n.addr.clone()).unwrap_or_else(|| format!("<unknown node {placement}>"))
}

/// STAT as text: the file's fields, then its chunk table.
pub fn write_stat_text(w: &mut dyn Write, info: &FileInfo) -> io::Result<()> {
    writeln!(w, "id:       {}", info.file_id)?;
    writeln!(w, "name:     {}", printable(&info.name))?;
    writeln!(w, "size:     {} bytes", info.size)?;
    writeln!(w, "chunking: {}", info.chunking)?;
    writeln!(w, "created:  {}", format_unix_ms(info.created_unix_ms))?;
    writeln!(w, "chunks:   {}", info.chunks.len())?;
    if let Some(origin) = info.origin {
        writeln!(w, "origin:   {origin}")?;
    }
    writeln!(w, "{:>6}  {:>14}  {:>14}  {:8}  nodes", "chunk", "offset", "length", "crc32")?;
    for c in &info.chunks {
        let nodes: Vec<String> = c.placement.iter().map(|&p| node_address(info, p)).collect();
        writeln!(w, "{:>6}  {:>14}  {:>14}  {:08x}  {}", c.chunk_idx, c.offset, c.length, c.crc32, nodes.join(","))?;
    }
    for n in &info.nodes {
        let id = n.id.map(|id| id.to_string()).unwrap_or_else(|| "(no ID recorded yet)".into());
        writeln!(w, "node {}  {id}", n.addr)?;
    }
    Ok(())
}

pub use dfs_proto::units::human_bytes;

/// LS as text: one line per file with ID, size (exact bytes, or human-readable with `human`),
/// chunking, creation time and name.
pub fn write_list_text(w: &mut dyn Write, files: &[FileSummary], human: bool) -> io::Result<()> {
    for f in files {
        let size = if human { human_bytes(f.size) } else { f.size.to_string() };
        writeln!(
            w,
            "{}  {:>14}  {:<7}  {}  {}",
            f.file_id,
            size,
            f.chunking,
            format_unix_ms(f.created_unix_ms),
            printable(&f.name)
        )?;
    }
    Ok(())
}

/// A name safe to print on a line of its own: control characters (a newline, or an escape
/// sequence that would drive the terminal) are shown escaped.
pub fn printable(name: &str) -> Cow<'_, str> {
    if !name.chars().any(char::is_control) {
        return Cow::Borrowed(name);
    }
    Cow::Owned(
        name.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect(),
    )
}

/// Milliseconds since the Unix epoch as an RFC 3339 UTC timestamp, e.g.
/// `2023-11-14T22:13:20.000Z`.
pub fn format_unix_ms(unix_ms: u64) -> String {
    let days = unix_ms / 86_400_000;
    let ms_of_day = unix_ms % 86_400_000;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1000 % 60,
        ms_of_day % 1000
    )
}

/// The proleptic Gregorian date `days` days after 1970-01-01, by Howard Hinnant's
/// `civil_from_days` (counting in 400-year eras that start on 0000-03-01, so the leap day
/// falls at the end of each year).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468; // days since 0000-03-01
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfs_proto::{ChunkInfo, Chunking, FileId};

    #[test]
    fn timestamps() {
        for (unix_ms, text) in [
            (0, "1970-01-01T00:00:00.000Z"),
            (1_700_000_000_123, "2023-11-14T22:13:20.123Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (951_868_799_999, "2000-02-29T23:59:59.999Z"),
            (4_107_542_400_000, "2100-03-01T00:00:00.000Z"),
        ] {
            assert_eq!(format_unix_ms(unix_ms), text);
        }
        // The largest value must format, not overflow.
        assert!(format_unix_ms(u64::MAX).ends_with('Z'));
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("plain name.txt"), "plain name.txt");
        assert_eq!(printable("a\nb\x1b[31m"), "a\\nb\\u{1b}[31m");
    }

    #[test]
    fn stat_view_resolves_nodes_and_hex_crcs() {
        let info = FileInfo {
            file_id: FileId([0xab; 16]),
            name: "f".into(),
            size: 3,
            created_unix_ms: 5,
            chunking: Chunking::Dynamic,
            origin: Some(dfs_proto::Origin([0xcd; 16])),
            nodes: vec![
                dfs_proto::FileNode { id: Some(dfs_proto::NodeId([0x11; 16])), addr: "n0:1".into() },
                dfs_proto::FileNode { id: None, addr: "n1:2".into() },
            ],
            chunks: vec![ChunkInfo { chunk_idx: 0, offset: 0, length: 3, crc32: 0xbeef, placement: vec![1, 0] }],
        };
        let json = serde_json::to_value(FileView::from(&info)).expect("serialize");
        assert_eq!(json["id"], "abababababababababababababababab");
        assert_eq!(json["chunking"], "dynamic");
        assert_eq!(json["n_chunks"], 1);
        assert_eq!(json["origin"], "cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd");
        assert_eq!(json["chunks"][0]["crc32"], "0000beef");
        assert_eq!(json["chunks"][0]["nodes"], serde_json::json!(["n1:2", "n0:1"]));
        let mut text = Vec::new();
        write_stat_text(&mut text, &info).expect("write");
        let text = String::from_utf8(text).expect("utf-8");
        assert!(text.contains("0000beef  n1:2,n0:1"), "{text}");
        assert!(text.contains("origin:   cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd"), "{text}");
        assert_eq!(json["nodes"][0], serde_json::json!({"id": "11111111111111111111111111111111", "addr": "n0:1"}));
        assert_eq!(json["nodes"][1]["id"], serde_json::Value::Null);
        assert!(text.contains("node n0:1  11111111111111111111111111111111"), "{text}");
    }
}
