//! What the nodes store, on either store (files or segments): read from their data directories,
//! or asked of a running node; and damage done to it behind the engine's back.

use crate::{assert_bytes_eq, json, segment_oracle, Cluster, READY_TIMEOUT};
use dfs_proto::io_std::{self, Frame};
use dfs_proto::{ChunkId, Chunking, FileId, Msg};
use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};

/// Every regular file under `dir`, recursively, with its size, sorted by path.
pub fn walk_files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                Ok(_) => out.push((path, entry.metadata().map(|m| m.len()).unwrap_or(0))),
                Err(_) => {}
            }
        }
    }
    out.sort();
    out
}

/// Which store a node keeps its chunks in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    /// One file per chunk copy under `chunks/` (`--store files`).
    Files,
    /// Records in segment files under `segments/` (`--store segments`, docs/STORE.md).
    Segments,
}

/// Where [`Cluster::corrupt_copy`] flips a byte.
#[derive(Clone, Copy, Debug)]
pub enum Damage {
    /// The byte at this offset of the chunk's data.
    Data(u64),
    /// The last byte of the copy's seal: the chunk file's last byte, its footer's seal (files),
    /// or the record's seal after the block crc32s (segments).
    Seal,
}

/// The store a node's data directory holds, if it holds one.
pub fn store_of(data_dir: &Path) -> Option<Store> {
    if data_dir.join("segments").is_dir() {
        Some(Store::Segments)
    } else if data_dir.join("chunks").is_dir() {
        Some(Store::Files)
    } else {
        None
    }
}

/// Every chunk a node's data directory holds a committed copy of, read from disk, sorted: its
/// chunk files, or the live records of its segments ([`segment_oracle::live`], which checks
/// seals but not data blocks, as a node starting up does for all but its newest segments).
pub fn stored_chunk_ids_in(data_dir: &Path) -> Vec<ChunkId> {
    match store_of(data_dir) {
        Some(Store::Files) => chunk_files_under(&data_dir.join("chunks")).into_iter().map(|(c, _)| c).collect(),
        Some(Store::Segments) => {
            segment_oracle::live(&segment_oracle::scan_dir(&data_dir.join("segments"))).into_keys().collect()
        }
        None => panic!("{} holds neither chunks/ nor segments/", data_dir.display()),
    }
}

/// Chunk `chunk_idx` of the file with ID `file_id` (32 hex digits).
pub fn chunk_id(file_id: &str, chunk_idx: u32) -> ChunkId {
    let file_id: FileId = file_id.parse().unwrap_or_else(|e| panic!("{file_id:?} is not a file ID: {e}"));
    ChunkId { file_id, chunk_idx }
}

/// A connection to a node (on loopback, no cluster secret), past its handshake.
fn node_conn(addr: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("cannot connect to node {addr}: {e}"));
    s.set_read_timeout(Some(READY_TIMEOUT)).expect("set read timeout");
    io_std::write_msg(&mut s, &Msg::Hello(dfs_proto::Hello::new(dfs_proto::Role::Engine))).expect("send Hello");
    match io_std::read_frame(&mut s) {
        Ok(Frame::Msg(Msg::HelloOk(_))) => {}
        other => panic!("node {addr} answered Hello with {other:?}"),
    }
    s
}

/// What the node at `addr` reports about its store now (NodeStat).
pub fn node_report(addr: &str) -> dfs_proto::StoreReport {
    let mut s = node_conn(addr);
    io_std::write_msg(&mut s, &Msg::NodeStat).expect("send NodeStat");
    match io_std::read_frame(&mut s) {
        Ok(Frame::Msg(Msg::NodeStatOk(report))) => report,
        other => panic!("node {addr} answered NodeStat with {other:?}"),
    }
}

/// Every chunk the node at `addr` holds, asked of the node (ChunkList).
pub fn node_chunk_ids(addr: &str) -> Vec<ChunkId> {
    let mut s = node_conn(addr);
    let mut ids = Vec::new();
    let mut after = None;
    loop {
        io_std::write_msg(&mut s, &Msg::ChunkList { after, limit: 1000, min_age_secs: 0 }).expect("send ChunkList");
        match io_std::read_frame(&mut s) {
            Ok(Frame::Msg(Msg::ChunkListOk { chunk_ids, more, .. })) => {
                after = chunk_ids.last().copied();
                ids.extend(chunk_ids);
                if !more {
                    return ids;
                }
            }
            other => panic!("node {addr} answered ChunkList with {other:?}"),
        }
    }
}

/// Every file under a node's `chunks/` directory whose name is a chunk ID in its fan-out directory
/// (temp files of chunks being received are skipped).
/// Panics on any other file: chunk files are named from IDs only.
pub fn chunk_files_under(chunks_dir: &Path) -> Vec<(ChunkId, PathBuf)> {
    let mut out = Vec::new();
    for (path, _) in walk_files(chunks_dir) {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        // A chunk being received lives next to its final place as `.<chunk id>.<nonce>.tmp`;
        // tests that care about leftovers look for those themselves.
        if name.starts_with('.') && name.ends_with(".tmp") {
            continue;
        }
        let chunk_id: ChunkId = name.parse().unwrap_or_else(|_| {
            panic!("{} under a node's chunks/ is not named <file id>.<chunk index>", path.display())
        });
        let parent = path.parent().and_then(|p| p.file_name()).and_then(|n| n.to_str()).unwrap_or("");
        assert_eq!(parent, chunk_id.fanout_dir(), "chunk file {} is in the wrong fan-out directory", path.display());
        assert_eq!(
            path.parent().and_then(Path::parent),
            Some(chunks_dir),
            "chunk file {} is nested too deep",
            path.display()
        );
        out.push((chunk_id, path));
    }
    out.sort();
    out
}

impl Cluster {
    /// Temp files anywhere in node `node_idx`'s data directory, on either store: chunks being
    /// received (`chunks/<xx>/.<chunk id>.<nonce>.tmp`) or segments being made
    /// (`segments/.<seq>.seg.tmp`). A segment node receives chunks into records, not temp
    /// files: see [`Cluster::partial_copies`] for those.
    pub fn temp_files(&self, node_idx: usize) -> Vec<PathBuf> {
        walk_files(&self.nodes[node_idx].data_dir)
            .into_iter()
            .map(|(p, _)| p)
            .filter(|p| p.extension().is_some_and(|e| e == "tmp"))
            .collect()
    }

    /// Copies node `node_idx` has begun to receive and not finished, as found on disk, on either
    /// store: the temp files of chunks being received (files), or chunk records whose header is
    /// on disk and whose seal is not (segments: the record is being written, or was abandoned
    /// without the pad header a node writes over one, or torn by a crash).
    pub fn partial_copies(&self, node_idx: usize) -> Vec<ChunkId> {
        let data_dir = &self.nodes[node_idx].data_dir;
        match self.node_store(node_idx) {
            Store::Files => walk_files(&data_dir.join("chunks"))
                .into_iter()
                .filter_map(|(p, _)| {
                    let name = p.file_name()?.to_str()?;
                    let inner = name.strip_prefix('.')?.strip_suffix(".tmp")?;
                    let id = inner.get(..41).and_then(|s| s.parse::<ChunkId>().ok());
                    Some(id.unwrap_or_else(|| panic!("temp file {} is not named .<chunk id>.<nonce>.tmp", p.display())))
                })
                .collect(),
            Store::Segments => segment_oracle::scan_dir(&data_dir.join("segments"))
                .into_iter()
                .filter(|r| r.kind == segment_oracle::Kind::Chunk && !r.sealed)
                .map(|r| r.chunk_id)
                .collect(),
        }
    }

    /// Which store node `node_idx` keeps its chunks in, from its data directory: `segments/`
    /// (`--store segments`, the default) or `chunks/` (`--store files`, or `DFS_STORE=files` in
    /// the environment the node inherits). Panics if it holds neither.
    pub fn node_store(&self, node_idx: usize) -> Store {
        let data_dir = &self.nodes[node_idx].data_dir;
        store_of(data_dir).unwrap_or_else(|| {
            panic!("node {node_idx}'s data directory {} holds neither chunks/ nor segments/", data_dir.display())
        })
    }

    /// Every committed chunk file on node `node_idx`, sorted by chunk ID. A node running the
    /// segment store has no chunk files: its chunks are those of [`Cluster::stored_chunk_ids`],
    /// each with the path `segments/<chunk id>`, which names no file, so a test that would delete
    /// or damage it fails loudly instead of doing something else (use [`Cluster::delete_copy`]
    /// and [`Cluster::corrupt_copy`], which work on both stores).
    pub fn chunk_files(&self, node_idx: usize) -> Vec<(ChunkId, PathBuf)> {
        let slot = &self.nodes[node_idx];
        match self.node_store(node_idx) {
            Store::Files => chunk_files_under(&slot.data_dir.join("chunks")),
            Store::Segments => {
                let segments = slot.data_dir.join("segments");
                self.stored_chunk_ids(node_idx).into_iter().map(|id| (id, segments.join(id.to_string()))).collect()
            }
        }
    }

    /// Every chunk node `node_idx` holds a committed copy of, sorted, on either store, running or
    /// stopped: its chunk files (files); for a running segment node, what it answers to
    /// ChunkList; for a stopped one, the live records its segments hold ([`segment_oracle`]).
    pub fn stored_chunk_ids(&self, node_idx: usize) -> Vec<ChunkId> {
        let slot = &self.nodes[node_idx];
        match (self.node_store(node_idx), &slot.proc) {
            (Store::Segments, Some(_)) => {
                assert!(
                    !self.opts.cluster_secret,
                    "node {node_idx}: asking a segment node for its chunks needs a node without a cluster secret"
                );
                let mut ids = node_chunk_ids(&slot.addr);
                ids.sort();
                ids
            }
            _ => stored_chunk_ids_in(&slot.data_dir),
        }
    }

    /// Where the chunk `chunk_idx` of file `file_id` lies on disk: (node index, path), on every
    /// node. On a segment node the path names no file (see [`Cluster::chunk_files`]); use
    /// [`Cluster::find_copies`] with the store-neutral helpers instead.
    pub fn find_chunk_file(&self, file_id: &str, chunk_idx: u32) -> Vec<(usize, PathBuf)> {
        let want = chunk_id(file_id, chunk_idx);
        (0..self.nodes.len())
            .flat_map(|n| self.chunk_files(n).into_iter().filter(|(c, _)| *c == want).map(move |(_, p)| (n, p)))
            .collect()
    }

    /// The nodes, by index, that hold a committed copy of chunk `chunk_idx` of `file_id`, on
    /// either store.
    pub fn find_copies(&self, file_id: &str, chunk_idx: u32) -> Vec<usize> {
        let want = chunk_id(file_id, chunk_idx);
        (0..self.nodes.len()).filter(|&n| self.stored_chunk_ids(n).contains(&want)).collect()
    }

    /// Deletes node `node_idx`'s copy of `chunk_id` behind the engine's back, on either store:
    /// the chunk file is removed (files, running or stopped); a running segment node is sent
    /// ChunkDelete directly, which writes a tombstone (a stopped segment node panics: start it
    /// first).
    /// Stores `data` as `chunk_id` straight into running node `node_idx` (a STORE as the engine
    /// sends it), behind the engine's back: a copy no file records there.
    pub fn store_copy(&self, node_idx: usize, chunk_id: ChunkId, data: &[u8]) {
        let slot = &self.nodes[node_idx];
        assert!(!self.opts.cluster_secret, "store_copy needs nodes without a cluster secret");
        let mut s = node_conn(&slot.addr);
        let store = Msg::Store { chunk_id, length: data.len() as u64, crc32: dfs_proto::layout::crc32(data) };
        io_std::write_msg(&mut s, &store)
            .and_then(|()| std::io::Write::write_all(&mut s, data))
            .unwrap_or_else(|e| panic!("node {node_idx} ({}): cannot send STORE of {chunk_id}: {e}", slot.addr));
        match io_std::read_frame(&mut s) {
            Ok(Frame::Msg(Msg::StoreOk { .. })) => {}
            other => panic!("node {node_idx} ({}) answered STORE of {chunk_id} with {other:?}", slot.addr),
        }
        self.note(&format!("stored a copy of {chunk_id} on node {node_idx} behind the engine's back"));
    }

    pub fn delete_copy(&self, node_idx: usize, chunk_id: ChunkId) {
        let slot = &self.nodes[node_idx];
        match self.node_store(node_idx) {
            Store::Files => {
                let path = chunk_files_under(&slot.data_dir.join("chunks"))
                    .into_iter()
                    .find(|(c, _)| *c == chunk_id)
                    .map(|(_, p)| p)
                    .unwrap_or_else(|| {
                        panic!("node {node_idx} has no chunk file of {chunk_id} under {}", slot.data_dir.display())
                    });
                fs::remove_file(&path).unwrap_or_else(|e| {
                    panic!("node {node_idx}: cannot delete the chunk file of {chunk_id}, {}: {e}", path.display())
                });
                self.note(&format!("deleted node {node_idx}'s copy of {chunk_id}: {}", path.display()));
            }
            Store::Segments => {
                assert!(
                    slot.proc.is_some(),
                    "node {node_idx} runs the segment store and is stopped: its copy of {chunk_id} can only be deleted by a running node"
                );
                assert!(
                    !self.opts.cluster_secret,
                    "node {node_idx}: deleting a segment node's copy of {chunk_id} needs a node without a cluster secret"
                );
                let mut s = node_conn(&slot.addr);
                io_std::write_msg(&mut s, &Msg::ChunkDelete { chunk_id, written_before_unix_ms: None }).unwrap_or_else(
                    |e| panic!("node {node_idx} ({}): cannot send ChunkDelete of {chunk_id}: {e}", slot.addr),
                );
                match io_std::read_frame(&mut s) {
                    Ok(Frame::Msg(Msg::Ok)) => {}
                    other => {
                        panic!("node {node_idx} ({}) answered ChunkDelete of {chunk_id} with {other:?}", slot.addr)
                    }
                }
                self.note(&format!("deleted node {node_idx}'s copy of {chunk_id} with ChunkDelete"));
            }
        }
    }

    /// Damages node `node_idx`'s copy of `chunk_id` on disk by flipping one bit of one byte, on
    /// either store and whether the node runs or not, and returns the copy's bytes as they are
    /// now on disk: the whole chunk file (files), or the record's data (segments). On a segment
    /// node every record with the live copy's lsn is damaged (a record and any compacted copy of
    /// it, which are the same copy). A segment node checks [`Damage::Seal`] only when it starts.
    pub fn corrupt_copy(&self, node_idx: usize, chunk_id: ChunkId, damage: Damage) -> Vec<u8> {
        const MASK: u8 = 0x40;
        let data_dir = &self.nodes[node_idx].data_dir;
        match self.node_store(node_idx) {
            Store::Files => {
                let path = chunk_files_under(&data_dir.join("chunks"))
                    .into_iter()
                    .find(|(c, _)| *c == chunk_id)
                    .map(|(_, p)| p)
                    .unwrap_or_else(|| {
                        panic!("node {node_idx} has no chunk file of {chunk_id} under {}", data_dir.display())
                    });
                let mut bytes = fs::read(&path).unwrap_or_else(|e| {
                    panic!("node {node_idx}: cannot read the chunk file of {chunk_id}, {}: {e}", path.display())
                });
                let at = match damage {
                    Damage::Data(offset) => offset as usize,
                    Damage::Seal => bytes.len().saturating_sub(1),
                };
                assert!(
                    at < bytes.len(),
                    "node {node_idx}: byte {at} is outside the chunk file of {chunk_id}, {} ({} bytes)",
                    path.display(),
                    bytes.len()
                );
                bytes[at] ^= MASK;
                fs::write(&path, &bytes).unwrap_or_else(|e| {
                    panic!("node {node_idx}: cannot write the chunk file of {chunk_id}, {}: {e}", path.display())
                });
                self.note(&format!(
                    "flipped byte {at} of {} (node {node_idx}, {chunk_id}, {damage:?})",
                    path.display()
                ));
                bytes
            }
            Store::Segments => {
                let segments = data_dir.join("segments");
                let records = segment_oracle::live(&segment_oracle::scan_dir(&segments)).remove(&chunk_id);
                let records = records.unwrap_or_else(|| {
                    panic!("node {node_idx} has no live record of {chunk_id} in {}", segments.display())
                });
                for r in &records {
                    let at = match damage {
                        Damage::Data(offset) => {
                            assert!(
                                offset < r.length,
                                "node {node_idx}: data byte {offset} is outside {chunk_id} ({} bytes) at {} of {}",
                                r.length,
                                r.offset,
                                r.segment.display()
                            );
                            r.data_offset() + offset
                        }
                        Damage::Seal => r.seal_offset() + 3,
                    };
                    segment_oracle::flip_byte(&r.segment, at, MASK);
                    self.note(&format!(
                        "flipped byte {at} of {} (node {node_idx}, {chunk_id} recorded at {}, {damage:?})",
                        r.segment.display(),
                        r.offset
                    ));
                }
                segment_oracle::read_data(&records[0])
            }
        }
    }

    /// The copies node `node_idx` has set aside as corrupt, with their bytes as on disk, sorted:
    /// the files in `quarantine/` (files); the records a tombstone superseded (segments: scrub
    /// writes one over a corrupt copy, but so does a delete, so a test that deletes must tell
    /// them apart itself), with their data.
    pub fn set_aside_copies(&self, node_idx: usize) -> Vec<(ChunkId, Vec<u8>)> {
        let data_dir = &self.nodes[node_idx].data_dir;
        let mut out: Vec<(ChunkId, Vec<u8>)> = match self.node_store(node_idx) {
            Store::Files => walk_files(&data_dir.join("quarantine"))
                .into_iter()
                .map(|(p, _)| {
                    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    let id = name.get(..41).and_then(|s| s.parse::<ChunkId>().ok()).unwrap_or_else(|| {
                        panic!("node {node_idx}: quarantined file {} is not named <chunk id>.<time>", p.display())
                    });
                    let bytes = fs::read(&p)
                        .unwrap_or_else(|e| panic!("node {node_idx}: cannot read quarantined {}: {e}", p.display()));
                    (id, bytes)
                })
                .collect(),
            Store::Segments => segment_oracle::superseded(&segment_oracle::scan_dir(&data_dir.join("segments")))
                .iter()
                .map(|r| (r.chunk_id, segment_oracle::read_data(r)))
                .collect(),
        };
        out.sort();
        out
    }

    /// Checks that `stat` describes `data` uploaded as `name` with `chunking`: name, size and
    /// chunking as given; chunks numbered 0.., contiguous, tiling the file in a multiple of four
    /// equal parts (exactly the protocol's layout when the cap is known), each under the dynamic
    /// cap; each chunk's crc32 that of the local bytes; and each non-empty chunk held by known
    /// nodes whose chunk file starts with exactly those bytes.
    #[track_caller]
    pub fn assert_stat_describes(&self, id: &str, stat: &json::StatInfo, data: &[u8], name: &str, chunking: Chunking) {
        let ctx = format!("stat {id} (uploaded as {name:?}, {} bytes, {chunking})", data.len());
        assert_eq!(stat.name, name, "{ctx}: name");
        assert_eq!(stat.size, data.len() as u64, "{ctx}: size");
        assert_eq!(stat.chunking, chunking.to_string(), "{ctx}: chunking");
        if let Some(shown) = &stat.id {
            assert_eq!(shown, id, "{ctx}: id");
        }
        let n_chunks = stat.chunks.len();
        assert!(
            n_chunks >= 4 && n_chunks.is_multiple_of(4),
            "{ctx}: {n_chunks} chunks is not a positive multiple of 4"
        );
        if chunking == Chunking::Equal {
            assert_eq!(n_chunks, 4, "{ctx}: equal chunking must give exactly 4 chunks");
        }
        let part = (data.len() as u64).div_ceil(n_chunks as u64);
        let mut next_offset = 0u64;
        for (i, c) in stat.chunks.iter().enumerate() {
            let cctx = format!("{ctx}: chunk {i}");
            assert_eq!(c.index as usize, i, "{cctx}: chunk index out of order");
            assert_eq!(c.offset, next_offset, "{cctx}: offset does not follow the previous chunk");
            assert_eq!(c.length, part.min(data.len() as u64 - c.offset), "{cctx}: length is not the equal share");
            if chunking == Chunking::Dynamic {
                if let Some(cap) = self.opts.chunk_size_max_bytes {
                    assert!(c.length <= cap, "{cctx}: length {} is over the cap {cap}", c.length);
                }
            }
            let bytes = &data[c.offset as usize..(c.offset + c.length) as usize];
            assert_eq!(c.crc32, dfs_proto::layout::crc32(bytes), "{cctx}: crc32 does not match the uploaded bytes");
            if c.length > 0 {
                assert!(!c.nodes.is_empty(), "{cctx}: no node holds this non-empty chunk");
            }
            for addr in &c.nodes {
                let node_idx = self
                    .node_idx_of(addr)
                    .unwrap_or_else(|| panic!("{cctx}: node {addr} is not one of {:?}", self.node_addrs()));
                let file_id: FileId = id.parse().expect("well-formed file ID");
                let want = ChunkId { file_id, chunk_idx: c.index };
                if c.length == 0 {
                    continue;
                }
                let path = self.chunk_files(node_idx).into_iter().find(|(cid, _)| *cid == want).map(|(_, p)| p);
                let path = path.unwrap_or_else(|| panic!("{cctx}: node {node_idx} ({addr}) has no chunk file {want}"));
                if self.node_store(node_idx) == Store::Segments {
                    // The node lists it; its live record on disk holds exactly those bytes.
                    let segments = self.nodes[node_idx].data_dir.join("segments");
                    let records = segment_oracle::live(&segment_oracle::scan_dir(&segments)).remove(&want);
                    let records = records.unwrap_or_else(|| {
                        panic!("{cctx}: node {node_idx} lists {want}, its segments have no record of it")
                    });
                    for r in &records {
                        let what = format!("{cctx}: data of the record at {} of {}", r.offset, r.segment.display());
                        assert_bytes_eq(&segment_oracle::read_data(r), bytes, &what);
                    }
                    continue;
                }
                let on_disk = fs::read(&path).expect("read chunk file");
                assert!(
                    on_disk.len() as u64 > c.length,
                    "{cctx}: chunk file {} is shorter than data + footer",
                    path.display()
                );
                assert_bytes_eq(
                    &on_disk[..c.length as usize],
                    bytes,
                    &format!("{cctx}: data part of {}", path.display()),
                );
            }
            next_offset += c.length;
        }
        assert_eq!(next_offset, data.len() as u64, "{ctx}: chunk lengths do not add up to the file size");
        // The cap only matters to dynamic chunking; equal chunking is the same for any cap.
        let cap = match chunking {
            Chunking::Equal => Some(1),
            Chunking::Dynamic => self.opts.chunk_size_max_bytes,
        };
        if let Some(cap) = cap {
            let spans = dfs_proto::layout::chunk_spans(data.len() as u64, chunking, cap).expect("layout");
            let shown: Vec<(u64, u64)> = stat.chunks.iter().map(|c| (c.offset, c.length)).collect();
            let expected: Vec<(u64, u64)> = spans.iter().map(|s| (s.offset, s.length)).collect();
            assert_eq!(shown, expected, "{ctx}: chunk table differs from the protocol layout");
        }
    }
}
